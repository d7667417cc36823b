//! Backward of causal attention with grouped-query heads, for training: whole sequences laid
//! out token-major (q, dout: (T, H, D); k, v: (T, H_kv, D)), not the KV cache. The
//! probabilities are recomputed from q and k rather than stored: the extra memory is 2 floats
//! per (token, head), `stats_len`, where storing them would take seq_len² per head.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnBackParams {
    n_tokens: u32,
    seq_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// Longest head the backward kernels hold in workgroup memory (AB_WG * AB_PER in the shader).
pub const MAX_HEAD_DIM: usize = 256;

/// A batch of `n_seq` sequences of `seq_len` tokens, each attending causally within itself.
#[derive(Clone, Copy, Debug)]
pub struct AttnBackShape {
    pub n_seq: usize,
    pub seq_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnBackShape {
    pub fn n_tokens(&self) -> usize {
        self.n_seq * self.seq_len
    }
    /// Floats of the (log-sum-exp, delta) pairs the backward keeps per (token, head).
    pub fn stats_len(&self) -> usize {
        2 * self.n_tokens() * self.n_heads
    }
    fn check(&self) -> Result<()> {
        let ok = self.seq_len > 0 && self.n_seq > 0 && self.n_kv_heads > 0 && self.n_heads % self.n_kv_heads == 0;
        if !ok || self.head_dim == 0 || self.head_dim > MAX_HEAD_DIM {
            return Err(Error::Shape { op: "attention_backward", msg: format!("{self:?}: heads must be a multiple of kv heads, head_dim in 1..={MAX_HEAD_DIM}") });
        }
        Ok(())
    }
}

/// Given dout = dL/dout, writes dq, dk, dv (overwritten, not accumulated) and the stats.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(rec: &mut Recorder, q: &Tensor, k: &Tensor, v: &Tensor, dout: &Tensor, dq: &Tensor, dk: &Tensor, dv: &Tensor, stats: &Tensor, s: AttnBackShape) -> Result<()> {
    s.check()?;
    let t = s.n_tokens();
    let (nq, nkv) = (t * s.n_heads * s.head_dim, t * s.n_kv_heads * s.head_dim);
    for (name, x, n) in [("q", q, nq), ("k", k, nkv), ("v", v, nkv), ("dout", dout, nq), ("dq", dq, nq), ("dk", dk, nkv), ("dv", dv, nkv)] {
        x.holds("attention_backward", name, n)?;
    }
    stats.holds("attention_backward", "stats", s.stats_len())?;
    let p = AttnBackParams {
        n_tokens: t as u32,
        seq_len: s.seq_len as u32,
        n_heads: s.n_heads as u32,
        n_kv_heads: s.n_kv_heads as u32,
        head_dim: s.head_dim as u32,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        _pad: [0; 2],
    };
    // Each (query, key) pair of a sequence: two dots to recompute, one or two row updates.
    let pairs = (s.n_seq * s.seq_len * (s.seq_len + 1) / 2 * s.n_heads * s.head_dim) as u64;
    let pipe = rec.ctx.pipeline(&super::SHADER, "attention_backward_dq", &[])?;
    let info = OpInfo::new("attention_backward_dq", 8 * pairs, 4 * (3 * nq + 2 * nkv) as u64);
    rec.dispatch(info, &pipe, &[&q.buf, &k.buf, &v.buf, &dout.buf, &dq.buf, &stats.buf], &p, grid(rec.ctx, (t * s.n_heads) as u32));
    let pipe = rec.ctx.pipeline(&super::SHADER, "attention_backward_dkv", &[])?;
    let info = OpInfo::new("attention_backward_dkv", 8 * pairs, 4 * (2 * nq + 4 * nkv) as u64);
    let bufs = [&q.buf, &k.buf, &v.buf, &dout.buf, &stats.buf, &dk.buf, &dv.buf];
    rec.dispatch(info, &pipe, &bufs, &p, grid(rec.ctx, (t * s.n_kv_heads) as u32));
    Ok(())
}

/// The probabilities of query t (row index th = t * H + h) over keys j0..=t, in f64.
fn probs_f64(q: &[f64], k: &[f64], s: &AttnBackShape, t: usize, h: usize) -> Vec<f64> {
    let d = s.head_dim;
    let kvh = h / (s.n_heads / s.n_kv_heads);
    let scale = 1.0 / (d as f64).sqrt();
    let qv = &q[(t * s.n_heads + h) * d..][..d];
    let scores: Vec<f64> = (t - t % s.seq_len..=t).map(|j| scale * qv.iter().zip(&k[(j * s.n_kv_heads + kvh) * d..][..d]).map(|(a, b)| a * b).sum::<f64>()).collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
    scores.iter().map(|x| (x - m).exp() / z).collect()
}

