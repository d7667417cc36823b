//! Golden tests against Hugging Face transformers (float32, CPU). Reference data and how it
//! was made: tests/fixtures/README.md (copied from the project's shared fixtures).

mod common;
#[path = "common/golden.rs"]
mod golden;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::gpu::Context;
use quill::models::load::{LoadOptions, WeightType};
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

/// A tiny model's fixture reference (input ids, logits).
fn tiny_reference(name: &str) -> (Vec<u32>, Vec<f32>) {
    golden::tiny_reference(&std::fs::read(fixture(&format!("{name}/reference_logits.safetensors"))).unwrap())
}
use golden::check_close;

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

/// Decode batches (several steps per command buffer, the sampled id staying on the GPU) give
/// the same ids as one step per submit, with seeded sampling and a repetition penalty; a stop
/// inside a batch leaves exactly the ids before it in the sequence.
#[test]
fn batched_decode_matches_single_steps() {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, &fixture("llama-tiny"));
    let (ids, _) = tiny_reference("llama-tiny");
    let prompt = &ids[..10];
    let s = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.0, repeat_penalty: 1.3, repeat_last_n: 8, seed: 7, ..SamplingParams::greedy() };

    let mut one = Session::new(ctx, &model, 64).unwrap();
    one.push(prompt).unwrap();
    let single: Vec<u32> = (0..30).map(|_| one.next_token(&s).unwrap()).collect();

    // After the first decode step, steps reuse the bind groups they made (no GPU objects are
    // created per token).
    let cached = one.cached_bind_groups();
    one.next_token(&s).unwrap();
    assert_eq!(one.cached_bind_groups(), cached, "a decode step created bind groups");

    let mut batched = Session::new(ctx, &model, 64).unwrap();
    let first = batched.next_tokens(&s, 4).err().expect("next_tokens needs a decode in progress");
    assert!(first.to_string().contains("next_token first"), "{first}");
    batched.push(prompt).unwrap();
    let mut got = vec![batched.next_token(&s).unwrap()];
    for n in [1, 2, 16, 5, 3, 7] {
        got.extend(batched.next_tokens(&s, n).unwrap());
    }
    assert_eq!(got[..30], single[..], "next_tokens batches vs next_token steps");

    // generate() batches its decode steps; cancelling at the 7th token keeps 7.
    let mut g = Session::new(ctx, &model, 64).unwrap();
    let mut out = Vec::new();
    let (stop, stats) = g
        .generate(prompt, &s, 30, true, |id| {
            out.push(id);
            out.len() < 7
        })
        .unwrap();
    assert_eq!(stop, quill::generate::Stop::Cancelled);
    assert_eq!(out, single[..7]);
    assert_eq!(stats.generated, 7);
    assert_eq!(g.ids().len(), prompt.len() + 7, "ids after the cancel point were dropped");
    assert_eq!(g.ids()[prompt.len()..], single[..7]);
    // The sequence goes on from there as if the batch had stopped at the cancel point.
    g.push(&[single[7]]).unwrap();
    let next = g.logits_last().unwrap();
    let mut r = Session::new(ctx, &model, 64).unwrap();
    r.push(prompt).unwrap();
    r.push(&single[..8]).unwrap();
    let want = r.logits_last().unwrap();
    check_close(&next, &want, 1e-5, 1e-5, "logits after a truncated batch");

    let mut full = Session::new(ctx, &model, 64).unwrap();
    let mut all = Vec::new();
    full.generate(prompt, &s, 30, true, |id| {
        all.push(id);
        true
    })
    .unwrap();
    assert_eq!(all, single, "generate() vs next_token steps");
}

/// llama-tiny's safetensors loaded as f16 or quantized to Q8_0 at load (`--dtype`): all 34
/// positions' logits stay within a share of the largest logit of the f32 reference (measured:
/// 3.2e-4 and 7.7e-3 against a largest logit of 0.67).
#[test]
fn hf_weights_stored_as_f16_or_q8_0() {
    let Some(ctx) = test_context() else { return };
    let (ids, want) = tiny_reference("llama-tiny");
    for (dtype, name, tolerance) in [(WeightType::F16, "F16", 2e-3f32), (WeightType::Q8_0, "Q8_0", 2e-2)] {
        let path = fixture("llama-tiny");
        let model = quill::files::load_model_with(ctx, &path, &LoadOptions { dtype }, &mut no_progress).unwrap();
        assert!(model.model.weight_types().starts_with(name), "{}", model.model.weight_types());
        let mut s = Session::new(ctx, &model, 64).unwrap();
        s.push(&ids).unwrap();
        let got = s.logits_all().unwrap();
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        let spread = want.iter().fold(0f32, |m, w| m.max(w.abs()));
        eprintln!("llama-tiny as {name}: largest logit difference {worst:.2e} (largest logit {spread:.2})");
        // f16 keeps 11 bits of each weight, Q8_0 about 8 (a step of max|w|/127 per block).
        assert!(worst <= tolerance * spread, "llama-tiny as {name}: logits differ by up to {worst} from reference_logits.safetensors");
    }
}

