// Q8_0 (GGML): w = d * q, q an i8. Repacked at load into 2 vec4<u32> of quants per unit in
// `wq` and the f16 scales d, two per word, in `ws`.
// Each row's scales are padded to an even count, so rows start on whole words.
fn q8_0_scale(row: u32, u: u32) -> f32 {
    let i = row * ((p.k / 32u + 1u) & ~1u) + u;
    return unpack2x16float(ws[i / 2u])[i & 1u];
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let b = row * (p.k / 32u) + u;
    return q8_0_scale(row, u) * i8x4(wq[2u * b + i / 4u][i & 3u]);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let b = row * (p.k / 32u) + u;
    let a = wq[2u * b];
    let c = wq[2u * b + 1u];
    let s = dot(i8x4(a.x), x.v0) + dot(i8x4(a.y), x.v1) + dot(i8x4(a.z), x.v2) + dot(i8x4(a.w), x.v3)
          + dot(i8x4(c.x), x.v4) + dot(i8x4(c.y), x.v5) + dot(i8x4(c.z), x.v6) + dot(i8x4(c.w), x.v7);
    return q8_0_scale(row, u) * s;
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
