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
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let sh = 4u * (j & 1u);
    let a = wq[8u * s + 2u * (j / 2u)];
    let c = wq[8u * s + 2u * (j / 2u) + 1u];
    let q = dot(byte_bits(a.x, sh, 15u), x.v0) + dot(byte_bits(a.y, sh, 15u), x.v1)
          + dot(byte_bits(a.z, sh, 15u), x.v2) + dot(byte_bits(a.w, sh, 15u), x.v3)
          + dot(byte_bits(c.x, sh, 15u), x.v4) + dot(byte_bits(c.y, sh, 15u), x.v5)
          + dot(byte_bits(c.z, sh, 15u), x.v6) + dot(byte_bits(c.w, sh, 15u), x.v7);
    let sm = k_unit_scale(s, j);
    return sm.x * q - sm.y * x.sum;
}
fn unit_w(row: u32, u: u32) -> W32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let sh = 4u * (j & 1u);
    let a = wq[8u * s + 2u * (j / 2u)];
    let c = wq[8u * s + 2u * (j / 2u) + 1u];
    let sm = k_unit_scale(s, j); // once for the unit's 32 weights
    let m = vec4<f32>(sm.y);
    return W32(sm.x * byte_bits(a.x, sh, 15u) - m, sm.x * byte_bits(a.y, sh, 15u) - m,
               sm.x * byte_bits(a.z, sh, 15u) - m, sm.x * byte_bits(a.w, sh, 15u) - m,
               sm.x * byte_bits(c.x, sh, 15u) - m, sm.x * byte_bits(c.y, sh, 15u) - m,
               sm.x * byte_bits(c.z, sh, 15u) - m, sm.x * byte_bits(c.w, sh, 15u) - m);
}
