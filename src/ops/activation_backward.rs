//! Backward of SwiGLU, h = silu(gate) * up, elementwise.

use super::Params;
use crate::error::Result;
use crate::gpu::{grid, OpInfo, Recorder, Tensor};

/// dgate, dup from dh for i < n. The forward overwrites gate in place, so training keeps the
/// gate projection's output (the input here) in its own buffer.
pub fn swiglu_backward(rec: &mut Recorder, gate: &Tensor, up: &Tensor, dh: &Tensor, dgate: &Tensor, dup: &Tensor, n: usize) -> Result<()> {
    for (name, t) in [("gate", gate), ("up", up), ("dh", dh), ("dgate", dgate), ("dup", dup)] {
        t.holds("swiglu_backward", name, n)?;
    }
    let pipe = rec.ctx.pipeline(&super::SHADER, "swiglu_backward", &[])?;
    let info = OpInfo::new("swiglu_backward", 12 * n as u64, 20 * n as u64);
    let bufs = [&gate.buf, &up.buf, &dh.buf, &dgate.buf, &dup.buf];
    rec.dispatch(info, &pipe, &bufs, &Params::n(n), grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of the forward in f64.
pub fn forward_f64(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// CPU reference of the backward in f64: (dgate, dup).
pub fn reference(gate: &[f64], up: &[f64], dh: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let sig = |g: f64| 1.0 / (1.0 + (-g).exp());
    let dgate = (0..gate.len()).map(|i| dh[i] * up[i] * sig(gate[i]) * (1.0 + gate[i] * (1.0 - sig(gate[i])))).collect();
    let dup = (0..gate.len()).map(|i| dh[i] * gate[i] * sig(gate[i])).collect();
    (dgate, dup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{check, dot, to_f32, values};

    #[test]
    fn reference_equals_finite_differences() {
        let gate: Vec<f64> = values(9, 51).iter().map(|v| 4.0 * v).collect();
        let up = values(9, 52);
        let g = values(9, 53);
        let (dgate, dup) = reference(&gate, &up, &g);
        check("swiglu dgate", &gate, &dgate, |x| dot(&g, &forward_f64(x, &up))).unwrap();
        check("swiglu dup", &up, &dup, |x| dot(&g, &forward_f64(&gate, x))).unwrap();
    }

    gpu_test!(fn swiglu_backward_matches_reference_on_odd_sizes(ctx) {
        for &n in &[1usize, 7, 1001] {
            let gate: Vec<f64> = values(n, 54).iter().map(|v| 8.0 * v).collect();
            let (up, dh) = (values(n, 55), values(n, 56));
            let (want_dg, want_du) = reference(&gate, &up, &dh);
            let t = |name, v: &[f64]| Tensor::upload_f32(ctx, name, &[n], &to_f32(v)).unwrap();
            let (gt, ut, ht) = (t("gate", &gate), t("up", &up), t("dh", &dh));
            let (dg, du) = (Tensor::zeros(ctx, "dgate", &[n]).unwrap(), Tensor::zeros(ctx, "dup", &[n]).unwrap());
            let mut rec = Recorder::new(ctx, "test");
            swiglu_backward(&mut rec, &gt, &ut, &ht, &dg, &du, n).unwrap();
            rec.submit().unwrap();
            // exp is a few ulp (more on some drivers) and values are O(1): 1e-6 + 1e-5 relative.
            let got = ctx.read_f32_async(&dg.buf, 0, n).await.unwrap();
            compare(&got, &to_f32(&want_dg), 1e-6, 1e-5).unwrap_or_else(|e| panic!("dgate n {n}: {e}"));
            let got = ctx.read_f32_async(&du.buf, 0, n).await.unwrap();
            compare(&got, &to_f32(&want_du), 1e-6, 1e-5).unwrap_or_else(|e| panic!("dup n {n}: {e}"));
        }
    });
}
