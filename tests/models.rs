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
    golden_tiny_from(name, "");
}

/// The golden check of fixture `name` loaded from `file` inside its directory ("": the
/// safetensors directory itself; "model-f32.gguf": llama.cpp's conversion of it).
fn golden_tiny_from(name: &str, file: &str) {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, &fixture(name).join(file));
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

// The architectures of issue 10, from their safetensors directories and (where llama.cpp's
// converter makes an equivalent file; see tests/fixtures/README.md) from model-f32.gguf.

#[test]
fn golden_qwen3_tiny() {
    golden_tiny("qwen3-tiny");
}

#[test]
fn golden_qwen3_tiny_gguf() {
    golden_tiny_from("qwen3-tiny", "model-f32.gguf");
}

#[test]
fn golden_llama3_tiny() {
    golden_tiny("llama3-tiny");
}

/// rope_freqs.weight carries the llama3 scaling.
#[test]
fn golden_llama3_tiny_gguf() {
    golden_tiny_from("llama3-tiny", "model-f32.gguf");
}

#[test]
fn golden_llama_tiny_gguf() {
    golden_tiny_from("llama-tiny", "model-f32.gguf");
}

#[test]
fn golden_qwen2_tiny_gguf() {
    golden_tiny_from("qwen2-tiny", "model-f32.gguf");
}

/// A window of 10 over the 34-token input, in a ring cache.
#[test]
fn golden_mistral_tiny() {
    golden_tiny("mistral-tiny");
}

/// mistral-tiny converted by llama.cpp's own converter (scripts/make-mistral-gguf.py), which
/// writes Mistral as `llama`; the script adds the `llama.attention.sliding_window` key that the
/// converter drops, without which the file would be a full-attention model.
#[test]
fn golden_mistral_tiny_gguf() {
    golden_tiny_from("mistral-tiny", "model-f32.gguf");
}

/// Mistral's sliding layers keep a ring of window + chunk - 1 = 137 positions in a 256-position
/// session, so 200 tokens wrap it. With a window of 10 over 2 layers, the logits at position p
/// depend only on tokens p-18..=p (RoPE sees only relative positions), so the ring's logits at
/// the end must equal those of a fresh session given just those tokens (within 1e-4 + 1e-3
/// relative: the same rotations at other absolute positions round differently in f32).
#[test]
fn mistral_ring_cache_matches_a_fresh_window() {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, &fixture("mistral-tiny"));
    let mut seed = 12345u64;
    let ids: Vec<u32> = (0..200)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % 1000) as u32
        })
        .collect();
    let mut ring = Session::new(ctx, &model, 256).unwrap();
    ring.push(&ids[..150]).unwrap();
    ring.logits_last().unwrap();
    for &id in &ids[150..] {
        ring.push(&[id]).unwrap();
        ring.logits_last().unwrap();
    }
    ring.push(&[7]).unwrap();
    let got = ring.logits_last().unwrap();
    let mut tail = ids[200 - 18..].to_vec();
    tail.push(7);
    let mut fresh = Session::new(ctx, &model, 64).unwrap();
    fresh.push(&tail).unwrap();
    check_close(&got, &fresh.logits_last().unwrap(), 1e-4, 1e-3, "mistral-tiny position 200 through the ring vs a fresh 19-token window");
}

#[test]
fn golden_phi3_tiny() {
    golden_tiny("phi3-tiny");
}

/// Fused `attn_qkv` and `ffn_up` ([gate | up]) as llama.cpp names Phi-3's tensors; the file
/// comes from scripts/make-phi3-gguf.py (llama.cpp's converter cannot write it for this vocabulary).
#[test]
fn golden_phi3_tiny_gguf() {
    golden_tiny_from("phi3-tiny", "model-f32.gguf");
}

#[test]
fn golden_gemma2_tiny() {
    golden_tiny("gemma2-tiny");
}

#[test]
fn golden_gemma2_tiny_gguf() {
    golden_tiny_from("gemma2-tiny", "model-f32.gguf");
}

