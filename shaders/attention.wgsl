// attention.wgsl: causal scaled dot-product attention over the KV cache, and the cache write.
//
// KV cache of one layer: (n_slots, n_kv_heads, ctx_len, head_dim). A sequence is a slot, and
// several sequences share a forward pass (per_token, below). Token t of this call sits at position
// pos0 + t and attends to positions 0 ..= pos0 + t, or with a sliding window only to
// (pos0 + t - window, pos0 + t]. Position j lives at cache row j % ctx_len: a full cache never
// wraps, and a sliding-window layer's cache is a ring of window + tokens - 1 rows (the host
// checks), so its memory does not grow with the context. Query head h reads KV head
// h / (n_heads / n_kv_heads) (grouped-query attention). Scores are q·k * scale, then
// softcap * tanh(score / softcap) when softcap > 0 (Gemma 2).
//
// The cache holds u32 words: f32 bits, or with KV_F16 two f16 values per word (element i in
// word i / 2, the even one in the low half): half the memory, without the shader-f16 feature.

// Pipelines for an f16 cache set this (kv_write then runs one thread per pair of values; head_dim
// is even, so a pair never straddles two positions).
override KV_F16: bool = false;

struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    ctx_len: u32,
    pos0: u32,
    slot: u32,
    scale: f32,
    n_splits: u32,  // attention: key ranges per (token, head); > 1 writes partial results
    split_len: u32, // keys per range (a multiple of TILE)
    window: u32,    // 0: every earlier position; else the last `window` positions
    softcap: f32,   // 0: none
    per_token: u32, // 1: each token's slot and position come from the meta table (see below)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// A call that mixes sequences (per_token = 1) reads token t's slot and position from a table,
// meta (n_tokens, 2): slot tok_meta[2t] at position pos0 + tok_meta[2t + 1] (pos0 then counts decode
// steps of one command buffer). Each query sees only its own slot's keys; within a prefill
// chunk it is causal, since every K/V row of the call is written before attention runs.
// Otherwise token t sits at position pos0 + t of slot `slot` and the table is not read.

// ---- kv_write: copy this call's K and V rows into the cache ----
@group(0) @binding(0) var<storage, read> k_new: array<f32>;          // (n_tokens, n_kv_heads, head_dim)
@group(0) @binding(1) var<storage, read> v_new: array<f32>;          // (n_tokens, n_kv_heads, head_dim)
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;  // (n_slots, n_kv_heads, ctx_len, head_dim) f32 or f16 pairs
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;  // (n_slots, n_kv_heads, ctx_len, head_dim) f32 or f16 pairs
@group(0) @binding(4) var<storage, read> kv_meta: array<u32>;       // (n_tokens, 2) slot, position - pos0
@group(0) @binding(5) var<uniform> p: Params;

fn cache_index(slot: u32, kvh: u32, pos: u32, d: u32) -> u32 {
    return ((slot * p.n_kv_heads + kvh) * p.ctx_len + pos) * p.head_dim + d;
}

@compute @workgroup_size(256)
fn kv_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    var i = linear_workgroup(wid, nwg) * 256u + lid;
    if (KV_F16) {
        i *= 2u; // the first of this thread's pair
    }
    if (i >= p.n_tokens * p.n_kv_heads * p.head_dim) {
        return;
    }
    let d = i % p.head_dim;
    let kvh = (i / p.head_dim) % p.n_kv_heads;
    let t = i / (p.head_dim * p.n_kv_heads);
    var slot = p.slot;
    var pos = p.pos0 + t;
    if (p.per_token != 0u) {
        slot = kv_meta[2u * t];
        pos = p.pos0 + kv_meta[2u * t + 1u];
    }
    let c = cache_index(slot, kvh, pos % p.ctx_len, d);
    if (KV_F16) {
        k_cache[c / 2u] = pack2x16float(vec2<f32>(k_new[i], k_new[i + 1u]));
        v_cache[c / 2u] = pack2x16float(vec2<f32>(v_new[i], v_new[i + 1u]));
        return;
    }
    k_cache[c] = bitcast<u32>(k_new[i]);
    v_cache[c] = bitcast<u32>(v_new[i]);
}

