//! `quill write --drafts N`: N continuations of one prompt, one prefill and forked slots,
//! decoded together in one batched forward pass per token (`generate::Batch::drafts`).

use quill::error::Result;
use quill::generate::Batch;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::sampling::SamplingParams;
use quill::tokenizer::StreamDecoder;
use web_time::Instant;

/// Most drafts one command writes.
pub const MAX_DRAFTS: usize = 8;

/// Writes each draft to stdout under a line naming its seed (draft i: the seed + i), once all
/// are done (they advance together, so streaming them would interleave); a summary per draft
/// goes to stderr.
#[allow(clippy::too_many_arguments)]
pub fn write(ctx: &Context, model: &LoadedModel, ctx_len: usize, ids: &[u32], s: &SamplingParams, n: usize, max_tokens: usize, ignore_eos: bool) -> Result<()> {
    let mut batch = Batch::new(ctx, model, ctx_len, n)?;
    let seeds: Vec<u64> = (0..n as u64).map(|i| s.seed.wrapping_add(i)).collect();
    let start = Instant::now();
    let drafts = batch.drafts(ids, s, &seeds, max_tokens, ignore_eos, |_, _| true)?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = crate::stdio::TextOut::new();
    for (i, (tokens, stop)) in drafts.iter().enumerate() {
        out.put(&format!("--- draft {} (seed {}) ---\n", i + 1, seeds[i]));
        let mut decoder = StreamDecoder::new();
        for &id in tokens {
            if let Some(piece) = decoder.step(&model.tokenizer, id)? {
                out.put(&piece);
            }
        }
        if let Some(rest) = decoder.finish(&model.tokenizer)? {
            out.put(&rest);
        }
        out.put("\n");
        noteln!("draft {} (seed {}): {} tokens, stopped: {}", i + 1, seeds[i], tokens.len(), stop.reason());
    }
    if let Some(e) = out.error.take() {
        return Err(e);
    }
    let total: usize = drafts.iter().map(|d| d.0.len()).sum();
    noteln!("prompt tokens: {} | {n} drafts, {total} tokens in {elapsed:.1} s ({:.1} tok/s together)", ids.len(), total as f64 / elapsed.max(1e-9));
    Ok(())
}
