// Q4_0 (GGML): w = d * (q - 8), q a nibble; byte j holds weight j (low) and j + 16 (high).
// Repacked at load into one vec4<u32> of nibbles per unit in `wq` and the f16 scales d, two
// per word, in `ws`.
// Each row's scales are padded to an even count, so rows start on whole words.
fn q4_0_scale(row: u32, u: u32) -> f32 {
    let i = row * ((p.k / 32u + 1u) & ~1u) + u;
    return unpack2x16float(ws[i / 2u])[i & 1u];
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let b = row * (p.k / 32u) + u;
    let w = wq[b][i & 3u];
    let q = select(nib_lo(w), nib_hi(w), i >= 4u);
    return q4_0_scale(row, u) * (q - vec4<f32>(8.0));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let b = row * (p.k / 32u) + u;
    let q = wq[b];
    let s = dot(nib_lo(q.x), x.v0) + dot(nib_lo(q.y), x.v1) + dot(nib_lo(q.z), x.v2) + dot(nib_lo(q.w), x.v3)
          + dot(nib_hi(q.x), x.v4) + dot(nib_hi(q.y), x.v5) + dot(nib_hi(q.z), x.v6) + dot(nib_hi(q.w), x.v7);
    return q4_0_scale(row, u) * (s - 8.0 * x.sum);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
