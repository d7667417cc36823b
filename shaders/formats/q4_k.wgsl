// Q4_K (GGML): super-blocks of 256 weights = 8 units, each with a 6-bit scale and minimum;
// w = d * sc * q - dmin * m. Repacked at load: the 16-byte header (f16 d, f16 dmin, 12 bytes
// of packed scales) as 4 words per super-block in `ws`, the 128 bytes of nibbles as 8 vec4<u32>
// in `wq`. Unit j of a super-block is the low (j even) or high (j odd) nibbles of bytes
// 32 * (j / 2) .. + 31.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let w = wq[8u * s + 2u * (j / 2u) + i / 4u][i & 3u];
    let q = select(nib_lo(w), nib_hi(w), (j & 1u) == 1u);
    let sm = k_unit_scale(s, j);
    return sm.x * q - vec4<f32>(sm.y);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return unit_dot_deq4(row, u, x);
}
