// Q5_1 (GGML): w = d * q + m, q 5 bits: a nibble (byte j holds weight j low, j + 16 high) and
// bit i of the block's u32 `qh` for weight i. Repacked at load: the nibbles as one vec4<u32>
// per unit in `wq`; two words per unit in `ws`: f16 (d, m), then qh.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let b = row * (p.k / 32u) + u;
    let dm = unpack2x16float(ws[2u * b]);
    let w = wq[b][i & 3u];
    let q = select(nib_lo(w), nib_hi(w), i >= 4u) + 16.0 * bits4(ws[2u * b + 1u], 4u * i);
    return dm.x * q + vec4<f32>(dm.y);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let b = row * (p.k / 32u) + u;
    let dm = unpack2x16float(ws[2u * b]);
    return dm.x * q5_dot(wq[b], ws[2u * b + 1u], x) + dm.y * x.sum;
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
