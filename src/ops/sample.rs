//! Token sampling on the GPU: penalty, temperature, top-k, top-p, min-p and a seeded draw in
//! one workgroup; the chosen id is written into the token buffer on the GPU.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{OpInfo, Recorder, Shader, Tensor};
use crate::sampling::SamplingParams;

pub const SHADER: Shader = Shader { name: "sample", body: include_str!("../../shaders/sample.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    row: u32,
    hist_start: u32,
    hist_end: u32,
    out_index: u32,
    top_k: u32,
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    _pad: [u32; 3],
}

/// FLOPs and bytes of one sampling pass over the vocabulary: the greedy path reads the
/// logits, writes and re-reads the scratch (12 bytes, ~4 FLOPs per id); top-k/top-p searches
/// read the scratch again per step, which this lower bound leaves out.
pub fn cost(vocab: usize) -> (u64, u64) {
    (4 * vocab as u64, 12 * vocab as u64)
}

/// Samples from row `row` of `logits` (rows, vocab) and writes the id to
/// `tokens[out_index]`. The penalty looks at `tokens[history]`. `work` is a (vocab,) scratch.
#[allow(clippy::too_many_arguments)]
pub fn sample(rec: &mut Recorder, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, out_index: usize, history: Range<usize>, s: &SamplingParams, draw: u32) -> Result<()> {
    let vocab = *logits.shape.last().ok_or(Error::Shape { op: "sample", msg: "logits have no shape".into() })?;
    logits.holds("sample", "logits", (row + 1) * vocab)?;
    work.holds("sample", "work", vocab)?;
    tokens.holds("sample", "tokens", out_index.max(history.end) + 1)?;
    let pipe = rec.ctx.pipeline(&SHADER, "sample", &[])?;
    let p = Params {
        vocab: vocab as u32,
        row: row as u32,
        hist_start: history.start as u32,
        hist_end: history.end as u32,
        out_index: out_index as u32,
        top_k: s.top_k.min(u32::MAX as usize) as u32,
        seed_lo: s.seed as u32,
        seed_hi: (s.seed >> 32) as u32,
        draw,
        temperature: s.temperature,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        _pad: [0; 3],
    };
    let (flops, bytes) = cost(vocab);
    let info = OpInfo::new("sample", flops, bytes);
    rec.dispatch(info, &pipe, &[&logits.buf, &work.buf, &tokens.buf], &p, [1, 1, 1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::gpu::Context;
    use crate::ops::test_values;
    use crate::sampling::{distribution, sample_reference};

    /// Runs `draws` samples of one logits row in one command buffer; returns the ids.
    async fn draw_many(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize) -> Vec<u32> {
        let vocab = logits.len();
        let lt = Tensor::upload_f32(ctx, "logits", &[1, vocab], logits).unwrap();
        let work = Tensor::zeros(ctx, "work", &[vocab]).unwrap();
        let mut ids = history.to_vec();
        ids.resize(history.len() + draws, 0);
        let tokens = Tensor { buf: ctx.upload("tokens", &ids).unwrap(), shape: vec![ids.len()] };
        let mut rec = Recorder::new(ctx, "test");
        for i in 0..draws {
            sample(&mut rec, &lt, 0, &work, &tokens, history.len() + i, 0..history.len(), s, i as u32).unwrap();
        }
        rec.submit().unwrap();
        ctx.read_u32_async(&tokens.buf, history.len(), draws).await.unwrap()
    }

    /// Chi-square bound at p = 0.001 (Wilson–Hilferty).
    fn chi2_bound(df: usize) -> f64 {
        let k = df.max(1) as f64;
        let z = 3.09;
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }

    async fn check_frequencies(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize) {
        let got = draw_many(ctx, logits, history, s, draws).await;
        let p = distribution(logits, history, s);
        let mut counts = vec![0usize; p.len()];
        for &id in &got {
            counts[id as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            assert!(p[i] > 0.0 || c == 0, "{s:?}: id {i} has probability 0 but was drawn {c} times");
        }
        // Pool bins with expected count < 5 into one.
        let (mut chi2, mut df, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
        for (i, &pi) in p.iter().enumerate() {
            let e = pi * draws as f64;
            if pi == 0.0 {
                continue;
            }
            if e < 5.0 {
                pool_o += counts[i] as f64;
                pool_e += e;
            } else {
                chi2 += (counts[i] as f64 - e).powi(2) / e;
                df += 1;
            }
        }
        if pool_e > 0.0 {
            chi2 += (pool_o - pool_e).powi(2) / pool_e.max(1e-9);
            df += 1;
        }
        let bound = chi2_bound(df.saturating_sub(1));
        assert!(chi2 <= bound, "{s:?}: chi-square {chi2:.1} over {df} bins exceeds the p=0.001 bound {bound:.1}");
    }

    fn base() -> SamplingParams {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 0, seed: 7 }
    }

    gpu_test!(fn greedy_is_argmax_with_lowest_id_on_ties(ctx) {
        let mut logits = test_values(1003, 9);
        logits[500] = 5.0;
        logits[777] = 5.0;
        let got = draw_many(ctx, &logits, &[], &SamplingParams::greedy(), 3).await;
        assert_eq!(got, vec![500, 500, 500]);
        // With a penalty on 500 the runner-up wins.
        let s = SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() };
        assert_eq!(draw_many(ctx, &logits, &[500, 500, 3], &s, 1).await, vec![777]);
    });

    gpu_test!(fn sampler_frequencies_match_the_intended_distribution(ctx) {
        let logits: Vec<f32> = test_values(61, 3).iter().map(|v| v * 3.0).collect();
        // A browser's software WebGPU (SwiftShader) takes ~8 ms a draw: 1500 draws there keep
        // the run near a minute and still hold each setting to its distribution.
        let n = if ctx.info.backend == wgpu::Backend::BrowserWebGpu { 1500 } else { 6000 };
        check_frequencies(ctx, &logits, &[], &base(), n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { temperature: 0.5, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { temperature: 1.7, top_k: 10, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_p: 0.7, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { min_p: 0.1, seed: 99, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_k: 20, top_p: 0.9, min_p: 0.02, temperature: 0.8, ..base() }, n).await;
        let hist = [3u32, 10, 10, 40];
        check_frequencies(ctx, &logits, &hist, &SamplingParams { repeat_penalty: 1.5, ..base() }, n).await;
    });

    gpu_test!(fn ties_at_the_top_k_boundary_are_kept(ctx) {
        let mut logits = vec![0.0f32; 40];
        logits[5] = 2.0;
        logits[9] = 1.0;
        logits[20] = 1.0;
        let s = SamplingParams { top_k: 2, ..base() };
        assert!(distribution(&logits, &[], &s)[20] > 0.0);
        check_frequencies(ctx, &logits, &[], &s, 3000).await;
    });

    gpu_test!(fn same_seed_same_draws_and_agreement_with_cpu_reference(ctx) {
        let logits: Vec<f32> = test_values(997, 17).iter().map(|v| v * 4.0).collect();
        let s = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.01, seed: 1234, ..base() };
        let a = draw_many(ctx, &logits, &[], &s, 300).await;
        let b = draw_many(ctx, &logits, &[], &s, 300).await;
        assert_eq!(a, b, "same seed must give the same ids");
        let c = draw_many(ctx, &logits, &[], &SamplingParams { seed: 4321, ..s.clone() }, 300).await;
        assert_ne!(a, c, "another seed should give other ids");
        // The CPU reference uses the same random numbers; only draws landing within float
        // rounding of a boundary may differ.
        let agree = (0..300).filter(|&i| sample_reference(&logits, &[], &s, i as u32) == a[i]).count();
        assert!(agree >= 297, "GPU and CPU reference agree on only {agree} of 300 draws");
    });
}
