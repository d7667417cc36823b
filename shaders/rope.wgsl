// rope.wgsl: rotary position embedding, in place on (n_tokens, n_heads, head_dim).
// Token t sits at position pos0 + t. Dimension pair i (0 <= i < rot_dim/2) turns by
// angle = pos * theta^(-2i/rot_dim), the frequency computed exactly as Hugging Face does.
// Two pair conventions:
//   neox = 1: rotate-half, pairs (x[i], x[i + rot_dim/2])   (Hugging Face checkpoints)
//   neox = 0: adjacent pairs (x[2i], x[2i+1])                (GGUF llama: Q/K rows are permuted)
// rope_freqs reads pair i's inverse frequency from a table the host computes (every RoPE
// scaling is CPU code: llama3, linear, dynamic NTK, GGUF rope_freqs); rot_dim = 2 * its length,
// and dimensions past rot_dim stay as they are (partial rotary). amp scales cos and sin
// (Phi-3's longrope attention factor; 1 otherwise).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    rot_dim: u32,
    pos0: u32,
    neox: u32,
    theta: f32,
    amp: f32,    // multiplies cos and sin: longrope's attention factor, else 1
    per_token: u32, // rope_freqs: 1 = token t sits at pos0 + tok_meta[2t + 1] (a batch of sequences)
    two_tables: u32, // rope_freqs with per_token: inv_freqs holds two tables of rot_dim/2 (short, long)
    long_lo: u32,    // ... and slot s (tok_meta[2t]) reads the second where bit s of long_hi:long_lo is set
    long_hi: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;   // (n_tokens, n_heads, head_dim)
@group(0) @binding(1) var<uniform> p: Params;

// rope_freqs binds x above, then these.
@group(0) @binding(1) var<storage, read> inv_freqs: array<f32>;  // (rot_dim / 2,), or two of them (two_tables)
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;       // (n_tokens, 2) slot, position - pos0
@group(0) @binding(3) var<uniform> pf: Params;

const TWO_PI: f32 = 6.283185307179586;

// ---- backward ----
// The gradient of a rotation is the inverse rotation: the backward is this entry point with
// rope_sign = -1 (turning dL/dx back by each angle, in place).
override rope_sign: f32 = 1.0;

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.rot_dim / 2u;
    let idx = linear_workgroup(wid, nwg) * 256u + lid;
    if (idx >= p.n_tokens * p.n_heads * half) {
        return;
    }
    let i = idx % half;
    rotate_pair(p, idx, p.pos0 + idx / half / p.n_heads, 1.0 / pow(p.theta, f32(2u * i) / f32(p.rot_dim)));
}

@compute @workgroup_size(256)
fn rope_freqs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let half = pf.rot_dim / 2u;
    let idx = linear_workgroup(wid, nwg) * 256u + lid;
    if (idx >= pf.n_tokens * pf.n_heads * half) {
        return;
    }
    var pos = pf.pos0 + idx / half / pf.n_heads;
    var f = idx % half;
    if (pf.per_token != 0u) {
        let t = idx / half / pf.n_heads;
        pos = pf.pos0 + tok_meta[2u * t + 1u];
        // Longrope in a batch of sequences: each slot's own factors (short or long, by its
        // sequence's length), as transformers picks them per sequence.
        let slot = tok_meta[2u * t];
        let word = select(pf.long_hi >> ((slot - 32u) & 31u), pf.long_lo >> (slot & 31u), slot < 32u);
        if (pf.two_tables != 0u && slot < 64u && (word & 1u) != 0u) {
            f += half;
        }
    }
    rotate_pair(pf, idx, pos, inv_freqs[f]);
}

// (cos, sin) of the angle pos · inv_freq, times amp; the angle is first brought into [0, 2π),
// where f32 sin and cos are accurate.
fn cos_sin(pos: u32, inv_freq: f32, amp: f32) -> vec2<f32> {
    var angle = f32(pos) * inv_freq;
    angle -= TWO_PI * floor(angle / TWO_PI);
    return vec2<f32>(cos(angle), sin(angle)) * amp;
}

// The dimensions of pair i of a head whose first rot_dim = 2 · half dimensions turn: adjacent
// (2i, 2i + 1), or rotate-half (i, i + half) with neox.
fn pair_dims(i: u32, half: u32, neox: u32) -> vec2<u32> {
    if (neox != 0u) {
        return vec2<u32>(i, i + half);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}

// (x0, x1) turned by the angle whose (cos, sin) is cs.
fn turned(x0: f32, x1: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x0 * cs.x - x1 * cs.y, x1 * cs.x + x0 * cs.y);
}

