// loss.wgsl: fused softmax + cross-entropy over rows of logits, and its gradient in place.
//   cross_entropy: for row r of a chunk (row0 + r of the batch), with target t = targets[row0 + r]:
//       loss[row0 + r] = logsumexp(logits[r, :]) - logits[r, t]
//       logits[r, :]  <- scale * (softmax(logits[r, :]) - onehot(t))      (dL/dlogits)
//     A target of IGNORE (0xffffffff, the loss mask) gives loss 0 and gradient 0. The logits of a
//     batch may be bound a chunk of rows at a time, so a vocabulary-sized tensor never has to fit
//     one binding; one workgroup per row.
//   loss_total: out[0] = scale * sum(loss[0..n]), one workgroup (so only one number comes back).

struct Params {
    n_rows: u32,   // rows in this chunk (cross_entropy) or losses to sum (loss_total)
    vocab: u32,
    row0: u32,     // first row of the chunk within targets and loss
    scale: f32,    // 1 / (unmasked rows of the batch): the mean over tokens
}

@group(0) @binding(0) var<storage, read> targets: array<u32>;       // (>= row0 + n_rows,)
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // (n_rows, vocab) in: logits, out: dlogits
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;    // (>= row0 + n_rows,)
@group(0) @binding(3) var<uniform> p: Params;

@group(0) @binding(0) var<storage, read> row_loss: array<f32>;      // (n_rows,)
@group(0) @binding(1) var<storage, read_write> total: array<f32>;   // (1,)
@group(0) @binding(2) var<uniform> pt: Params;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    return m;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = linear_workgroup(wid, nwg);
    if (r >= p.n_rows) {
        return; // the whole workgroup leaves together
    }
    let base = r * p.vocab;
    // The reductions run for masked rows too: barriers must not sit behind a branch on a value
    // loaded from memory. Out-of-range targets are refused on the host and masked here.
    let t = targets[p.row0 + r];
    let valid = t < p.vocab;
    var m = NEG_BIG;
    for (var i = lid; i < p.vocab; i += WG) {
        m = max(m, logits[base + i]);
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        s += exp(logits[base + i] - m);
    }
    s = reduce_sum(lid, s);
    let lse = m + log(s);
    var target_logit = 0.0;
    if (valid) {
        target_logit = logits[base + t];
    }
    workgroupBarrier(); // every thread has read the target's logit before it is overwritten
    for (var i = lid; i < p.vocab; i += WG) {
        var g = exp(logits[base + i] - lse);
        if (i == t) {
            g -= 1.0;
        }
        logits[base + i] = select(0.0, p.scale * g, valid);
    }
    if (lid == 0u) {
        loss[p.row0 + r] = select(0.0, lse - target_logit, valid);
    }
}

@compute @workgroup_size(WG)
fn loss_total(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < pt.n_rows; i += WG) {
        s += row_loss[i];
    }
    s = reduce_sum(lid, s);
    if (lid == 0u) {
        total[0] = pt.scale * s;
    }
}
