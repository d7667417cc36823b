// optim.wgsl: the optimizer step, elementwise over each parameter tensor.
//   sum_squares: part[offset + w] = sum of g² over workgroup w's 256 elements of one gradient
//   clip_scale:  one workgroup: norm = sqrt(sum(part) * s²) with s = grad_scale (1 / micro-
//                batches), clip[0] = s * min(1, max_norm / (norm + 1e-6)), clip[1] = norm
//   adamw:       PyTorch's AdamW on g = grad * clip[0] (decoupled weight decay, bias correction)
//   fill:        buf[i] = value (zeroes the gradients before the first micro-batch)
// The clip factor stays on the GPU, so a step needs no read-back but the loss.

struct Params {
    n: u32,
    offset: u32,      // sum_squares: first partial slot; clip_scale: partials to sum
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,         // 1 - beta1^step
    bc2: f32,         // 1 - beta2^step
    grad_scale: f32,
    max_norm: f32,    // clip_scale: <= 0 turns clipping off; fill: the value
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> sq_grad: array<f32>;          // (n,)
@group(0) @binding(1) var<storage, read_write> sq_part: array<f32>;    // (>= offset + ceil(n / 256),)
@group(0) @binding(2) var<uniform> sqp: Params;

@group(0) @binding(0) var<storage, read> cs_part: array<f32>;          // (offset,)
@group(0) @binding(1) var<storage, read_write> cs_clip: array<f32>;    // (2,)
@group(0) @binding(2) var<uniform> csp: Params;

@group(0) @binding(0) var<storage, read> grad: array<f32>;             // (n,)
@group(0) @binding(1) var<storage, read> clip: array<f32>;             // (2,) from clip_scale
@group(0) @binding(2) var<storage, read_write> param: array<f32>;      // (n,)
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;         // (n,) first moment
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;         // (n,) second moment
@group(0) @binding(5) var<uniform> p: Params;

@group(0) @binding(0) var<storage, read_write> fill_buf: array<f32>;   // (n,)
@group(0) @binding(1) var<uniform> fp: Params;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(WG)
fn sum_squares(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wid, nwg);
    let i = w * WG + lid;
    var v = 0.0;
    if (i < sqp.n) {
        v = sq_grad[i] * sq_grad[i];
    }
    let s = reduce_sum(lid, v);
    if (lid == 0u && w * WG < sqp.n) {
        sq_part[sqp.offset + w] = s;
    }
}

@compute @workgroup_size(WG)
fn clip_scale(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < csp.offset; i += WG) {
        s += cs_part[i];
    }
    s = reduce_sum(lid, s);
    if (lid == 0u) {
        let norm = sqrt(s) * csp.grad_scale;
        var c = 1.0;
        if (csp.max_norm > 0.0) {
            c = min(1.0, csp.max_norm / (norm + 1e-6));
        }
        cs_clip[0] = csp.grad_scale * c;
        cs_clip[1] = norm;
    }
}

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * clip[0];
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    // Decay first, from the old value, as torch.optim.AdamW does.
    let decayed = param[i] * (1.0 - p.lr * p.weight_decay);
    param[i] = decayed - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps);
}

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if (i < fp.n) {
        fill_buf[i] = fp.max_norm;
    }
}

// scale: buf[i] *= value (LoRA's alpha / r on the low-rank path), same bindings as fill.
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if (i < fp.n) {
        fill_buf[i] *= fp.max_norm;
    }
}
