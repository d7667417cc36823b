//! Linear layers: y = x · Wᵀ (+ bias) (+ y), W row-major [n, k].
//! Prefill (many tokens) uses the tiled matrix-matrix kernel; decode uses the mat-vec kernel,
//! which reads each weight row once per token with coalesced loads.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "matmul", body: include_str!("../../shaders/matmul.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    k: u32,
    n: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

/// Up to this many tokens, the mat-vec kernel is used.
pub const MATVEC_MAX_TOKENS: usize = 4;

/// How the result is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    /// y = x·Wᵀ + bias
    Write,
    /// y += x·Wᵀ + bias (a residual add fused into the projection)
    Accumulate,
}

/// FLOPs and bytes of one linear layer over `t` tokens.
pub fn cost(t: usize, k: usize, n: usize, store: Store) -> (u64, u64) {
    let (t, k, n) = (t as u64, k as u64, n as u64);
    let y_bytes = if store == Store::Accumulate { 8 * t * n } else { 4 * t * n };
    (2 * t * k * n, 4 * (n * k + t * k) + y_bytes)
}

/// y[:t] = x[:t] · Wᵀ (+ bias); x: (>= t, k), w: (n, k), bias: (n,), y: (>= t, n).
/// `bias` is bound even when None (any buffer will do; it is not read).
#[allow(clippy::too_many_arguments)]
pub fn linear(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, t: usize, store: Store) -> Result<()> {
    let [n, k] = w.shape[..] else {
        return Err(Error::Shape { op, msg: format!("weight must be 2-D [out, in], is {:?}", w.shape) });
    };
    if x.shape.last() != Some(&k) {
        return Err(Error::Shape { op, msg: format!("input {:?} does not end in the weight's in-features {k}", x.shape) });
    }
    x.holds(op, "input", t * k)?;
    y.holds(op, "output", t * n)?;
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::Shape { op, msg: format!("bias has {} values, expected {n}", b.numel()) });
        }
    }
    let p = Params { t: t as u32, k: k as u32, n: n as u32, has_bias: bias.is_some() as u32, accumulate: (store == Store::Accumulate) as u32, _pad: [0; 3] };
    let (flops, bytes) = cost(t, k, n, store);
    let info = OpInfo { op, layer: layer.map(|l| l as u32), flops, bytes };
    let bias_buf = bias.map(|b| &b.buf).unwrap_or(&w.buf);
    let buffers = [&x.buf, &w.buf, bias_buf, &y.buf];
    // The vec4 kernels need rows of whole vec4s; odd widths take the scalar ones.
    let vec4 = k % 4 == 0;
    if t <= MATVEC_MAX_TOKENS {
        let pipe = rec.ctx.pipeline(&SHADER, if vec4 { "matvec4" } else { "matvec" }, &[])?;
        let rows_per_workgroup = if vec4 { 32 } else { 8 };
        let blocks = (n.div_ceil(rows_per_workgroup) * t) as u32;
        rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, blocks));
    } else if vec4 {
        let pipe = rec.ctx.pipeline(&SHADER, "matmul4", &[])?;
        rec.dispatch(info, &pipe, &buffers, &p, [n.div_ceil(64) as u32, t.div_ceil(64) as u32, 1]);
    } else {
        let pipe = rec.ctx.pipeline(&SHADER, "matmul", &[])?;
        rec.dispatch(info, &pipe, &buffers, &p, [n.div_ceil(64) as u32, t.div_ceil(32) as u32, 1]);
    }
    Ok(())
}

/// CPU reference, accumulating in f64: y (t, n) from x (t, k), w (n, k).
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, y0: Option<&[f32]>, t: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for r in 0..t {
        for c in 0..n {
            let mut acc: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
            acc += bias.map_or(0.0, |b| b[c] as f64);
            acc += y0.map_or(0.0, |y0| y0[r * n + c] as f64);
            y[r * n + c] = acc as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{compare, test_values};

    fn run(t: usize, k: usize, n: usize, with_bias: bool, store: Store) {
        let Some(ctx) = crate::gpu::context::test_context() else { return };
        let x = test_values(t * k, 21 + t as u64);
        let w = test_values(n * k, 22 + n as u64);
        let b = test_values(n, 23);
        let y0 = test_values(t * n, 24);
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let wt = Tensor::upload_f32(ctx, "w", &[n, k], &w).unwrap();
        let bt = Tensor::upload_f32(ctx, "b", &[n], &b).unwrap();
        let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        linear(&mut rec, "test", None, &xt, &wt, with_bias.then_some(&bt), &yt, t, store).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&yt.buf, 0, t * n).unwrap();
        let want = reference(&x, &w, with_bias.then_some(&b[..]), (store == Store::Accumulate).then_some(&y0[..]), t, k, n);
        // f32 accumulation of k products of values in [-1, 1]: a typical error of
        // 2^-24 * sqrt(k) * |sum|; 2e-6 * k absolute covers the worst orders with margin.
        compare(&got, &want, 2e-6 * k as f32, 1e-4).unwrap_or_else(|e| panic!("t {t} k {k} n {n} bias {with_bias} {store:?}: {e}"));
    }

    #[test]
    fn matvec_matches_reference_on_odd_sizes() {
        // k % 4 == 0 takes the vec4 kernel, other k the scalar one.
        for &(t, k, n) in &[(1, 1, 1), (1, 7, 3), (1, 577, 131), (3, 64, 1001), (4, 129, 9), (1, 4, 5), (1, 576, 193), (2, 1536, 77)] {
            run(t, k, n, false, Store::Write);
        }
        run(1, 100, 37, true, Store::Accumulate);
        run(2, 33, 65, true, Store::Write);
    }

    #[test]
    fn matmul_matches_reference_on_odd_sizes() {
        for &(t, k, n) in &[(5, 1, 1), (5, 17, 3), (33, 65, 129), (70, 200, 67), (9, 576, 100), (5, 4, 3), (65, 68, 129), (130, 1536, 61)] {
            run(t, k, n, false, Store::Write);
        }
        run(37, 50, 70, true, Store::Accumulate);
        run(6, 31, 5, true, Store::Write);
        // The vec4 kernel with bias and a fused residual add, as prefill's o_proj/down_proj use it.
        run(37, 52, 70, true, Store::Accumulate);
        run(70, 576, 131, false, Store::Accumulate);
    }
}
