// matmul.wgsl: linear layers y = x · Wᵀ (+ bias) (+ y when accumulating into a residual).
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

// ---- vec4 variants, for k % 4 == 0 (every real model): 16-byte loads, 4 FMAs per load ----
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;   // (t, k/4)
@group(0) @binding(1) var<storage, read> w4: array<vec4<f32>>;   // (n, k/4)

// matvec4: 32 rows per workgroup; 8 groups of 8 lanes, each group 4 rows. A lane reads one
// vec4 of x and the same vec4 position of its 4 rows per step, so a row's 8 lanes read 128
// contiguous bytes (coalesced) and every x load serves 4 rows.
const MV4_ROWS_PER_GROUP: u32 = 4u;
const MV4_ROWS: u32 = 32u;
var<workgroup> partial4: array<vec4<f32>, MV_WG>;

@compute @workgroup_size(MV_WG)
fn matvec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let blocks_per_token = (p.n + MV4_ROWS - 1u) / MV4_ROWS;
    let g = linear_workgroup(wid, nwg);
    let tok = g / blocks_per_token;
    let row0 = (g % blocks_per_token) * MV4_ROWS + (li / MV_LANES) * MV4_ROWS_PER_GROUP;
    let lane = li % MV_LANES;
    if (tok >= p.t) {
        return; // whole workgroup
    }
    let k4 = p.k / 4u;
    let xb = tok * k4;
    // Rows past the end read the last row (valid memory) and are not stored.
    let last = p.n - 1u;
    let w0 = min(row0, last) * k4;
    let w1 = min(row0 + 1u, last) * k4;
    let w2 = min(row0 + 2u, last) * k4;
    let w3 = min(row0 + 3u, last) * k4;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var i = lane; i < k4; i += MV_LANES) {
        let xv = x4[xb + i];
        a0 += xv * w4[w0 + i];
        a1 += xv * w4[w1 + i];
        a2 += xv * w4[w2 + i];
        a3 += xv * w4[w3 + i];
    }
    partial4[li] = vec4<f32>(a0.x + a0.y + a0.z + a0.w, a1.x + a1.y + a1.z + a1.w,
                             a2.x + a2.y + a2.z + a2.w, a3.x + a3.y + a3.z + a3.w);
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial4[li] += partial4[li + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        let sums = partial4[li];
        for (var j = 0u; j < MV4_ROWS_PER_GROUP; j++) {
            if (row0 + j < p.n) {
                store(tok, row0 + j, sums[j]);
            }
        }
    }
}

// matmul4: a 64 x 64 output tile per workgroup, 4 x 4 outputs per thread, k in steps of 16.
const T4: u32 = 64u;
var<workgroup> xs4: array<vec4<f32>, 256>;  // (64 rows, 4 vec4)
var<workgroup> ws4: array<vec4<f32>, 256>;  // (64 cols, 4 vec4)

@compute @workgroup_size(16, 16)
fn matmul4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * T4;
    let col0 = wid.x * T4;
    let k4 = p.k / 4u;
    var acc: array<vec4<f32>, 4>; // acc[i][j]: row lid.y*4+i, column lid.x*4+j
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    // Each thread stages one vec4 of x and one of w per k step.
    let lr = li / 4u;
    let lq = li % 4u;
    for (var q0 = 0u; q0 < k4; q0 += 4u) {
        let gq = q0 + lq;
        let xr = row0 + lr;
        let wr = col0 + lr;
        var xv = vec4<f32>(0.0);
        if (xr < p.t && gq < k4) {
            xv = x4[xr * k4 + gq];
        }
        var wv = vec4<f32>(0.0);
        if (wr < p.n && gq < k4) {
            wv = w4[wr * k4 + gq];
        }
        xs4[li] = xv;
        ws4[li] = wv;
        workgroupBarrier();
        for (var q = 0u; q < 4u; q++) {
            let a0 = xs4[(lid.y * 4u + 0u) * 4u + q];
            let a1 = xs4[(lid.y * 4u + 1u) * 4u + q];
            let a2 = xs4[(lid.y * 4u + 2u) * 4u + q];
            let a3 = xs4[(lid.y * 4u + 3u) * 4u + q];
            let b0 = ws4[(lid.x * 4u + 0u) * 4u + q];
            let b1 = ws4[(lid.x * 4u + 1u) * 4u + q];
            let b2 = ws4[(lid.x * 4u + 2u) * 4u + q];
            let b3 = ws4[(lid.x * 4u + 3u) * 4u + q];
            acc[0] += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
            acc[1] += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
            acc[2] += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
            acc[3] += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < p.t && col < p.n) {
                store(row, col, acc[i][j]);
            }
        }
    }
}
