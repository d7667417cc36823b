//! The optimizer step on the GPU: global-norm gradient clipping and AdamW, plus the learning-
//! rate schedule (host side) and gradient accumulation over micro-batches (the backward
//! kernels accumulate into the gradients; the step divides by the number of micro-batches).

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "optim", body: include_str!("../../shaders/optim.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2: f32,
    grad_scale: f32,
    max_norm: f32,
    _pad: u32,
}

/// AdamW settings (torch.optim.AdamW's names and defaults, but weight decay 0.1 as Llama trains).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient norm to clip to; <= 0 turns clipping off.
    pub max_norm: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, max_norm: 1.0 }
    }
}

/// One trained tensor: its value, gradient (accumulated over micro-batches) and moments.
pub struct Param {
    pub value: Tensor,
    pub grad: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    /// Decoupled weight decay applies to matrices only, not to norms' gains or biases.
    pub decay: bool,
}

impl Param {
    /// A value that is read but never trained (a base under a LoRA adapter): its gradient and
    /// moments are single placeholders, so a frozen base costs no more memory than its weights.
    pub fn frozen(ctx: &Context, name: &str, shape: &[usize], value: &[f32]) -> Result<Self> {
        let one = |what: &str| Tensor::zeros(ctx, &format!("{name}.{what} (frozen)"), &[1]);
        Ok(Self { value: Tensor::upload_f32(ctx, name, shape, value)?, grad: one("grad")?, m: one("m")?, v: one("v")?, decay: false })
    }

    pub fn new(ctx: &Context, name: &str, shape: &[usize], value: &[f32]) -> Result<Self> {
        Ok(Self {
            value: Tensor::upload_f32(ctx, name, shape, value)?,
            grad: Tensor::zeros(ctx, &format!("{name}.grad"), shape)?,
            m: Tensor::zeros(ctx, &format!("{name}.m"), shape)?,
            v: Tensor::zeros(ctx, &format!("{name}.v"), shape)?,
            decay: shape.len() >= 2,
        })
    }
}

/// GPU scratch of a step: sum-of-squares partials for every parameter and the clip factor.
pub struct StepScratch {
    pub partials: Tensor,
    /// (2,): [gradient multiplier after clipping, global gradient norm].
    pub clip: Tensor,
}

impl StepScratch {
    pub fn new(ctx: &Context, params: &[&Param]) -> Result<Self> {
        let n: usize = params.iter().map(|p| p.value.numel().div_ceil(256)).sum();
        Ok(Self { partials: Tensor::zeros(ctx, "grad norm partials", &[n.max(1)])?, clip: Tensor::zeros(ctx, "clip", &[2])? })
    }
}

/// Learning rate at `step` (0-based): linear warmup from 0 over `warmup` steps, then cosine
/// decay to `min_lr` at `total`; `min_lr` after it.
pub fn lr_at(step: usize, warmup: usize, total: usize, lr: f32, min_lr: f32) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    min_lr + (lr - min_lr) * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}

/// Sets every element of `t` to `value` (zeroes gradients before a step's first micro-batch).
pub fn fill(rec: &mut Recorder, t: &Tensor, value: f32) -> Result<()> {
    elementwise(rec, "fill", t, value)
}

/// Multiplies every element of `t` by `value`.
pub fn scale(rec: &mut Recorder, t: &Tensor, value: f32) -> Result<()> {
    elementwise(rec, "scale", t, value)
}