fn smollm2(opts: LoadOptions) -> Option<(LoadedModel, &'static Context)> {
    let ctx = test_context()?;
    let path = smollm2_path()?;
    let model = quill::files::load_model_with(ctx, &path, &opts, &mut no_progress).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    Some((model, ctx))
}

/// SmolLM2-135M-Instruct with its GGUF Q4_1/Q8_0 weights dequantized to f32 at load, against
/// tests/fixtures/smollm2/reference.json, for every prompt.
#[test]
fn golden_smollm2_f32() {
    let Some((model, ctx)) = smollm2(LoadOptions { dtype: WeightType::F32 }) else { return };
    assert!(model.model.weight_types().starts_with("F32"), "{}", model.model.weight_types());
    golden_smollm2(&model, ctx, 0.02, 1.0);
}

/// The same with the weights kept as the file stores them (Q4_1 layers, Q8_0 embedding and
/// tied head), dequantized in the kernels' registers.
#[test]
fn golden_smollm2_native_quantized() {
    let Some((model, ctx)) = smollm2(LoadOptions::default()) else { return };
    // 30 layers of fused Q/K/V, o_proj, fused gate/up and down_proj, and the Q8_0 embedding.
    assert_eq!(model.model.weight_types(), "Q8_0 ×1, Q4_1 ×120", "fused Q/K/V and gate/up, quantized");
    golden_smollm2(&model, ctx, 0.1, 0.95);
}

/// Checks every prompt of reference.json: prompt ids; teacher-forced argmax equal to the
/// reference at every step whose reference margin is >= `margin` and agreeing on at least
/// `agreement` of all steps; the top-10 logits at the last prompt position within 1e-2; greedy
/// decoding exact up to the first step with a margin below `margin`.
fn golden_smollm2(model: &LoadedModel, ctx: &'static Context, margin_needed: f64, agreement: f64) {
    let reference = json("smollm2/reference.json");
    let (mut agree, mut steps) = (0usize, 0usize);
    for (name, p) in reference["prompts"].as_object().unwrap() {
        let text = p["text"].as_str().unwrap();
        let input = ids(&p["input_ids"]);
        let greedy = ids(&p["greedy_ids"]);
        let margins: Vec<f64> = p["greedy_steps"].as_array().unwrap().iter().map(|s| s["margin"].as_f64().unwrap()).collect();
        let what = format!("smollm2 ({}) prompt '{name}' (reference.json)", model.model.weight_types());

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
            steps += 1;
            agree += (got == want) as usize;
            if margin >= margin_needed {
                assert_eq!(got, want, "{what}: teacher-forced step {step} (margin {margin:.4})");
            }
        }
        let last = row(input.len() - 1);
        for pair in p["last_top10"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            assert!((last[id] - want).abs() <= 1e-2, "{what}: last prompt position logit of token {id}: expected {want}, got {}", last[id]);
        }

        // Greedy decoding through the KV cache, exact up to the first low-margin step.
        let exact = margins.iter().position(|&m| m < margin_needed).unwrap_or(greedy.len());
        let mut s = Session::new(ctx, model, 256).unwrap();
        let mut out = Vec::new();
        s.generate(&input, &SamplingParams::greedy(), exact, true, |id| {
            out.push(id);
            true
        })
        .unwrap();
        assert_eq!(out, greedy[..exact], "{what}: greedy tokens before step {exact} (first margin < {margin_needed})");
    }
    let share = agree as f64 / steps as f64;
    eprintln!("smollm2 ({}): teacher-forced top-1 agreement {agree}/{steps} = {:.1}%", model.model.weight_types(), 100.0 * share);
    assert!(share >= agreement, "teacher-forced top-1 agreement {agree}/{steps} below {agreement}");
}
