// quant.wgsl: linear layers and embedding lookups over weights in any storage format, dequantized
// in registers and always accumulated in f32. Prepended with one file of shaders/formats/, which
// defines how a format's blocks are read:
//   deq4(row, u, i) -> vec4<f32>: weights 32u + 4i .. 32u + 4i + 3 of `row` (i < 8)
//   unit_dot(row, u, xv) -> f32:  the dot product of weights 32u .. 32u + 31 of `row` with xv
// A "unit" is 32 consecutive weights of a row; word i of a unit pairs with xv.v[i].
// Rows are local to the chunk bound here (a tensor larger than one binding is split by rows);
// p.row0 is the chunk's first row in the whole tensor.
//
//   matvec: decode (one token): MV_LANES lanes per group of 4 rows, lanes stride over the units
//           of their rows (so a group reads contiguous memory), x read once per unit for 4 rows.
//   matvec_multi: decode of 2 to 8 tokens: as matvec, each unit dequantized once for all tokens.
//   (quant_subgroup.wgsl, appended where the adapter has subgroups: matvec_sg, the same work
//   reduced by subgroupAdd.)
//   matvec_rows: decode of 1 to 8 tokens on CPU-type adapters: a pair of rows per invocation.
//   matmul_rows: prefill on CPU-type adapters: matvec_rows's shape over the tokens 8 at a time.
//   matmul_tiled: prefill on GPUs: tiles of 16 to 64 tokens by 64 (or 32) rows in shared memory.
//   embed:  out[t, :] = dequantized row ids[t] of the table, for ids inside this chunk.
//
// Results go through store(), which fuses what follows a projection: a bias, the residual add,
// the split of a fused Q/K/V projection into three tensors, or SwiGLU / GeGLU over interleaved
// gate/up rows.

struct Params {
    t: u32,        // tokens (rows of x)
    k: u32,        // input features (a multiple of 32)
    n: u32,        // rows of this chunk
    row0: u32,     // the chunk's first row in the whole tensor
    n_total: u32,  // rows of the whole tensor
    mode: u32,     // 0 write, 1 accumulate, 2 split into y0 | y1 | y2, 3 SwiGLU / 4 GeGLU of row pairs,
                   // 5 Q/K/V with RoPE into Q and the KV cache (store_rope_kv)
    split1: u32,   // mode 2: first row of y1
    split2: u32,   // mode 2: first row of y2
    has_bias: u32,
    id_offset: u32, // embed: first id of the tokens
    vocab: u32,     // embed
    scale: f32,     // embed: multiplies every value (Gemma's sqrt(dim)); 1 otherwise
    g_off: u32,     // NORM_IN: the norm weight's first index in `bias`
    eps: f32,       // NORM_IN
    head_dim: u32,  // mode 5
    rot_dim: u32,   // mode 5: dimensions of a head that turn (pairs 2i, 2i + 1 with 2i < rot_dim)
    f_off: u32,     // mode 5: the inverse frequencies' first index in `bias`
    kv_stride: u32, // mode 5: cache words from one KV head's rows to the next (cache_len * head_dim)
    kv_f16: u32,    // mode 5: the cache holds f16 pairs
    amp: f32,       // mode 5: multiplies cos and sin (1 but for longrope)
    tok: array<vec4<u32>, 4>, // mode 5: token t's (cache element of its position, position) in tok[t / 2].xy / .zw
}

@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;    // (t, k/4); embed: the ids
@group(0) @binding(1) var<storage, read> wq: array<vec4<u32>>;    // the format's quants
@group(0) @binding(2) var<storage, read> ws: array<u32>;          // the format's scales
@group(0) @binding(3) var<storage, read> bias: array<f32>;        // (n_total,), NORM_IN's weight, mode 5's inverse frequencies, or a dummy
@group(0) @binding(4) var<storage, read_write> y0: array<f32>;
@group(0) @binding(5) var<storage, read_write> y1: array<u32>;     // f32 bits; mode 5: the K cache
@group(0) @binding(6) var<storage, read_write> y2: array<u32>;     // f32 bits; mode 5: the V cache
@group(0) @binding(7) var<uniform> p: Params;

// 32 values of x, and their sum (for formats with a per-block minimum).
struct X32 {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
    sum: f32,
}

fn x32(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>, v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>) -> X32 {
    return X32(v0, v1, v2, v3, v4, v5, v6, v7, dot(v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7, vec4<f32>(1.0)));
}

// X_LANES (matvec_rows and matmul_rows on CPU-type adapters with subgroups of 8 or more; the
// host sets it in the module with quant_subgroup.wgsl): lavapipe turns every load whose address
// is not built from constants alone into a loop over the SIMD lanes, so a unit of x, the same
// 8 vec4s in every lane, cost 8 such loops. With X_LANES lane i loads vec4 i of the unit and
// subgroupBroadcast hands each to every lane (x_lanes): one loop. Call x_lanes_init first, with
// every invocation of the subgroup active, and x_lanes only in uniform control flow.
override X_LANES: bool = false;

fn load_x32(base: u32) -> X32 {
    if (X_LANES) {
        return x_lanes(base);
    }
    return load_x32_each(base);
}

fn load_x32_each(base: u32) -> X32 {
    return x32(x4[base], x4[base + 1u], x4[base + 2u], x4[base + 3u], x4[base + 4u], x4[base + 5u], x4[base + 6u], x4[base + 7u]);
}

