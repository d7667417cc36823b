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

// ---- backward ----
// rms_norm forward: y = x * r * w with r = 1 / sqrt(mean(x²) + eps), per row of dim D.
//   rms_norm_backward_dx: dx = r * (dy * w) - x * r³ / D * sum(dy * w * x); also stores r per
//                         row for the dw passes. One workgroup per row.
//   rms_norm_backward_dw_partial: dw_part[b, i] = sum over rows of block b of dy * x * r
//                         (RMS_ROWS rows a block, one thread per (block, column)).
//   rms_norm_backward_dw_sum: dw[i] (+)= sum over blocks of dw_part[b, i]. Two passes and no
//                         atomics, so the sum is the same on every run.

@group(0) @binding(0) var<storage, read> rb_x: array<f32>;            // (n_rows, dim)
@group(0) @binding(1) var<storage, read> rb_weight: array<f32>;       // (dim,)
@group(0) @binding(2) var<storage, read> rb_dy: array<f32>;           // (n_rows, dim)
@group(0) @binding(3) var<storage, read_write> rb_dx: array<f32>;     // (n_rows, dim)
@group(0) @binding(4) var<storage, read_write> rb_rstd: array<f32>;   // (n_rows,)
@group(0) @binding(5) var<uniform> rbp: Params;

// rms_norm_backward_dw_partial binds x, dy, rstd as inputs (0..2), the partials (3), params.
@group(0) @binding(0) var<storage, read> rw_x: array<f32>;             // (n_rows, dim)
@group(0) @binding(1) var<storage, read> rw_dy: array<f32>;            // (n_rows, dim)
@group(0) @binding(2) var<storage, read> rw_rstd: array<f32>;          // (n_rows,)
@group(0) @binding(3) var<storage, read_write> rw_part: array<f32>;    // (n_blocks, dim)
@group(0) @binding(4) var<uniform> rwp: Params;

// rms_norm_backward_dw_sum: partials in, dw out. Params.accumulate = 1 accumulates (dx +=, dw +=).
@group(0) @binding(0) var<storage, read> rs_part: array<f32>;          // (n_blocks, dim)
@group(0) @binding(1) var<storage, read_write> rs_dw: array<f32>;      // (dim,)
@group(0) @binding(2) var<uniform> rsp: Params;

const RMS_ROWS: u32 = 64u;

@compute @workgroup_size(WG)
fn rms_norm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= rbp.n_rows) {
        return; // the whole workgroup leaves together
    }
    let base = row * rbp.dim;
    var ss = 0.0;
    var dot = 0.0;
    for (var i = lid; i < rbp.dim; i += WG) {
        let v = rb_x[base + i];
        ss += v * v;
        dot += rb_dy[base + i] * rb_weight[i] * v;
    }
    let r = inverseSqrt(workgroup_sum(lid, ss) / f32(rbp.dim) + rbp.eps);
    let c = workgroup_sum(lid, dot) * r * r * r / f32(rbp.dim);
    for (var i = lid; i < rbp.dim; i += WG) {
        var g = r * rb_dy[base + i] * rb_weight[i] - rb_x[base + i] * c;
        if (rbp.accumulate != 0u) {
            g += rb_dx[base + i]; // the residual stream's gradient is already there
        }
        rb_dx[base + i] = g;
    }
    if (lid == 0u) {
        rb_rstd[row] = r;
    }
}

@compute @workgroup_size(256)
fn rms_norm_backward_dw_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let idx = linear_workgroup(wid, nwg) * 256u + lid;
    let n_blocks = (rwp.n_rows + RMS_ROWS - 1u) / RMS_ROWS;
    if (idx >= n_blocks * rwp.dim) {
        return;
    }
    let b = idx / rwp.dim;
    let i = idx % rwp.dim;
    let end = min(rwp.n_rows, (b + 1u) * RMS_ROWS);
    var acc = 0.0;
    for (var row = b * RMS_ROWS; row < end; row++) {
        acc += rw_dy[row * rwp.dim + i] * rw_x[row * rwp.dim + i] * rw_rstd[row];
    }
    rw_part[idx] = acc;
}

@compute @workgroup_size(256)
fn rms_norm_backward_dw_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= rsp.dim) {
        return;
    }
    let n_blocks = (rsp.n_rows + RMS_ROWS - 1u) / RMS_ROWS;
    var acc = 0.0;
    for (var b = 0u; b < n_blocks; b++) {
        acc += rs_part[b * rsp.dim + i];
    }
    if (rsp.accumulate != 0u) {
        acc += rs_dw[i];
    }
    rs_dw[i] = acc;
}
