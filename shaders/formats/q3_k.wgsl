// Q3_K (GGML): super-blocks of 256 weights, 16 groups of 16 each with a signed 6-bit scale;
// w = d * (sc - 32) * (q - 4 (1 - h)), q 2 bits, h a high bit. Repacked at load: in `wq`,
// 6 vec4<u32> per super-block as the file stores them: the 32 bytes of high bits (bit j of
// byte l: weight l of unit j), then the 64 bytes of 2-bit quants (unit j: bits 2 (j % 4), +1 of
// bytes 32 (j / 4) .. + 31); in `ws`, 4 words: the 12 bytes of packed scales, then f16 d.
// Unit j's groups are 2j (weights 0..15) and 2j + 1.
fn q3_k_scale(s: u32, g: u32) -> f32 {
    let lo = (byte_of(ws[4u * s + (g % 8u) / 4u], g % 4u) >> (4u * (g / 8u))) & 15u;
    let hi = (byte_of(ws[4u * s + 2u], g % 4u) >> (2u * (g / 4u))) & 3u;
    return f32(i32(lo | (hi << 4u)) - 32);
}
// q + 4h of 4 weights: the 2-bit quants at bit sh of ql's bytes, the high bits at bit j of hm's.
fn q3_k_quant4(ql: u32, hm: u32, sh: u32, j: u32) -> vec4<f32> {
    return byte_bits(ql, sh, 3u) + 4.0 * byte_bits(hm, j, 1u);
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let q = q3_k_quant4(wq[6u * s + 2u + 2u * (j / 4u) + i / 4u][i & 3u], wq[6u * s + i / 4u][i & 3u], 2u * (j % 4u), j);
    let d = unpack2x16float(ws[4u * s + 3u]).x;
    return d * q3_k_scale(s, 2u * j + i / 4u) * (q - vec4<f32>(4.0));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let sh = 2u * (j % 4u);
    let a = wq[6u * s + 2u + 2u * (j / 4u)];
    let c = wq[6u * s + 3u + 2u * (j / 4u)];
    let m = wq[6u * s];
    let n = wq[6u * s + 1u];
    let s0 = dot(q3_k_quant4(a.x, m.x, sh, j), x.v0) + dot(q3_k_quant4(a.y, m.y, sh, j), x.v1)
           + dot(q3_k_quant4(a.z, m.z, sh, j), x.v2) + dot(q3_k_quant4(a.w, m.w, sh, j), x.v3);
    let s1 = dot(q3_k_quant4(c.x, n.x, sh, j), x.v4) + dot(q3_k_quant4(c.y, n.y, sh, j), x.v5)
           + dot(q3_k_quant4(c.z, n.z, sh, j), x.v6) + dot(q3_k_quant4(c.w, n.w, sh, j), x.v7);
    let xs = x_halves(x);
    let d = unpack2x16float(ws[4u * s + 3u]).x;
    return d * (q3_k_scale(s, 2u * j) * (s0 - 4.0 * xs.x) + q3_k_scale(s, 2u * j + 1u) * (s1 - 4.0 * xs.y));
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
