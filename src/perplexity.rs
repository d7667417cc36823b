//! Perplexity of a text under a model: exp of the mean over tokens i >= 1 of -log p(t_i | t_<i),
//! over the tokens exactly as the model's tokenizer produces them (a BOS only where the
//! tokenizer adds one). Logits come from batched prefill passes.
//!
//! A text longer than the window (the context used) is scored in overlapping windows, as
//! Hugging Face's perplexity guide does: window k covers tokens [k·stride, k·stride + window)
//! and scores only the tokens no earlier window scored, so every token after the first is
//! scored once, with at least `window - stride` tokens of context (except in the first window).
//! With stride = window the windows do not overlap, and each window's first token has no
//! context in its window and is not scored.

use crate::error::{Error, Result};
use crate::generate::Session;
use crate::gpu::Context;
use crate::models::LoadedModel;

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// Tokens in the text.
    pub n_tokens: usize,
    /// Tokens whose negative log-likelihood was summed (n_tokens - 1 unless stride = window).
    pub n_scored: usize,
    /// Mean negative log-likelihood in nats.
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub perplexity: f64,
    /// Positions per window and tokens between window starts.
    pub window: usize,
    pub stride: usize,
}

/// -log softmax(logits)[target], in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Perplexity of `ids` in windows of `window` positions `stride` tokens apart.
pub fn perplexity(ctx: &Context, model: &LoadedModel, ids: &[u32], window: usize, stride: usize) -> Result<Perplexity> {
    let n = ids.len();
    if n < 2 {
        return Err(Error::arg("text", format!("has {n} token(s); perplexity needs at least 2")));
    }
    let max_ctx = model.config().max_ctx;
    if window < 2 || window > max_ctx {
        return Err(Error::arg("--ctx", format!("window of {window} positions must be between 2 and the model's context of {max_ctx}")));
    }
    if stride == 0 || stride > window {
        return Err(Error::arg("--stride", format!("{stride} must be between 1 and the window of {window}")));
    }
    let vocab = model.config().vocab;
    let (mut total, mut scored) = (0.0f64, 0usize);
    // Tokens before `scored_to` have been scored (token 0 never is: nothing precedes it).
    let mut scored_to = 1;
    let mut begin = 0;
    loop {
        let end = (begin + window).min(n);
        let first_target = scored_to.max(begin + 1);
        let mut session = Session::new(ctx, model, end - begin)?;
        let chunk = session.max_batch();
        // Row r of a chunk starting at `start` predicts token start + r + 1.
        for start in (begin..end).step_by(chunk) {
            let stop = (start + chunk).min(end);
            session.push(&ids[start..stop])?;
            let logits = session.logits_all()?;
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                let target = start + r + 1;
                if target >= first_target && target < end {
                    total += nll(row, ids[target]);
                    scored += 1;
                }
            }
        }
        scored_to = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    let mean_nll = total / scored.max(1) as f64;
    Ok(Perplexity { n_tokens: n, n_scored: scored, mean_nll, perplexity: mean_nll.exp(), window, stride })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((nll(&logits, 2) - (z.ln() - 3.0)).abs() < 1e-12);
        // Large logits do not overflow.
        assert!((nll(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-12);
    }
}
