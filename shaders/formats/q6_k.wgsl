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
// Unit u of a row: its quant words (ql a, b; qh h0, h1), their shifts, and where its
// scales are (super-block s, scale index si of its first 16 weights).
struct Q6Unit { a: vec4<u32>, b: vec4<u32>, h0: vec4<u32>, h1: vec4<u32>, lsh: u32, hsh: u32, s: u32, si: u32 }
fn q6_k_unit(row: u32, u: u32) -> Q6Unit {
    let s = row * (p.k / 256u) + u / 8u;
    let j = u % 8u;
    let n = j / 4u;
    let c = j % 4u;
    let ql = 12u * s + 4u * n + 2u * (c & 1u);
    return Q6Unit(wq[ql], wq[ql + 1u], wq[12u * s + 8u + 2u * n], wq[12u * s + 9u + 2u * n], select(0u, 4u, c >= 2u), 2u * c, s, 8u * n + 2u * c);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let q = q6_k_unit(row, u);
    let s0 = dot(q6_k_quant4(q.a.x, q.h0.x, q.lsh, q.hsh), x.v0) + dot(q6_k_quant4(q.a.y, q.h0.y, q.lsh, q.hsh), x.v1)
           + dot(q6_k_quant4(q.a.z, q.h0.z, q.lsh, q.hsh), x.v2) + dot(q6_k_quant4(q.a.w, q.h0.w, q.lsh, q.hsh), x.v3);
    let s1 = dot(q6_k_quant4(q.b.x, q.h1.x, q.lsh, q.hsh), x.v4) + dot(q6_k_quant4(q.b.y, q.h1.y, q.lsh, q.hsh), x.v5)
           + dot(q6_k_quant4(q.b.z, q.h1.z, q.lsh, q.hsh), x.v6) + dot(q6_k_quant4(q.b.w, q.h1.w, q.lsh, q.hsh), x.v7);
    let xs = x_halves(x);
    let d = unpack2x16float(ws[5u * q.s + 4u]).x;
    return d * (q6_k_scale(q.s, q.si) * (s0 - 32.0 * xs.x) + q6_k_scale(q.s, q.si + 1u) * (s1 - 32.0 * xs.y));
}
fn unit_w(row: u32, u: u32) -> W32 {
    let q = q6_k_unit(row, u);
    let d = unpack2x16float(ws[5u * q.s + 4u]).x;
    // The scales of the unit's two 16-weight groups, decoded once; q - 32 folded in as an offset.
    let d0 = d * q6_k_scale(q.s, q.si);
    let d1 = d * q6_k_scale(q.s, q.si + 1u);
    let o0 = vec4<f32>(32.0 * d0);
    let o1 = vec4<f32>(32.0 * d1);
    return W32(d0 * q6_k_quant4(q.a.x, q.h0.x, q.lsh, q.hsh) - o0, d0 * q6_k_quant4(q.a.y, q.h0.y, q.lsh, q.hsh) - o0,
               d0 * q6_k_quant4(q.a.z, q.h0.z, q.lsh, q.hsh) - o0, d0 * q6_k_quant4(q.a.w, q.h0.w, q.lsh, q.hsh) - o0,
               d1 * q6_k_quant4(q.b.x, q.h1.x, q.lsh, q.hsh) - o1, d1 * q6_k_quant4(q.b.y, q.h1.y, q.lsh, q.hsh) - o1,
               d1 * q6_k_quant4(q.b.z, q.h1.z, q.lsh, q.hsh) - o1, d1 * q6_k_quant4(q.b.w, q.h1.w, q.lsh, q.hsh) - o1);
}
