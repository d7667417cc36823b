// norm.wgsl: RMSNorm over the last dimension, one workgroup per row.
// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight

struct Params {
    n_rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;           // (n_rows, dim)
@group(0) @binding(1) var<storage, read> weight: array<f32>;      // (dim,)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // (n_rows, dim)
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.n_rows) {
        return; // the whole workgroup leaves together
    }
    let base = row * p.dim;
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[base + i];
        ss += v * v;
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = x[base + i] * scale * weight[i];
    }
}
