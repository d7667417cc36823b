// common.wgsl: prepended to every shader of quill.

// Largest finite f32, used where -infinity is meant (WGSL has no infinity literal). Written
// out exactly: browsers' WGSL compilers refuse 3.4028235e38, which rounds past f32's range.
const NEG_BIG: f32 = -3.4028234663852886e38;

// Dispatches wider than the per-dimension limit are split into a 2-D grid by the host
// (`gpu::grid`); this recovers the linear workgroup index.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// tanh(x) without overflow for any x and with its sign exact (WGSL leaves large |x| to the
// driver): attention and final-logit soft-capping.
fn tanh_stable(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// GELU with the tanh approximation, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), written
// as v / (1 + e^(-2u)): no cancellation for negative v, and e^(-2u) overflowing to infinity
// gives the right limit, -0.
fn gelu_tanh_of(v: f32) -> f32 {
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    return v / (1.0 + exp(-2.0 * u));
}
