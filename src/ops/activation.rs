//! MLP activations: SwiGLU (Llama family), tanh-approximated GELU (GPT-2's `gelu_new`) and
//! exact GELU (XGLM's `gelu`); soft-capping, cap·tanh(x/cap) (Gemma 2's final logits).

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "activation", body: include_str!("../../shaders/activation.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _pad: [u32; 2],
}

impl Params {
    fn n(n: usize) -> Self {
        Params { n: n as u32, cap: 0.0, _pad: [0; 2] }
    }
}

/// FLOPs and bytes of swiglu over n elements: exp, add, divide, two multiplies (~6 FLOPs);
/// reads gate and up, writes gate.
pub fn swiglu_cost(n: usize) -> (u64, u64) {
    (6 * n as u64, 12 * n as u64)
}

/// gate[i] = silu(gate[i]) * up[i] for i < n.
pub fn swiglu(rec: &mut Recorder, up: &Tensor, gate: &Tensor, n: usize, layer: usize) -> Result<()> {
    gated(rec, "swiglu", up, gate, n, layer)
}

/// gate[i] = gelu_tanh(gate[i]) * up[i] for i < n (Gemma's MLP when gate and up are not one
/// fused projection; fused, `matmul::Out::GeGlu` does this in the store).
pub fn geglu(rec: &mut Recorder, up: &Tensor, gate: &Tensor, n: usize, layer: usize) -> Result<()> {
    gated(rec, "geglu", up, gate, n, layer)
}