/// CPU reference of the forward in f64: out (T, H, D).
pub fn forward_f64(q: &[f64], k: &[f64], v: &[f64], s: &AttnBackShape) -> Vec<f64> {
    let d = s.head_dim;
    let mut out = vec![0.0; s.n_tokens() * s.n_heads * d];
    for t in 0..s.n_tokens() {
        for h in 0..s.n_heads {
            let kvh = h / (s.n_heads / s.n_kv_heads);
            for (c, p) in probs_f64(q, k, s, t, h).iter().enumerate() {
                let j = t - t % s.seq_len + c;
                for i in 0..d {
                    out[(t * s.n_heads + h) * d + i] += p * v[(j * s.n_kv_heads + kvh) * d + i];
                }
            }
        }
    }
    out
}

/// CPU reference of the backward in f64: (dq, dk, dv).
pub fn reference(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], s: &AttnBackShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let d = s.head_dim;
    let scale = 1.0 / (d as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for t in 0..s.n_tokens() {
        for h in 0..s.n_heads {
            let kvh = h / (s.n_heads / s.n_kv_heads);
            let (qi, j0) = ((t * s.n_heads + h) * d, t - t % s.seq_len);
            let p = probs_f64(q, k, s, t, h);
            let dp: Vec<f64> = (0..p.len()).map(|c| dot(&dout[qi..][..d], &v[((j0 + c) * s.n_kv_heads + kvh) * d..][..d])).collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for c in 0..p.len() {
                let ki = ((j0 + c) * s.n_kv_heads + kvh) * d;
                let ds = p[c] * (dp[c] - delta);
                for i in 0..d {
                    dq[qi + i] += scale * ds * k[ki + i];
                    dk[ki + i] += scale * ds * q[qi + i];
                    dv[ki + i] += p[c] * dout[qi + i];
                }
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{check, dot, to_f32, values};

    #[test]
    fn reference_equals_finite_differences() {
        let s = AttnBackShape { n_seq: 2, seq_len: 3, n_heads: 4, n_kv_heads: 2, head_dim: 3 };
        let (nq, nkv) = (s.n_tokens() * 4 * 3, s.n_tokens() * 2 * 3);
        let (q, k, v, g) = (values(nq, 81), values(nkv, 82), values(nkv, 83), values(nq, 84));
        let (dq, dk, dv) = reference(&q, &k, &v, &g, &s);
        check("attention dq", &q, &dq, |x| dot(&g, &forward_f64(x, &k, &v, &s))).unwrap();
        check("attention dk", &k, &dk, |x| dot(&g, &forward_f64(&q, x, &v, &s))).unwrap();
        check("attention dv", &v, &dv, |x| dot(&g, &forward_f64(&q, &k, x, &s))).unwrap();
    }

    gpu_test!(fn attention_backward_matches_reference_on_odd_shapes(ctx) {
        let shapes = [
            AttnBackShape { n_seq: 1, seq_len: 1, n_heads: 1, n_kv_heads: 1, head_dim: 1 },
            AttnBackShape { n_seq: 2, seq_len: 37, n_heads: 6, n_kv_heads: 2, head_dim: 17 },
            // More than one 64-key tile, and a head longer than one element per thread.
            AttnBackShape { n_seq: 1, seq_len: 70, n_heads: 2, n_kv_heads: 1, head_dim: 130 },
        ];
        for s in shapes {
            let (nq, nkv) = (s.n_tokens() * s.n_heads * s.head_dim, s.n_tokens() * s.n_kv_heads * s.head_dim);
            let (q, k, v, g) = (values(nq, 85), values(nkv, 86), values(nkv, 87), values(nq, 88));
            let (want_dq, want_dk, want_dv) = reference(&q, &k, &v, &g, &s);
            let up = |name, x: &[f64]| Tensor::upload_f32(ctx, name, &[x.len()], &to_f32(x)).unwrap();
            let (qt, kt, vt, gt) = (up("q", &q), up("k", &k), up("v", &v), up("dout", &g));
            let z = |name, n| Tensor::zeros(ctx, name, &[n]).unwrap();
            let (dq, dk, dv, stats) = (z("dq", nq), z("dk", nkv), z("dv", nkv), z("stats", s.stats_len()));
            let mut rec = Recorder::new(ctx, "test");
            attention_backward(&mut rec, &qt, &kt, &vt, &gt, &dq, &dk, &dv, &stats, s).unwrap();
            rec.submit().unwrap();
            // f32 dots of <= 130 terms and sums over <= 70 keys (x 3 heads for dk, dv), of
            // values O(1) that partly cancel: 2e-5 absolute + 1e-4 relative.
            for (name, buf, want) in [("dq", &dq, &want_dq), ("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
                let got = ctx.read_f32_async(&buf.buf, 0, want.len()).await.unwrap();
                compare(&got, &to_f32(want), 2e-5, 1e-4).unwrap_or_else(|e| panic!("{name} {s:?}: {e}"));
            }
        }
    });
}
