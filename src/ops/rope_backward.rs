//! Backward of RoPE: a rotation's gradient is the inverse rotation, in place on dL/dx: the
//! forward entry point with its `rope_sign` override at -1, so the two can never disagree on
//! pairs or angles.

use super::{Params, RopeStyle};
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Tensor};

/// Turns dx: (n_tokens, n_heads, head_dim) back by each position's angle, in place.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(rec: &mut Recorder, dx: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, theta: f32, style: RopeStyle) -> Result<()> {
    if head_dim % 2 != 0 {
        return Err(Error::Shape { op: "rope_backward", msg: format!("head_dim {head_dim} is odd") });
    }
    dx.holds("rope_backward", "dx", n_tokens * n_heads * head_dim)?;
    let pipe = rec.ctx.pipeline(&super::SHADER, "rope", &[("rope_sign", -1.0)])?;
    let (h, d) = (n_heads as u32, head_dim as u32);
    let p = Params { n_tokens: n_tokens as u32, n_heads: h, head_dim: d, rot_dim: d, pos0: pos0 as u32, neox: (style == RopeStyle::Neox) as u32, theta, amp: 1.0, per_token: 0, two_tables: 0, long_lo: 0, long_hi: 0 };
    let (flops, bytes) = super::cost(n_tokens, n_heads, head_dim);
    let pairs = n_tokens * n_heads * head_dim / 2;
    rec.dispatch(OpInfo::new("rope_backward", flops, bytes), &pipe, &[&dx.buf], &p, grid(rec.ctx, pairs.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference in f64: rotates by `sign` * angle (1: the forward, -1: the backward).
pub fn rotate_f64(x: &[f64], n_heads: usize, head_dim: usize, pos0: usize, theta: f64, style: RopeStyle, sign: f64) -> Vec<f64> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (th, v) in out.chunks_mut(head_dim).enumerate() {
        let pos = (pos0 + th / n_heads) as f64;
        for i in 0..half {
            let angle = pos / theta.powf(2.0 * i as f64 / head_dim as f64);
            let (s, c) = (sign * angle.sin(), angle.cos());
            let (a, b) = if style == RopeStyle::Neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (v[a], v[b]);
            v[a] = x0 * c - x1 * s;
            v[b] = x1 * c + x0 * s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::gradcheck::{check, dot, to_f32, values};
    use crate::ops::{compare, sin_cos_tolerance};

    #[test]
    fn reference_equals_finite_differences() {
        for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
            let (heads, dim) = (2, 6);
            let x = values(3 * heads * dim, 61);
            let g = values(x.len(), 62);
            let dx = rotate_f64(&g, heads, dim, 5, 10000.0, style, -1.0);
            check("rope dx", &x, &dx, |x| dot(&g, &rotate_f64(x, heads, dim, 5, 10000.0, style, 1.0))).unwrap();
        }
    }

    gpu_test!(fn rope_backward_matches_reference_on_odd_sizes(ctx) {
        for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
            for &(tokens, heads, dim, pos0) in &[(1usize, 1usize, 2usize, 0usize), (5, 3, 10, 7), (9, 2, 64, 300)] {
                let g = values(tokens * heads * dim, 63);
                let want = rotate_f64(&g, heads, dim, pos0, 10000.0, style, -1.0);
                let t = Tensor::upload_f32(ctx, "dx", &[tokens, heads, dim], &to_f32(&g)).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                rope_backward(&mut rec, &t, tokens, heads, dim, pos0, 10000.0, style).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&t.buf, 0, g.len()).await.unwrap();
                // f32 angles up to ~308 rad lose ~2e-5 rad before the range reduction; values O(1).
                let abs = 5e-5 + 2.0 * sin_cos_tolerance(ctx);
                compare(&got, &to_f32(&want), abs, 1e-5).unwrap_or_else(|e| panic!("{style:?} {tokens}x{heads}x{dim} pos0 {pos0}: {e}"));
            }
        }
    });
}