/// A gated activation (`entry`: swiglu or geglu) in place on gate.
fn gated(rec: &mut Recorder, entry: &'static str, up: &Tensor, gate: &Tensor, n: usize, layer: usize) -> Result<()> {
    up.holds(entry, "up", n)?;
    gate.holds(entry, "gate", n)?;
    let pipe = rec.ctx.pipeline(&SHADER, entry, &[])?;
    // gelu_tanh costs a few more FLOPs than silu; the count stays an estimate of the same order.
    let (flops, bytes) = swiglu_cost(n);
    let info = OpInfo::new(entry, flops, bytes).layer(layer);
    rec.dispatch(info, &pipe, &[&up.buf, &gate.buf], &Params::n(n), grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// FLOPs and bytes of softcap over n elements: a divide, an exp, a divide, a multiply (~8
/// FLOPs); reads and writes x.
pub fn softcap_cost(n: usize) -> (u64, u64) {
    (8 * n as u64, 8 * n as u64)
}

/// x[i] = cap · tanh(x[i] / cap) for i < n, in place (Gemma 2's final logits: cap 30).
pub fn softcap(rec: &mut Recorder, x: &Tensor, n: usize, cap: f32, layer: Option<usize>) -> Result<()> {
    if !(cap > 0.0 && cap.is_finite()) {
        return Err(Error::Shape { op: "softcap", msg: format!("cap {cap} must be positive and finite") });
    }
    x.holds("softcap", "x", n)?;
    let pipe = rec.ctx.pipeline(&SHADER, "softcap", &[])?;
    let (flops, bytes) = softcap_cost(n);
    let mut info = OpInfo::new("softcap", flops, bytes);
    info.layer = layer.map(|l| l as u32);
    rec.dispatch(info, &pipe, &[&x.buf], &Params { cap, ..Params::n(n) }, grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of `softcap`, in f64.
pub fn softcap_reference(x: &[f32], cap: f32) -> Vec<f32> {
    x.iter().map(|&v| (cap as f64 * (v as f64 / cap as f64).tanh()) as f32).collect()
}

/// Which GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))): GPT-2's `gelu_new`, `gelu_pytorch_tanh`.
    Tanh,
    /// 0.5 x (1 + erf(x / √2)): `gelu` in Hugging Face and PyTorch.
    Erf,
}

/// FLOPs and bytes of gelu over n elements: a polynomial, an exp and a division (~20 FLOPs);
/// reads and writes x.
pub fn gelu_cost(n: usize) -> (u64, u64) {
    (20 * n as u64, 8 * n as u64)
}

/// x[i] = gelu(x[i]) for i < n, in place.
pub fn gelu(rec: &mut Recorder, x: &Tensor, n: usize, kind: Gelu, layer: usize) -> Result<()> {
    x.holds("gelu", "x", n)?;
    let entry = match kind {
        Gelu::Tanh => "gelu_tanh",
        Gelu::Erf => "gelu_erf",
    };
    let pipe = rec.ctx.pipeline(&SHADER, entry, &[])?;
    let (flops, bytes) = gelu_cost(n);
    let info = OpInfo::new("gelu", flops, bytes).layer(layer);
    rec.dispatch(info, &pipe, &[&x.buf], &Params::n(n), grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// erf in f64 to ~1e-15: its Maclaurin series for |z| < 3, else 1 - erfc from the continued
/// fraction (Lentz). Independent of the kernel's Chebyshev fit, so the test checks that fit.
fn erf_f64(z: f64) -> f64 {
    let a = z.abs();
    let r = if a < 3.0 {
        // erf(z) = 2/√π Σ (-1)^n z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = e^(-z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(z)
}

/// CPU reference of `gelu`, in f64.
pub fn gelu_reference(x: &[f32], kind: Gelu) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            let y = match kind {
                Gelu::Tanh => 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()),
                Gelu::Erf => 0.5 * v * (1.0 + erf_f64(v / std::f64::consts::SQRT_2)),
            };
            y as f32
        })
        .collect()
}

/// CPU reference of `geglu`, in f64.
pub fn geglu_reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gelu_reference(gate, Gelu::Tanh).iter().zip(up).map(|(&g, &u)| (g as f64 * u as f64) as f32).collect()
}

/// CPU reference.
pub fn swiglu_reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn swiglu_matches_reference_on_odd_sizes(ctx) {
        for &n in &[1usize, 255, 257, 4099] {
            let gate: Vec<f32> = test_values(n, 5).iter().map(|v| v * 12.0).collect();
            let up = test_values(n, 6);
            let g = Tensor::upload_f32(ctx, "gate", &[n], &gate).unwrap();
            let u = Tensor::upload_f32(ctx, "up", &[n], &up).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            swiglu(&mut rec, &u, &g, n, 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&g.buf, 0, n).await.unwrap();
            // exp and one division in f32: a few ulp.
            compare(&got, &swiglu_reference(&gate, &up), 1e-6, 1e-5).unwrap_or_else(|e| panic!("n {n}: {e}"));
        }
    });

    gpu_test!(fn softcap_matches_reference_on_odd_sizes(ctx) {
        for &(n, cap) in &[(1usize, 30.0f32), (257, 30.0), (4099, 30.0), (1001, 0.5)] {
            // Logits in [-120, 120): past the cap (saturating), around it and near zero.
            let x: Vec<f32> = test_values(n, 8).iter().map(|v| v * 120.0).collect();
            let t = Tensor::upload_f32(ctx, "x", &[n], &x).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            softcap(&mut rec, &t, n, cap, None).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&t.buf, 0, n).await.unwrap();
            // (1 - e) / (1 + e) loses a few ulp of 1 near tanh's zero: absolute 4 ulp of the cap.
            compare(&got, &softcap_reference(&x, cap), cap * 5e-7, 1e-6).unwrap_or_else(|e| panic!("n {n} cap {cap}: {e}"));
        }
        let mut rec = Recorder::new(ctx, "test");
        let t = Tensor::zeros(ctx, "x", &[4]).unwrap();
        assert!(softcap(&mut rec, &t, 4, 0.0, None).unwrap_err().to_string().contains("cap 0"));
    });

    gpu_test!(fn geglu_matches_reference_on_odd_sizes(ctx) {
        for &n in &[1usize, 255, 257, 4099] {
            let gate: Vec<f32> = test_values(n, 9).iter().map(|v| v * 12.0).collect();
            let up = test_values(n, 10);
            let g = Tensor::upload_f32(ctx, "gate", &[n], &gate).unwrap();
            let u = Tensor::upload_f32(ctx, "up", &[n], &up).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            geglu(&mut rec, &u, &g, n, 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&g.buf, 0, n).await.unwrap();
            // gelu_tanh's exp and division and one multiply in f32: a few ulp (as gelu's test).
            compare(&got, &geglu_reference(&gate, &up), 1e-7, 2e-6).unwrap_or_else(|e| panic!("n {n}: {e}"));
        }
    });

    #[test]
    fn erf_reference_is_right() {
        // Values from Abramowitz & Stegun table 7.1 / mpmath.
        for (z, want) in [(0.0, 0.0), (0.1, 0.1124629160182849), (1.0, 0.8427007929497149), (2.5, 0.9995930479825550), (3.5, 0.9999992569016276), (-1.0, -0.8427007929497149)] {
            assert!((erf_f64(z) - want).abs() < 1e-14, "erf({z}) = {}, expected {want}", erf_f64(z));
        }
    }

    gpu_test!(fn gelu_matches_reference_on_odd_sizes(ctx) {
        for kind in [Gelu::Tanh, Gelu::Erf] {
            for &n in &[1usize, 255, 257, 4099] {
                // [-12, 12): both tails and the curved middle.
                let x: Vec<f32> = test_values(n, 7).iter().map(|v| v * 12.0).collect();
                let t = Tensor::upload_f32(ctx, "x", &[n], &x).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                gelu(&mut rec, &t, n, kind, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&t.buf, 0, n).await.unwrap();
                // erfc's fit is good to 1.2e-7 relative, exp and the divisions add a few ulp:
                // 1e-6 relative; 1e-7 absolute for the tails that round towards zero.
                compare(&got, &gelu_reference(&x, kind), 1e-7, 1e-6).unwrap_or_else(|e| panic!("{kind:?} n {n}: {e}"));
            }
        }
    });
}

#[path = "activation_backward.rs"]
pub mod backward;
