//! Backward of the linear layer y = x · Wᵀ: dX = dY · W and dW (+)= dYᵀ · X. dX also runs
//! through frozen weights (LoRA's base): f32 ones are read in place, chunk by chunk; quantized
//! ones take the dequantized path: 256 rows at a time are dequantized into an f32 scratch by
//! the format's own embedding gather (quant.wgsl's `embed`), then read like f32 rows, so the
//! extra memory is 256 rows of f32 whatever the matrix.

use super::super::embed::embed;
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Tensor, Weight};
use crate::weights::DType;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearBackParams {
    t: u32,
    k: u32,
    n: u32,
    n_total: u32,
    row0: u32,
    accumulate: u32,
    _pad: [u32; 2],
}

#[allow(clippy::too_many_arguments)]
fn dispatch_dx(rec: &mut Recorder, dy: &Tensor, w: &wgpu::Buffer, dx: &Tensor, t: usize, k: usize, rows: (usize, usize, usize), accumulate: bool) -> Result<()> {
    let (row0, n, n_total) = rows;
    let pipe = rec.ctx.pipeline(&super::SHADER, "linear_backward_dx", &[])?;
    let p = LinearBackParams { t: t as u32, k: k as u32, n: n as u32, n_total: n_total as u32, row0: row0 as u32, accumulate: accumulate as u32, _pad: [0; 2] };
    let info = OpInfo::new("linear_backward_dx", 2 * (t * k * n) as u64, 4 * (t * n + n * k + t * k) as u64);
    rec.dispatch(info, &pipe, &[&dy.buf, w, &dx.buf], &p, grid(rec.ctx, (t * k).div_ceil(64) as u32));
    Ok(())
}

fn check_dx(dy: &Tensor, dx: &Tensor, t: usize, k: usize, n: usize) -> Result<()> {
    dy.holds("linear_backward_dx", "dy", t * n)?;
    dx.holds("linear_backward_dx", "dx", t * k)
}

/// dx (+)= dy · W for a trainable f32 W: (n, k). dy: (t, n); dx: (t, k).
pub fn linear_backward_dx(rec: &mut Recorder, dy: &Tensor, w: &Tensor, dx: &Tensor, t: usize, accumulate: bool) -> Result<()> {
    let [n, k] = w.shape[..] else {
        return Err(Error::Shape { op: "linear_backward_dx", msg: format!("W must be 2-D, is {:?}", w.shape) });
    };
    check_dx(dy, dx, t, k, n)?;
    dispatch_dx(rec, dy, &w.buf, dx, t, k, (0, n, n), accumulate)
}

/// Rows of a quantized weight dequantized per dispatch of its dX.
const DEQUANT_ROWS: usize = 256;

/// dx (+)= dy · W through a frozen weight of any storage format, one chunk (f32) or one block
/// of dequantized rows (other formats) at a time.
pub fn linear_backward_dx_frozen(rec: &mut Recorder, dy: &Tensor, w: &Weight, dx: &Tensor, t: usize, accumulate: bool) -> Result<()> {
    check_dx(dy, dx, t, w.cols, w.rows)?;
    if w.dtype == DType::F32 {
        for (i, c) in w.chunks.iter().enumerate() {
            dispatch_dx(rec, dy, &c.quants, dx, t, w.cols, (c.row0, c.rows, w.rows), accumulate || i > 0)?;
        }
        return Ok(());
    }
    let ids: Vec<u32> = (0..w.rows as u32).collect();
    let ids = Tensor { buf: rec.ctx.upload("dequantized row ids", &ids)?, shape: vec![w.rows] };
    let block = DEQUANT_ROWS.min(w.rows);
    let rows = Tensor::zeros(rec.ctx, &format!("{} dequantized rows", w.name), &[block, w.cols])?;
    for (i, r0) in (0..w.rows).step_by(block.max(1)).enumerate() {
        let n = block.min(w.rows - r0);
        embed(rec, w, &ids, r0, n, &rows)?;
        dispatch_dx(rec, dy, &rows.buf, dx, t, w.cols, (r0, n, w.rows), accumulate || i > 0)?;
    }
    Ok(())
}

/// dw (+)= dyᵀ · x. dy: (t, n); x: (t, k); dw: (n, k).
pub fn linear_backward_dw(rec: &mut Recorder, dy: &Tensor, x: &Tensor, dw: &Tensor, t: usize, accumulate: bool) -> Result<()> {
    let [n, k] = dw.shape[..] else {
        return Err(Error::Shape { op: "linear_backward_dw", msg: format!("dW must be 2-D, is {:?}", dw.shape) });
    };
    dy.holds("linear_backward_dw", "dy", t * n)?;
    x.holds("linear_backward_dw", "x", t * k)?;
    let pipe = rec.ctx.pipeline(&super::SHADER, "linear_backward_dw", &[])?;
    let p = LinearBackParams { t: t as u32, k: k as u32, n: n as u32, n_total: n as u32, row0: 0, accumulate: accumulate as u32, _pad: [0; 2] };
    let info = OpInfo::new("linear_backward_dw", 2 * (t * k * n) as u64, 4 * (t * n + t * k + n * k) as u64);
    rec.dispatch(info, &pipe, &[&dy.buf, &x.buf, &dw.buf], &p, grid(rec.ctx, (n * k).div_ceil(64) as u32));
    Ok(())
}