// ---- attention: one workgroup per (token, head, key range), keys in tiles of 64 with online
// softmax. With one range the workgroup writes the output; with several (split-K, for a decode
// step over a long context, so that enough workgroups run) each writes its running max, sum
// and unnormalised output into `part`, and attention_combine merges them.
@group(0) @binding(0) var<storage, read> q: array<f32>;              // (n_tokens, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> k_all: array<u32>;          // cache, as above
@group(0) @binding(2) var<storage, read> v_all: array<u32>;          // cache, as above
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // (n_tokens, n_heads, head_dim)
@group(0) @binding(4) var<storage, read_write> part: array<f32>;     // (n_tokens, n_heads, n_splits, head_dim + 2)
@group(0) @binding(5) var<storage, read> tok_meta: array<u32>;          // (n_tokens, 2) slot, position - pos0
@group(0) @binding(6) var<uniform> pa: Params;

const TILE: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, TILE>;
var<workgroup> red: array<f32, TILE>;
var<workgroup> rows: array<u32, TILE>; // cache offset of each key of the tile

// Element i of the K or V cache.
fn k_at(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(k_all[i / 2u])[i % 2u];
    }
    return bitcast<f32>(k_all[i]);
}
fn v_at(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(v_all[i / 2u])[i % 2u];
    }
    return bitcast<f32>(v_all[i]);
}

// Offset of position pos's row in the cache (a ring when the window is shorter than the context).
fn kv_row(slot: u32, kvh: u32, pos: u32) -> u32 {
    return ((slot * pa.n_kv_heads + kvh) * pa.ctx_len + pos % pa.ctx_len) * pa.head_dim;
}