fn elementwise(rec: &mut Recorder, entry: &'static str, t: &Tensor, value: f32) -> Result<()> {
    let n = t.numel();
    let pipe = rec.ctx.pipeline(&SHADER, entry, &[])?;
    let p = Params { n: n as u32, max_norm: value, ..Default::default() };
    rec.dispatch(OpInfo::new(entry, 0, 4 * n as u64), &pipe, &[&t.buf], &p, grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// Records one optimizer step over `params`: the global gradient norm (of the gradients
/// divided by `micro_batches`), the clip factor, then AdamW with learning rate `lr` at the
/// 1-based `step`. Nothing is read back.
pub fn step(rec: &mut Recorder, params: &[&Param], scratch: &StepScratch, cfg: &AdamW, lr: f32, step: u32, micro_batches: usize) -> Result<()> {
    if step == 0 || micro_batches == 0 {
        return Err(Error::arg("optimizer step", format!("step {step} and micro-batches {micro_batches} must be >= 1")));
    }
    let grad_scale = 1.0 / micro_batches as f32;
    let sq = rec.ctx.pipeline(&SHADER, "sum_squares", &[])?;
    let mut offset = 0;
    for prm in params {
        let n = prm.value.numel();
        for (what, t) in [("grad", &prm.grad), ("m", &prm.m), ("v", &prm.v)] {
            t.holds("optimizer step", what, n)?;
        }
        let p = Params { n: n as u32, offset: offset as u32, ..Default::default() };
        let wgs = n.div_ceil(256);
        rec.dispatch(OpInfo::new("grad_norm", 2 * n as u64, 4 * n as u64), &sq, &[&prm.grad.buf, &scratch.partials.buf], &p, grid(rec.ctx, wgs as u32));
        offset += wgs;
    }
    scratch.partials.holds("optimizer step", "grad norm partials", offset)?;
    let cs = rec.ctx.pipeline(&SHADER, "clip_scale", &[])?;
    let p = Params { offset: offset as u32, grad_scale, max_norm: cfg.max_norm, ..Default::default() };
    rec.dispatch(OpInfo::new("grad_clip", offset as u64, 4 * offset as u64), &cs, &[&scratch.partials.buf, &scratch.clip.buf], &p, [1, 1, 1]);

    let adam = rec.ctx.pipeline(&SHADER, "adamw", &[])?;
    for prm in params {
        let n = prm.value.numel();
        let p = Params {
            n: n as u32,
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: if prm.decay { cfg.weight_decay } else { 0.0 },
            bc1: 1.0 - cfg.beta1.powi(step as i32),
            bc2: 1.0 - cfg.beta2.powi(step as i32),
            ..Default::default()
        };
        let bufs = [&prm.grad.buf, &scratch.clip.buf, &prm.value.buf, &prm.m.buf, &prm.v.buf];
        rec.dispatch(OpInfo::new("adamw", 12 * n as u64, 28 * n as u64), &adam, &bufs, &p, grid(rec.ctx, n.div_ceil(256) as u32));
    }
    Ok(())
}

/// CPU reference state of one parameter, in f64.
#[derive(Clone, Debug)]
pub struct RefParam {
    pub value: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub decay: bool,
}

/// CPU reference of `step`, mirroring torch.nn.utils.clip_grad_norm_ then torch.optim.AdamW.
/// grads are the sums over micro-batches. Returns the global norm before clipping.
pub fn step_reference(params: &mut [RefParam], grads: &[Vec<f64>], cfg: &AdamW, lr: f64, step: u32, micro_batches: usize) -> f64 {
    let s = 1.0 / micro_batches as f64;
    let norm = grads.iter().flatten().map(|g| (g * s) * (g * s)).sum::<f64>().sqrt();
    let clip = if cfg.max_norm > 0.0 { (cfg.max_norm as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
    let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
    let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
    for (prm, grad) in params.iter_mut().zip(grads) {
        let wd = if prm.decay { cfg.weight_decay as f64 } else { 0.0 };
        for (i, &g) in grad.iter().enumerate().take(prm.value.len()) {
            let g = g * s * clip;
            prm.m[i] = b1 * prm.m[i] + (1.0 - b1) * g;
            prm.v[i] = b2 * prm.v[i] + (1.0 - b2) * g * g;
            prm.value[i] = prm.value[i] * (1.0 - lr * wd) - lr * (prm.m[i] / bc1) / ((prm.v[i] / bc2).sqrt() + cfg.eps as f64);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{to_f32, values};

    #[test]
    fn schedule_warms_up_then_follows_a_cosine() {
        let lr = |s| lr_at(s, 10, 110, 1e-3, 1e-4);
        assert!((lr(0) - 1e-4).abs() < 1e-9, "first warmup step is lr / warmup");
        assert!((lr(9) - 1e-3).abs() < 1e-9, "warmup ends at the peak");
        assert!((lr(10) - 1e-3).abs() < 1e-9, "cosine starts at the peak");
        assert!((lr(60) - 5.5e-4).abs() < 1e-8, "half way is the mean of peak and floor");
        assert!((lr(110) - 1e-4).abs() < 1e-9 && (lr(500) - 1e-4).abs() < 1e-9, "then the floor");
        assert!((10..110).all(|s| lr(s + 1) <= lr(s)), "decay never rises");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        // One gradient of norm 5 clipped to 1: the AdamW step sees g / 5 (sign and ratio kept),
        // and the first step of Adam moves every element by lr regardless of |g|.
        let mut p = vec![RefParam { value: vec![0.0, 0.0], m: vec![0.0; 2], v: vec![0.0; 2], decay: false }];
        let cfg = AdamW { max_norm: 1.0, ..Default::default() };
        let norm = step_reference(&mut p, &[vec![3.0, -4.0]], &cfg, 0.1, 1, 1);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((p[0].m[0] - 0.1 * 0.6).abs() < 1e-6 && (p[0].m[1] + 0.1 * 0.8).abs() < 1e-6, "{:?}", p[0].m);
        assert!((p[0].value[0] + 0.1).abs() < 1e-6 && (p[0].value[1] - 0.1).abs() < 1e-6, "{:?}", p[0].value);
    }

    gpu_test!(fn adamw_steps_match_reference(ctx) {
        // Three parameters of odd sizes (one a vector without decay), two micro-batches
        // accumulated, three steps with clipping active in the first (large gradients).
        let shapes: [&[usize]; 3] = [&[7, 37], &[301], &[3, 3]];
        let cfg = AdamW { max_norm: 2.0, weight_decay: 0.1, ..Default::default() };
        let mut params = Vec::new();
        let mut refs = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let n: usize = s.iter().product();
            let v = values(n, 30 + i as u64);
            params.push(Param::new(ctx, "p", s, &to_f32(&v)).unwrap());
            refs.push(RefParam { value: to_f32(&v).iter().map(|&x| x as f64).collect(), m: vec![0.0; n], v: vec![0.0; n], decay: s.len() >= 2 });
        }
        let params: Vec<&Param> = params.iter().collect();
        let scratch = StepScratch::new(ctx, &params).unwrap();
        for step_no in 1..=3u32 {
            let mut sums = Vec::new();
            let mut rec = Recorder::new(ctx, "test");
            for (i, prm) in params.iter().enumerate() {
                let n = prm.value.numel();
                // Two micro-batch gradients, accumulated on the GPU by upload + add of the
                // second into the first (what the backward kernels' accumulate flag does).
                let a: Vec<f32> = values(n, 100 * step_no as u64 + i as u64).iter().map(|v| (*v * 4.0 / step_no as f64) as f32).collect();
                let b: Vec<f32> = values(n, 200 * step_no as u64 + i as u64).iter().map(|v| (*v * 4.0 / step_no as f64) as f32).collect();
                let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
                ctx.queue.write_buffer(&prm.grad.buf, 0, bytemuck::cast_slice(&sum));
                sums.push(sum.iter().map(|&x| x as f64).collect::<Vec<f64>>());
            }
            let lr = lr_at(step_no as usize - 1, 1, 3, 1e-2, 1e-3);
            step(&mut rec, &params, &scratch, &cfg, lr, step_no, 2).unwrap();
            rec.submit().unwrap();
            let norm = step_reference(&mut refs, &sums, &cfg, lr as f64, step_no, 2);
            let clip = ctx.read_f32_async(&scratch.clip.buf, 0, 2).await.unwrap();
            // The norm sums ~700 squares in f32 in a different order: 1e-5 relative.
            compare(&clip[1..], &[norm as f32], 0.0, 1e-5).unwrap_or_else(|e| panic!("step {step_no} norm: {e}"));
            for (i, (prm, r)) in params.iter().zip(&refs).enumerate() {
                let got = ctx.read_f32_async(&prm.value.buf, 0, prm.value.numel()).await.unwrap();
                // Each step moves a value by <= ~lr = 1e-2; f32 rounding of the moments and of
                // m / sqrt(v) is ~1e-6 of that, and a value is O(1): 1e-6 absolute + 1e-5 relative.
                compare(&got, &to_f32(&r.value), 1e-6, 1e-5).unwrap_or_else(|e| panic!("step {step_no} param {i}: {e}"));
            }
        }
    });

    gpu_test!(fn fill_and_scale_touch_every_element(ctx) {
        let t = Tensor::upload_f32(ctx, "t", &[517], &[f32::NAN; 517]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        fill(&mut rec, &t, 3.0).unwrap(); // even over NaN (a gradient after a bad step)
        scale(&mut rec, &t, 0.5).unwrap();
        rec.submit().unwrap();
        assert!(ctx.read_f32_async(&t.buf, 0, 517).await.unwrap().iter().all(|&v| v == 1.5));
    });
}