// NORM_IN: the mat-vec kernels take the residual stream and RMS-norm it on the way in (the
// norm's dispatch folded into the projection): each unit of x is multiplied by the norm weight
// (bias[p.g_off ..]) as it is loaded, its squares are summed per token over the units a lane
// reads (then across the lanes of a row group), and each dot product is scaled by
// 1 / sqrt(mean(x²) + eps) at the end: W·(x ⊙ g ⊙ r) = r · W·(x ⊙ g).
override NORM_IN: bool = false;

// Unit `gi / 8` of one token's x (its first vec4 at x4[base]), normed on the way in: its
// squares are added to *ss.
fn load_xn(base: u32, gi: u32, ss: ptr<function, f32>) -> X32 {
    if (!NORM_IN) {
        return load_x32(base);
    }
    var x = load_x32(base);
    *ss += dot(x.v0, x.v0) + dot(x.v1, x.v1) + dot(x.v2, x.v2) + dot(x.v3, x.v3)
         + dot(x.v4, x.v4) + dot(x.v5, x.v5) + dot(x.v6, x.v6) + dot(x.v7, x.v7);
    let g = p.g_off + 4u * gi;
    x.v0 *= norm_w4(g); x.v1 *= norm_w4(g + 4u); x.v2 *= norm_w4(g + 8u); x.v3 *= norm_w4(g + 12u);
    x.v4 *= norm_w4(g + 16u); x.v5 *= norm_w4(g + 20u); x.v6 *= norm_w4(g + 24u); x.v7 *= norm_w4(g + 28u);
    x.sum = dot(x.v0 + x.v1 + x.v2 + x.v3 + x.v4 + x.v5 + x.v6 + x.v7, vec4<f32>(1.0));
    return x;
}

fn norm_w4(i: u32) -> vec4<f32> {
    return vec4<f32>(bias[i], bias[i + 1u], bias[i + 2u], bias[i + 3u]);
}

// What a token's dot products are multiplied by: its inverse RMS with NORM_IN, else 1.
fn norm_scale(ss: f32) -> f32 {
    if (NORM_IN) {
        return inverseSqrt(ss / f32(p.k) + p.eps);
    }
    return 1.0;
}

// The generic unit dot product, for formats without a faster one.
fn unit_dot_deq4(row: u32, u: u32, x: X32) -> f32 {
    return dot(deq4(row, u, 0u), x.v0) + dot(deq4(row, u, 1u), x.v1) + dot(deq4(row, u, 2u), x.v2)
         + dot(deq4(row, u, 3u), x.v3) + dot(deq4(row, u, 4u), x.v4) + dot(deq4(row, u, 5u), x.v5)
         + dot(deq4(row, u, 6u), x.v6) + dot(deq4(row, u, 7u), x.v7);
}

// 32 dequantized weights of a row (one unit), for the multi-token mat-vec, which decodes a
// unit once and uses it for every token. Formats define unit_w(row, u) -> W32: the generic
// unit_w_deq4 where deq4 is cheap, their own where a unit shares scales (the K-quants).
struct W32 {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
}

fn unit_w_deq4(row: u32, u: u32) -> W32 {
    return W32(deq4(row, u, 0u), deq4(row, u, 1u), deq4(row, u, 2u), deq4(row, u, 3u),
               deq4(row, u, 4u), deq4(row, u, 5u), deq4(row, u, 6u), deq4(row, u, 7u));
}

fn dot_w(w: W32, x: X32) -> f32 {
    return dot(w.v0, x.v0) + dot(w.v1, x.v1) + dot(w.v2, x.v2) + dot(w.v3, x.v3)
         + dot(w.v4, x.v4) + dot(w.v5, x.v5) + dot(w.v6, x.v6) + dot(w.v7, x.v7);
}

// Nibbles of the 4 bytes of w: low halves (bytes 0..3) and high halves.
fn nib_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(15u));
}
fn nib_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w >> 4u, w >> 12u, w >> 20u, w >> 28u) & vec4<u32>(15u));
}
// The 4 bytes of w as signed integers.
fn i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}
// Byte b of a little-endian array of u32 words.
fn byte_of(w: u32, b: u32) -> u32 {
    return (w >> (8u * b)) & 255u;
}

