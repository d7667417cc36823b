//! Golden tests against Hugging Face transformers (float32, CPU). Reference data and how it
//! was made: tests/fixtures/README.md (copied from the project's shared fixtures).

mod common;
#[path = "common/golden.rs"]
mod golden;

use std::sync::OnceLock;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::sampling::SamplingParams;

fn load(ctx: &Context, path: &std::path::Path) -> LoadedModel {
    quill::files::load_model(ctx, path, &mut no_progress).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn golden_tiny(name: &str) {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, &fixture(name));
    let read = |file: &str| std::fs::read(fixture(&format!("{name}/{file}"))).unwrap();
    pollster::block_on(golden::golden_tiny(ctx, &model, name, &read("reference_logits.safetensors"), &read("reference.json")));
}

#[test]
fn golden_llama_tiny() {
    golden_tiny("llama-tiny");
}

#[test]
fn golden_qwen2_tiny() {
    golden_tiny("qwen2-tiny");
}

#[test]
fn golden_gpt2_tiny() {
    golden_tiny("gpt2-tiny");
}

#[test]
fn golden_xglm_tiny() {
    golden_tiny("xglm-tiny");
}

fn smollm2() -> Option<&'static (LoadedModel, &'static Context)> {
    static MODEL: OnceLock<Option<(LoadedModel, &'static Context)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let ctx = test_context()?;
            let path = smollm2_path()?;
            Some((load(ctx, &path), ctx))
        })
        .as_ref()
}

/// SmolLM2-135M-Instruct (GGUF Q4_1/Q8_0 dequantized to f32) against
/// tests/fixtures/smollm2/reference.json, for every prompt.
#[test]
fn golden_smollm2() {
    let Some((model, ctx)) = smollm2() else { return };
    let reference = json("smollm2/reference.json");
    for (name, p) in reference["prompts"].as_object().unwrap() {
        let text = p["text"].as_str().unwrap();
        let input = ids(&p["input_ids"]);
        let greedy = ids(&p["greedy_ids"]);
        let margins: Vec<f64> = p["greedy_steps"].as_array().unwrap().iter().map(|s| s["margin"].as_f64().unwrap()).collect();
        let what = format!("smollm2 prompt '{name}' (reference.json)");

        assert_eq!(model.tokenizer.encode(text).unwrap(), input, "{what}: prompt ids != input_ids");

        // Teacher forcing: run prompt + reference tokens, check argmax where the margin allows.
        let vocab = model.config().vocab;
        let mut s = Session::new(ctx, model, 256).unwrap();
        let mut forced = input.clone();
        forced.extend(&greedy[..greedy.len() - 1]);
        s.push(&forced).unwrap();
        let logits = s.logits_all().unwrap();
        let row = |pos: usize| &logits[pos * vocab..(pos + 1) * vocab];
        for (step, (&want, &margin)) in greedy.iter().zip(&margins).enumerate() {
            let got = argmax(row(input.len() - 1 + step));
            if margin >= 0.02 {
                assert_eq!(got, want, "{what}: teacher-forced step {step} (margin {margin:.4})");
            }
        }
        let last = row(input.len() - 1);
        for pair in p["last_top10"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            assert!((last[id] - want).abs() <= 1e-2, "{what}: last prompt position logit of token {id}: expected {want}, got {}", last[id]);
        }

        // Greedy decoding through the KV cache, exact up to the first low-margin step.
        let exact = margins.iter().position(|&m| m < 0.02).unwrap_or(greedy.len());
        let mut s = Session::new(ctx, model, 256).unwrap();
        let mut out = Vec::new();
        s.generate(&input, &SamplingParams::greedy(), exact, true, |id| {
            out.push(id);
            true
        })
        .unwrap();
        assert_eq!(out, greedy[..exact], "{what}: greedy tokens before step {exact} (first margin < 0.02)");
    }
}