// Turns pair idx % (rot_dim / 2) of row idx / (rot_dim / 2) (a (token, head)) by its angle at
// position pos.
fn rotate_pair(q: Params, idx: u32, pos: u32, inv_freq: f32) {
    let half = q.rot_dim / 2u;
    let th = idx / half;          // t * n_heads + h
    let cs = cos_sin(pos, inv_freq, q.amp) * vec2<f32>(1.0, rope_sign);
    let d = th * q.head_dim + pair_dims(idx % half, half, q.neox);
    let t = turned(x[d.x], x[d.y], cs);
    x[d.x] = t.x;
    x[d.y] = t.y;
}


// ---- norm_rope: per-head RMSNorm, then RoPE, of Q and K in one dispatch ----
// Qwen3 and Gemma 3 RMS-norm each head of Q and of K (q_norm, k_norm: a weight of head_dim)
// before turning them; this does both norms and both rotations (four dispatches otherwise).
// One workgroup per head row: Q's n_tokens · n_heads rows, then K's n_tokens · n_kv_heads.
// The row's sum of squares is taken first; each invocation then owns whole pairs (and past
// rot_dim, single dimensions), so every value is read and written by one invocation.
struct NormRopeParams {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    rot_dim: u32,
    pos0: u32,
    neox: u32,
    per_token: u32, // 1 = token t sits at pos0 + nr_meta[2t + 1] (a batch of sequences)
    amp: f32,       // multiplies cos and sin (1 but for longrope)
    eps: f32,
    w_offset: f32,  // added to both norms' weights (as norm.wgsl's rms_norm)
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> nr_q: array<f32>; // (n_tokens, n_heads, head_dim)
@group(0) @binding(1) var<storage, read_write> nr_k: array<f32>; // (n_tokens, n_kv_heads, head_dim)
@group(0) @binding(2) var<storage, read> nr_qw: array<f32>;      // (head_dim,) q_norm's weight
@group(0) @binding(3) var<storage, read> nr_kw: array<f32>;      // (head_dim,) k_norm's weight
@group(0) @binding(4) var<storage, read> nr_freqs: array<f32>;   // (rot_dim / 2,) inverse frequencies
@group(0) @binding(5) var<storage, read> nr_meta: array<u32>;    // (n_tokens, 2) slot, position - pos0
@group(0) @binding(6) var<uniform> pn: NormRopeParams;

const NR_WG: u32 = 64u;
var<workgroup> nr_part: array<f32, NR_WG>;

fn nr_x(is_q: bool, i: u32) -> f32 {
    if (is_q) {
        return nr_q[i];
    }
    return nr_k[i];
}

fn nr_set(is_q: bool, i: u32, v: f32) {
    if (is_q) {
        nr_q[i] = v;
    } else {
        nr_k[i] = v;
    }
}

// Value d of the row at `base`, normed by `inv`.
fn nr_normed(is_q: bool, base: u32, d: u32, inv: f32) -> f32 {
    var w = nr_kw[d];
    if (is_q) {
        w = nr_qw[d];
    }
    return nr_x(is_q, base + d) * inv * (w + pn.w_offset);
}

@compute @workgroup_size(NR_WG)
fn norm_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    let q_rows = pn.n_tokens * pn.n_heads;
    if (row >= q_rows + pn.n_tokens * pn.n_kv_heads) {
        return; // the whole workgroup leaves together
    }
    let is_q = row < q_rows;
    let r = select(row - q_rows, row, is_q); // the row within Q or K
    let t = r / select(pn.n_kv_heads, pn.n_heads, is_q);
    let base = r * pn.head_dim;
    var ss = 0.0;
    for (var d = lid; d < pn.head_dim; d += NR_WG) {
        let v = nr_x(is_q, base + d);
        ss += v * v;
    }
    nr_part[lid] = ss;
    workgroupBarrier();
    for (var s = NR_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            nr_part[lid] += nr_part[lid + s];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(nr_part[0] / f32(pn.head_dim) + pn.eps);
    var pos = pn.pos0 + t;
    if (pn.per_token != 0u) {
        pos = pn.pos0 + nr_meta[2u * t + 1u];
    }
    let half = pn.rot_dim / 2u;
    for (var i = lid; i < half; i += NR_WG) {
        let d = pair_dims(i, half, pn.neox);
        let t = turned(nr_normed(is_q, base, d.x, inv), nr_normed(is_q, base, d.y, inv), cos_sin(pos, nr_freqs[i], pn.amp));
        nr_set(is_q, base + d.x, t.x);
        nr_set(is_q, base + d.y, t.y);
    }
    for (var d = pn.rot_dim + lid; d < pn.head_dim; d += NR_WG) {
        nr_set(is_q, base + d, nr_normed(is_q, base, d, inv));
    }
}

// ---- context shift ----
// rope_shift: turns rows [row0, row0 + n_rows) of one slot's K cache (n_heads KV heads of
// cache_len rows of head_dim values, starting at element `base`) back by `delta` positions:
// pair i by -delta * inv_freqs[i], cos and sin unscaled, so a key written at position
// p + delta becomes the key of position p (RoPE's angles are linear in the position; every
// scaling whose table does not change with the sequence's length keeps that). The cache holds
// f32 values (f16 = 0) or two f16 per u32 word, the first in the low half (f16 = 1). One
// invocation per unit: a pair, or with f16 and rotate-half pairs two neighbouring pairs, whose
// four values fill two whole words (so no two invocations write one word).
struct ShiftParams {
    n_rows: u32,
    n_heads: u32,
    cache_len: u32,
    head_dim: u32,
    rot_dim: u32,
    neox: u32,
    f16: u32,
    base: u32,
    row0: u32,
    delta: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> cache_words: array<u32>;
@group(0) @binding(1) var<storage, read> shift_freqs: array<f32>;   // (rot_dim / 2,)
@group(0) @binding(2) var<uniform> ps: ShiftParams;

// Element e of row `row` (counted from the slot's first element).
fn shift_load(row: u32, e: u32) -> f32 {
    let at = ps.base + row * ps.head_dim + e;
    if (ps.f16 != 0u) {
        return unpack2x16float(cache_words[at / 2u])[at % 2u];
    }
    return bitcast<f32>(cache_words[at]);
}

fn shift_store2(row: u32, e0: u32, v0: f32, v1: f32) {
    // Elements e0 and e0 + 1: one word in f16, two in f32.
    let at = ps.base + row * ps.head_dim + e0;
    if (ps.f16 != 0u) {
        cache_words[at / 2u] = pack2x16float(vec2<f32>(v0, v1));
    } else {
        cache_words[at] = bitcast<u32>(v0);
        cache_words[at + 1u] = bitcast<u32>(v1);
    }
}

fn shift_store(row: u32, e: u32, v: f32) {
    cache_words[ps.base + row * ps.head_dim + e] = bitcast<u32>(v);
}

// (x0, x1) turned back by pair i's angle at `delta`.
fn turned_back(x0: f32, x1: f32, i: u32) -> vec2<f32> {
    return turned(x0, x1, cos_sin(ps.delta, shift_freqs[i], 1.0) * vec2<f32>(1.0, -1.0));
}

@compute @workgroup_size(256)
fn rope_shift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let half = ps.rot_dim / 2u;
    let paired = ps.f16 != 0u && ps.neox != 0u;
    let units = select(half, half / 2u, paired);
    let idx = linear_workgroup(wid, nwg) * 256u + lid;
    if (idx >= ps.n_heads * ps.n_rows * units) {
        return;
    }
    let u = idx % units;
    let r = idx / units;                        // head * n_rows + row - row0
    let row = (r / ps.n_rows) * ps.cache_len + ps.row0 + r % ps.n_rows;
    if (ps.neox == 0u) {
        let t = turned_back(shift_load(row, 2u * u), shift_load(row, 2u * u + 1u), u);
        shift_store2(row, 2u * u, t.x, t.y);
    } else if (!paired) {
        let t = turned_back(shift_load(row, u), shift_load(row, u + half), u);
        shift_store(row, u, t.x);
        shift_store(row, u + half, t.y);
    } else {
        let i = 2u * u;
        let a = turned_back(shift_load(row, i), shift_load(row, i + half), i);
        let b = turned_back(shift_load(row, i + 1u), shift_load(row, i + 1u + half), i + 1u);
        shift_store2(row, i, a.x, b.x);
        shift_store2(row, i + half, a.y, b.y);
    }
}