/// CPU reference of the forward in f64: y = x · Wᵀ.
pub fn forward_f64(x: &[f64], w: &[f64], t: usize, k: usize, n: usize) -> Vec<f64> {
    (0..t * n).map(|i| (0..k).map(|j| x[i / n * k + j] * w[i % n * k + j]).sum()).collect()
}

/// CPU reference of the backward in f64: (dx, dw).
pub fn reference(x: &[f64], w: &[f64], dy: &[f64], t: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let dx = (0..t * k).map(|i| (0..n).map(|j| dy[i / k * n + j] * w[j * k + i % k]).sum()).collect();
    let dw = (0..n * k).map(|i| (0..t).map(|r| dy[r * n + i / k] * x[r * k + i % k]).sum()).collect();
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::gradcheck::{check, dot, to_f32, values};
    use crate::ops::{compare, test_values};

    #[test]
    fn reference_equals_finite_differences() {
        let (t, k, n) = (3, 4, 5);
        let (x, w, g) = (values(t * k, 71), values(n * k, 72), values(t * n, 73));
        let (dx, dw) = reference(&x, &w, &g, t, k, n);
        check("linear dx", &x, &dx, |x| dot(&g, &forward_f64(x, &w, t, k, n))).unwrap();
        check("linear dw", &w, &dw, |w| dot(&g, &forward_f64(&x, w, t, k, n))).unwrap();
    }

    gpu_test!(fn linear_backward_matches_reference_on_odd_sizes(ctx) {
        for &(t, k, n) in &[(1usize, 1usize, 1usize), (7, 33, 19), (13, 64, 129)] {
            let (x, w, g) = (values(t * k, 74), values(n * k, 75), values(t * n, 76));
            let (want_dx, want_dw) = reference(&x, &w, &g, t, k, n);
            let xt = Tensor::upload_f32(ctx, "x", &[t, k], &to_f32(&x)).unwrap();
            let wt = Tensor::upload_f32(ctx, "w", &[n, k], &to_f32(&w)).unwrap();
            let gt = Tensor::upload_f32(ctx, "dy", &[t, n], &to_f32(&g)).unwrap();
            let frozen = Weight::from_f32(ctx, "w", &[n, k], &to_f32(&w)).unwrap();
            let dx = Tensor::zeros(ctx, "dx", &[t, k]).unwrap();
            let dx_frozen = Tensor::zeros(ctx, "dx", &[t, k]).unwrap();
            let dw = Tensor::zeros(ctx, "dw", &[n, k]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            linear_backward_dx(&mut rec, &gt, &wt, &dx, t, false).unwrap();
            linear_backward_dx_frozen(&mut rec, &gt, &frozen, &dx_frozen, t, false).unwrap();
            // dW twice with accumulate: a second micro-batch doubles it.
            linear_backward_dw(&mut rec, &gt, &xt, &dw, t, false).unwrap();
            linear_backward_dw(&mut rec, &gt, &xt, &dw, t, true).unwrap();
            rec.submit().unwrap();
            // f32 dot products of <= 129 terms O(1): 1e-5 absolute + 1e-5 relative.
            for (name, buf) in [("dx", &dx), ("dx frozen", &dx_frozen)] {
                let got = ctx.read_f32_async(&buf.buf, 0, t * k).await.unwrap();
                compare(&got, &to_f32(&want_dx), 1e-5, 1e-5).unwrap_or_else(|e| panic!("{name} {t}x{k}x{n}: {e}"));
            }
            let got = ctx.read_f32_async(&dw.buf, 0, n * k).await.unwrap();
            let want_dw2: Vec<f32> = want_dw.iter().map(|v| (2.0 * v) as f32).collect();
            compare(&got, &want_dw2, 2e-5, 1e-5).unwrap_or_else(|e| panic!("dw {t}x{k}x{n}: {e}"));
        }
    });

    gpu_test!(fn linear_backward_dx_through_quantized_weights(ctx) {
        use crate::weights::dtype::{dequantize, quantize_q8_0};
        // 300 rows: two dequantized blocks, the second partial. The reference uses the
        // dequantized weights, so only the f32 sums differ.
        let (t, k, n) = (5usize, 64usize, 300usize);
        let (w, g) = (test_values(n * k, 77), values(t * n, 78));
        let q = quantize_q8_0(&w);
        let rows: Vec<&[u8]> = q.chunks(DType::Q8_0.bytes_for(k).unwrap()).collect();
        let wq = Weight::from_rows(ctx, "w", DType::Q8_0, k, &rows, ctx.binding_limit()).unwrap();
        let deq: Vec<f64> = dequantize(DType::Q8_0, &q, n * k).unwrap().into_iter().map(f64::from).collect();
        let (want, _) = reference(&values(t * k, 79), &deq, &g, t, k, n);
        let gt = Tensor::upload_f32(ctx, "dy", &[t, n], &to_f32(&g)).unwrap();
        let dx = Tensor::zeros(ctx, "dx", &[t, k]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        linear_backward_dx_frozen(&mut rec, &gt, &wq, &dx, t, false).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&dx.buf, 0, t * k).await.unwrap();
        // f32 dot products of 300 terms O(1): 3e-5 absolute + 1e-5 relative.
        compare(&got, &to_f32(&want), 3e-5, 1e-5).unwrap_or_else(|e| panic!("q8_0 dx: {e}"));
    });
}