// Bits s .. s + 3 of h, one per lane (s + 3 < 32): Q5_0/Q5_1's fifth bits of 4 weights.
fn bits4(h: u32, s: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(s))) & vec4<u32>(1u));
}
// The bit field at bit s (s < 8) of each of the 4 bytes of w, masked by m: 2-bit quants (m = 3),
// nibbles (15) and high bits (1) of the K-quants, whose unit picks its field by a shift.
fn byte_bits(w: u32, s: u32, m: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) >> vec4<u32>(s)) & vec4<u32>(m));
}
// The sums of x over the first and the second 16 weights of a unit (K-quants with 16-weight groups).
fn x_halves(x: X32) -> vec2<f32> {
    return vec2<f32>(dot(x.v0 + x.v1 + x.v2 + x.v3, vec4<f32>(1.0)), dot(x.v4 + x.v5 + x.v6 + x.v7, vec4<f32>(1.0)));
}
// The sum over a unit of q * x for 5-bit quants q: nibbles in q (byte j: weight j low, j + 16
// high), fifth bits in h (bit i: weight i); Q5_0 and Q5_1.
fn q5_dot(q: vec4<u32>, h: u32, x: X32) -> f32 {
    return dot(nib_lo(q.x) + 16.0 * bits4(h, 0u), x.v0) + dot(nib_lo(q.y) + 16.0 * bits4(h, 4u), x.v1)
         + dot(nib_lo(q.z) + 16.0 * bits4(h, 8u), x.v2) + dot(nib_lo(q.w) + 16.0 * bits4(h, 12u), x.v3)
         + dot(nib_hi(q.x) + 16.0 * bits4(h, 16u), x.v4) + dot(nib_hi(q.y) + 16.0 * bits4(h, 20u), x.v5)
         + dot(nib_hi(q.z) + 16.0 * bits4(h, 24u), x.v6) + dot(nib_hi(q.w) + 16.0 * bits4(h, 28u), x.v7);
}
// IQ4_NL's (and IQ4_XS's) non-linear quant values (GGML's kvalues_iq4nl: -127, -104, -83, …, 113)
// as 16 i8 packed in 4 words, so a lookup is a vector select and a shift, in registers (an array
// indexed at run time would live in slower private memory).
const IQ4_VALUES = vec4<u32>(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);
fn iq4_value(q: u32) -> f32 {
    let w = IQ4_VALUES[q >> 2u];
    return f32(bitcast<i32>(w << (24u - 8u * (q & 3u))) >> 24u);
}
// The table values of the low (high = false) or high nibbles of the 4 bytes of w.
fn iq4x4(w: u32, high: bool) -> vec4<f32> {
    let q = (vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) >> vec4<u32>(select(0u, 4u, high))) & vec4<u32>(15u);
    return vec4<f32>(iq4_value(q.x), iq4_value(q.y), iq4_value(q.z), iq4_value(q.w));
}
// The sum over a unit of T[q] * x for IQ4 nibbles laid out as Q4_0's.
fn iq4_dot(q: vec4<u32>, x: X32) -> f32 {
    return dot(iq4x4(q.x, false), x.v0) + dot(iq4x4(q.y, false), x.v1) + dot(iq4x4(q.z, false), x.v2)
         + dot(iq4x4(q.w, false), x.v3) + dot(iq4x4(q.x, true), x.v4) + dot(iq4x4(q.y, true), x.v5)
         + dot(iq4x4(q.z, true), x.v6) + dot(iq4x4(q.w, true), x.v7);
}

// K-quants (Q4_K, Q5_K): super-block s's header is ws[4s] = f16 (d, dmin) and 12 bytes of packed
// 6-bit scales and minimums (GGML's get_scale_min_k4). Returns (d * scale, dmin * min) of unit j.
fn k_unit_scale(s: u32, j: u32) -> vec2<f32> {
    let h = 4u * s;
    let bj = byte_of(ws[h + 1u + j / 4u], j % 4u);
    let bj4 = byte_of(ws[h + 1u + (j + 4u) / 4u], (j + 4u) % 4u);
    var sm = vec2<f32>(f32(bj & 63u), f32(bj4 & 63u));
    if (j >= 4u) {
        let bjm4 = byte_of(ws[h + 1u + (j - 4u) / 4u], (j - 4u) % 4u);
        sm = vec2<f32>(f32((bj4 & 15u) | ((bjm4 >> 6u) << 4u)), f32((bj4 >> 4u) | ((bj >> 6u) << 4u)));
    }
    return unpack2x16float(ws[h]) * sm;
}

fn finish(r: u32, v: f32) -> f32 {
    var a = v;
    if (p.has_bias != 0u) {
        a += bias[r];
    }
    return a;
}

// Stores row r (of the whole tensor) of token tok.
fn store(tok: u32, r: u32, v: f32) {
    let a = finish(r, v);
    if (p.mode == 2u) {
        if (r < p.split1) {
            y0[tok * p.split1 + r] = a;
        } else if (r < p.split2) {
            y1[tok * (p.split2 - p.split1) + r - p.split1] = bitcast<u32>(a);
        } else {
            y2[tok * (p.n_total - p.split2) + r - p.split2] = bitcast<u32>(a);
        }
        return;
    }
    let i = tok * p.n_total + r;
    if (p.mode == 1u) {
        y0[i] += a;
    } else {
        y0[i] = a;
    }
}

// Stores an interleaved gate/up pair (rows r, r + 1, r even) as silu(gate) * up (mode 3) or
// gelu_tanh(gate) * up (mode 4, Gemma's GeGLU).
fn store_pair(tok: u32, r: u32, g: f32, u: f32) {
    let gate = finish(r, g);
    let up = finish(r + 1u, u);
    var act = gate / (1.0 + exp(-gate));
    if (p.mode == 4u) {
        act = gelu_tanh_of(gate);
    }
    y0[tok * (p.n_total / 2u) + r / 2u] = act * up;
}

// Mode 5, a fused Q/K/V projection straight into attention's inputs: rows [0, split1) are Q,
// [split1, split2) K, the rest V, each of heads of head_dim. Q and K turn by RoPE in adjacent
// pairs (2i, 2i + 1: GGUF llama's layout), at token tok's position and pair i's inverse
// frequency bias[p.f_off + i], as rope.wgsl's rotate_pair does; Q goes to y0 (tok, split1), K and
// V into the cache (y1, y2) at the token's position, as kv_write stores them (f32 bits or an f16
// pair per word). Rows r, r + 1 (r even) are one pair: head_dim and split1, split2 are even.
const TWO_PI: f32 = 6.283185307179586;

