//! Perplexity against tests/fixtures/perplexity.json (Hugging Face transformers, float32:
//! exp(mean NLL) of the fixture's text over its tokens, no BOS added). Mean NLL within 1e-3.

mod common;

use std::process::Command;

use common::*;
use quill::gpu::context::test_context;
use quill::perplexity::perplexity;

fn text() -> String {
    json("perplexity.json")["text"].as_str().unwrap().to_string()
}

/// The CLI (`quill perplexity --json`) and, with `library`, `quill::perplexity` match the
/// reference for `name`.
fn check(name: &str, model_path: &std::path::Path, library: bool) {
    let Some(ctx) = test_context() else { return };
    let want = &json("perplexity.json")[name];
    let (want_n, want_nll) = (want["n_tokens"].as_u64().unwrap() as usize, want["mean_nll"].as_f64().unwrap());
    if library {
        let model = quill::files::load_model(ctx, model_path, &mut no_progress).unwrap();
        let ids = model.tokenizer.encode(&text()).unwrap();
        assert_eq!(ids.len(), want_n, "{name}: token count (perplexity.json n_tokens)");
        let window = model.config().max_ctx.min(2048);
        let p = perplexity(ctx, &model, &ids, window, window / 2).unwrap();
        assert_eq!((p.n_tokens, p.n_scored), (want_n, want_n - 1));
        assert!((p.mean_nll - want_nll).abs() <= 1e-3, "{name}: mean NLL {} vs perplexity.json {want_nll}", p.mean_nll);
        assert!((p.perplexity - p.mean_nll.exp()).abs() <= 1e-9 * p.perplexity);
    }

    let o = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(["perplexity", "--json", "--model", model_path.to_str().unwrap(), &text()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{name}: stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(got["n_tokens"].as_u64(), Some(want_n as u64), "{name}: CLI n_tokens");
    let nll = got["mean_nll"].as_f64().unwrap();
    assert!((nll - want_nll).abs() <= 1e-3, "{name}: CLI mean NLL {nll} vs {want_nll}");
    assert!((got["perplexity"].as_f64().unwrap() - nll.exp()).abs() <= 1e-6 * nll.exp());
}

#[test]
fn perplexity_gpt2_tiny() {
    check("gpt2-tiny", &fixture("gpt2-tiny"), true);
}

#[test]
fn perplexity_llama_tiny() {
    check("llama-tiny", &fixture("llama-tiny"), true);
}

#[test]
fn perplexity_qwen2_tiny() {
    check("qwen2-tiny", &fixture("qwen2-tiny"), true);
}

#[test]
fn perplexity_xglm_tiny() {
    check("xglm-tiny", &fixture("xglm-tiny"), true);
}

#[test]
fn perplexity_qwen3_tiny() {
    check("qwen3-tiny", &fixture("qwen3-tiny"), true);
}

#[test]
fn perplexity_llama3_tiny() {
    check("llama3-tiny", &fixture("llama3-tiny"), true);
}

#[test]
fn perplexity_mistral_tiny() {
    check("mistral-tiny", &fixture("mistral-tiny"), true);
}

#[test]
fn perplexity_phi3_tiny() {
    check("phi3-tiny", &fixture("phi3-tiny"), true);
}

#[test]
fn perplexity_gemma2_tiny() {
    check("gemma2-tiny", &fixture("gemma2-tiny"), true);
}

#[test]
fn perplexity_gemma3_tiny() {
    check("gemma3-tiny", &fixture("gemma3-tiny"), true);
}

#[test]
fn perplexity_smollm2() {
    if let Some(path) = smollm2_path() {
        // The CLI only: loading and running the 135M model on a software GPU takes a while.
        check("smollm2", &path, false);
    }
}

/// Texts longer than the window: every token after the first is scored once, and with a
/// window of half the text the mean NLL stays near the one-window value (a random tiny model
/// uses little context); stride = window leaves each later window's first token unscored.
#[test]
fn windows_score_every_token_once() {
    let Some(ctx) = test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let ids = model.tokenizer.encode(&text()).unwrap();
    let n = ids.len();
    let full = perplexity(ctx, &model, &ids, 256, 128).unwrap();
    let windowed = perplexity(ctx, &model, &ids, 56, 20).unwrap();
    assert_eq!(windowed.n_scored, n - 1);
    assert!((windowed.mean_nll - full.mean_nll).abs() < 0.05, "windowed {} vs full {}", windowed.mean_nll, full.mean_nll);
    let disjoint = perplexity(ctx, &model, &ids, 56, 56).unwrap();
    assert_eq!(disjoint.n_scored, n - 1 - (n - 1) / 56);

    // The first window alone is the whole computation for a text that fits it.
    let head = perplexity(ctx, &model, &ids[..56], 56, 20).unwrap();
    let first = perplexity(ctx, &model, &ids[..56], 256, 1).unwrap();
    assert_eq!(head.mean_nll, first.mean_nll);

    assert!(perplexity(ctx, &model, &ids[..1], 256, 128).unwrap_err().to_string().contains("at least 2"));
    assert!(perplexity(ctx, &model, &ids, 56, 57).unwrap_err().to_string().contains("--stride"));
    assert!(perplexity(ctx, &model, &ids, 100000, 1).unwrap_err().to_string().contains("--ctx"));
}

/// Gemma 3 270M Q4_K_M (`scripts/fetch-model.sh gemma3-270m`), its weights quantized on the GPU,
/// against transformers on the same file dequantized to float32 (tests/fixtures/gemma3-270m/
/// reference.json `perplexity`: its own text, BOS added as the file says): mean NLL within 1e-3.
#[test]
fn perplexity_gemma3_270m() {
    let Some(_) = test_context() else { return };
    let path = quill::files::gemma3_270m_path();
    if !path.is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but {} is missing: run scripts/fetch-model.sh gemma3-270m", path.display());
        eprintln!("SKIPPING: {} is missing", path.display());
        return;
    }
    let want = &json("gemma3-270m/reference.json")["perplexity"];
    let (text, want_n, want_nll) = (want["text"].as_str().unwrap(), want["n_tokens"].as_u64().unwrap(), want["mean_nll"].as_f64().unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_quill")).args(["perplexity", "--json", "--model", path.to_str().unwrap(), text]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(got["n_tokens"].as_u64(), Some(want_n), "gemma3-270m: n_tokens (reference.json perplexity)");
    let nll = got["mean_nll"].as_f64().unwrap();
    assert!((nll - want_nll).abs() <= 1e-3, "gemma3-270m: mean NLL {nll} vs reference.json {want_nll}");
}
