// IQ4_NL (GGML): w = d * T[q], q a nibble indexing the fixed table IQ4_VALUES; byte j holds
// weight j (low) and j + 16 (high), as in Q4_0. Repacked at load as Q4_0 is: one vec4<u32> of
// nibbles per unit in `wq`, the f16 scales d, two per word, in `ws`.
// Each row's scales are padded to an even count, so rows start on whole words.
fn iq4_nl_scale(row: u32, u: u32) -> f32 {
    let i = row * ((p.k / 32u + 1u) & ~1u) + u;
    return unpack2x16float(ws[i / 2u])[i & 1u];
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let w = wq[row * (p.k / 32u) + u][i & 3u];
    return iq4_nl_scale(row, u) * iq4x4(w, i >= 4u);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return iq4_nl_scale(row, u) * iq4_dot(wq[row * (p.k / 32u) + u], x);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
