//! One module per shader family: the launcher (checks shapes, picks the pipeline, records the
//! dispatch), the plain-Rust CPU reference, and the tests comparing the two.

pub mod activation;
pub mod attention;
pub mod embed;
#[cfg(test)]
pub(crate) mod gradcheck;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod peak;
pub mod posenc;
pub mod rope;
pub mod sample;

use crate::gpu::Shader;

/// Every shader quill embeds, for validation and pipeline warm-up.
pub const SHADERS: &[&Shader] = &[
    &activation::SHADER,
    &attention::SHADER,
    &embed::SHADER,
    &matmul::SHADER,
    &matmul::QUANT_SHADERS[0],
    &matmul::QUANT_SHADERS[1],
    &matmul::QUANT_SHADERS[2],
    &matmul::QUANT_SHADERS[3],
    &matmul::QUANT_SHADERS[4],
    &matmul::QUANT_SHADERS[5],
    &matmul::QUANT_SHADERS[6],
    &matmul::QUANT_SHADERS[7],
    &matmul::QUANT_SHADERS[8],
    &matmul::QUANT_SHADERS[9],
    &matmul::QUANT_SHADERS[10],
    &matmul::QUANT_SHADERS[11],
    &matmul::QUANT_SHADERS[12],
    &matmul::QUANT_SHADERS[13],
    &matmul::QUANT_SHADERS[14],
    &matmul::QUANT_SUBGROUP_SHADERS[0],
    &matmul::QUANT_SUBGROUP_SHADERS[1],
    &matmul::QUANT_SUBGROUP_SHADERS[2],
    &matmul::QUANT_SUBGROUP_SHADERS[3],
    &matmul::QUANT_SUBGROUP_SHADERS[4],
    &matmul::QUANT_SUBGROUP_SHADERS[5],
    &matmul::QUANT_SUBGROUP_SHADERS[6],
    &matmul::QUANT_SUBGROUP_SHADERS[7],
    &matmul::QUANT_SUBGROUP_SHADERS[8],
    &matmul::QUANT_SUBGROUP_SHADERS[9],
    &matmul::QUANT_SUBGROUP_SHADERS[10],
    &matmul::QUANT_SUBGROUP_SHADERS[11],
    &matmul::QUANT_SUBGROUP_SHADERS[12],
    &matmul::QUANT_SUBGROUP_SHADERS[13],
    &matmul::QUANT_SUBGROUP_SHADERS[14],
    &loss::SHADER,
    &norm::SHADER,
    &optim::SHADER,
    &peak::SHADER,
    &posenc::SHADER,
    &rope::SHADER,
    &sample::SHADER,
];

/// Tolerance check shared by the op tests: |got - want| <= abs + rel * |want|.
/// Returns the first failing index with both values, so a failure names where it is.
pub fn compare(got: &[f32], want: &[f32], abs: f32, rel: f32) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} != expected {}", got.len(), want.len()));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !((g - w).abs() <= abs + rel * w.abs()) {
            return Err(format!("index {i}: expected {w}, got {g} (tolerance {abs} + {rel}*|expected|)"));
        }
    }
    Ok(())
}

/// Extra absolute error the tests allow a sin or cos: WGSL promises only 2^-11 (on [-π, π]),
/// and a browser's WebGPU may use all of it (SwiftShader was seen 1.1e-4 off); native drivers
/// stay within the few ulp the tests' own bounds already count.
#[cfg(test)]
pub(crate) fn sin_cos_tolerance(ctx: &crate::gpu::Context) -> f32 {
    if ctx.info.backend == wgpu::Backend::BrowserWebGpu {
        1.0 / 2048.0
    } else {
        0.0
    }
}

/// Deterministic pseudo-random values in [-1, 1) for tests (no rand dependency).
pub fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
