// BF16: rows of k % 8 == 0 values read as vec4<u32>, two per word (first in the low half). A
// bf16 is the high half of an f32, so a word unpacks with a shift and a mask; `ws` is unused.
fn bf16x4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let v = wq[row * (p.k / 8u) + 4u * u + i / 2u];
    if ((i & 1u) == 0u) {
        return bf16x4(v.x, v.y);
    }
    return bf16x4(v.z, v.w);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    let b = row * (p.k / 8u) + 4u * u;
    let v0 = wq[b];
    let v1 = wq[b + 1u];
    let v2 = wq[b + 2u];
    let v3 = wq[b + 3u];
    return dot(bf16x4(v0.x, v0.y), x.v0) + dot(bf16x4(v0.z, v0.w), x.v1) + dot(bf16x4(v1.x, v1.y), x.v2)
         + dot(bf16x4(v1.z, v1.w), x.v3) + dot(bf16x4(v2.x, v2.y), x.v4) + dot(bf16x4(v2.z, v2.w), x.v5)
         + dot(bf16x4(v3.x, v3.y), x.v6) + dot(bf16x4(v3.z, v3.w), x.v7);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
