// Q6_K (GGML): super-blocks of 256 weights, 16 signed 8-bit scales of 16 weights each;
// w = d * sc * (q - 32), q 6 bits: 4 low bits in `ql`, 2 high bits in `qh`. Repacked at load:
// in `ws`, 5 words per super-block (the 16 scale bytes, then f16 d); in `wq`, 12 vec4<u32> per
// super-block: the 128 bytes of ql, then the 64 bytes of qh, as the file stores them.
// Unit j covers half n = j / 4, quarter c = j % 4 of it: ql bytes 64n + 32(c % 2) + l (low
// nibble for c < 2, else high), qh bytes 32n + l (bits 2c, 2c + 1), scales 8n + 2c + l / 16.
// q of 4 weights: the nibbles at bit lsh of ql's bytes, the 2 high bits at bit hsh of qh's.
fn q6_k_quant4(ql: u32, qh: u32, lsh: u32, hsh: u32) -> vec4<f32> {
    return byte_bits(ql, lsh, 15u) + 16.0 * byte_bits(qh, hsh, 3u);
}
fn q6_k_scale(s: u32, si: u32) -> f32 {
    return f32(bitcast<i32>(byte_of(ws[5u * s + si / 4u], si % 4u) << 24u) >> 24u);
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let n = j / 4u;
    let c = j % 4u;
    let lw = wq[12u * s + 4u * n + 2u * (c & 1u) + i / 4u][i & 3u];
    let hw = wq[12u * s + 8u + 2u * n + i / 4u][i & 3u];
    let q = q6_k_quant4(lw, hw, select(0u, 4u, c >= 2u), 2u * c);
    let sc = q6_k_scale(s, 8u * n + 2u * c + i / 4u);
    let d = unpack2x16float(ws[5u * s + 4u]).x;
    return d * sc * (q - vec4<f32>(32.0));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let n = j / 4u;
    let c = j % 4u;
    let lsh = select(0u, 4u, c >= 2u);
    let hsh = 2u * c;
    let a = wq[12u * s + 4u * n + 2u * (c & 1u)];
    let b = wq[12u * s + 4u * n + 2u * (c & 1u) + 1u];
    let h0 = wq[12u * s + 8u + 2u * n];
    let h1 = wq[12u * s + 9u + 2u * n];
    let s0 = dot(q6_k_quant4(a.x, h0.x, lsh, hsh), x.v0) + dot(q6_k_quant4(a.y, h0.y, lsh, hsh), x.v1)
           + dot(q6_k_quant4(a.z, h0.z, lsh, hsh), x.v2) + dot(q6_k_quant4(a.w, h0.w, lsh, hsh), x.v3);
    let s1 = dot(q6_k_quant4(b.x, h1.x, lsh, hsh), x.v4) + dot(q6_k_quant4(b.y, h1.y, lsh, hsh), x.v5)
           + dot(q6_k_quant4(b.z, h1.z, lsh, hsh), x.v6) + dot(q6_k_quant4(b.w, h1.w, lsh, hsh), x.v7);
    let xs = x_halves(x);
    let si = 8u * n + 2u * c;
    let d = unpack2x16float(ws[5u * s + 4u]).x;
    return d * (q6_k_scale(s, si) * (s0 - 32.0 * xs.x) + q6_k_scale(s, si + 1u) * (s1 - 32.0 * xs.y));
}
