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
/// goes to stderr. With `jsonl`, the drafts stream instead (`write_jsonl`).
#[allow(clippy::too_many_arguments)]
pub fn write(ctx: &Context, model: &LoadedModel, ctx_len: usize, ids: &[u32], s: &SamplingParams, n: usize, max_tokens: usize, ignore_eos: bool, jsonl: bool) -> Result<()> {
    let mut batch = Batch::new(ctx, model, ctx_len, n)?;
    let seeds: Vec<u64> = (0..n as u64).map(|i| s.seed.wrapping_add(i)).collect();
    let start = Instant::now();
    let mut out = crate::stdio::TextOut::new();
    let drafts = if jsonl {
        write_jsonl(&mut batch, &mut out, ids, s, &seeds, max_tokens, ignore_eos)?
    } else {
        let drafts = batch.drafts(ids, s, &seeds, max_tokens, ignore_eos, |_, _| true)?;
        for (i, (tokens, _)) in drafts.iter().enumerate() {
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
        }
        drafts
    };
    let elapsed = start.elapsed().as_secs_f64();
    for (i, (tokens, stop)) in drafts.iter().enumerate() {
        noteln!("draft {} (seed {}): {} tokens, stopped: {}", i + 1, seeds[i], tokens.len(), stop.reason());
    }
    if let Some(e) = out.error.take() {
        return Err(e);
    }
    let total: usize = drafts.iter().map(|d| d.0.len()).sum();
    noteln!("prompt tokens: {} | {n} drafts, {total} tokens in {elapsed:.1} s ({:.1} tok/s together)", ids.len(), total as f64 / elapsed.max(1e-9));
    Ok(())
}

/// `--drafts-jsonl`: the drafts as they grow, one JSON object per line, in the order the
/// batched steps produce them (the drafts interleave):
/// `{"draft": 1, "seed": 42, "text": " piece"}` for each piece of a draft's text (whole
/// characters: a token that ends inside one waits for the next), then once per draft
/// `{"draft": 1, "seed": 42, "stop": "max tokens", "tokens": 12}`. A draft's text is its
/// pieces joined. A closed stdout stops every draft.
#[allow(clippy::too_many_arguments)]
fn write_jsonl(batch: &mut Batch, out: &mut crate::stdio::TextOut, ids: &[u32], s: &SamplingParams, seeds: &[u64], max_tokens: usize, ignore_eos: bool) -> Result<Vec<(Vec<u32>, quill::generate::Stop)>> {
    let model = batch.model;
    let tokenizer = &model.tokenizer;
    let mut decoders: Vec<StreamDecoder> = seeds.iter().map(|_| StreamDecoder::new()).collect();
    let mut failed = None;
    let line = |out: &mut crate::stdio::TextOut, v: serde_json::Value| out.put(&format!("{v}\n"));
    let drafts = batch.drafts(ids, s, seeds, max_tokens, ignore_eos, |d, id| {
        match decoders[d].step(tokenizer, id) {
            Ok(Some(piece)) => line(out, serde_json::json!({"draft": d + 1, "seed": seeds[d], "text": piece})),
            Ok(None) => {}
            Err(e) => failed = Some(e),
        }
        failed.is_none() && !out.stopped
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    for (d, (tokens, stop)) in drafts.iter().enumerate() {
        if let Some(rest) = decoders[d].finish(tokenizer)? {
            line(out, serde_json::json!({"draft": d + 1, "seed": seeds[d], "text": rest}));
        }
        line(out, serde_json::json!({"draft": d + 1, "seed": seeds[d], "stop": stop.reason(), "tokens": tokens.len()}));
    }
    Ok(drafts)
}
