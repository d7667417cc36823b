// activation.wgsl: MLP activations, elementwise.
//   swiglu:    gate = silu(gate) * up, in place on gate (Llama's MLP).
//   geglu:     gate = gelu_tanh(gate) * up, in place on gate (Gemma's MLP, when gate and up
//              are separate projections rather than fused into one store).
//   gelu_tanh: x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place (GPT-2's gelu_new).
//   gelu_erf:  x = 0.5 x (1 + erf(x / sqrt(2))) = 0.5 x erfc(-x / sqrt(2)), in place (exact GELU).
//   softcap:   x = cap * tanh(x / cap), in place (Gemma 2's final-logit soft-capping).

struct Params {
    n: u32,
    cap: f32,   // softcap

    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> up: array<f32>;          // (n,)
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;  // (n,) in: gate projection, out: silu(gate) * up
@group(0) @binding(2) var<uniform> p: Params;

// gelu_tanh and gelu_erf bind only these (an entry point's bindings are numbered 0..n).
@group(0) @binding(0) var<storage, read_write> x: array<f32>;     // (n,)
@group(0) @binding(1) var<uniform> px: Params;

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

@compute @workgroup_size(256)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    gate[i] = gelu_tanh_of(gate[i]) * up[i];
}

@compute @workgroup_size(256)
fn gelu_tanh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= px.n) {
        return;
    }
    x[i] = gelu_tanh_of(x[i]);
}

// softcap: x = cap * tanh(x / cap), in place (Gemma 2's final logits, cap 30).
@compute @workgroup_size(256)
fn softcap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= px.n) {
        return;
    }
    x[i] = px.cap * tanh_stable(x[i] / px.cap);
}

// erfc(z) with a relative error below 1.2e-7 for every z (Numerical Recipes' erfcc, a
// Chebyshev fit): small where GELU is small, so 0.5 x erfc(-x/sqrt 2) keeps its relative
// precision for negative x, where 1 + erf(x) would cancel. WGSL has no erf.
fn erfc_precise(z: f32) -> f32 {
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.5 * a);
    let r = t * exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
            t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
            t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r, 2.0 - r, z < 0.0);
}

@compute @workgroup_size(256)
fn gelu_erf(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= px.n) {
        return;
    }
    let v = x[i];
    x[i] = 0.5 * v * erfc_precise(-0.7071067811865476 * v);
}

// ---- backward ----
// swiglu_backward: of h = silu(g) * u, given dh: with s = sigmoid(g),
//   dgate = dh * u * s * (1 + g * (1 - s)),   dup = dh * g * s.

@group(0) @binding(0) var<storage, read> sb_gate: array<f32>;         // (n,) the gate projection
@group(0) @binding(1) var<storage, read> sb_up: array<f32>;           // (n,)
@group(0) @binding(2) var<storage, read> sb_dh: array<f32>;           // (n,)
@group(0) @binding(3) var<storage, read_write> sb_dgate: array<f32>;  // (n,)
@group(0) @binding(4) var<storage, read_write> sb_dup: array<f32>;    // (n,)
@group(0) @binding(5) var<uniform> sbp: Params;

@compute @workgroup_size(256)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= sbp.n) {
        return;
    }
    let g = sb_gate[i];
    let s = 1.0 / (1.0 + exp(-g));
    let dh = sb_dh[i];
    sb_dgate[i] = dh * sb_up[i] * s * (1.0 + g * (1.0 - s));
    sb_dup[i] = dh * g * s;
}
