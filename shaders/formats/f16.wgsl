// F16: rows of k % 8 == 0 halves read as vec4<u32>, two halves per word (first in the low half), unpacked with
// unpack2x16float, so no shader-f16 support is needed; `ws` is unused.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    let v = wq[row * (p.k / 8u) + 4u * u + i / 2u];
    if ((i & 1u) == 0u) {
        return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
    }
    return vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return unit_dot_deq4(row, u, x);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