fn store_rope_kv(tok: u32, r: u32, a: f32, b: f32) {
    var x0 = finish(r, a);
    var x1 = finish(r + 1u, b);
    let tp = p.tok[tok / 2u];
    let elem = select(tp.z, tp.x, tok % 2u == 0u); // the token's (slot, position) row in the cache
    let pos = select(tp.w, tp.y, tok % 2u == 0u);
    let row = select(r - p.split1, r, r < p.split1); // within Q, K (or V, below)
    if (r < p.split2) {
        let d = row % p.head_dim;
        if (d < p.rot_dim) {
            var angle = f32(pos) * bias[p.f_off + d / 2u];
            angle -= TWO_PI * floor(angle / TWO_PI);
            let c = cos(angle) * p.amp;
            let s = sin(angle) * p.amp;
            let t0 = x0;
            x0 = t0 * c - x1 * s;
            x1 = x1 * c + t0 * s;
        }
        if (r < p.split1) {
            y0[tok * p.split1 + r] = x0;
            y0[tok * p.split1 + r + 1u] = x1;
            return;
        }
    }
    let kvr = select(row, r - p.split2, r >= p.split2);
    let c = elem + (kvr / p.head_dim) * p.kv_stride + kvr % p.head_dim;
    if (r < p.split2) {
        if (p.kv_f16 != 0u) {
            y1[c / 2u] = pack2x16float(vec2<f32>(x0, x1));
        } else {
            y1[c] = bitcast<u32>(x0);
            y1[c + 1u] = bitcast<u32>(x1);
        }
    } else {
        if (p.kv_f16 != 0u) {
            y2[c / 2u] = pack2x16float(vec2<f32>(x0, x1));
        } else {
            y2[c] = bitcast<u32>(x0);
            y2[c + 1u] = bitcast<u32>(x1);
        }
    }
}

// Stores 4 consecutive rows r..r+3 (r a multiple of 4) that exist when r + j < limit.
fn store4(tok: u32, r: u32, v: vec4<f32>, limit: u32) {
    if (p.mode == 5u) {
        if (r + 1u < limit) { store_rope_kv(tok, r, v.x, v.y); }
        if (r + 3u < limit) { store_rope_kv(tok, r + 2u, v.z, v.w); }
        return;
    }
    if (p.mode >= 3u) {
        // Chunks and tiles start at even rows, so pairs never straddle them.
        if (r + 1u < limit) { store_pair(tok, r, v.x, v.y); }
        if (r + 3u < limit) { store_pair(tok, r + 2u, v.z, v.w); }
        return;
    }
    if (r < limit) { store(tok, r, v.x); }
    if (r + 1u < limit) { store(tok, r + 1u, v.y); }
    if (r + 2u < limit) { store(tok, r + 2u, v.z); }
    if (r + 3u < limit) { store(tok, r + 3u, v.w); }
}

// Rows r0 .. r0 + 3 of the chunk, those past its end clamped to its last row (valid memory;
// their results are not stored).
fn rows4(r0: u32) -> vec4<u32> {
    return min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
}

// Lanes along K per group of 4 rows (8, 16, 32 or 64; ops::matmul::MatVecShape::Lanes): a
// workgroup of 64 takes 64 / MV_LANES groups, and the lanes' sums meet in a shared-memory tree.
override MV_LANES: u32 = 8u;
override MV_ROWS: u32 = 4u * (64u / MV_LANES); // per workgroup
var<workgroup> partial: array<vec4<f32>, 64>;
var<workgroup> partial_ss: array<f32, 64>; // NORM_IN: each lane's sum of squares of x

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let blocks_per_token = (p.n + MV_ROWS - 1u) / MV_ROWS;
    let g = linear_workgroup(wid, nwg);
    let tok = g / blocks_per_token;
    if (tok >= p.t) {
        return; // whole workgroup
    }
    let r0 = (g % blocks_per_token) * MV_ROWS + (li / MV_LANES) * 4u;
    let lane = li % MV_LANES;
    let r = rows4(r0);
    let units = p.k / 32u;
    let xb = tok * (p.k / 4u);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    for (var u = lane; u < units; u += MV_LANES) {
        let x = load_xn(xb + 8u * u, 8u * u, &ss);
        acc += vec4<f32>(unit_dot(r.x, u, x), unit_dot(r.y, u, x), unit_dot(r.z, u, x), unit_dot(r.w, u, x));
    }
    partial[li] = acc;
    if (NORM_IN) { partial_ss[li] = ss; }
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
            if (NORM_IN) { partial_ss[li] += partial_ss[li + s]; }
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        store4(tok, p.row0 + r0, partial[li] * norm_scale(partial_ss[li]), p.row0 + p.n);
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]); // never runs: keeps every binding in the pipeline's layout
    }
}

// matvec_multi: 2 to MV_TOKENS tokens (drafts, the server's decode steps), the shape of matvec
// with the loops turned around: a lane decodes each unit of its 4 rows once (unit_w) and takes
// its dot product with every token's x, so the weights are dequantized once per pass rather
// than once per token; each token's x is read from cache.
override MV_TOKENS: u32 = 8u; // the tokens (p.t), 1 to 8: a pipeline per count
var<workgroup> partial_t: array<vec4<f32>, 512>; // (token, thread)
var<workgroup> partial_ts: array<f32, 512>;      // NORM_IN: (token, thread) sums of squares of x

