//! Linear layers: y = x · Wᵀ (+ bias) (+ y), W row-major [n, k] in any storage format.
//! Weights whose rows are whole 32-weight units (every real model) go through `quant.wgsl`
//! with one small file per format (`shaders/formats/`), dequantizing in registers and
//! accumulating in f32: a mat-vec kernel for decode, a tiled matrix-matrix kernel for prefill.
//! f32 weights of other widths (tiny test models) take the plain f32 kernels of `matmul.wgsl`.
//! What follows a projection is fused into its store: bias, residual add, the Q/K/V split and
//! SwiGLU or GeGLU over interleaved gate/up rows (`Out`).

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor, Weight};
use crate::weights::DType;

pub const SHADER: Shader = Shader { name: "matmul", body: include_str!("../../shaders/matmul.wgsl") };

macro_rules! quant_shader {
    ($name:literal, $file:literal) => {
        Shader { name: $name, body: concat!(include_str!(concat!("../../shaders/formats/", $file)), "\n", include_str!("../../shaders/quant.wgsl")) }
    };
}

/// The quantized-weight kernels, one shader per storage format, in `DType::ALL`'s order.
pub const QUANT_SHADERS: [Shader; DType::ALL.len()] = [
    quant_shader!("quant_f32", "f32.wgsl"),
    quant_shader!("quant_f16", "f16.wgsl"),
    quant_shader!("quant_bf16", "bf16.wgsl"),
    quant_shader!("quant_q8_0", "q8_0.wgsl"),
    quant_shader!("quant_q5_0", "q5_0.wgsl"),
    quant_shader!("quant_q5_1", "q5_1.wgsl"),
    quant_shader!("quant_q4_0", "q4_0.wgsl"),
    quant_shader!("quant_q4_1", "q4_1.wgsl"),
    quant_shader!("quant_iq4_nl", "iq4_nl.wgsl"),
    quant_shader!("quant_q2_k", "q2_k.wgsl"),
    quant_shader!("quant_q3_k", "q3_k.wgsl"),
    quant_shader!("quant_q4_k", "q4_k.wgsl"),
    quant_shader!("quant_q5_k", "q5_k.wgsl"),
    quant_shader!("quant_q6_k", "q6_k.wgsl"),
    quant_shader!("quant_iq4_xs", "iq4_xs.wgsl"),
];

/// The `quant.wgsl` shader for weights of `dtype` (the test below checks the order).
pub fn quant_shader(dtype: DType) -> &'static Shader {
    &QUANT_SHADERS[dtype as usize]
}

/// Uniforms of `quant.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct QuantParams {
    pub t: u32,
    pub k: u32,
    pub n: u32,
    pub row0: u32,
    pub n_total: u32,
    pub mode: u32,
    pub split1: u32,
    pub split2: u32,
    pub has_bias: u32,
    pub id_offset: u32,
    pub vocab: u32,
    /// embed: multiplies every value.
    pub scale: f32,
}

/// Uniforms of the f32 kernels of `matmul.wgsl`.
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

/// Up to this many tokens, a mat-vec kernel is used (the weights read once for all tokens), as
/// llama.cpp does for batches of up to 8.
pub const MATVEC_MAX_TOKENS: usize = 8;

/// Rows of a mat-vec workgroup in `quant.wgsl` (`MV_ROWS`).
const MATVEC_ROWS: usize = 32;

/// How the decode mat-vec (1 to `MATVEC_MAX_TOKENS` tokens) spreads a weight over threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MatVecShape {
    /// GPUs: 8 lanes along K per group of 4 rows, 32 rows per workgroup, so a group reads
    /// contiguous memory and x is read once per unit for 4 rows (`matvec`, `matvec_multi`).
    Lanes,
    /// CPU-type adapters (lavapipe, SwiftShader), where a workgroup's invocations are the SIMD
    /// lanes of one core: a pair of rows per invocation, so x's address is the same in every
    /// lane and nothing is reduced across lanes (`matvec_rows`); faster there (see benches/ops.rs).
    Rows,
}

