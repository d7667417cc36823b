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
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let low = crumbs(wq[6u * s + 2u + 2u * (j / 4u) + i / 4u][i & 3u], 2u * (j % 4u));
    let high = bit_of_bytes(wq[6u * s + i / 4u][i & 3u], j);
    let d = unpack2x16float(ws[4u * s + 3u]).x;
    return d * q3_k_scale(s, 2u * j + i / 4u) * (low + 4.0 * high - vec4<f32>(4.0));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let sh = 2u * (j % 4u);
    let a = wq[6u * s + 2u + 2u * (j / 4u)];
    let c = wq[6u * s + 3u + 2u * (j / 4u)];
    let m = wq[6u * s];
    let n = wq[6u * s + 1u];
    let s0 = dot(crumbs(a.x, sh) + 4.0 * bit_of_bytes(m.x, j), x.v0) + dot(crumbs(a.y, sh) + 4.0 * bit_of_bytes(m.y, j), x.v1)
           + dot(crumbs(a.z, sh) + 4.0 * bit_of_bytes(m.z, j), x.v2) + dot(crumbs(a.w, sh) + 4.0 * bit_of_bytes(m.w, j), x.v3);
    let s1 = dot(crumbs(c.x, sh) + 4.0 * bit_of_bytes(n.x, j), x.v4) + dot(crumbs(c.y, sh) + 4.0 * bit_of_bytes(n.y, j), x.v5)
           + dot(crumbs(c.z, sh) + 4.0 * bit_of_bytes(n.z, j), x.v6) + dot(crumbs(c.w, sh) + 4.0 * bit_of_bytes(n.w, j), x.v7);
    let sum0 = dot(x.v0 + x.v1 + x.v2 + x.v3, vec4<f32>(1.0));
    let sum1 = dot(x.v4 + x.v5 + x.v6 + x.v7, vec4<f32>(1.0));
    let d = unpack2x16float(ws[4u * s + 3u]).x;
    return d * (q3_k_scale(s, 2u * j) * (s0 - 4.0 * sum0) + q3_k_scale(s, 2u * j + 1u) * (s1 - 4.0 * sum1));
}
