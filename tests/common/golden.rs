//! The golden check of the tiny models, shared by the native tests (tests/models.rs, which
//! block on it) and the browser tests (tests/web.rs, which await it). It takes the fixture's
//! bytes, so the browser test can embed them.

use quill::generate::Session;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::sampling::SamplingParams;

/// {llama,qwen2,gpt2,xglm}-tiny: reference_logits.safetensors holds input_ids [1, 34] (i64) and logits [34, 1000].
pub fn tiny_reference(reference_logits: &[u8]) -> (Vec<u32>, Vec<f32>) {
    let st = safetensors::SafeTensors::deserialize(reference_logits).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids: Vec<u32> = ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let logits = st.tensor("logits").unwrap();
    (ids, logits.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

pub fn check_close(got: &[f32], want: &[f32], abs: f32, rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}: index {i} (position {}, token {}): expected {w}, got {g}", i / 1000, i % 1000);
    }
}

/// Full logits at all 34 positions within 1e-4 (abs + rel) in one prefill, then again through
/// a 20-token prefill followed by 14 single-token KV-cache decode steps; 16 greedy tokens exact.
/// `reference_logits` and `reference_json` are the fixture's reference_logits.safetensors
/// and reference.json.
pub async fn golden_tiny(ctx: &Context, model: &LoadedModel, name: &str, reference_logits: &[u8], reference_json: &[u8]) {
    let (ids, want) = tiny_reference(reference_logits);
    let vocab = model.config().vocab;
    assert_eq!(ids.len(), 34);

    let mut s = Session::new(ctx, model, 64).unwrap();
    s.push(&ids).unwrap();
    let got = s.logits_all_async().await.unwrap();
    check_close(&got, &want, 1e-4, 1e-4, &format!("{name} prefill logits (reference_logits.safetensors)"));

    let mut s = Session::new(ctx, model, 64).unwrap();
    s.push(&ids[..20]).unwrap();
    let mut got = s.logits_all_async().await.unwrap();
    for &id in &ids[20..] {
        s.push(&[id]).unwrap();
        got.extend(s.logits_last_async().await.unwrap());
    }
    check_close(&got, &want, 1e-4, 1e-4, &format!("{name} prefill(20) + decode logits"));
    assert_eq!(got.len(), 34 * vocab);

    let reference: serde_json::Value = serde_json::from_slice(reference_json).unwrap();
    let greedy: Vec<u32> = reference["greedy_ids"].as_array().expect("greedy_ids").iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let mut s = Session::new(ctx, model, 64).unwrap();
    let mut out = Vec::new();
    s.generate_async(&ids, &SamplingParams::greedy(), 16, true, |id| {
        out.push(id);
        true
    })
    .await
    .unwrap();
    assert_eq!(out, greedy, "{name}: 16 greedy tokens (reference.json greedy_ids)");
}
