//! RMSNorm.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "norm", body: include_str!("../../shaders/norm.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight, for r < n_rows. x, out: (n_rows, dim).
pub fn rms_norm(rec: &mut Recorder, x: &Tensor, weight: &Tensor, out: &Tensor, n_rows: usize, eps: f32, layer: Option<usize>) -> Result<()> {
    let dim = weight.numel();
    if x.shape.last() != Some(&dim) {
        return Err(Error::Shape { op: "rms_norm", msg: format!("x {:?} does not end in the weight's {dim}", x.shape) });
    }
    x.holds("rms_norm", "x", n_rows * dim)?;
    out.holds("rms_norm", "out", n_rows * dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "rms_norm", &[])?;
    let p = Params { n_rows: n_rows as u32, dim: dim as u32, eps, _pad: 0 };
    let n = (n_rows * dim) as u64;
    let mut info = OpInfo::new("rms_norm", 4 * n, 4 * (2 * n + dim as u64));
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf, &out.buf], &p, grid(rec.ctx, n_rows as u32));
    Ok(())
}

/// CPU reference, accumulating in f64.
pub fn reference(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let scale = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(weight).map(move |(&v, &w)| (v as f64 * scale) as f32 * w).collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{compare, test_values};

    #[test]
    fn rms_norm_matches_reference_on_odd_sizes() {
        let Some(ctx) = crate::gpu::context::test_context() else { return };
        for &(rows, dim) in &[(1usize, 1usize), (3, 7), (5, 576), (2, 1001)] {
            let x = test_values(rows * dim, 11);
            let w: Vec<f32> = test_values(dim, 12).iter().map(|v| 1.0 + v).collect();
            let xt = Tensor::upload_f32(ctx, "x", &[rows, dim], &x).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[dim], &w).unwrap();
            let out = Tensor::zeros(ctx, "out", &[rows, dim]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            rms_norm(&mut rec, &xt, &wt, &out, rows, 1e-5, None).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32(&out.buf, 0, rows * dim).unwrap();
            // f32 sum of squares over <= 1001 terms: relative error ~ dim * 2^-24.
            compare(&got, &reference(&x, &w, 1e-5), 1e-5, 1e-4).unwrap_or_else(|e| panic!("rows {rows} dim {dim}: {e}"));
        }
    }
}