@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let gs = linear_workgroup(wid, nwg);
    if (gs >= pa.n_tokens * pa.n_heads * pa.n_splits) {
        return; // whole workgroup
    }
    let g = gs / pa.n_splits;  // (token, head)
    let sp = gs % pa.n_splits;
    let t = g / pa.n_heads;
    let h = g % pa.n_heads;
    let kvh = h / (pa.n_heads / pa.n_kv_heads);
    let hd = pa.head_dim;
    let qbase = g * hd;
    for (var d = lid; d < hd; d += TILE) {
        qs[d] = q[qbase + d] * pa.scale;
    }
    workgroupBarrier();

    var slot = pa.slot;
    var pos = pa.pos0 + t;
    if (pa.per_token != 0u) {
        slot = tok_meta[2u * t];
        pos = pa.pos0 + tok_meta[2u * t + 1u];
    }
    var first = 0u; // the first key this query sees
    if (pa.window > 0u && pos + 1u > pa.window) {
        first = pos + 1u - pa.window;
    }
    let kv_end = min(pos + 1u, first + (sp + 1u) * pa.split_len);
    var m = NEG_BIG;       // running max (same in every thread)
    var l = 0.0;           // running sum of exp
    var acc: array<f32, 4>; // output dims lid, lid+64, lid+128, lid+192
    for (var j = 0u; j < 4u; j++) {
        acc[j] = 0.0;
    }
    for (var tile = first + sp * pa.split_len; tile < kv_end; tile += TILE) {
        let key = tile + lid;
        var s = NEG_BIG;
        if (key < kv_end) {
            let kb = kv_row(slot, kvh, key);
            rows[lid] = kb;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot += qs[d] * k_at(kb + d);
            }
            s = dot;
            if (pa.softcap > 0.0) {
                s = pa.softcap * tanh_stable(dot / pa.softcap);
            }
        }
        red[lid] = s;
        workgroupBarrier();
        for (var st = TILE / 2u; st > 0u; st >>= 1u) {
            if (lid < st) {
                red[lid] = max(red[lid], red[lid + st]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        workgroupBarrier();
        var e = 0.0;
        if (key < kv_end) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        red[lid] = e;
        workgroupBarrier();
        for (var st = TILE / 2u; st > 0u; st >>= 1u) {
            if (lid < st) {
                red[lid] += red[lid + st];
            }
            workgroupBarrier();
        }
        let corr = exp(m - m_new);
        l = l * corr + red[0];
        m = m_new;
        let n_keys = min(TILE, kv_end - tile);
        for (var j = 0u; j < 4u; j++) {
            let d = lid + j * TILE;
            if (d < hd) {
                var a = acc[j] * corr;
                for (var kk = 0u; kk < n_keys; kk++) {
                    a += probs[kk] * v_at(rows[kk] + d);
                }
                acc[j] = a;
            }
        }
        workgroupBarrier();
    }
    if (pa.n_splits == 1u) {
        for (var j = 0u; j < 4u; j++) {
            let d = lid + j * TILE;
            if (d < hd) {
                out[qbase + d] = acc[j] / l;
            }
        }
        return;
    }
    let pbase = gs * (hd + 2u);
    for (var j = 0u; j < 4u; j++) {
        let d = lid + j * TILE;
        if (d < hd) {
            part[pbase + 2u + d] = acc[j];
        }
    }
    if (lid == 0u) {
        part[pbase] = m;      // NEG_BIG with l = 0 for a range past the last key
        part[pbase + 1u] = l;
    }
}

// attention_combine: one workgroup per (token, head), one thread per output dimension.
@compute @workgroup_size(64)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let g = linear_workgroup(wid, nwg);
    if (g >= pa.n_tokens * pa.n_heads) {
        return;
    }
    let hd = pa.head_dim;
    var mx = NEG_BIG;
    for (var sp = 0u; sp < pa.n_splits; sp++) {
        mx = max(mx, part[(g * pa.n_splits + sp) * (hd + 2u)]);
    }
    for (var d = lid; d < hd; d += 64u) {
        var num = 0.0;
        var den = 0.0;
        for (var sp = 0u; sp < pa.n_splits; sp++) {
            let b = (g * pa.n_splits + sp) * (hd + 2u);
            let w = exp(part[b] - mx);
            num += w * part[b + 2u + d];
            den += w * part[b + 1u];
        }
        out[g * hd + d] = num / den;
    }
    if (pa.n_splits == 0u) {
        out[0] = q[0] + k_at(0u) + v_at(0u) + f32(tok_meta[0]); // never runs: keeps every binding in the layout
    }
}

// ---- backward ----
// Of causal attention over batches of whole sequences laid out token-major, q, dout: (T, H, D),
// k, v: (T, H_kv, D), T = n_seq * seq_len, head h reading kv head h / (H / H_kv). The
// probabilities P[t, j] = softmax_j(scale q_t · k_j) are recomputed, not stored: the memory is
// 2 floats per (token, head) (log-sum-exp and delta = sum_j P dP) instead of T² per head.
//   attention_backward_dq:  one workgroup per (t, h): stats[t, h] = (lse, delta), and
//                           dq_t = scale * sum_j P[t, j] (dP[t, j] - delta) k_j, dP = dout_t · v_j
//   attention_backward_dkv: one workgroup per (j, kv head), over the group's heads and the
//                           queries t >= j of j's sequence: dv_j = sum P dout_t,
//                           dk_j = scale * sum P (dP - delta) q_t. Sums run in a fixed order.

