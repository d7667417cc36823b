// activation.wgsl: gated MLP activations, elementwise.
//   swiglu: gate = silu(gate) * up, in place on gate (Llama's MLP).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> up: array<f32>;          // (n,)
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;  // (n,) in: gate projection, out: silu(gate) * up
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let g = gate[i];
    gate[i] = g / (1.0 + exp(-g)) * up[i];
}