// A unit of 4 rows (dot_w4: its dot products with one token's x, one per row).
struct W4 { a: W32, b: W32, c: W32, d: W32 }

// Per token (up to 8): the dot products of 4 rows (c) and, with NORM_IN, the sum of squares of
// x (s). Fields, not an array: indexed only by constants they stay in registers (a private
// array indexed at run time lives in scratch memory on some drivers).
struct Acc8 {
    c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>,
    c4: vec4<f32>, c5: vec4<f32>, c6: vec4<f32>, c7: vec4<f32>,
    s0: f32, s1: f32, s2: f32, s3: f32, s4: f32, s5: f32, s6: f32, s7: f32,
}

// One token's part of a unit: the unit of x at x4[base] (its index gi among the row's vec4s),
// normed on the way in with NORM_IN, against the 4 rows' decoded unit w.
struct TokDot { c: vec4<f32>, s: f32 }
fn tok_dot(w: W4, base: u32, gi: u32) -> TokDot {
    var s = 0.0;
    let x = load_xn(base, gi, &s);
    return TokDot(dot_w4(w, x), s);
}

// a plus unit xb / 8 of 4 rows (w, decoded once) against each of the MV_TOKENS tokens' x (the
// tokens k4 vec4s apart). The per-token lines are written out under constant conditions,
// which fold away.
fn acc_unit(a: Acc8, w: W4, xb: u32, k4: u32) -> Acc8 {
    var b = a;
    var d = tok_dot(w, xb, xb); b.c0 += d.c; b.s0 += d.s;
    if (MV_TOKENS > 1u) { d = tok_dot(w, xb + k4, xb); b.c1 += d.c; b.s1 += d.s; }
    if (MV_TOKENS > 2u) { d = tok_dot(w, xb + 2u * k4, xb); b.c2 += d.c; b.s2 += d.s; }
    if (MV_TOKENS > 3u) { d = tok_dot(w, xb + 3u * k4, xb); b.c3 += d.c; b.s3 += d.s; }
    if (MV_TOKENS > 4u) { d = tok_dot(w, xb + 4u * k4, xb); b.c4 += d.c; b.s4 += d.s; }
    if (MV_TOKENS > 5u) { d = tok_dot(w, xb + 5u * k4, xb); b.c5 += d.c; b.s5 += d.s; }
    if (MV_TOKENS > 6u) { d = tok_dot(w, xb + 6u * k4, xb); b.c6 += d.c; b.s6 += d.s; }
    if (MV_TOKENS > 7u) { d = tok_dot(w, xb + 7u * k4, xb); b.c7 += d.c; b.s7 += d.s; }
    return b;
}

// Token i's dot products and sum of squares in a (i < 8).
fn acc_c(a: Acc8, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return a.c0; } case 1u: { return a.c1; } case 2u: { return a.c2; } case 3u: { return a.c3; }
        case 4u: { return a.c4; } case 5u: { return a.c5; } case 6u: { return a.c6; } default: { return a.c7; }
    }
}
fn acc_s(a: Acc8, i: u32) -> f32 {
    switch i {
        case 0u: { return a.s0; } case 1u: { return a.s1; } case 2u: { return a.s2; } case 3u: { return a.s3; }
        case 4u: { return a.s4; } case 5u: { return a.s5; } case 6u: { return a.s6; } default: { return a.s7; }
    }
}

@compute @workgroup_size(64)
fn matvec_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let g = linear_workgroup(wid, nwg);
    if (g * MV_ROWS >= p.n) {
        return; // whole workgroup: past the last row of a 2-D grid
    }
    let r0 = g * MV_ROWS + (li / MV_LANES) * 4u;
    let lane = li % MV_LANES;
    let r = rows4(r0);
    let units = p.k / 32u;
    let k4 = p.k / 4u;
    let nt = min(p.t, MV_TOKENS);
    var a = Acc8();
    for (var u = lane; u < units; u += MV_LANES) {
        a = acc_unit(a, W4(unit_w(r.x, u), unit_w(r.y, u), unit_w(r.z, u), unit_w(r.w, u)), 8u * u, k4);
    }
    partial_t[li] = a.c0; partial_t[64u + li] = a.c1; partial_t[128u + li] = a.c2; partial_t[192u + li] = a.c3;
    partial_t[256u + li] = a.c4; partial_t[320u + li] = a.c5; partial_t[384u + li] = a.c6; partial_t[448u + li] = a.c7;
    if (NORM_IN) {
        partial_ts[li] = a.s0; partial_ts[64u + li] = a.s1; partial_ts[128u + li] = a.s2; partial_ts[192u + li] = a.s3;
        partial_ts[256u + li] = a.s4; partial_ts[320u + li] = a.s5; partial_ts[384u + li] = a.s6; partial_ts[448u + li] = a.s7;
    }
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var i = 0u; i < nt; i++) {
                partial_t[i * 64u + li] += partial_t[i * 64u + li + s];
                if (NORM_IN) { partial_ts[i * 64u + li] += partial_ts[i * 64u + li + s]; }
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        for (var i = 0u; i < nt; i++) {
            store4(i, p.row0 + r0, partial_t[i * 64u + li] * norm_scale(partial_ts[i * 64u + li]), p.row0 + p.n);
        }
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]) + bias[0]; // never runs: keeps every binding in the pipeline's layout
    }
}

