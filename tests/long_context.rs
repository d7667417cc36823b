//! A context longer than the old cap of 2048. llama-tiny (tests/fixtures/llama-tiny, its
//! config's max_position_embeddings raised from 256 to 8192, which a RoPE model allows) takes a
//! 6000-token prompt; the last position's logits are computed twice by different attention
//! paths and must agree: as a decode step after a 5999-token prefill (keys split into 24
//! ranges and combined), and as the second token of a two-token pass (one range per query).
//! Then it decodes greedily past the prompt.
//!
//! SmolLM2 (the default model) at 6000 tokens is the same code path but costs about half an
//! hour per prefill on lavapipe (the README's 3.2 prefill tok/s), so the suite runs the tiny
//! model, whose prefill of 6000 tokens takes seconds.

mod common;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::models::load::{load_hf, HfFiles};
use quill::sampling::SamplingParams;

const PROMPT_TOKENS: usize = 6000;

/// Four greedy tokens: the argmax of `logits` (the last position's), then three decode steps.
fn greedy_after(s: &mut Session, logits: &[f32]) -> Vec<u32> {
    let first = argmax(logits);
    s.push(&[first]).unwrap();
    let mut ids = vec![first];
    ids.extend((0..3).map(|_| s.next_token(&SamplingParams::greedy()).unwrap()));
    ids
}

#[test]
fn a_6000_token_prompt_prefills_and_decodes_past_the_old_cap() {
    let Some(ctx) = test_context() else { return };
    let read = |f: &str| std::fs::read(fixture(&format!("llama-tiny/{f}"))).unwrap();
    let config = String::from_utf8(read("config.json")).unwrap();
    assert!(config.contains("\"max_position_embeddings\": 256"), "llama-tiny/config.json changed: fix this test's edit");
    let config = config.replace("\"max_position_embeddings\": 256", "\"max_position_embeddings\": 8192");
    let (weights, tokenizer, tokenizer_config) = (read("model.safetensors"), read("tokenizer.json"), read("tokenizer_config.json"));
    let files = HfFiles {
        dir: "llama-tiny (context 8192)".into(),
        config_json: config.as_bytes(),
        safetensors: vec![("model.safetensors".into(), &weights)],
        tokenizer_json: Some(&tokenizer),
        tokenizer_config_json: Some(&tokenizer_config),
        chat_template: None,
        generation_config_json: None,
    };
    let model = load_hf(ctx, &files, &mut no_progress).unwrap();
    let vocab = model.config().vocab as u64;
    // Pseudo-random ids, so that attention over 6000 keys is not one repeated pattern.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let prompt: Vec<u32> = (0..PROMPT_TOKENS)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab) as u32
        })
        .collect();
    let ctx_len = PROMPT_TOKENS + 8;
    let start = std::time::Instant::now();

    let mut s = Session::new(ctx, &model, ctx_len).unwrap();
    s.push(&prompt[..PROMPT_TOKENS - 1]).unwrap();
    s.logits_last().unwrap();
    let prefill_s = start.elapsed().as_secs_f64();
    // The last position as a decode step: mat-vec, attention split into key ranges.
    s.push(&prompt[PROMPT_TOKENS - 1..]).unwrap();
    let got = s.logits_last().unwrap();
    // The same position again as the second of a two-token pass (one key range per query):
    // truncate() forgets that the last two positions ran, so both are recomputed.
    s.truncate(PROMPT_TOKENS - 1);
    s.push(&prompt[PROMPT_TOKENS - 1..]).unwrap();
    let want = s.logits_last().unwrap();
    let tokens = greedy_after(&mut s, &want);
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    let spread = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    eprintln!(
        "llama-tiny at position {PROMPT_TOKENS}: prefill {prefill_s:.1} s, whole test {:.1} s; split and single-range attention logits differ by {worst:.2e} (largest logit {spread:.2}); greedy {tokens:?}",
        start.elapsed().as_secs_f64()
    );
    assert!(want.iter().all(|v| v.is_finite()), "non-finite logits at position {PROMPT_TOKENS}");
    // Different f32 summation orders (one key range vs 24 combined) over 2 layers: rounding of
    // a few 1e-7 relative (measured 9e-8 absolute); 1e-4 leaves a margin.
    assert!(worst <= 1e-4 * spread.max(1.0), "position {PROMPT_TOKENS}: split and single-range attention differ by {worst}");
    assert_eq!(s.ids().len(), PROMPT_TOKENS + 4, "four tokens decoded after the prompt");
}

