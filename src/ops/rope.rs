//! Rotary position embedding (RoPE), both pair conventions.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "rope", body: include_str!("../../shaders/rope.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    rot_dim: u32,
    pos0: u32,
    neox: u32,
    theta: f32,
    _pad: u32,
}

/// Which elements form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// (x[i], x[i + d/2]): Hugging Face's rotate-half.
    Neox,
    /// (x[2i], x[2i+1]): the original RoFormer / llama.cpp layout (GGUF llama weights).
    Adjacent,
}

/// FLOPs and bytes of rope over n = n_tokens * n_heads * head_dim elements: per pair two
/// multiplies and an add per output (3 per element); reads and writes x.
pub fn cost(n_tokens: usize, n_heads: usize, head_dim: usize) -> (u64, u64) {
    let n = (n_tokens * n_heads * head_dim) as u64;
    (3 * n, 8 * n)
}

/// Rotates x: (n_tokens, n_heads, head_dim) in place; token t is at position pos0 + t.
#[allow(clippy::too_many_arguments)]
pub fn rope(rec: &mut Recorder, x: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, theta: f32, style: RopeStyle, layer: usize) -> Result<()> {
    if head_dim % 2 != 0 {
        return Err(Error::Shape { op: "rope", msg: format!("head_dim {head_dim} is odd") });
    }
    x.holds("rope", "x", n_tokens * n_heads * head_dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "rope", &[])?;
    let p = Params {
        n_tokens: n_tokens as u32,
        n_heads: n_heads as u32,
        head_dim: head_dim as u32,
        rot_dim: head_dim as u32,
        pos0: pos0 as u32,
        neox: (style == RopeStyle::Neox) as u32,
        theta,
        _pad: 0,
    };
    let (flops, bytes) = cost(n_tokens, n_heads, head_dim);
    let info = OpInfo::new("rope", flops, bytes).layer(layer);
    let pairs = n_tokens * n_heads * head_dim / 2;
    rec.dispatch(info, &pipe, &[&x.buf], &p, grid(rec.ctx, pairs.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference (angles in f64 from the same f32 inverse frequency the GPU and HF use).
pub fn reference(x: &[f32], n_heads: usize, head_dim: usize, pos0: usize, theta: f32, style: RopeStyle) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = head_dim / 2;
    for (row, chunk) in out.chunks_mut(head_dim).enumerate() {
        let pos = pos0 + row / n_heads;
        for i in 0..half {
            let inv_freq = 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32);
            let angle = (pos as f32 * inv_freq) as f64;
            let (s, c) = angle.sin_cos();
            let (a, b) = match style {
                RopeStyle::Neox => (i, i + half),
                RopeStyle::Adjacent => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (chunk[a] as f64, chunk[b] as f64);
            chunk[a] = (x0 * c - x1 * s) as f32;
            chunk[b] = (x1 * c + x0 * s) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn rope_matches_reference_both_styles_odd_sizes(ctx) {
        for &(t, h, d, pos0) in &[(1usize, 1usize, 2usize, 0usize), (3, 5, 6, 7), (7, 9, 64, 1000), (2, 3, 130, 4095)] {
            for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
                let x = test_values(t * h * d, 31);
                let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                rope(&mut rec, &xt, t, h, d, pos0, 10000.0, style, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
                // Angles up to ~4100 rad lose ~2.4e-4 rad to f32 range reduction; values are in
                // [-1, 1], so x·cos - y·sin carries at most twice the sin/cos error.
                let abs = if pos0 > 100 { 1e-3 } else { 1e-5 } + 2.0 * crate::ops::sin_cos_tolerance(ctx);
                compare(&got, &reference(&x, h, d, pos0, 10000.0, style), abs, 1e-4).unwrap_or_else(|e| panic!("t {t} h {h} d {d} pos0 {pos0} {style:?}: {e}"));
            }
        }
    });
}

#[path = "rope_backward.rs"]
pub mod backward;
