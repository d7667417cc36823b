//! Gated MLP activations.

use crate::error::Result;
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "activation", body: include_str!("../../shaders/activation.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// gate[i] = silu(gate[i]) * up[i] for i < n.
pub fn swiglu(rec: &mut Recorder, up: &Tensor, gate: &Tensor, n: usize, layer: usize) -> Result<()> {
    up.holds("swiglu", "up", n)?;
    gate.holds("swiglu", "gate", n)?;
    let pipe = rec.ctx.pipeline(&SHADER, "swiglu", &[])?;
    let info = OpInfo::new("swiglu", 6 * n as u64, 12 * n as u64).layer(layer);
    rec.dispatch(info, &pipe, &[&up.buf, &gate.buf], &Params { n: n as u32, _pad: [0; 3] }, grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference.
pub fn swiglu_reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{compare, test_values};

    #[test]
    fn swiglu_matches_reference_on_odd_sizes() {
        let Some(ctx) = crate::gpu::context::test_context() else { return };
        for &n in &[1usize, 255, 257, 4099] {
            let gate: Vec<f32> = test_values(n, 5).iter().map(|v| v * 12.0).collect();
            let up = test_values(n, 6);
            let g = Tensor::upload_f32(ctx, "gate", &[n], &gate).unwrap();
            let u = Tensor::upload_f32(ctx, "up", &[n], &up).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            swiglu(&mut rec, &u, &g, n, 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32(&g.buf, 0, n).unwrap();
            // exp and one division in f32: a few ulp.
            compare(&got, &swiglu_reference(&gate, &up), 1e-6, 1e-5).unwrap_or_else(|e| panic!("n {n}: {e}"));
        }
    }
}
