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
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return unit_dot_deq4(row, u, x);
}