/// Gemma 3 270M Q4_K_M (scripts/fetch-model.sh gemma3-270m) with a 6000-token prompt against
/// transformers on the same weights dequantized (tests/fixtures/long-context/reference.json, made
/// by make_long_context_ref.py there): the top-10 logits at the last prompt position within
/// 0.02 + 1e-3·|ref| (the bound tests/models.rs holds Gemma 3 270M's short prompts to: Q4_K/Q6_K
/// dot products in another order), then greedy decoding exact up to the first step whose
/// reference margin is below 0.1. The 15 sliding-window layers' caches hold a ring of
/// 512 + 128 - 1 positions whatever the context; only the 3 global layers hold all 6008.
/// Opt-in (QUILL_LONG_CONTEXT=1; scripts/long-context-check.sh): about half an hour on lavapipe.
#[test]
fn gemma3_270m_6000_tokens_match_transformers() {
    if std::env::var_os("QUILL_LONG_CONTEXT").is_none() {
        eprintln!("SKIPPING: set QUILL_LONG_CONTEXT=1 (scripts/long-context-check.sh) to run the 6000-token Gemma 3 check");
        return;
    }
    let Some(ctx) = test_context() else { return };
    let path = quill::files::gemma3_270m_path();
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh gemma3-270m", path.display());
    let model = quill::files::load_model(ctx, &path, &mut no_progress).unwrap();
    let reference = json("long-context/reference.json");
    let prompt = ids(&reference["input_ids"]);
    assert_eq!(prompt.len(), PROMPT_TOKENS);
    let ctx_len = PROMPT_TOKENS + 8;
    let mut s = Session::new(ctx, &model, ctx_len).unwrap();
    let c = model.config();
    let ring = quill::ops::attention::ring_len(512, quill::generate::DEFAULT_MAX_BATCH);
    for (i, &len) in s.batch.state.cache_len.iter().enumerate() {
        let want = if c.attention(i).window == Some(512) { ring } else { ctx_len };
        assert_eq!(len, want, "layer {i}'s cache positions");
    }
    assert_eq!(s.batch.state.cache_len.iter().filter(|&&n| n == ctx_len).count(), 3, "3 global layers");
    let plan = quill::plan::SessionShape::new(c, quill::generate::DEFAULT_MAX_BATCH);
    assert_eq!(plan.layer_positions(ctx_len), s.batch.state.cache_len, "the plan counts what the session allocates");
    let start = std::time::Instant::now();
    s.push(&prompt).unwrap();
    let logits = s.logits_last().unwrap();
    let prefill = start.elapsed();
    for pair in reference["last_top10"].as_array().unwrap() {
        let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
        assert!((logits[id] - want).abs() <= 0.02 + 1e-3 * want.abs(), "token {id}: transformers {want}, quill {} (reference.json last_top10)", logits[id]);
    }
    let greedy = ids(&reference["greedy_ids"]);
    let sure = reference["greedy_steps"].as_array().unwrap().iter().take_while(|st| st["margin"].as_f64().unwrap() >= 0.1).count();
    let start = std::time::Instant::now();
    let got = greedy_after(&mut s, &logits);
    eprintln!("Gemma 3 270M, 6000-token prompt: prefill {:.0} s, 3 decode steps {:.1} s; greedy {got:?}, transformers {greedy:?} (exact for {sure})", prefill.as_secs_f64(), start.elapsed().as_secs_f64());
    assert_eq!(got[..sure], greedy[..sure], "greedy tokens after the prompt (reference.json greedy_ids)");
}