/// Environment variable choosing the mat-vec shape (`lanes` or `rows`) over the adapter's.
pub const MATVEC_SHAPE_ENV: &str = "QUILL_MATVEC";

impl MatVecShape {
    pub const ALL: [MatVecShape; 2] = [MatVecShape::Lanes, MatVecShape::Rows];

    pub fn for_adapter(device_type: wgpu::DeviceType) -> MatVecShape {
        match device_type {
            wgpu::DeviceType::Cpu => MatVecShape::Rows,
            _ => MatVecShape::Lanes,
        }
    }

    /// The shape for this adapter, or the one `QUILL_MATVEC` names.
    pub fn chosen(device_type: wgpu::DeviceType) -> Result<MatVecShape> {
        match std::env::var(MATVEC_SHAPE_ENV) {
            Ok(text) => match text.trim().to_ascii_lowercase().as_str() {
                "lanes" => Ok(MatVecShape::Lanes),
                "rows" => Ok(MatVecShape::Rows),
                _ => Err(Error::arg(MATVEC_SHAPE_ENV, format!("'{text}' is not a mat-vec shape (lanes or rows)"))),
            },
            Err(_) => Ok(Self::for_adapter(device_type)),
        }
    }
}

/// Which `quant.wgsl` kernel a linear layer over `t` tokens takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum QuantKernel {
    /// One token on a GPU: `matvec`, whose unit dot products scale once per unit.
    MatVec,
    /// 2 to 8 tokens on a GPU: `matvec_multi`, each unit dequantized once for all of them; the
    /// number is its `MV_TOKENS`, t itself (a constant, so its per-token branches fold away).
    MatVecMulti(usize),
    /// 1 to 8 tokens on a CPU-type adapter: `matvec_rows` with `MV_TOKENS` = t.
    MatVecRows(usize),
    /// More: the tiled `matmul`.
    MatMul,
}

pub(crate) fn quant_kernel(t: usize, shape: MatVecShape) -> QuantKernel {
    match (t, shape) {
        (t, _) if t > MATVEC_MAX_TOKENS => QuantKernel::MatMul,
        (t, MatVecShape::Rows) => QuantKernel::MatVecRows(t.max(1)),
        (0 | 1, MatVecShape::Lanes) => QuantKernel::MatVec,
        (t, MatVecShape::Lanes) => QuantKernel::MatVecMulti(t),
    }
}

/// Rows of a `matvec_rows` workgroup (64 invocations of 4 rows: `MR_ROWS`).
const MATVEC_ROWS_ROWS: usize = 256;

/// How the result is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    /// y = x·Wᵀ + bias
    Write,
    /// y += x·Wᵀ + bias (a residual add fused into the projection)
    Accumulate,
}

