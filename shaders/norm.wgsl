// norm.wgsl: normalization over the last dimension, one workgroup per row.
//   rms_norm:   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
//   layer_norm: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias
//               (two passes: the variance is taken about the mean, not as E[x²] - mean²)

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

// layer_norm reads x and weight above, then binds these (an entry point's bindings must be
// numbered 0..n in the order inputs, output, params).
@group(0) @binding(2) var<storage, read> ln_bias: array<f32>;        // (dim,)
@group(0) @binding(3) var<storage, read_write> ln_out: array<f32>;   // (n_rows, dim)
@group(0) @binding(4) var<uniform> lp: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// Sum of `v` over the workgroup; every invocation gets it.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier(); // partial is reused by the next call
    return total;
}

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
    let scale = inverseSqrt(workgroup_sum(lid, ss) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = x[base + i] * scale * weight[i];
    }
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= lp.n_rows) {
        return; // the whole workgroup leaves together
    }
    let base = row * lp.dim;
    var s = 0.0;
    for (var i = lid; i < lp.dim; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum(lid, s) / f32(lp.dim);
    var ss = 0.0;
    for (var i = lid; i < lp.dim; i += WG) {
        let d = x[base + i] - mean;
        ss += d * d;
    }
    let scale = inverseSqrt(workgroup_sum(lid, ss) / f32(lp.dim) + lp.eps);
    for (var i = lid; i < lp.dim; i += WG) {
        ln_out[base + i] = (x[base + i] - mean) * scale * weight[i] + ln_bias[i];
    }
}
