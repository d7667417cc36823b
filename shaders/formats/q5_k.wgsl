// Q5_K (GGML): as Q4_K with a fifth bit per weight: w = d * sc * (q + 16 h) - dmin * m.
// Repacked at load: the 16-byte header as 4 words per super-block in `ws`; in `wq`, 10 vec4<u32>
// per super-block: the 32 bytes of high bits (bit j of byte l: weight l of unit j), then the
// 128 bytes of nibbles laid out as in Q4_K.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let hw = wq[10u * s + i / 4u][i & 3u];
    let hi = vec4<f32>(vec4<u32>(hw >> j, hw >> (8u + j), hw >> (16u + j), hw >> (24u + j)) & vec4<u32>(1u));
    let w = wq[10u * s + 2u + 2u * (j / 2u) + i / 4u][i & 3u];
    let sm = k_unit_scale(s, j);
    return sm.x * (select(nib_lo(w), nib_hi(w), (j & 1u) == 1u) + 16.0 * hi) - vec4<f32>(sm.y);
}
// q + 16h of 4 weights: the nibbles at bit sh of ql's bytes, the fifth bits at bit j of qh's.
fn q5_k_quant4(ql: u32, qh: u32, sh: u32, j: u32) -> vec4<f32> {
    return byte_bits(ql, sh, 15u) + 16.0 * byte_bits(qh, j, 1u);
}
// The 32 quants q + 16 h of unit j of super-block s, as floats (unit_dot scales their dot
// product once; unit_w scales each).
fn q5_k_quants(s: u32, j: u32) -> W32 {
    let sh = 4u * (j & 1u);
    let h0 = wq[10u * s];
    let h1 = wq[10u * s + 1u];
    let a = wq[10u * s + 2u + 2u * (j / 2u)];
    let c = wq[10u * s + 3u + 2u * (j / 2u)];
    return W32(q5_k_quant4(a.x, h0.x, sh, j), q5_k_quant4(a.y, h0.y, sh, j), q5_k_quant4(a.z, h0.z, sh, j), q5_k_quant4(a.w, h0.w, sh, j),
               q5_k_quant4(c.x, h1.x, sh, j), q5_k_quant4(c.y, h1.y, sh, j), q5_k_quant4(c.z, h1.z, sh, j), q5_k_quant4(c.w, h1.w, sh, j));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let sm = k_unit_scale(s, u % 8u);
    return sm.x * dot_w(q5_k_quants(s, u % 8u), x) - sm.y * x.sum;
}
fn unit_w(row: u32, u: u32) -> W32 {
    let s = row * (p.k / 256u) + u / 8u;
    let q = q5_k_quants(s, u % 8u);
    let sm = k_unit_scale(s, u % 8u); // once for the unit's 32 weights
    let m = vec4<f32>(sm.y);
    return W32(sm.x * q.v0 - m, sm.x * q.v1 - m, sm.x * q.v2 - m, sm.x * q.v3 - m,
               sm.x * q.v4 - m, sm.x * q.v5 - m, sm.x * q.v6 - m, sm.x * q.v7 - m);
}