struct AttnBackParams {
    n_tokens: u32,
    seq_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> ab_q: array<f32>;            // (T, H, D)
@group(0) @binding(1) var<storage, read> ab_k: array<f32>;            // (T, H_kv, D)
@group(0) @binding(2) var<storage, read> ab_v: array<f32>;            // (T, H_kv, D)
@group(0) @binding(3) var<storage, read> ab_dout: array<f32>;         // (T, H, D)
@group(0) @binding(4) var<storage, read_write> ab_dq: array<f32>;     // (T, H, D)
@group(0) @binding(5) var<storage, read_write> ab_stats_out: array<f32>; // (T, H, 2)
@group(0) @binding(6) var<uniform> abq: AttnBackParams;

@group(0) @binding(4) var<storage, read> ab_stats: array<f32>;        // (T, H, 2)
@group(0) @binding(5) var<storage, read_write> ab_dk: array<f32>;     // (T, H_kv, D)
@group(0) @binding(6) var<storage, read_write> ab_dv: array<f32>;     // (T, H_kv, D)
@group(0) @binding(7) var<uniform> abk: AttnBackParams;

const AB_WG: u32 = 64u;
const AB_PER: u32 = 4u;   // head elements per thread: head_dim <= AB_WG * AB_PER = 256
var<workgroup> ab_a: array<f32, 256>;   // q_t (dq) or k_j (dkv)
var<workgroup> ab_b: array<f32, 256>;   // dout_t (dq) or v_j (dkv)
var<workgroup> ab_red: array<f32, AB_WG>;
var<workgroup> ab_p: array<f32, AB_WG>;
var<workgroup> ab_ds: array<f32, AB_WG>;

// Shared row a (q_t or k_j) dotted with a row of k (kv_rows) or of q.
fn ab_dot_a(base: u32, d: u32, kv_rows: bool) -> f32 {
    var s = 0.0;
    if (kv_rows) {
        for (var i = 0u; i < d; i++) {
            s += ab_a[i] * ab_k[base + i];
        }
    } else {
        for (var i = 0u; i < d; i++) {
            s += ab_a[i] * ab_q[base + i];
        }
    }
    return s;
}

// Shared row b (dout_t or v_j) dotted with a row of v (kv_rows) or of dout.
fn ab_dot_b(base: u32, d: u32, kv_rows: bool) -> f32 {
    var s = 0.0;
    if (kv_rows) {
        for (var i = 0u; i < d; i++) {
            s += ab_b[i] * ab_v[base + i];
        }
    } else {
        for (var i = 0u; i < d; i++) {
            s += ab_b[i] * ab_dout[base + i];
        }
    }
    return s;
}

fn ab_reduce(lid: u32, v: f32, take_max: bool) -> f32 {
    ab_red[lid] = v;
    workgroupBarrier();
    for (var s = AB_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            ab_red[lid] = select(ab_red[lid] + ab_red[lid + s], max(ab_red[lid], ab_red[lid + s]), take_max);
        }
        workgroupBarrier();
    }
    let r = ab_red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(AB_WG)
fn attention_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let th = linear_workgroup(wid, nwg);
    if (th >= abq.n_tokens * abq.n_heads) {
        return; // the whole workgroup leaves together
    }
    let d = abq.head_dim;
    let t = th / abq.n_heads;
    let kvh = (th % abq.n_heads) / (abq.n_heads / abq.n_kv_heads);
    for (var i = lid; i < d; i += AB_WG) {
        ab_a[i] = ab_q[th * d + i];
        ab_b[i] = ab_dout[th * d + i];
    }
    workgroupBarrier();
    let j0 = t - t % abq.seq_len;
    // Pass 1, online per thread: running max m, z = sum e^(s - m), w = sum e^(s - m) dP.
    var m = NEG_BIG;
    var z = 0.0;
    var w = 0.0;
    for (var j = j0 + lid; j <= t; j += AB_WG) {
        let kv = (j * abq.n_kv_heads + kvh) * d;
        let s = abq.scale * ab_dot_a(kv, d, true);
        let dp = ab_dot_b(kv, d, true);
        let m_new = max(m, s);
        let c = exp(m - m_new);
        let e = exp(s - m_new);
        z = z * c + e;
        w = w * c + e * dp;
        m = m_new;
    }
    let big_m = ab_reduce(lid, m, true);
    let c = exp(m - big_m);
    let big_z = ab_reduce(lid, z * c, false);
    let lse = big_m + log(big_z);
    let delta = ab_reduce(lid, w * c, false) / big_z;
    if (lid == 0u) {
        ab_stats_out[2u * th] = lse;
        ab_stats_out[2u * th + 1u] = delta;
    }
    // Pass 2, 64 keys at a time: each thread one key's dS, then each thread its head elements.
    var acc = array<f32, AB_PER>(0.0, 0.0, 0.0, 0.0);
    for (var jb = j0; jb <= t; jb += AB_WG) {
        let j = jb + lid;
        var ds = 0.0;
        if (j <= t) {
            let kv = (j * abq.n_kv_heads + kvh) * d;
            let p = exp(abq.scale * ab_dot_a(kv, d, true) - lse);
            ds = p * (ab_dot_b(kv, d, true) - delta);
        }
        ab_ds[lid] = ds;
        workgroupBarrier();
        let n = min(AB_WG, t + 1u - jb);
        for (var c2 = 0u; c2 < n; c2++) {
            let kv = ((jb + c2) * abq.n_kv_heads + kvh) * d;
            for (var e = 0u; e < AB_PER; e++) {
                let i = lid + e * AB_WG;
                if (i < d) {
                    acc[e] += ab_ds[c2] * ab_k[kv + i];
                }
            }
        }
        workgroupBarrier();
    }
    for (var e = 0u; e < AB_PER; e++) {
        let i = lid + e * AB_WG;
        if (i < d) {
            ab_dq[th * d + i] = abq.scale * acc[e];
        }
    }
}

