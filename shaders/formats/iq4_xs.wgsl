// IQ4_XS (GGML): super-blocks of 256 weights = 8 units, each with a 6-bit scale;
// w = d * (sc - 32) * T[q], q a nibble into IQ4_NL's table, unit j's 16 bytes laid out as a
// Q4_0 unit's. Repacked at load: in `ws`, 2 words per super-block: f16 d (low half) with the
// u16 of 2-bit high scale parts (bits 2j, 2j + 1 for unit j), then the 4 bytes of 4-bit low
// scale parts (nibble j); in `wq`, one vec4<u32> of nibbles per unit.
fn iq4_xs_scale(row: u32, u: u32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let w0 = ws[2u * s];
    let lo = (byte_of(ws[2u * s + 1u], j / 2u) >> (4u * (j % 2u))) & 15u;
    let hi = (w0 >> (16u + 2u * j)) & 3u;
    return unpack2x16float(w0).x * f32(i32(lo | (hi << 4u)) - 32);
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let w = wq[row * (p.k / 32u) + u][i & 3u];
    return iq4_xs_scale(row, u) * iq4x4(w, i >= 4u);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return iq4_xs_scale(row, u) * iq4_dot(wq[row * (p.k / 32u) + u], x);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