/// The weights and tokenizer of fixture `base` with `config` as its config.json, from a copy of
/// the fixture directory.
fn tiny_with_config(ctx: &Context, base: &str, case: &str, config: &serde_json::Value) -> LoadedModel {
    let dir = std::env::temp_dir().join(format!("quill-{base}-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixture(&format!("{base}/{f}")), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let model = load(ctx, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    model
}

/// gemma2-tiny with its config.json edited by `edit`.
fn gemma2_tiny_with(ctx: &Context, case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> LoadedModel {
    let mut config = json("gemma2-tiny/config.json");
    edit(&mut config);
    tiny_with_config(ctx, "gemma2-tiny", case, &config)
}

/// The golden check of a config variant: `base`'s weights with `variant`'s config.json, against
/// `variant`'s references (tests/fixtures/make_variant_refs.py). Returns the model.
fn golden_variant(ctx: &'static Context, base: &str, variant: &str) -> LoadedModel {
    let model = tiny_with_config(ctx, base, variant, &json(&format!("{variant}/config.json")));
    let read = |file: &str| std::fs::read(fixture(&format!("{variant}/{file}"))).unwrap();
    pollster::block_on(golden::golden_tiny(ctx, &model, variant, &read("reference_logits.safetensors"), &read("reference.json")));
    model
}

/// A variant's `short_logits`: transformers' logits of the first 12 input tokens alone.
fn short_reference(variant: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(&format!("{variant}/reference_logits.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("short_logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Phi-3's longrope (tests/fixtures/phi3-longrope: phi3-tiny's weights, original context 16,
/// attention factor √2): the 34-token golden runs on the long factors; 12 tokens alone stay
/// within the original context and so turn with the short factors, as in transformers.
#[test]
fn golden_phi3_longrope() {
    let Some(ctx) = test_context() else { return };
    let model = golden_variant(ctx, "phi3-tiny", "phi3-longrope");
    let (ids, _) = tiny_reference("phi3-longrope");
    let mut s = Session::new(ctx, &model, 64).unwrap();
    s.push(&ids[..12]).unwrap();
    check_close(&s.logits_all().unwrap(), &short_reference("phi3-longrope"), 1e-4, 1e-4, "phi3-longrope, 12 tokens (short factors; reference_logits.safetensors short_logits)");
}

/// `dynamic` NTK RoPE (tests/fixtures/llama-dynamic: llama-tiny's weights, factor 4, original
/// context 16). quill fixes the frequencies for the state's context (`dynamic_rope_table`), so a
/// 34-position context holding the 34 tokens equals transformers' one 34-token forward call, a
/// context within the original 16 turns with the plain base as transformers' 12-token call
/// does, and a longer context turns differently (the frequencies follow the context).
#[test]
fn dynamic_ntk_rope_follows_the_context() {
    let Some(ctx) = test_context() else { return };
    let model = tiny_with_config(ctx, "llama-tiny", "llama-dynamic", &json("llama-dynamic/config.json"));
    assert_eq!(model.config().max_ctx, 64, "factor 4 over an original context of 16");
    let (ids, want) = tiny_reference("llama-dynamic");
    let logits = |ctx_len: usize, n: usize| {
        let mut s = Session::new(ctx, &model, ctx_len).unwrap();
        s.push(&ids[..n]).unwrap();
        s.logits_all().unwrap()
    };
    let full = logits(ids.len(), ids.len());
    check_close(&full, &want, 1e-4, 1e-4, "llama-dynamic, 34 tokens in a 34-position context (reference_logits.safetensors logits)");
    check_close(&logits(16, 12), &short_reference("llama-dynamic"), 1e-4, 1e-4, "llama-dynamic, 12 tokens in a 16-position context (short_logits)");
    let shorter = logits(24, 24);
    let moved = shorter.iter().zip(&full[..shorter.len()]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    // The tiny random model moves little (6.5e-4 here), but well beyond the goldens' 1e-4 + 1e-4·|ref|.
    assert!(moved > 3e-4, "a 24-position context must turn with a smaller base than a 34-position one (largest logit change {moved})");
}

/// The same longrope model from GGUF (scripts/make-phi3-gguf.py phi3-longrope: the factors as
/// `rope_factors_short` / `rope_factors_long` tensors and `phi3.rope.scaling.attn_factor`, as
/// llama.cpp's converter writes them).
#[test]
fn golden_phi3_longrope_gguf() {
    golden_tiny_from("phi3-longrope", "model-f32.gguf");
}

/// Qwen2 with `use_sliding_window` (tests/fixtures/qwen2-sliding: qwen2-tiny's weights, layer 1
/// windowed to 10 positions, shorter than the 34-token input).
#[test]
fn golden_qwen2_sliding_window() {
    let Some(ctx) = test_context() else { return };
    let model = golden_variant(ctx, "qwen2-tiny", "qwen2-sliding");
    assert_eq!((model.config().attention(0).window, model.config().attention(1).window), (None, Some(10)));
}

/// The tiny Gemma 2's logits stay below 0.7, where 30·tanh(l/30) is within 1e-4 of l, so its
/// golden test cannot tell whether the soft-caps are applied. Here caps small enough to matter:
/// a final cap of 0.3 gives exactly 0.3·tanh(l/0.3) of the uncapped logits (within f32 tanh's
/// error), and an attention cap of 0.01 (near-uniform attention) moves the logits, as does
/// an attention scale other than head_dim^-0.5.
#[test]
fn gemma2_soft_caps_are_applied() {
    let Some(ctx) = test_context() else { return };
    let (ids, _) = tiny_reference("gemma2-tiny");
    let logits = |m: &LoadedModel| {
        let mut s = Session::new(ctx, m, 64).unwrap();
        s.push(&ids).unwrap();
        s.logits_all().unwrap()
    };
    let uncapped = logits(&gemma2_tiny_with(ctx, "none", |c| c["final_logit_softcapping"] = serde_json::Value::Null));
    let capped = logits(&gemma2_tiny_with(ctx, "final", |c| c["final_logit_softcapping"] = 0.3.into()));
    let want: Vec<f32> = uncapped.iter().map(|&l| 0.3 * (l / 0.3).tanh()).collect();
    check_close(&capped, &want, 1e-5, 1e-4, "gemma2-tiny with final_logit_softcapping 0.3");
    assert!(capped.iter().zip(&uncapped).any(|(a, b)| (a - b).abs() > 0.05), "a final cap of 0.3 must change logits up to 0.65");
    let attn = logits(&gemma2_tiny_with(ctx, "attn", |c| {
        c["final_logit_softcapping"] = serde_json::Value::Null;
        c["attn_logit_softcapping"] = 0.01.into();
    }));
    let moved = |other: &[f32]| other.iter().zip(&uncapped).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved(&attn) > 1e-3, "an attention cap of 0.01 moved the logits by only {}", moved(&attn));
    // query_pre_attn_scalar equals head_dim in the fixture (and in Gemma 3 270M), so the
    // default scale would pass the golden test too; a scalar of 2 must change the result.
    let scaled = logits(&gemma2_tiny_with(ctx, "scale", |c| {
        c["final_logit_softcapping"] = serde_json::Value::Null;
        c["query_pre_attn_scalar"] = 2.into();
    }));
    assert!(moved(&scaled) > 1e-3, "query_pre_attn_scalar 2 moved the logits by only {}", moved(&scaled));
}

#[test]
fn golden_gemma3_tiny() {
    golden_tiny("gemma3-tiny");
}

#[test]
fn golden_gemma3_tiny_gguf() {
    golden_tiny_from("gemma3-tiny", "model-f32.gguf");
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
        let model = quill::files::load_model_with(ctx, &path, &LoadOptions { dtype, ..Default::default() }, &mut no_progress).unwrap();
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
    let Some((model, ctx)) = smollm2(LoadOptions { dtype: WeightType::F32, ..Default::default() }) else { return };
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

/// Gemma 3 270M Q4_K_M (the real GGUF, fetched beside SmolLM2 as `gemma-3-270m-q4_k_m.gguf`),
/// or None (a skip) when it is absent and CI is unset.
fn gemma3_270m() -> Option<(LoadedModel, &'static Context)> {
    let ctx = test_context()?;
    let path = quill::files::default_model_path().with_file_name("gemma-3-270m-q4_k_m.gguf");
    if !path.is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but {} is missing: fetch the Gemma 3 270M model", path.display());
        eprintln!("SKIPPING: {} is missing", path.display());
        return None;
    }
    Some((load(ctx, &path), ctx))
}

/// Against tests/fixtures/gemma3-270m/reference.json (transformers on the dequantized GGUF,
/// float32): for each prompt, the prompt ids (BOS added); the top-10 logits at the last prompt
/// position within 0.02 + 1e-3·|ref| (the weights stay quantized on the GPU but are
/// dequantized exactly; what differs is the order of f32 sums over 640-2048 terms in 18 layers);
/// greedy tokens exact up to the first step whose reference margin is below 0.1 (where
/// transformers and llama.cpp already part).
#[test]
fn golden_gemma3_270m() {
    let Some((model, ctx)) = gemma3_270m() else { return };
    let reference = json("gemma3-270m/reference.json");
    let vocab = model.config().vocab;
    for (name, p) in reference["prompts"].as_object().unwrap() {
        let what = format!("gemma3-270m prompt '{name}' (reference.json)");
        let input = ids(&p["input_ids"]);
        assert_eq!(model.tokenizer.encode(p["prompt"].as_str().unwrap()).unwrap(), input, "{what}: prompt ids != input_ids");

        let mut s = Session::new(ctx, &model, 256).unwrap();
        s.push(&input).unwrap();
        let logits = s.logits_all().unwrap();
        let last = &logits[(input.len() - 1) * vocab..input.len() * vocab];
        for pair in p["last_top10"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            assert!((last[id] - want).abs() <= 0.02 + 1e-3 * want.abs(), "{what}: last prompt position logit of token {id}: expected {want}, got {}", last[id]);
        }

        let greedy = ids(&p["greedy_ids"]);
        let margins: Vec<f64> = p["greedy_steps"].as_array().unwrap().iter().map(|s| s["margin"].as_f64().unwrap()).collect();
        let exact = margins.iter().position(|&m| m < 0.1).unwrap_or(greedy.len());
        let mut s = Session::new(ctx, &model, 256).unwrap();
        let mut out = Vec::new();
        s.generate(&input, &SamplingParams::greedy(), exact, true, |id| {
            out.push(id);
            true
        })
        .unwrap();
        assert_eq!(out, greedy[..exact], "{what}: greedy tokens before step {exact} (first margin < 0.1)");
        let text = model.tokenizer.decode(&out).unwrap();
        assert!(p["greedy_text"].as_str().unwrap().starts_with(&text), "{what}: greedy text '{text}'");
        // llama.cpp's greedy text on the same file (CPU backend, its first 16 tokens; llama-simple
        // ends its output with a newline) agrees up to there too.
        let llama_cpp = p["llama_cpp_greedy_text_16"].as_str().unwrap();
        let llama_cpp = llama_cpp.strip_suffix('\n').unwrap_or(llama_cpp);
        let ours = model.tokenizer.decode(&out[..exact.min(16)]).unwrap();
        assert!(llama_cpp.starts_with(&ours), "{what}: greedy text '{ours}' is not the start of llama.cpp's '{llama_cpp}'");
    }
}

/// An f16 KV cache (`--kv-cache f16`) against transformers' f32 reference, on llama-tiny and on
/// gemma3-tiny (sliding-window ring layers, head_dim 32, its own scale). K and V rounded to f16
/// move by up to 2^-11 relative; the logits (|l| < 1) moved by at most 1.3e-4 (llama-tiny) and
/// 4.5e-4 (gemma3-tiny) when this was written, so the bound is 1e-3 + 1e-3·|ref|, ten times the
/// f32 cache's. Greedy tokens must be
/// exact up to the first reference step whose margin is below 2e-3 (twice that bound).
#[test]
fn golden_with_f16_kv_cache() {
    use quill::ops::attention::KvFormat;
    let Some(ctx) = test_context() else { return };
    let opts = LoadOptions { kv_cache: KvFormat::F16, ..Default::default() };
    for name in ["llama-tiny", "gemma3-tiny"] {
        let model = quill::files::load_model_with(ctx, &fixture(name), &opts, &mut no_progress).unwrap();
        assert_eq!(model.config().kv_format, KvFormat::F16);
        let (ids, want) = tiny_reference(name);
        let mut s = Session::new(ctx, &model, 64).unwrap();
        s.push(&ids[..20]).unwrap();
        let mut got = s.logits_all().unwrap();
        for &id in &ids[20..] {
            s.push(&[id]).unwrap();
            got.extend(s.logits_last().unwrap());
        }
        let worst = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        eprintln!("{name} with an f16 KV cache: logits differ by up to {worst:.2e} from reference_logits.safetensors");
        check_close(&got, &want, 1e-3, 1e-3, &format!("{name} f16 KV cache, prefill(20) + decode logits"));
        let reference = json(&format!("{name}/reference.json"));
        let steps = reference["greedy_steps"].as_array().unwrap();
        let sure = steps.iter().take_while(|s| s["margin"].as_f64().unwrap() >= 2e-3).count();
        assert!(sure >= 4, "{name}: only {sure} greedy steps have a margin of 2e-3");
        let greedy: Vec<u32> = reference["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mut s = Session::new(ctx, &model, 64).unwrap();
        let mut out = Vec::new();
        s.generate(&ids, &SamplingParams::greedy(), 16, true, |id| {
            out.push(id);
            true
        })
        .unwrap();
        assert_eq!(out[..sure], greedy[..sure], "{name} f16 KV cache: greedy tokens (reference.json greedy_ids) before the first margin below 2e-3");
    }
}
