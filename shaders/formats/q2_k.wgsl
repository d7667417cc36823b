// Q2_K (GGML): super-blocks of 256 weights, 16 groups of 16 each with a 4-bit scale and a 4-bit
// minimum; w = d * sc * q - dmin * m, q 2 bits. Repacked at load: in `ws`, 5 words per
// super-block: the 16 bytes of (scale low nibble, minimum high nibble) of groups 0..15, then
// f16 (d, dmin); in `wq`, the 64 bytes of quants as 4 vec4<u32>, as the file stores them.
// Unit j covers bits 2 (j % 4), +1 of bytes 32 (j / 4) .. + 31 (byte l: weight l of the unit);
// its groups are 2j (weights 0..15) and 2j + 1.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let q = byte_bits(wq[4u * s + 2u * (j / 4u) + i / 4u][i & 3u], 2u * (j % 4u), 3u);
    let g = 2u * j + i / 4u;
    let sm = byte_of(ws[5u * s + g / 4u], g % 4u);
    let dm = unpack2x16float(ws[5u * s + 4u]);
    return dm.x * f32(sm & 15u) * q - vec4<f32>(dm.y * f32(sm >> 4u));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let sh = 2u * (j % 4u);
    let a = wq[4u * s + 2u * (j / 4u)];
    let c = wq[4u * s + 2u * (j / 4u) + 1u];
    let s0 = dot(byte_bits(a.x, sh, 3u), x.v0) + dot(byte_bits(a.y, sh, 3u), x.v1)
           + dot(byte_bits(a.z, sh, 3u), x.v2) + dot(byte_bits(a.w, sh, 3u), x.v3);
    let s1 = dot(byte_bits(c.x, sh, 3u), x.v4) + dot(byte_bits(c.y, sh, 3u), x.v5)
           + dot(byte_bits(c.z, sh, 3u), x.v6) + dot(byte_bits(c.w, sh, 3u), x.v7);
    let xs = x_halves(x);
    // groups 2j and 2j + 1 are bytes 2 (j % 2) and 2 (j % 2) + 1 of word j / 2
    let w = ws[5u * s + j / 2u];
    let g0 = byte_of(w, 2u * (j % 2u));
    let g1 = byte_of(w, 2u * (j % 2u) + 1u);
    let dm = unpack2x16float(ws[5u * s + 4u]);
    return dm.x * (f32(g0 & 15u) * s0 + f32(g1 & 15u) * s1) - dm.y * (f32(g0 >> 4u) * xs.x + f32(g1 >> 4u) * xs.y);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
