//! Training in the browser (wasm-bindgen-test in headless Chromium through WebGPU;
//! `scripts/test-web.sh` runs it): the page's `finetune_lora` export takes 20 LoRA steps on
//! llama-tiny and the loss falls.
#![cfg(target_arch = "wasm32")]

use quill::web::Quill;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &[u8] = include_bytes!("fixtures/llama-tiny/config.json");
const MODEL: &[u8] = include_bytes!("fixtures/llama-tiny/model.safetensors");
const BATCH: &[u8] = include_bytes!("fixtures/train/batch.json");

#[wasm_bindgen_test]
async fn twenty_lora_steps_lower_the_loss() {
    // batch.json's two random sequences, end to end: 66 ids give two sequences of 32 targets,
    // both in every step (as the native AdamW fixture trains on them).
    let batch: serde_json::Value = serde_json::from_slice(BATCH).unwrap();
    let ids: Vec<u32> = batch["input_ids"].as_array().unwrap().iter().flat_map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32)).collect();
    let quill = Quill::create(None).await.unwrap_or_else(|_| panic!("no WebGPU adapter"));
    let steps = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = steps.clone();
    let on_step = wasm_bindgen::closure::Closure::<dyn FnMut(f64, f32)>::new(move |_step: f64, _loss: f32| seen.set(seen.get() + 1));
    let options = r#"{"steps": 20, "seq_len": 32, "batch": 2, "rank": 4, "lr": 1e-2}"#;
    let promise = quill.finetune_lora(CONFIG.to_vec(), MODEL.to_vec(), ids, options, on_step.as_ref().clone().into());
    let done = JsFuture::from(promise).await.unwrap_or_else(|e| panic!("finetune_lora: {e:?}"));
    let field = |k: &str| js_sys::Reflect::get(&done, &k.into()).unwrap_or_else(|e| panic!("finetune_lora's result has no {k}: {e:?}"));
    let losses: Vec<f32> = serde_json::from_str(&field("losses").as_string().unwrap()).unwrap();
    assert_eq!((losses.len(), steps.get()), (20, 20), "a loss for every step, and on_step called for each");
    assert_eq!(field("cancelled").as_bool(), Some(false));
    // The adapter comes back as PEFT writes it: rank 4 in its config, and B no longer zero.
    let config: serde_json::Value = serde_json::from_str(&field("adapter_config").as_string().unwrap()).unwrap();
    assert_eq!(config["r"], 4, "adapter_config.json: {config}");
    let weights = js_sys::Uint8Array::new(&field("adapter_model")).to_vec();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap_or_else(|e| panic!("adapter_model.safetensors: {e}"));
    let b = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert!(b.data().chunks_exact(4).any(|x| f32::from_le_bytes(x.try_into().unwrap()) != 0.0), "lora_B of layer 0's q_proj is still zero after 20 steps");
    // Natively the same run goes 6.93 -> 6.3: a random-token batch, rank 4, lr 1e-2 with a short warmup.
    let (first, last) = (losses[0], losses[19]);
    assert!(losses.iter().all(|l| l.is_finite()) && last < first - 0.2, "losses {losses:?}");
    web_sys_log(&format!("browser LoRA: loss {first} -> {last} in 20 steps"));
}

fn web_sys_log(s: &str) {
    wasm_bindgen_test::console_log!("{s}");
}
