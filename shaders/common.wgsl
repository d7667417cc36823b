// common.wgsl: prepended to every shader of quill.

// Largest finite f32, used where -infinity is meant (WGSL has no infinity literal). Written
// out exactly: browsers' WGSL compilers refuse 3.4028235e38, which rounds past f32's range.
const NEG_BIG: f32 = -3.4028234663852886e38;

// Dispatches wider than the per-dimension limit are split into a 2-D grid by the host
// (`gpu::grid`); this recovers the linear workgroup index.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
