//! Backward of rms_norm: dx by one workgroup per row, dw by a two-pass reduction over rows
//! (partials per block of 64 rows, then a sum over blocks), deterministic without atomics.

use super::Params;
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Tensor};

/// Rows per dw partial; must match RMS_ROWS in norm.wgsl.
const RMS_ROWS: usize = 64;

/// Scratch the backward needs: rstd (n_rows,) and dw partials (ceil(n_rows / 64), dim).
pub struct RmsNormScratch {
    pub rstd: Tensor,
    pub partials: Tensor,
}

impl RmsNormScratch {
    pub fn new(ctx: &crate::gpu::Context, n_rows: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            rstd: Tensor::zeros(ctx, "rms_norm rstd", &[n_rows.max(1)])?,
            partials: Tensor::zeros(ctx, "rms_norm dw partials", &[n_rows.div_ceil(RMS_ROWS).max(1), dim])?,
        })
    }
}

/// Given dy = dL/dy of y = rms_norm(x, weight), writes dx and dw (dx += and dw += when
/// `accumulate`: a residual branch's gradient adds to the stream's, micro-batches add up).
/// x, dy, dx: (n_rows, dim); weight, dw: (dim,).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward(rec: &mut Recorder, x: &Tensor, weight: &Tensor, dy: &Tensor, dx: &Tensor, dw: &Tensor, scratch: &RmsNormScratch, n_rows: usize, eps: f32, accumulate: bool) -> Result<()> {
    let dim = weight.numel();
    if n_rows == 0 || dim == 0 {
        return Err(Error::Shape { op: "rms_norm_backward", msg: format!("empty input: {n_rows} rows of {dim}") });
    }
    for (name, t) in [("x", x), ("dy", dy), ("dx", dx)] {
        t.holds("rms_norm_backward", name, n_rows * dim)?;
    }
    dw.holds("rms_norm_backward", "dw", dim)?;
    scratch.rstd.holds("rms_norm_backward", "rstd", n_rows)?;
    let n_blocks = n_rows.div_ceil(RMS_ROWS);
    scratch.partials.holds("rms_norm_backward", "dw partials", n_blocks * dim)?;
    let n = (n_rows * dim) as u64;
    let p = Params { n_rows: n_rows as u32, dim: dim as u32, eps, w_offset: 0.0, accumulate: accumulate as u32, _pad: [0; 3] };

    let pipe = rec.ctx.pipeline(&super::SHADER, "rms_norm_backward_dx", &[])?;
    let info = OpInfo::new("rms_norm_backward_dx", 7 * n, 4 * (3 * n + dim as u64));
    rec.dispatch(info, &pipe, &[&x.buf, &weight.buf, &dy.buf, &dx.buf, &scratch.rstd.buf], &p, grid(rec.ctx, n_rows as u32));

    let pipe = rec.ctx.pipeline(&super::SHADER, "rms_norm_backward_dw_partial", &[])?;
    let info = OpInfo::new("rms_norm_backward_dw", 3 * n, 4 * (2 * n + n_blocks as u64 * dim as u64));
    let wg = grid(rec.ctx, (n_blocks * dim).div_ceil(256) as u32);
    rec.dispatch(info, &pipe, &[&x.buf, &dy.buf, &scratch.rstd.buf, &scratch.partials.buf], &p, wg);

    let pipe = rec.ctx.pipeline(&super::SHADER, "rms_norm_backward_dw_sum", &[])?;
    let info = OpInfo::new("rms_norm_backward_dw", (n_blocks * dim) as u64, 4 * (n_blocks * dim + dim) as u64);
    rec.dispatch(info, &pipe, &[&scratch.partials.buf, &dw.buf], &p, grid(rec.ctx, dim.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of the forward in f64 (for finite differences).
pub fn forward_f64(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
            row.iter().zip(weight).map(move |(v, w)| v * r * w).collect::<Vec<_>>()
        })
        .collect()
}

/// CPU reference of the backward in f64: (dx, dw).
pub fn reference(x: &[f64], weight: &[f64], dy: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let dim = weight.len();
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![0.0; dim];
    for (row, g) in x.chunks(dim).zip(dy.chunks(dim)) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
        let dot: f64 = (0..dim).map(|i| g[i] * weight[i] * row[i]).sum();
        let c = dot * r * r * r / dim as f64;
        for i in 0..dim {
            dx.push(r * g[i] * weight[i] - row[i] * c);
            dw[i] += g[i] * row[i] * r;
        }
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{check, dot, to_f32, values};

    #[test]
    fn reference_equals_finite_differences() {
        let (rows, dim) = (3, 5);
        let x = values(rows * dim, 1);
        let w: Vec<f64> = values(dim, 2).iter().map(|v| 1.0 + v).collect();
        let g = values(rows * dim, 3);
        let (dx, dw) = reference(&x, &w, &g, 1e-5);
        check("rms_norm dx", &x, &dx, |x| dot(&g, &forward_f64(x, &w, 1e-5))).unwrap();
        check("rms_norm dw", &w, &dw, |w| dot(&g, &forward_f64(&x, w, 1e-5))).unwrap();
    }

    gpu_test!(fn rms_norm_backward_matches_reference_on_odd_sizes(ctx) {
        // 130 rows: three dw blocks, the last one partial.
        for &(rows, dim) in &[(1usize, 1usize), (3, 7), (130, 37), (2, 1001)] {
            let x = values(rows * dim, 4);
            let w: Vec<f64> = values(dim, 5).iter().map(|v| 1.0 + v).collect();
            let g = values(rows * dim, 6);
            let (want_dx, want_dw) = reference(&x, &w, &g, 1e-5);
            let xt = Tensor::upload_f32(ctx, "x", &[rows, dim], &to_f32(&x)).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[dim], &to_f32(&w)).unwrap();
            let gt = Tensor::upload_f32(ctx, "dy", &[rows, dim], &to_f32(&g)).unwrap();
            // dx and dw start at 1 and accumulate, so the flag is tested too.
            let dx = Tensor::upload_f32(ctx, "dx", &[rows, dim], &vec![1.0; rows * dim]).unwrap();
            let dw = Tensor::upload_f32(ctx, "dw", &[dim], &vec![1.0; dim]).unwrap();
            let scratch = RmsNormScratch::new(ctx, rows, dim).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            rms_norm_backward(&mut rec, &xt, &wt, &gt, &dx, &dw, &scratch, rows, 1e-5, true).unwrap();
            rec.submit().unwrap();
            let got_dx = ctx.read_f32_async(&dx.buf, 0, rows * dim).await.unwrap();
            let got_dw = ctx.read_f32_async(&dw.buf, 0, dim).await.unwrap();
            // f32 sums over <= 1001 terms (dx) or 130 rows (dw): relative error ~ n * 2^-24 on
            // values O(1) whose terms cancel, so 1e-5 absolute plus 1e-4 relative.
            let want_dx: Vec<f64> = want_dx.iter().map(|v| v + 1.0).collect();
            compare(&got_dx, &to_f32(&want_dx), 1e-5, 1e-4).unwrap_or_else(|e| panic!("dx rows {rows} dim {dim}: {e}"));
            let want_dw: Vec<f32> = want_dw.iter().map(|v| (v + 1.0) as f32).collect();
            compare(&got_dw, &want_dw, 1e-5, 1e-4).unwrap_or_else(|e| panic!("dw rows {rows} dim {dim}: {e}"));
        }
    });
}