/// Where a linear layer's rows go.
#[derive(Clone, Copy)]
pub enum Out<'a> {
    /// All rows into one tensor (t, n).
    One(&'a Tensor, Store),
    /// A fused Q/K/V projection: rows [0, s1) into the first tensor, [s1, s2) into the second,
    /// [s2, n) into the third, each (t, its rows).
    Split3(&'a Tensor, &'a Tensor, &'a Tensor, usize, usize),
    /// A fused gate/up projection whose rows interleave gate and up (gate r at 2r, up r at
    /// 2r + 1): silu(gate) · up into (t, n / 2).
    SwiGlu(&'a Tensor),
    /// As `SwiGlu` with gelu_tanh(gate) · up (Gemma's MLP).
    GeGlu(&'a Tensor),
}

/// FLOPs and bytes of one linear layer over `t` tokens with `w_bytes` of weights.
pub fn cost(t: usize, k: usize, n: usize, w_bytes: u64, store: Store) -> (u64, u64) {
    let (t, k, n) = (t as u64, k as u64, n as u64);
    let y_bytes = if store == Store::Accumulate { 8 * t * n } else { 4 * t * n };
    (2 * t * k * n, w_bytes + 4 * t * k + y_bytes)
}

/// y[:t] = x[:t] · Wᵀ (+ bias) stored as `store` says; x: (>= t, k), w: (n, k), bias: (n,),
/// y: (>= t, n).
#[allow(clippy::too_many_arguments)]
pub fn linear(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, y: &Tensor, t: usize, store: Store) -> Result<()> {
    linear_out(rec, op, layer, x, w, bias, Out::One(y, store), t)
}

/// A linear layer whose rows go where `out` says.
#[allow(clippy::too_many_arguments)]
pub fn linear_out(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, out: Out, t: usize) -> Result<()> {
    let shape = MatVecShape::chosen(rec.ctx.info.device_type)?;
    linear_shaped(rec, op, layer, x, w, bias, out, t, shape)
}

/// `linear_out` with the mat-vec shape given (the tests run every adapter class's shape).
#[allow(clippy::too_many_arguments)]
pub fn linear_shaped(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, out: Out, t: usize, shape: MatVecShape) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    if x.shape.last() != Some(&k) {
        return Err(Error::Shape { op, msg: format!("input {:?} does not end in the weight's in-features {k}", x.shape) });
    }
    x.holds(op, "input", t * k)?;
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::Shape { op, msg: format!("bias has {} values, expected {n}", b.numel()) });
        }
    }
    let (mode, split1, split2, y0, y1, y2, store) = match out {
        Out::One(y, store) => {
            y.holds(op, "output", t * n)?;
            (if store == Store::Accumulate { 1 } else { 0 }, 0, 0, y, None, None, store)
        }
        Out::Split3(a, b, c, s1, s2) => {
            if !(s1 <= s2 && s2 <= n) {
                return Err(Error::Shape { op, msg: format!("split rows {s1}, {s2} outside {n}") });
            }
            a.holds(op, "first output", t * s1)?;
            b.holds(op, "second output", t * (s2 - s1))?;
            c.holds(op, "third output", t * (n - s2))?;
            (2, s1, s2, a, Some(b), Some(c), Store::Write)
        }
        Out::SwiGlu(y) | Out::GeGlu(y) => {
            if n % 2 != 0 {
                return Err(Error::Shape { op, msg: format!("a gated MLP needs interleaved gate/up rows, got {n} rows") });
            }
            y.holds(op, "output", t * n / 2)?;
            (if matches!(out, Out::GeGlu(_)) { 4 } else { 3 }, 0, 0, y, None, None, Store::Write)
        }
    };
    let (flops, bytes) = cost(t, k, n, w.bytes(), store);
    let info = OpInfo { op, layer: layer.map(|l| l as u32), flops, bytes };

    if k % 32 != 0 {
        // Plain f32 kernels: any width, one chunk, one output.
        if w.dtype != DType::F32 || w.chunks.len() != 1 || mode > 1 {
            return Err(Error::Shape { op, msg: format!("{} weights with {k} columns (not whole 32-weight units) need f32 storage in one binding and a plain output", w.dtype.name()) });
        }
        let wbuf = &w.chunks[0].quants;
        let p = Params { t: t as u32, k: k as u32, n: n as u32, has_bias: bias.is_some() as u32, accumulate: mode, _pad: [0; 3] };
        let buffers = [&x.buf, wbuf, bias.map(|b| &b.buf).unwrap_or(wbuf), &y0.buf];
        if t <= MATVEC_MAX_TOKENS {
            let pipe = rec.ctx.pipeline(&SHADER, "matvec", &[])?;
            rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (n.div_ceil(8) * t) as u32));
        } else {
            let pipe = rec.ctx.pipeline(&SHADER, "matmul", &[])?;
            rec.dispatch(info, &pipe, &buffers, &p, [n.div_ceil(64) as u32, t.div_ceil(32) as u32, 1]);
        }
        return Ok(());
    }

    if k % w.dtype.block_len() != 0 {
        return Err(Error::Shape { op, msg: format!("{k} columns are not whole {} blocks", w.dtype.name()) });
    }
    let shader = quant_shader(w.dtype);
    // Prefill tiles are 16, 32, 48 or 64 tokens tall, the least that covers t (up to 64).
    let tokens_per_thread = t.div_ceil(16).clamp(1, 4);
    let kernel = quant_kernel(t, shape);
    let pipe = match kernel {
        QuantKernel::MatVec => rec.ctx.pipeline(shader, "matvec", &[])?,
        QuantKernel::MatVecMulti(tokens) => rec.ctx.pipeline(shader, "matvec_multi", &[("MV_TOKENS", tokens as f64)])?,
        QuantKernel::MatVecRows(tokens) => rec.ctx.pipeline(shader, "matvec_rows", &[("MV_TOKENS", tokens as f64)])?,
        QuantKernel::MatMul => rec.ctx.pipeline(shader, "matmul", &[("TOKENS_PER_THREAD", tokens_per_thread as f64)])?,
    };
    let [spare0, spare1] = &rec.ctx.spare;
    for (i, c) in w.chunks.iter().enumerate() {
        let p = QuantParams {
            t: t as u32,
            k: k as u32,
            n: c.rows as u32,
            row0: c.row0 as u32,
            n_total: n as u32,
            mode,
            split1: split1 as u32,
            split2: split2 as u32,
            has_bias: bias.is_some() as u32,
            ..Default::default()
        };
        let buffers = [
            &x.buf,
            &c.quants,
            c.scales.as_ref().unwrap_or(&c.quants),
            bias.map(|b| &b.buf).unwrap_or(&c.quants),
            &y0.buf,
            y1.map(|b| &b.buf).unwrap_or(spare0),
            y2.map(|b| &b.buf).unwrap_or(spare1),
        ];
        // The cost is counted once, on the first chunk's dispatch.
        let info = if i == 0 { info } else { OpInfo { flops: 0, bytes: 0, ..info } };
        let wg = match kernel {
            QuantKernel::MatVec => grid(rec.ctx, (c.rows.div_ceil(MATVEC_ROWS) * t) as u32),
            QuantKernel::MatVecMulti(_) => grid(rec.ctx, c.rows.div_ceil(MATVEC_ROWS) as u32),
            QuantKernel::MatVecRows(_) => grid(rec.ctx, c.rows.div_ceil(MATVEC_ROWS_ROWS) as u32),
            QuantKernel::MatMul => [c.rows.div_ceil(64) as u32, t.div_ceil(16 * tokens_per_thread) as u32, 1],
        };
        rec.dispatch(info, &pipe, &buffers, &p, wg);
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
pub(crate) mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::gpu::Context;
    use crate::ops::{compare, test_values};

    async fn run(ctx: &Context, t: usize, k: usize, n: usize, with_bias: bool, store: Store) {
        let x = test_values(t * k, 21 + t as u64);
        let w = test_values(n * k, 22 + n as u64);
        let b = test_values(n, 23);
        let y0 = test_values(t * n, 24);
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let wt = Weight::from_f32(ctx, "w", &[n, k], &w).unwrap();
        let bt = Tensor::upload_f32(ctx, "b", &[n], &b).unwrap();
        let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        linear(&mut rec, "test", None, &xt, &wt, with_bias.then_some(&bt), &yt, t, store).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap();
        let want = reference(&x, &w, with_bias.then_some(&b[..]), (store == Store::Accumulate).then_some(&y0[..]), t, k, n);
        // f32 accumulation of k products of values in [-1, 1]: a typical error of
        // 2^-24 * sqrt(k) * |sum|; 2e-6 * k absolute covers the worst orders with margin.
        compare(&got, &want, 2e-6 * k as f32, 1e-4).unwrap_or_else(|e| panic!("t {t} k {k} n {n} bias {with_bias} {store:?}: {e}"));
    }

    /// `rows` rows of `cols` random weights of `dtype` as a file stores them: random quants
    /// with scales set to small positive f16 values (minimums of either sign).
    pub(crate) fn random_rows(dtype: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        use crate::weights::dtype::f32_to_f16;
        let n = rows * cols;
        let noise = test_values(dtype.bytes_for(n).unwrap(), seed);
        let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
        let half = |v: f32| f32_to_f16(v).to_le_bytes();
        match dtype {
            DType::F32 => bytes = bytemuck::cast_slice(&test_values(n, seed)).to_vec(),
            DType::F16 => bytes = test_values(n, seed).iter().flat_map(|&v| half(v)).collect(),
            DType::BF16 => bytes = test_values(n, seed).iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            _ => {
                // Where each block keeps its f16 scales (d, then a minimum where it has one).
                let scale_at: &[usize] = match dtype {
                    DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
                    DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
                    DType::Q2_K => &[80, 82],
                    DType::Q3_K => &[108],
                    DType::Q6_K => &[208],
                    DType::F32 | DType::F16 | DType::BF16 => &[],
                };
                let size = dtype.block_bytes();
                for (b, block) in bytes.chunks_exact_mut(size).enumerate() {
                    for (j, &at) in scale_at.iter().enumerate() {
                        let v = 0.002 + 0.02 * noise[b % noise.len()].abs();
                        block[at..at + 2].copy_from_slice(&half(if j == 1 && b % 2 == 1 { -v } else { v }));
                    }
                }
            }
        }
        bytes
    }

    /// Runs one quantized linear layer on the GPU, with each adapter class's mat-vec shape
    /// where `t` takes a mat-vec, and checks it against dequantize-then-f32.
    async fn run_quant(ctx: &Context, dtype: DType, t: usize, k: usize, n: usize, out: &str, limit: u64) {
        let shapes: &[MatVecShape] = if t <= MATVEC_MAX_TOKENS { &MatVecShape::ALL } else { &[MatVecShape::Lanes] };
        for &shape in shapes {
            run_quant_shaped(ctx, dtype, t, k, n, out, limit, shape).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_quant_shaped(ctx: &Context, dtype: DType, t: usize, k: usize, n: usize, out: &str, limit: u64, shape: MatVecShape) {
        let bytes = random_rows(dtype, n, k, (n * 31 + k) as u64);
        let row_bytes = dtype.bytes_for(k).unwrap();
        let rows: Vec<&[u8]> = bytes.chunks(row_bytes).collect();
        let w = Weight::from_rows(ctx, "w", dtype, k, &rows, limit).unwrap();
        let wf = crate::weights::dtype::dequantize(dtype, &bytes, n * k).unwrap();
        let x = test_values(t * k, 41 + t as u64);
        let b = test_values(n, 43);
        let y0 = test_values(t * n, 44);
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let bt = Tensor::upload_f32(ctx, "b", &[n], &b).unwrap();
        let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
        // f32 accumulation of k products bounded by wmax (x in [-1, 1]), as in the f32 tests.
        let (abs, rel) = (2e-6 * k as f32 * wmax.max(1.0), 1e-4);
        let label = format!("{dtype:?} t {t} k {k} n {n} {out} chunks {} {shape:?}", w.chunks.len());
        let mut rec = Recorder::new(ctx, "test");
        let (got, want) = match out {
            "accumulate" => {
                let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), Out::One(&yt, Store::Accumulate), t, shape).unwrap();
                rec.submit().unwrap();
                (ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap(), reference(&x, &wf, Some(&b), Some(&y0), t, k, n))
            }
            "split3" => {
                let (s1, s2) = (n / 2, n / 2 + n / 4);
                let ys: Vec<Tensor> = [s1, s2 - s1, n - s2].iter().map(|&r| Tensor::zeros(ctx, "y", &[t, r.max(1)]).unwrap()).collect();
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), Out::Split3(&ys[0], &ys[1], &ys[2], s1, s2), t, shape).unwrap();
                rec.submit().unwrap();
                let full = reference(&x, &wf, Some(&b), None, t, k, n);
                let mut got = Vec::new();
                let mut want = Vec::new();
                for (y, (lo, hi)) in ys.iter().zip([(0, s1), (s1, s2), (s2, n)]) {
                    got.extend(ctx.read_f32_async(&y.buf, 0, t * (hi - lo)).await.unwrap());
                    for r in 0..t {
                        want.extend_from_slice(&full[r * n + lo..r * n + hi]);
                    }
                }
                (got, want)
            }
            "swiglu" | "geglu" => {
                let yt = Tensor::zeros(ctx, "y", &[t, n / 2]).unwrap();
                let fused = if out == "swiglu" { Out::SwiGlu(&yt) } else { Out::GeGlu(&yt) };
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), fused, t, shape).unwrap();
                rec.submit().unwrap();
                let full = reference(&x, &wf, Some(&b), None, t, k, n);
                let (gate, up): (Vec<f32>, Vec<f32>) = full.chunks(2).map(|gu| (gu[0], gu[1])).unzip();
                let act = if out == "swiglu" { gate.iter().map(|&g| g / (1.0 + (-g).exp())).collect() } else { crate::ops::activation::gelu_reference(&gate, crate::ops::activation::Gelu::Tanh) };
                let want = act.iter().zip(&up).map(|(a, u)| a * u).collect();
                (ctx.read_f32_async(&yt.buf, 0, t * n / 2).await.unwrap(), want)
            }
            _ => {
                let yt = Tensor::zeros(ctx, "y", &[t, n]).unwrap();
                linear_shaped(&mut rec, "test", None, &xt, &w, None, Out::One(&yt, Store::Write), t, shape).unwrap();
                rec.submit().unwrap();
                (ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap(), reference(&x, &wf, None, None, t, k, n))
            }
        };
        compare(&got, &want, abs, rel).unwrap_or_else(|e| panic!("{label}: {e}"));
    }

    const ALL: [DType; DType::ALL.len()] = DType::ALL;

    #[test]
    fn each_type_has_its_own_shader() {
        for dtype in DType::ALL {
            assert_eq!(quant_shader(dtype).name, format!("quant_{}", dtype.name().to_lowercase()));
        }
    }

    #[test]
    fn batches_of_up_to_eight_tokens_take_a_matvec() {
        use MatVecShape::*;
        assert_eq!(quant_kernel(1, Lanes), QuantKernel::MatVec);
        let multi: Vec<_> = (2..=8).map(|t| quant_kernel(t, Lanes)).collect();
        assert_eq!(multi, [2, 3, 4, 5, 6, 7, 8].map(QuantKernel::MatVecMulti));
        let rows: Vec<_> = (1..=8).map(|t| quant_kernel(t, Rows)).collect();
        assert_eq!(rows, [1, 2, 3, 4, 5, 6, 7, 8].map(QuantKernel::MatVecRows));
        assert_eq!(quant_kernel(9, Lanes), QuantKernel::MatMul);
        assert_eq!(quant_kernel(9, Rows), QuantKernel::MatMul);
        assert_eq!(MatVecShape::for_adapter(wgpu::DeviceType::Cpu), Rows);
        assert_eq!(MatVecShape::for_adapter(wgpu::DeviceType::DiscreteGpu), Lanes);
    }

    gpu_test!(fn quantized_matvec_matches_dequantized_reference(ctx) {
        for dtype in ALL {
            let k = if dtype.block_len() == 256 { 512 } else { 96 };
            run_quant(ctx, dtype, 1, k, 37, "write", u64::MAX).await;
            run_quant(ctx, dtype, 3, k, 131, "accumulate", u64::MAX).await;
            run_quant(ctx, dtype, MATVEC_MAX_TOKENS, k, 33, "write", u64::MAX).await;
            // Token counts the other tests leave out, one with the fused residual add.
            run_quant(ctx, dtype, 5, k, 29, "write", u64::MAX).await;
            run_quant(ctx, dtype, 2, k, 70, "accumulate", u64::MAX).await;
        }
        // 18 units per row (SmolLM2's 576 columns), and one lane with more units than others.
        run_quant(ctx, DType::Q4_1, 1, 576, 65, "write", u64::MAX).await;
        run_quant(ctx, DType::Q8_0, 2, 576, 33, "write", u64::MAX).await;
        run_quant(ctx, DType::Q6_K, 1, 768, 9, "write", u64::MAX).await;
    });

    gpu_test!(fn quantized_matmul_matches_dequantized_reference(ctx) {
        for dtype in ALL {
            // Two super-blocks per row for the K-quants.
            let k = if dtype.block_len() == 256 { 512 } else { 160 };
            // Tiles of 16 (t = 12), 48 (t = 40) and 64 tokens (t = 70: two tiles).
            run_quant(ctx, dtype, 12, k, 37, "write", u64::MAX).await;
            run_quant(ctx, dtype, 40, k, 37, "write", u64::MAX).await;
            run_quant(ctx, dtype, 70, k, 67, "accumulate", u64::MAX).await;
        }
    });

    gpu_test!(fn fused_outputs_and_split_bindings(ctx) {
        for dtype in DType::ALL {
            let k = if dtype.block_len() == 256 { 256 } else { 64 };
            for t in [1, 2, 9] {
                run_quant(ctx, dtype, t, k, 75, "split3", u64::MAX).await;
                run_quant(ctx, dtype, t, k, 66, "swiglu", u64::MAX).await;
            }
            // A binding limit that holds 32 rows: the weight is split into chunks of rows.
            let row = crate::weights::repack::quant_bytes_per_row(dtype, k) as u64;
            for out in ["write", "split3", "swiglu", "accumulate"] {
                run_quant(ctx, dtype, 1, k, 130, out, 32 * row + 5).await;
                run_quant(ctx, dtype, 7, k, 130, out, 32 * row + 5).await;
            }
        }
    });

    gpu_test!(fn geglu_fused_store_matches_reference_for_every_format(ctx) {
        for dtype in ALL {
            let k = if dtype.block_len() == 256 { 256 } else { 64 };
            // Mat-vec (1, 8 tokens) and mat-mat (20 tokens) stores; a bias on gate and up.
            for t in [1, MATVEC_MAX_TOKENS, 20] {
                run_quant(ctx, dtype, t, k, 66, "geglu", u64::MAX).await;
            }
            let row = crate::weights::repack::quant_bytes_per_row(dtype, k) as u64;
            run_quant(ctx, dtype, 3, k, 130, "geglu", 32 * row + 5).await; // split bindings
        }
    });

    gpu_test!(fn matvec_matches_reference_on_odd_sizes(ctx) {
        // k % 32 == 0 takes quant.wgsl's f32 format, other k the plain f32 kernels.
        for &(t, k, n) in &[(1, 1, 1), (1, 7, 3), (1, 577, 131), (3, 64, 1001), (4, 129, 9), (1, 4, 5), (1, 576, 193), (2, 1536, 77)] {
            run(ctx, t, k, n, false, Store::Write).await;
        }
        run(ctx, 1, 100, 37, true, Store::Accumulate).await;
        run(ctx, 2, 33, 65, true, Store::Write).await;
    });

    gpu_test!(fn matmul_matches_reference_on_odd_sizes(ctx) {
        for &(t, k, n) in &[(9, 1, 1), (12, 17, 3), (33, 65, 129), (70, 200, 67), (9, 576, 100), (10, 4, 3), (65, 68, 129), (130, 1536, 61)] {
            run(ctx, t, k, n, false, Store::Write).await;
        }
        run(ctx, 37, 50, 70, true, Store::Accumulate).await;
        run(ctx, 11, 31, 5, true, Store::Write).await;
        // Bias and a fused residual add, as prefill's o_proj/down_proj use them.
        run(ctx, 37, 52, 70, true, Store::Accumulate).await;
        run(ctx, 70, 576, 131, false, Store::Accumulate).await;
    });
}

#[path = "matmul_backward.rs"]
pub mod backward;
