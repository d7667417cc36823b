// F32: the f32 bits as stored, read as vec4<u32> (rows of k % 4 == 0 weights); `ws` is unused.
fn deq4(row: u32, u: u32, i: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(wq[row * (p.k / 4u) + 8u * u + i]);
}
fn unit_dot(row: u32, u: u32, x: X32) -> f32 {
    return unit_dot_deq4(row, u, x);
}
fn unit_w(row: u32, u: u32) -> W32 {
    return unit_w_deq4(row, u);
}
