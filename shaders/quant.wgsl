// quant.wgsl: linear layers and embedding lookups over weights in any storage format, dequantized
// in registers and always accumulated in f32. Prepended with one file of shaders/formats/, which
// defines how a format's blocks are read:
//   deq4(row, u, i) -> vec4<f32>: weights 32u + 4i .. 32u + 4i + 3 of `row` (i < 8)
//   unit_dot(row, u, xv) -> f32:  the dot product of weights 32u .. 32u + 31 of `row` with xv
// A "unit" is 32 consecutive weights of a row; word i of a unit pairs with xv.v[i].
// Rows are local to the chunk bound here (a tensor larger than one binding is split by rows);
// p.row0 is the chunk's first row in the whole tensor.
//
//   matvec: decode (a few tokens): 8 lanes per group of 4 rows, lanes stride over the units of
//           their rows (so a group reads contiguous memory), x read once per unit for 4 rows.
//   matmul: prefill: a (16 to 64 tokens) x 64 rows output tile per workgroup.
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
    mode: u32,     // 0 write, 1 accumulate, 2 split into y0 | y1 | y2, 3 SwiGLU / 4 GeGLU of row pairs
    split1: u32,   // mode 2: first row of y1
    split2: u32,   // mode 2: first row of y2
    has_bias: u32,
    id_offset: u32, // embed: first id of the tokens
    vocab: u32,     // embed
    scale: f32,     // embed: multiplies every value (Gemma's sqrt(dim)); 1 otherwise
}

@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;    // (t, k/4); embed: the ids
@group(0) @binding(1) var<storage, read> wq: array<vec4<u32>>;    // the format's quants
@group(0) @binding(2) var<storage, read> ws: array<u32>;          // the format's scales
@group(0) @binding(3) var<storage, read> bias: array<f32>;        // (n_total,) or a dummy
@group(0) @binding(4) var<storage, read_write> y0: array<f32>;
@group(0) @binding(5) var<storage, read_write> y1: array<f32>;
@group(0) @binding(6) var<storage, read_write> y2: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

// 32 values of x, and their sum (for formats with a per-block minimum).
struct X32 {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
    sum: f32,
}

fn load_x32(base: u32) -> X32 {
    var x: X32;
    x.v0 = x4[base]; x.v1 = x4[base + 1u]; x.v2 = x4[base + 2u]; x.v3 = x4[base + 3u];
    x.v4 = x4[base + 4u]; x.v5 = x4[base + 5u]; x.v6 = x4[base + 6u]; x.v7 = x4[base + 7u];
    x.sum = dot(x.v0 + x.v1 + x.v2 + x.v3 + x.v4 + x.v5 + x.v6 + x.v7, vec4<f32>(1.0));
    return x;
}

// The generic unit dot product, for formats without a faster one.
fn unit_dot_deq4(row: u32, u: u32, x: X32) -> f32 {
    return dot(deq4(row, u, 0u), x.v0) + dot(deq4(row, u, 1u), x.v1) + dot(deq4(row, u, 2u), x.v2)
         + dot(deq4(row, u, 3u), x.v3) + dot(deq4(row, u, 4u), x.v4) + dot(deq4(row, u, 5u), x.v5)
         + dot(deq4(row, u, 6u), x.v6) + dot(deq4(row, u, 7u), x.v7);
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
            y1[tok * (p.split2 - p.split1) + r - p.split1] = a;
        } else {
            y2[tok * (p.n_total - p.split2) + r - p.split2] = a;
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

// Stores 4 consecutive rows r..r+3 (r a multiple of 4) that exist when r + j < limit.
fn store4(tok: u32, r: u32, v: vec4<f32>, limit: u32) {
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

const MV_LANES: u32 = 8u;
const MV_ROWS: u32 = 32u; // per workgroup: 8 groups of 4 rows
var<workgroup> partial: array<vec4<f32>, 64>;

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
    // Rows past the end read the last row (valid memory) and are not stored.
    let last = p.n - 1u;
    let ra = min(r0, last);
    let rb = min(r0 + 1u, last);
    let rc = min(r0 + 2u, last);
    let rd = min(r0 + 3u, last);
    let units = p.k / 32u;
    let xb = tok * (p.k / 4u);
    var acc = vec4<f32>(0.0);
    for (var u = lane; u < units; u += MV_LANES) {
        let x = load_x32(xb + 8u * u);
        acc += vec4<f32>(unit_dot(ra, u, x), unit_dot(rb, u, x), unit_dot(rc, u, x), unit_dot(rd, u, x));
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        store4(tok, p.row0 + r0, partial[li], p.row0 + p.n);
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]); // never runs: keeps every binding in the pipeline's layout
    }
}

// Tokens per thread in a matmul tile (1 to 4): a tile is 16 * TOKENS_PER_THREAD tokens by 64 rows,
// so short prompts do not pay for a 64-token tile.
override TOKENS_PER_THREAD: u32 = 4u;
const T4: u32 = 64u;
var<workgroup> xs4: array<vec4<f32>, 256>;  // (up to 64 tokens, 4 vec4)
var<workgroup> ws4: array<vec4<f32>, 256>;  // (64 rows, 4 vec4)

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let tm = 16u * TOKENS_PER_THREAD;
    let tok0 = wid.y * tm;
    let row0 = wid.x * T4;
    let k4 = p.k / 4u;
    var acc: array<vec4<f32>, 4>; // acc[i][j]: token lid.y * TOKENS_PER_THREAD + i, row lid.x*4+j
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    // Each thread stages one vec4 of x and one dequantized vec4 of w per k step of 16.
    let lr = li / 4u;
    let lq = li % 4u;
    let xr = tok0 + lr;
    let wr = row0 + lr;
    for (var q0 = 0u; q0 < k4; q0 += 4u) {
        let gq = q0 + lq; // k4 is a multiple of 8, so gq < k4
        var xv = vec4<f32>(0.0);
        if (lr < tm && xr < p.t) {
            xv = x4[xr * k4 + gq];
        }
        var wv = vec4<f32>(0.0);
        if (wr < p.n) {
            wv = deq4(wr, gq / 8u, gq % 8u);
        }
        xs4[li] = xv;
        ws4[li] = wv;
        workgroupBarrier();
        for (var q = 0u; q < 4u; q++) {
            let b0 = ws4[(lid.x * 4u + 0u) * 4u + q];
            let b1 = ws4[(lid.x * 4u + 1u) * 4u + q];
            let b2 = ws4[(lid.x * 4u + 2u) * 4u + q];
            let b3 = ws4[(lid.x * 4u + 3u) * 4u + q];
            for (var i = 0u; i < TOKENS_PER_THREAD; i++) {
                let a = xs4[(lid.y * TOKENS_PER_THREAD + i) * 4u + q];
                acc[i] += vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TOKENS_PER_THREAD; i++) {
        let tok = tok0 + lid.y * TOKENS_PER_THREAD + i;
        if (tok < p.t) {
            store4(tok, p.row0 + row0 + lid.x * 4u, acc[i], p.row0 + p.n);
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
        y1[0] = 0.0;
        y2[0] = 0.0;
    }
}