// matvec_rows: the shape for CPU-type adapters (lavapipe, SwiftShader), which run a
// workgroup's invocations as the SIMD lanes of one core, where a load is a gather of one
// value per lane. Each invocation takes 4 rows whole (two gate/up pairs when fused), so every
// x it loads serves 4 rows, nothing is reduced across lanes and no barrier is needed. With
// MV_TOKENS 1 a unit goes through unit_dot; with more it is dequantized once (unit_w) for
// every token. MV_TOKENS must be p.t: the per-token code below is written out under constant
// conditions, which fold away, and its accumulators are indexed only by constants, so they
// stay in registers (a private variable indexed at run time lives in scratch memory there).
const MR_ROWS: u32 = 256u; // rows per workgroup: 64 invocations of 4

// NORM_IN here: a gather per lane makes load_xn's weight loads cost as much as x's, and every
// invocation would norm the same x, so the workgroup norms x once into workgroup memory
// instead (k * t <= 4 * MR_XS, which the host checks): invocation i takes token i % t and every
// (64 / t)-th vec4 of its row, summing squares into ss_part; after one barrier the loop reads
// the normed x from there and each token's scale is the sum of its invocations' parts. With
// X_LANES nothing is staged (and k * t has no bound): lane i norms vec4 i of each unit as it
// loads it (xn_lanes: the unit's norm weights loaded once, for every token), adds its squares
// to the token's sum, and a subgroupAdd at the end totals each token's lanes.
const MR_XS: u32 = 960u;
var<workgroup> xs: array<vec4<f32>, 960>;
var<workgroup> ss_part: array<f32, 64>;

fn load_xr(base: u32, gw: vec4<f32>, ss: ptr<function, f32>) -> X32 {
    if (!NORM_IN) {
        return load_x32(base);
    }
    if (X_LANES) {
        return xn_lanes(base, gw, ss);
    }
    return x32(xs[base], xs[base + 1u], xs[base + 2u], xs[base + 3u], xs[base + 4u], xs[base + 5u], xs[base + 6u], xs[base + 7u]);
}

// Token i's inverse RMS with NORM_IN, else 1: with X_LANES from its lanes' sums of squares
// (`ss`, this lane's), else from the staged parts (invocations past 64 / t * t wrote 0).
fn token_scale(i: u32, ss: f32) -> f32 {
    if (!NORM_IN) {
        return 1.0;
    }
    var s = 0.0;
    if (X_LANES) {
        s = lanes_sum(ss);
    } else {
        for (var j = i; j < 64u; j += MV_TOKENS) {
            s += ss_part[j];
        }
    }
    return inverseSqrt(s / f32(p.k) + p.eps);
}

fn dot_w4(w: W4, x: X32) -> vec4<f32> {
    return vec4<f32>(dot_w(w.a, x), dot_w(w.b, x), dot_w(w.c, x), dot_w(w.d, x));
}

@compute @workgroup_size(64)
fn matvec_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let g = linear_workgroup(wid, nwg);
    if (g * MR_ROWS >= p.n) {
        return; // whole workgroup: past the last row of a 2-D grid
    }
    x_lanes_init();
    let r0 = g * MR_ROWS + 4u * li;
    let r = rows4(r0);
    let units = p.k / 32u;
    let k4 = p.k / 4u;
    // The 4 rows of each token.
    var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0); var c5 = vec4<f32>(0.0); var c6 = vec4<f32>(0.0); var c7 = vec4<f32>(0.0);
    var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0; var s4 = 0.0; var s5 = 0.0; var s6 = 0.0; var s7 = 0.0;
    if (NORM_IN && !X_LANES) {
        let slices = 64u / MV_TOKENS;
        let tk = li % MV_TOKENS;
        var ss = 0.0;
        if (li / MV_TOKENS < slices) {
            for (var j = li / MV_TOKENS; j < k4; j += slices) {
                let v = x4[tk * k4 + j];
                ss += dot(v, v);
                xs[tk * k4 + j] = v * norm_w4(p.g_off + 4u * j);
            }
        }
        ss_part[li] = ss;
        workgroupBarrier();
    }
    for (var u = 0u; u < units; u++) {
        let xb = 8u * u;
        let gw = lane_norm_w(xb);
        if (MV_TOKENS == 1u) {
            let x = load_xr(xb, gw, &s0);
            c0 += vec4<f32>(unit_dot(r.x, u, x), unit_dot(r.y, u, x), unit_dot(r.z, u, x), unit_dot(r.w, u, x));
        } else {
            let w = W4(unit_w(r.x, u), unit_w(r.y, u), unit_w(r.z, u), unit_w(r.w, u));
            c0 += dot_w4(w, load_xr(xb, gw, &s0));
            c1 += dot_w4(w, load_xr(xb + k4, gw, &s1));
            if (MV_TOKENS > 2u) { c2 += dot_w4(w, load_xr(xb + 2u * k4, gw, &s2)); }
            if (MV_TOKENS > 3u) { c3 += dot_w4(w, load_xr(xb + 3u * k4, gw, &s3)); }
            if (MV_TOKENS > 4u) { c4 += dot_w4(w, load_xr(xb + 4u * k4, gw, &s4)); }
            if (MV_TOKENS > 5u) { c5 += dot_w4(w, load_xr(xb + 5u * k4, gw, &s5)); }
            if (MV_TOKENS > 6u) { c6 += dot_w4(w, load_xr(xb + 6u * k4, gw, &s6)); }
            if (MV_TOKENS > 7u) { c7 += dot_w4(w, load_xr(xb + 7u * k4, gw, &s7)); }
        }
    }
    let limit = p.row0 + p.n;
    let rg = p.row0 + r0; // in the whole tensor
    store4(0u, rg, c0 * token_scale(0u, s0), limit);
    if (MV_TOKENS > 1u) { store4(1u, rg, c1 * token_scale(1u, s1), limit); }
    if (MV_TOKENS > 2u) { store4(2u, rg, c2 * token_scale(2u, s2), limit); }
    if (MV_TOKENS > 3u) { store4(3u, rg, c3 * token_scale(3u, s3), limit); }
    if (MV_TOKENS > 4u) { store4(4u, rg, c4 * token_scale(4u, s4), limit); }
    if (MV_TOKENS > 5u) { store4(5u, rg, c5 * token_scale(5u, s5), limit); }
    if (MV_TOKENS > 6u) { store4(6u, rg, c6 * token_scale(6u, s6), limit); }
    if (MV_TOKENS > 7u) { store4(7u, rg, c7 * token_scale(7u, s7), limit); }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]) + bias[0]; // never runs: keeps every binding in the pipeline's layout
    }
}

