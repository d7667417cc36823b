//! Normalization over the last dimension: RMSNorm (Llama family) and LayerNorm (GPT-2, XGLM).

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

/// FLOPs and bytes of rms_norm over (n_rows, dim): square-add, scale, weight (4 per element);
/// reads x and the weight, writes out.
pub fn rms_norm_cost(n_rows: usize, dim: usize) -> (u64, u64) {
    let n = (n_rows * dim) as u64;
    (4 * n, 4 * (2 * n + dim as u64))
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
    let (flops, bytes) = rms_norm_cost(n_rows, dim);
    let mut info = OpInfo::new("rms_norm", flops, bytes);
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf, &out.buf], &p, grid(rec.ctx, n_rows as u32));
    Ok(())
}

/// FLOPs and bytes of layer_norm over (n_rows, dim): sum, centre-square-add, centre-scale-
/// weight-bias (7 per element); reads x once per pass (three), the weight and bias, writes out.
pub fn layer_norm_cost(n_rows: usize, dim: usize) -> (u64, u64) {
    let n = (n_rows * dim) as u64;
    (7 * n, 4 * (4 * n + 2 * dim as u64))
}

/// out[r] = (x[r] - mean) / sqrt(var + eps) * weight + bias, for r < n_rows. x, out: (n_rows, dim).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(rec: &mut Recorder, x: &Tensor, weight: &Tensor, bias: &Tensor, out: &Tensor, n_rows: usize, eps: f32, layer: Option<usize>) -> Result<()> {
    let dim = weight.numel();
    if x.shape.last() != Some(&dim) || bias.numel() != dim {
        return Err(Error::Shape { op: "layer_norm", msg: format!("x {:?} and bias {:?} must end in the weight's {dim}", x.shape, bias.shape) });
    }
    x.holds("layer_norm", "x", n_rows * dim)?;
    out.holds("layer_norm", "out", n_rows * dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "layer_norm", &[])?;
    let p = Params { n_rows: n_rows as u32, dim: dim as u32, eps, _pad: 0 };
    let (flops, bytes) = layer_norm_cost(n_rows, dim);
    let mut info = OpInfo::new("layer_norm", flops, bytes);
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf, &bias.buf, &out.buf], &p, grid(rec.ctx, n_rows as u32));
    Ok(())
}

/// CPU reference of `layer_norm`, accumulating in f64.
pub fn layer_norm_reference(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let scale = 1.0 / (var + eps as f64).sqrt();
            row.iter().zip(weight).zip(bias).map(move |((&v, &w), &b)| ((v as f64 - mean) * scale * w as f64 + b as f64) as f32).collect::<Vec<_>>()
        })
        .collect()
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
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn rms_norm_matches_reference_on_odd_sizes(ctx) {
        for &(rows, dim) in &[(1usize, 1usize), (3, 7), (5, 576), (2, 1001)] {
            let x = test_values(rows * dim, 11);
            let w: Vec<f32> = test_values(dim, 12).iter().map(|v| 1.0 + v).collect();
            let xt = Tensor::upload_f32(ctx, "x", &[rows, dim], &x).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[dim], &w).unwrap();
            let out = Tensor::zeros(ctx, "out", &[rows, dim]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            rms_norm(&mut rec, &xt, &wt, &out, rows, 1e-5, None).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, rows * dim).await.unwrap();
            // f32 sum of squares over <= 1001 terms: relative error ~ dim * 2^-24.
            compare(&got, &reference(&x, &w, 1e-5), 1e-5, 1e-4).unwrap_or_else(|e| panic!("rows {rows} dim {dim}: {e}"));
        }
    });

    gpu_test!(fn layer_norm_matches_reference_on_odd_sizes(ctx) {
        for &(rows, dim) in &[(1usize, 1usize), (3, 7), (34, 64), (2, 1001), (3, 257)] {
            // An offset mean, as residual streams have, so a one-pass E[x²] - mean² would show.
            let x: Vec<f32> = test_values(rows * dim, 13).iter().map(|v| 3.0 + v).collect();
            let w: Vec<f32> = test_values(dim, 14).iter().map(|v| 1.0 + v).collect();
            let b = test_values(dim, 15);
            let xt = Tensor::upload_f32(ctx, "x", &[rows, dim], &x).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[dim], &w).unwrap();
            let bt = Tensor::upload_f32(ctx, "b", &[dim], &b).unwrap();
            let out = Tensor::zeros(ctx, "out", &[rows, dim]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            layer_norm(&mut rec, &xt, &wt, &bt, &out, rows, 1e-5, None).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, rows * dim).await.unwrap();
            // f32 sums over <= 1001 terms (relative error ~ dim * 2^-24 on mean and variance);
            // outputs are O(2), so 2e-5 absolute.
            compare(&got, &layer_norm_reference(&x, &w, &b, 1e-5), 2e-5, 1e-4).unwrap_or_else(|e| panic!("rows {rows} dim {dim}: {e}"));
        }
    });
}

#[path = "norm_backward.rs"]
pub mod backward;
