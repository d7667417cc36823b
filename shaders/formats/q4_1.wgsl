// Q4_1 (GGML): w = d * q + m, q a nibble; byte j holds weight j (low) and j + 16 (high).
// Repacked at load into one vec4<u32> of nibbles per unit in `wq` and (d, m) as two f16 in
// one word per unit in `ws`.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let b = row * (p.k / 32u) + u;
    let dm = unpack2x16float(ws[b]);
    let w = wq[b][i & 3u];
    return dm.x * select(nib_lo(w), nib_hi(w), i >= 4u) + vec4<f32>(dm.y);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let b = row * (p.k / 32u) + u;
    let q = wq[b];
    let dm = unpack2x16float(ws[b]);
    let s = dot(nib_lo(q.x), x.v0) + dot(nib_lo(q.y), x.v1) + dot(nib_lo(q.z), x.v2) + dot(nib_lo(q.w), x.v3)
          + dot(nib_hi(q.x), x.v4) + dot(nib_hi(q.y), x.v5) + dot(nib_hi(q.z), x.v6) + dot(nib_hi(q.w), x.v7);
    return dm.x * s + dm.y * x.sum;
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