// matmul_rows: prefill (9+ tokens) on CPU-type adapters: matvec_rows's shape (4 whole rows per
// invocation, no shared memory, no barrier, x's address the same in every lane) over the tokens
// 8 at a time, each unit dequantized once per 8 tokens. On lavapipe it beats a shared-memory
// tile, whose barriers switch between all of a workgroup's invocations on one core. (A kernel of
// its own: folded into matvec_rows as a loop over token groups, lavapipe's compiler ran for more
// than 10 minutes and 1.9 GB on it.)
@compute @workgroup_size(64)
fn matmul_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let g = linear_workgroup(wid, nwg);
    if (g * MR_ROWS >= p.n) {
        return; // whole workgroup: past the last row of a 2-D grid
    }
    x_lanes_init();
    let r0 = g * MR_ROWS + 4u * li;
    let r = rows4(r0);
    let units = p.k / 32u;
    let k4 = p.k / 4u;
    let limit = p.row0 + p.n;
    let rg = p.row0 + r0; // in the whole tensor
    for (var t0 = 0u; t0 < p.t; t0 += 8u) {
        let nt = min(8u, p.t - t0);
        var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
        var c4 = vec4<f32>(0.0); var c5 = vec4<f32>(0.0); var c6 = vec4<f32>(0.0); var c7 = vec4<f32>(0.0);
        for (var u = 0u; u < units; u++) {
            let w = W4(unit_w(r.x, u), unit_w(r.y, u), unit_w(r.z, u), unit_w(r.w, u));
            let xb = t0 * k4 + 8u * u;
            c0 += dot_w4(w, load_x32(xb));
            if (nt > 1u) { c1 += dot_w4(w, load_x32(xb + k4)); }
            if (nt > 2u) { c2 += dot_w4(w, load_x32(xb + 2u * k4)); }
            if (nt > 3u) { c3 += dot_w4(w, load_x32(xb + 3u * k4)); }
            if (nt > 4u) { c4 += dot_w4(w, load_x32(xb + 4u * k4)); }
            if (nt > 5u) { c5 += dot_w4(w, load_x32(xb + 5u * k4)); }
            if (nt > 6u) { c6 += dot_w4(w, load_x32(xb + 6u * k4)); }
            if (nt > 7u) { c7 += dot_w4(w, load_x32(xb + 7u * k4)); }
        }
        store4(t0, rg, c0, limit);
        if (nt > 1u) { store4(t0 + 1u, rg, c1, limit); }
        if (nt > 2u) { store4(t0 + 2u, rg, c2, limit); }
        if (nt > 3u) { store4(t0 + 3u, rg, c3, limit); }
        if (nt > 4u) { store4(t0 + 4u, rg, c4, limit); }
        if (nt > 5u) { store4(t0 + 5u, rg, c5, limit); }
        if (nt > 6u) { store4(t0 + 6u, rg, c6, limit); }
        if (nt > 7u) { store4(t0 + 7u, rg, c7, limit); }
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]) + bias[0]; // never runs: keeps every binding in the pipeline's layout
    }
}

// Tokens per thread in a matmul_tiled tile (1 to 4): a tile is 16 * TOKENS_PER_THREAD tokens, so
// short prompts do not pay for a 64-token tile.
override TOKENS_PER_THREAD: u32 = 4u;

