//! Normalization over the last dimension: RMSNorm (Llama family) and LayerNorm (GPT-2, XGLM).
//! RMSNorm variants: Gemma's `(1 + w)` weights, a result added into the residual (Gemma's
//! post-norms), and a per-head norm in place (Qwen3 and Gemma 3's Q/K norms).

use super::matmul::Store;
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "norm", body: include_str!("../../shaders/norm.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    dim: u32,
    eps: f32,
    w_offset: f32,
    accumulate: u32,
    _pad: [u32; 3],
}

impl Params {
    fn new(n_rows: usize, dim: usize, eps: f32) -> Self {
        Params { n_rows: n_rows as u32, dim: dim as u32, eps, w_offset: 0.0, accumulate: 0, _pad: [0; 3] }
    }
}

/// How an RMSNorm applies its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsOpts {
    pub eps: f32,
    /// Added to every weight: 1.0 for Hugging Face Gemma checkpoints, which store w and apply
    /// (1 + w); 0.0 for Llama and for Gemma GGUFs (the converter stores w + 1).
    pub weight_offset: f32,
}

impl RmsOpts {
    /// Plain RMSNorm with this epsilon.
    pub fn eps(eps: f32) -> Self {
        RmsOpts { eps, weight_offset: 0.0 }
    }
}

/// FLOPs and bytes of rms_norm over (n_rows, dim): square-add, scale, weight (4 per element);
/// reads x and the weight, writes out.
pub fn rms_norm_cost(n_rows: usize, dim: usize) -> (u64, u64) {
    let n = (n_rows * dim) as u64;
    (4 * n, 4 * (2 * n + dim as u64))
}

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight, for r < n_rows. x, out: (n_rows, dim).
pub fn rms_norm(rec: &mut Recorder, x: &Tensor, weight: &Tensor, out: &Tensor, n_rows: usize, eps: f32, layer: Option<usize>) -> Result<()> {
    rms_norm_with(rec, x, weight, out, n_rows, RmsOpts::eps(eps), Store::Write, layer)
}

/// out[r] (=, or += with `Store::Accumulate`) x[r] / sqrt(mean(x[r]²) + eps) * (weight +
/// weight_offset), for r < n_rows. x, out: (n_rows, dim); weight: (dim,).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_with(rec: &mut Recorder, x: &Tensor, weight: &Tensor, out: &Tensor, n_rows: usize, opts: RmsOpts, store: Store, layer: Option<usize>) -> Result<()> {
    let dim = weight.numel();
    if x.shape.last() != Some(&dim) {
        return Err(Error::Shape { op: "rms_norm", msg: format!("x {:?} does not end in the weight's {dim}", x.shape) });
    }
    x.holds("rms_norm", "x", n_rows * dim)?;
    out.holds("rms_norm", "out", n_rows * dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "rms_norm", &[])?;
    let p = Params { w_offset: opts.weight_offset, accumulate: (store == Store::Accumulate) as u32, ..Params::new(n_rows, dim, opts.eps) };
    let (flops, bytes) = rms_norm_cost(n_rows, dim);
    let mut info = OpInfo::new("rms_norm", flops, bytes);
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf, &out.buf], &p, grid(rec.ctx, n_rows as u32));
    Ok(())
}

/// RMSNorm of every head in place: x (n_tokens, n_heads * head_dim), each head's head_dim
/// slice normalised on its own with weight (head_dim,) (Qwen3 and Gemma 3's Q/K norms).
pub fn rms_norm_heads(rec: &mut Recorder, x: &Tensor, weight: &Tensor, n_tokens: usize, n_heads: usize, opts: RmsOpts, layer: Option<usize>) -> Result<()> {
    let head_dim = weight.numel();
    let width = x.shape.last().copied().unwrap_or(0);
    if head_dim == 0 || (width != head_dim && width != n_heads * head_dim) {
        return Err(Error::Shape { op: "rms_norm_heads", msg: format!("x {:?} must end in {n_heads} heads of the weight's {head_dim}", x.shape) });
    }
    let rows = n_tokens * n_heads;
    x.holds("rms_norm_heads", "x", rows * head_dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "rms_norm_inplace", &[])?;
    let p = Params { w_offset: opts.weight_offset, ..Params::new(rows, head_dim, opts.eps) };
    let (flops, bytes) = rms_norm_cost(rows, head_dim);
    let mut info = OpInfo::new("rms_norm_heads", flops, bytes);
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf], &p, grid(rec.ctx, rows as u32));
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
    let p = Params::new(n_rows, dim, eps);
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
    reference_with(x, weight, RmsOpts::eps(eps))
}