@compute @workgroup_size(AB_WG)
fn attention_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let jk = linear_workgroup(wid, nwg);
    if (jk >= abk.n_tokens * abk.n_kv_heads) {
        return; // the whole workgroup leaves together
    }
    let d = abk.head_dim;
    let j = jk / abk.n_kv_heads;
    let kvh = jk % abk.n_kv_heads;
    let group = abk.n_heads / abk.n_kv_heads;
    for (var i = lid; i < d; i += AB_WG) {
        ab_a[i] = ab_k[jk * d + i];
        ab_b[i] = ab_v[jk * d + i];
    }
    workgroupBarrier();
    let end = min(abk.n_tokens, j - j % abk.seq_len + abk.seq_len);
    var dk = array<f32, AB_PER>(0.0, 0.0, 0.0, 0.0);
    var dv = array<f32, AB_PER>(0.0, 0.0, 0.0, 0.0);
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var tb = j; tb < end; tb += AB_WG) {
            let t = tb + lid;
            var p = 0.0;
            var ds = 0.0;
            if (t < end) {
                let th = t * abk.n_heads + h;
                p = exp(abk.scale * ab_dot_a(th * d, d, false) - ab_stats[2u * th]);
                ds = p * (ab_dot_b(th * d, d, false) - ab_stats[2u * th + 1u]);
            }
            ab_p[lid] = p;
            ab_ds[lid] = ds;
            workgroupBarrier();
            let n = min(AB_WG, end - tb);
            for (var c = 0u; c < n; c++) {
                let row = ((tb + c) * abk.n_heads + h) * d;
                for (var e = 0u; e < AB_PER; e++) {
                    let i = lid + e * AB_WG;
                    if (i < d) {
                        dv[e] += ab_p[c] * ab_dout[row + i];
                        dk[e] += ab_ds[c] * ab_q[row + i];
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var e = 0u; e < AB_PER; e++) {
        let i = lid + e * AB_WG;
        if (i < d) {
            ab_dk[jk * d + i] = abk.scale * dk[e];
            ab_dv[jk * d + i] = dv[e];
        }
    }
}