// matmul_tiled: prefill on GPUs (ops::matmul::QuantKernel::MatMulTiled). An output tile of
// 16 * TOKENS_PER_THREAD tokens by 16 * MT_RPT rows, each thread TOKENS_PER_THREAD tokens by
// MT_RPT rows, shaped for a GPU's shared memory and latency:
//   - a stage is one unit (32 weights) of every tile row: a thread stages vec4s sq and sq + 4 of
//     one row's unit and of one token's x, so each repacked word (the low and high halves of
//     vec4 sq of a Q4/Q5/IQ4_NL unit) is read and unpacked once, by one thread;
//   - the tiles are stored vec4-major, and tile row r at slot (r % MT_RPT) * 16 + r / MT_RPT, so
//     the 16 threads along x read 16 consecutive vec4s (no bank conflicts, where rows 256 bytes
//     apart would be a 16-way conflict), and x is one broadcast address per half-warp;
//   - the next stage's weights and x are loaded into registers before this stage's arithmetic
//     (register double buffering), so their latency hides behind it;
//   - MT_RPT = 2 halves the tile's rows where a layer has too few output tiles to fill the GPU
//     (ops::matmul::tiled_rows_per_thread).
override MT_RPT: u32 = 4u; // rows per thread: 4 (64-row tiles) or 2 (32-row tiles)
var<workgroup> mt_x: array<vec4<f32>, 512>; // [q][tile token], q < 8: vec4 q of the stage's unit
var<workgroup> mt_w: array<vec4<f32>, 512>; // [q][slot of a tile row]

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let tm = 16u * TOKENS_PER_THREAD;
    let tn = 16u * MT_RPT;
    let tok0 = wid.y * tm;
    let row0 = wid.x * tn;
    let units = p.k / 32u;
    let k4 = p.k / 4u;
    // acc[i][j]: token lid.y * TOKENS_PER_THREAD + i, row lid.x * MT_RPT + j (WGSL zeroes it).
    var acc: array<vec4<f32>, 4>;
    // What this thread stages: tile token / row sr, vec4s sq and sq + 4 of each unit.
    let sr = li / 4u;
    let sq = li % 4u;
    let xr = tok0 + sr;
    let wr = row0 + sr;
    let load_x = sr < tm && xr < p.t;
    let load_w = sr < tn && wr < p.n;
    let slot = (sr % MT_RPT) * 16u + sr / MT_RPT;
    var x_lo = vec4<f32>(0.0);
    var x_hi = vec4<f32>(0.0);
    var w_lo = vec4<f32>(0.0);
    var w_hi = vec4<f32>(0.0);
    if (load_x) {
        x_lo = x4[xr * k4 + sq];
        x_hi = x4[xr * k4 + sq + 4u];
    }
    if (load_w) {
        w_lo = deq4(wr, 0u, sq);
        w_hi = deq4(wr, 0u, sq + 4u);
    }
    for (var u = 0u; u < units; u++) {
        mt_x[sq * 64u + sr] = x_lo;
        mt_x[(sq + 4u) * 64u + sr] = x_hi;
        if (sr < tn) {
            mt_w[sq * 64u + slot] = w_lo;
            mt_w[(sq + 4u) * 64u + slot] = w_hi;
        }
        workgroupBarrier();
        // The next unit's loads, in flight during this unit's arithmetic.
        if (u + 1u < units) {
            if (load_x) {
                x_lo = x4[xr * k4 + 8u * (u + 1u) + sq];
                x_hi = x4[xr * k4 + 8u * (u + 1u) + sq + 4u];
            }
            if (load_w) {
                w_lo = deq4(wr, u + 1u, sq);
                w_hi = deq4(wr, u + 1u, sq + 4u);
            }
        }
        for (var q = 0u; q < 8u; q++) {
            let b0 = mt_w[q * 64u + lid.x];
            let b1 = mt_w[q * 64u + 16u + lid.x];
            var b2 = vec4<f32>(0.0);
            var b3 = vec4<f32>(0.0);
            if (MT_RPT == 4u) {
                b2 = mt_w[q * 64u + 32u + lid.x];
                b3 = mt_w[q * 64u + 48u + lid.x];
            }
            for (var i = 0u; i < TOKENS_PER_THREAD; i++) {
                let a = mt_x[q * 64u + lid.y * TOKENS_PER_THREAD + i];
                acc[i] += vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
            }
        }
        workgroupBarrier();
    }
    let r = p.row0 + row0 + lid.x * MT_RPT;
    let limit = min(p.row0 + p.n, r + MT_RPT);
    for (var i = 0u; i < TOKENS_PER_THREAD; i++) {
        let tok = tok0 + lid.y * TOKENS_PER_THREAD + i;
        if (tok < p.t) {
            store4(tok, r, acc[i], limit);
        }
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]) + bias[0]; // never runs: keeps every binding in the pipeline's layout
    }
}

// embed: one thread per 4 values of a token's row. x4 is unused here; the ids are in `ids`.
@group(0) @binding(0) var<storage, read> ids: array<u32>;

@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let k4 = p.k / 4u;
    let i = linear_workgroup(wid, nwg) * 64u + li;
    if (i >= p.t * k4) {
        return;
    }
    let t = i / k4;
    let q = i % k4;
    // Out-of-range ids are refused on the host; clamp so a bad id never reads out of bounds.
    let id = min(ids[p.id_offset + t], p.vocab - 1u);
    if (id < p.row0 || id >= p.row0 + p.n) {
        return; // another chunk's row
    }
    let v = deq4(id - p.row0, q / 8u, q % 8u) * p.scale;
    let o = t * p.k + 4u * q;
    y0[o] = v.x;
    y0[o + 1u] = v.y;
    y0[o + 2u] = v.z;
    y0[o + 3u] = v.w;
    if (p.mode == 255u) {
        // never runs: keeps every binding in the pipeline's layout
        y0[0] = f32(ws[0]) + bias[0];
        y1[0] = 0u;
        y2[0] = 0u;
    }
}
