// matmul.wgsl: f32 linear layers y = x · Wᵀ (+ bias) (+ y when accumulating into a residual)
// of any width, for rows that are not whole 32-weight units (tiny and test models; every
// real model's layers take quant.wgsl, whose f32 format reads the same storage).
// W is row-major [n, k] as PyTorch and GGUF store linear weights.
//   matmul: tiled matrix-matrix product for prefill (many tokens).
//   matvec: one token per workgroup row; each row of W is read once per token (decode).

struct Params {
    t: u32,          // tokens (rows of x)
    k: u32,          // input features
    n: u32,          // output features
    has_bias: u32,
    accumulate: u32, // 1: y += x·Wᵀ (residual add fused)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;          // (t, k)
@group(0) @binding(1) var<storage, read> w: array<f32>;          // (n, k)
@group(0) @binding(2) var<storage, read> bias: array<f32>;       // (n,) or a dummy when has_bias = 0
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (t, n)
@group(0) @binding(4) var<uniform> p: Params;

fn store(row: u32, col: u32, acc: f32) {
    var v = acc;
    if (p.has_bias != 0u) {
        v += bias[col];
    }
    let i = row * p.n + col;
    if (p.accumulate != 0u) {
        v += y[i];
    }
    y[i] = v;
}

// ---- tiled matrix-matrix: a 32 x 64 output tile per workgroup, 2 x 4 outputs per thread ----
const TM: u32 = 32u;
const TN: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> xs: array<f32, 512>;   // (TM, TK)
var<workgroup> ws: array<f32, 1024>;  // (TN, TK)

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = li; e < TM * TK; e += 256u) {
            let r = e / TK;
            let c = e % TK;
            let gr = row0 + r;
            let gc = k0 + c;
            xs[e] = select(0.0, x[gr * p.k + gc], gr < p.t && gc < p.k);
        }
        for (var e = li; e < TN * TK; e += 256u) {
            let r = e / TK;
            let c = e % TK;
            let gr = col0 + r;
            let gc = k0 + c;
            ws[e] = select(0.0, w[gr * p.k + gc], gr < p.n && gc < p.k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a0 = xs[(lid.y * 2u) * TK + kk];
            let a1 = xs[(lid.y * 2u + 1u) * TK + kk];
            for (var j = 0u; j < 4u; j++) {
                let b = ws[(lid.x + 16u * j) * TK + kk];
                acc[j] += a0 * b;
                acc[4u + j] += a1 * b;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        let row = row0 + lid.y * 2u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (row < p.t && col < p.n) {
                store(row, col, acc[i * 4u + j]);
            }
        }
    }
}

// ---- matrix-vector: 8 output rows per workgroup, 8 lanes per row ----
// Each lane reads every 8th element of its row, so a row's lanes read 8 neighbouring
// elements (with vec4: 128 contiguous bytes) per step; few lanes per row keep the work per
// invocation high, which matters as much on software rasterizers as on GPUs.
const MV_ROWS: u32 = 8u;
const MV_LANES: u32 = 8u;
const MV_WG: u32 = 64u;
var<workgroup> partial: array<f32, MV_WG>;

@compute @workgroup_size(MV_WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let blocks_per_token = (p.n + MV_ROWS - 1u) / MV_ROWS;
    let g = linear_workgroup(wid, nwg);
    let tok = g / blocks_per_token;
    let col = (g % blocks_per_token) * MV_ROWS + li / MV_LANES;
    let lane = li % MV_LANES;
    if (tok >= p.t) {
        return; // whole workgroup
    }
    var acc = 0.0;
    if (col < p.n) {
        let xb = tok * p.k;
        let wb = col * p.k;
        for (var i = lane; i < p.k; i += MV_LANES) {
            acc += x[xb + i] * w[wb + i];
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && col < p.n) {
        store(tok, col, partial[li]);
    }
}

// ---- backward ----
// Of y = x · Wᵀ, given dy = dL/dy (t, n_total):
//   linear_backward_dx: dx[t, k] (+)= sum over the chunk's rows j of dy[t, row0 + j] * w[j, k]
//                       (W may come in chunks of rows; the host accumulates chunk after chunk)
//   linear_backward_dw: dw[j, k] (+)= sum_t dy[t, j] * x[t, k]        (t summed in order)
// One thread per output; neighbouring threads take neighbouring k, so the reads of w, x and
// the outputs are contiguous and dy is a broadcast.

struct LinearBackParams {
    t: u32,
    k: u32,
    n: u32,          // rows of this chunk of W (dx) or of W (dw)
    n_total: u32,    // row stride of dy
    row0: u32,       // first row of the chunk within W (dx)
    accumulate: u32, // 1: add to the output (micro-batches, several chunks)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> lbx_dy: array<f32>;          // (t, n_total)
@group(0) @binding(1) var<storage, read> lbx_w: array<f32>;           // (n, k)
@group(0) @binding(2) var<storage, read_write> lbx_dx: array<f32>;    // (t, k)
@group(0) @binding(3) var<uniform> lbx: LinearBackParams;

@group(0) @binding(0) var<storage, read> lbw_dy: array<f32>;          // (t, n_total)
@group(0) @binding(1) var<storage, read> lbw_x: array<f32>;           // (t, k)
@group(0) @binding(2) var<storage, read_write> lbw_dw: array<f32>;    // (n, k)
@group(0) @binding(3) var<uniform> lbw: LinearBackParams;

@compute @workgroup_size(64)
fn linear_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 64u + lid;
    if (i >= lbx.t * lbx.k) {
        return;
    }
    let row = i / lbx.k;
    let col = i % lbx.k;
    var acc = 0.0;
    for (var j = 0u; j < lbx.n; j++) {
        acc += lbx_dy[row * lbx.n_total + lbx.row0 + j] * lbx_w[j * lbx.k + col];
    }
    if (lbx.accumulate != 0u) {
        acc += lbx_dx[i];
    }
    lbx_dx[i] = acc;
}

@compute @workgroup_size(64)
fn linear_backward_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 64u + lid;
    if (i >= lbw.n * lbw.k) {
        return;
    }
    let j = i / lbw.k;
    let col = i % lbw.k;
    var acc = 0.0;
    for (var r = 0u; r < lbw.t; r++) {
        acc += lbw_dy[r * lbw.n_total + j] * lbw_x[r * lbw.k + col];
    }
    if (lbw.accumulate != 0u) {
        acc += lbw_dw[i];
    }
    lbw_dw[i] = acc;
}
