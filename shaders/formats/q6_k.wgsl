// Q6_K (GGML): super-blocks of 256 weights, 16 signed 8-bit scales of 16 weights each;
// w = d * sc * (q - 32), q 6 bits: 4 low bits in `ql`, 2 high bits in `qh`. Repacked at load:
// in `ws`, 5 words per super-block (the 16 scale bytes, then f16 d); in `wq`, 12 vec4<u32> per
// super-block: the 128 bytes of ql, then the 64 bytes of qh, as the file stores them.
// Unit j covers half n = j / 4, quarter c = j % 4 of it: ql bytes 64n + 32(c % 2) + l (low
// nibble for c < 2, else high), qh bytes 32n + l (bits 2c, 2c + 1), scales 8n + 2c + l / 16.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let n = j / 4u;
    let c = j % 4u;
    let base = 12u * s;
    let lw = wq[base + 4u * n + 2u * (c & 1u) + i / 4u][i & 3u];
    let hw = wq[base + 8u + 2u * n + i / 4u][i & 3u];
    let lo = select(nib_lo(lw), nib_hi(lw), c >= 2u);
    let sh = 2u * c;
    let hi = vec4<f32>(vec4<u32>(hw >> sh, hw >> (8u + sh), hw >> (16u + sh), hw >> (24u + sh)) & vec4<u32>(3u));
    let h = 5u * s;
    let si = 8u * n + 2u * c + i / 4u;
    let sc = f32(bitcast<i32>(byte_of(ws[h + si / 4u], si % 4u) << 24u) >> 24u);
    let d = unpack2x16float(ws[h + 4u]).x;
    return d * sc * (lo + 16.0 * hi - vec4<f32>(32.0));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return unit_dot_deq4(row, u, x);
}