/// CPU reference of `rms_norm_with` (written, not accumulated) and, with the head's width as
/// the weight, of `rms_norm_heads`. The weight offset is added in f32, as Hugging Face does.
pub fn reference_with(x: &[f32], weight: &[f32], opts: RmsOpts) -> Vec<f32> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let scale = 1.0 / (ms + opts.eps as f64).sqrt();
            row.iter().zip(weight).map(move |(&v, &w)| (v as f64 * scale) as f32 * (w + opts.weight_offset)).collect::<Vec<_>>()
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

    gpu_test!(fn gemma_offset_and_accumulating_rms_norm_match_reference(ctx) {
        for &(rows, dim) in &[(1usize, 1usize), (3, 7), (5, 640), (2, 1001)] {
            let x: Vec<f32> = test_values(rows * dim, 16).iter().map(|v| 4.0 * v).collect();
            // Gemma's stored weights scatter around 0: (1 + w) is what scales.
            let w = test_values(dim, 17);
            let residual = test_values(rows * dim, 18);
            let opts = RmsOpts { eps: 1e-6, weight_offset: 1.0 };
            let xt = Tensor::upload_f32(ctx, "x", &[rows, dim], &x).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[dim], &w).unwrap();
            let out = Tensor::zeros(ctx, "out", &[rows, dim]).unwrap();
            let res = Tensor::upload_f32(ctx, "residual", &[rows, dim], &residual).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            rms_norm_with(&mut rec, &xt, &wt, &out, rows, opts, Store::Write, None).unwrap();
            rms_norm_with(&mut rec, &xt, &wt, &res, rows, opts, Store::Accumulate, None).unwrap();
            rec.submit().unwrap();
            let want = reference_with(&x, &w, opts);
            let got = ctx.read_f32_async(&out.buf, 0, rows * dim).await.unwrap();
            // As the plain norm: f32 sum of squares over <= 1001 terms.
            compare(&got, &want, 1e-5, 1e-4).unwrap_or_else(|e| panic!("write rows {rows} dim {dim}: {e}"));
            let want_acc: Vec<f32> = residual.iter().zip(&want).map(|(r, y)| r + y).collect();
            let got = ctx.read_f32_async(&res.buf, 0, rows * dim).await.unwrap();
            // One more f32 add of values O(1): half an ulp of 2 more.
            compare(&got, &want_acc, 2e-5, 1e-4).unwrap_or_else(|e| panic!("accumulate rows {rows} dim {dim}: {e}"));
        }
    });

    gpu_test!(fn per_head_rms_norm_in_place_matches_reference(ctx) {
        // (tokens, heads, head_dim): Qwen3's 16, Gemma 3 270M's 256, odd ones.
        for &(t, h, d) in &[(1usize, 1usize, 1usize), (3, 5, 7), (7, 4, 16), (2, 4, 256), (5, 3, 130)] {
            let x: Vec<f32> = test_values(t * h * d, 19).iter().enumerate().map(|(i, v)| v * (1 + i / d % 5) as f32).collect();
            let w = test_values(d, 20);
            for opts in [RmsOpts::eps(1e-6), RmsOpts { eps: 1e-6, weight_offset: 1.0 }] {
                let xt = Tensor::upload_f32(ctx, "x", &[t, h * d], &x).unwrap();
                let wt = Tensor::upload_f32(ctx, "w", &[d], &w).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                rms_norm_heads(&mut rec, &xt, &wt, t, h, opts, None).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
                // Rows of head_dim <= 256: the f32 error of the plain norm.
                compare(&got, &reference_with(&x, &w, opts), 1e-5, 1e-4).unwrap_or_else(|e| panic!("t {t} h {h} d {d} {opts:?}: {e}"));
            }
        }
    });

    gpu_test!(fn per_head_rms_norm_refuses_a_mismatched_width(ctx) {
        let xt = Tensor::zeros(ctx, "x", &[2, 30]).unwrap();
        let wt = Tensor::zeros(ctx, "w", &[16]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let err = rms_norm_heads(&mut rec, &xt, &wt, 2, 2, RmsOpts::eps(1e-6), None).unwrap_err();
        assert!(err.to_string().contains("rms_norm_heads"), "{err}");
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
