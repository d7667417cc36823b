// norm.wgsl: normalization over the last dimension, one workgroup per row.
//   rms_norm:   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * (weight + w_offset)
//               (or out += that, with accumulate: Gemma's post-norms add into the residual)
//   rms_norm_inplace: the same with out = x, e.g. over each head of Q or K (rows of head_dim)
//   layer_norm: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias
//               (two passes: the variance is taken about the mean, not as E[x²] - mean²)

struct Params {
    n_rows: u32,
    dim: u32,
    eps: f32,
    w_offset: f32,   // rms: added to every weight (1 for Hugging Face Gemma's (1 + w), else 0)
    accumulate: u32, // rms_norm: 1 adds the result into out
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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

// rms_norm_inplace binds x read-write, then the weight above, then its params. It repeats
// rms_norm's body because a WGSL function cannot take a storage pointer (without an extension
// browsers lack), and binding one buffer as both x and out is a usage conflict.
@group(0) @binding(0) var<storage, read_write> xio: array<f32>;   // (n_rows, dim)
@group(0) @binding(2) var<uniform> ip: Params;

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
        let y = x[base + i] * scale * (weight[i] + p.w_offset);
        if (p.accumulate != 0u) {
            out[base + i] += y;
        } else {
            out[base + i] = y;
        }
    }
}

@compute @workgroup_size(WG)
fn rms_norm_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= ip.n_rows) {
        return; // the whole workgroup leaves together
    }
    let base = row * ip.dim;
    var ss = 0.0;
    for (var i = lid; i < ip.dim; i += WG) {
        let v = xio[base + i];
        ss += v * v;
    }
    // Each invocation rewrites only the elements it read itself: no race.
    let scale = inverseSqrt(workgroup_sum(lid, ss) / f32(ip.dim) + ip.eps);
    for (var i = lid; i < ip.dim; i += WG) {
        xio[base + i] = xio[base + i] * scale * (weight[i] + ip.w_offset);
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
