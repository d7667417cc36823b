//! Browser tests (wasm-bindgen-test in headless Chromium through WebGPU; `scripts/test-web.sh`
//! runs them): the llama-tiny golden test, with the same reference data and tolerances as
//! tests/models.rs. The kernel tests run in the browser from their own modules (`gpu_test!`).
#![cfg(target_arch = "wasm32")]

#[path = "common/golden.rs"]
mod golden;

use quill::gpu::context::test_context_async;
use quill::models::load::{load_hf, HfFiles};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-tiny/", $file))
    };
}

#[wasm_bindgen_test]
async fn golden_llama_tiny() {
    let ctx = test_context_async().await;
    let files = HfFiles {
        dir: "llama-tiny".into(),
        config_json: fixture!("config.json"),
        safetensors: vec![("llama-tiny/model.safetensors".into(), &fixture!("model.safetensors")[..])],
        tokenizer_json: Some(fixture!("tokenizer.json")),
        tokenizer_config_json: Some(fixture!("tokenizer_config.json")),
        chat_template: None,
        generation_config_json: Some(fixture!("generation_config.json")),
    };
    let model = load_hf(ctx, &files, &mut |_, _| {}).unwrap_or_else(|e| panic!("loading llama-tiny: {e}"));
    golden::golden_tiny(ctx, &model, "llama-tiny", fixture!("reference_logits.safetensors"), fixture!("reference.json")).await;
}
