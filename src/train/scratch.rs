//! A Llama from scratch: random weights for a `LlamaConfig`-shaped config.json, a byte-level
//! tokenizer when none is given, and the trained model written back as a Hugging Face
//! directory's files (config.json, model.safetensors, tokenizer.json).

use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;

use super::llama::{uniform, Llama};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::ModelConfig;

/// transformers' `initializer_range` default: weights are drawn from N(0, 0.02²).
const INIT_STD: f32 = 0.02;

/// Every tensor of a new Llama of `cfg` as safetensors bytes: matrices N(0, 0.02²) (Box–Muller
/// from a seeded xorshift), norm gains 1.
pub fn init_safetensors(cfg: &ModelConfig, seed: u64) -> Result<Vec<u8>> {
    if cfg.tied_embeddings {
        return Err(Error::arg("--config", "tie_word_embeddings: training from scratch keeps the LM head separate; set it to false"));
    }
    let (d, hd, f) = (cfg.dim, cfg.head_dim, cfg.ffn_dim);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, d])];
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("model.layers.{l}.{s}.weight");
        shapes.extend([
            (n("input_layernorm"), vec![d]),
            (n("self_attn.q_proj"), vec![cfg.n_heads * hd, d]),
            (n("self_attn.k_proj"), vec![cfg.n_kv_heads * hd, d]),
            (n("self_attn.v_proj"), vec![cfg.n_kv_heads * hd, d]),
            (n("self_attn.o_proj"), vec![d, cfg.n_heads * hd]),
            (n("post_attention_layernorm"), vec![d]),
            (n("mlp.gate_proj"), vec![f, d]),
            (n("mlp.up_proj"), vec![f, d]),
            (n("mlp.down_proj"), vec![d, f]),
        ]);
    }
    shapes.push(("model.norm.weight".into(), vec![d]));
    shapes.push(("lm_head.weight".into(), vec![cfg.vocab, d]));
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = match shape.len() {
                1 => vec![1.0; n],
                _ => (0..n).map(|_| INIT_STD * normal(&mut rng)).collect(),
            };
            (name, shape, bytemuck::cast_slice(&values).to_vec())
        })
        .collect();
    serialize(&tensors)
}

/// The trained model's tensors (every parameter, Hugging Face names) as safetensors bytes.
pub async fn model_safetensors(ctx: &Context, llama: &Llama) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for (name, p) in llama.named_params() {
        let bytes = ctx.read_bytes_async(&p.value.buf, 0, (p.value.numel() * 4) as u64).await?;
        tensors.push((name, p.value.shape.clone(), bytes));
    }
    serialize(&tensors)
}

fn serialize(tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let views: Vec<(String, StView)> = tensors
        .iter()
        .map(|(n, s, b)| StView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::format("model.safetensors", format!("cannot write: {e}")))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::format("model.safetensors", format!("cannot write: {e}")))
}

/// A standard normal number (Box–Muller).
fn normal(rng: &mut u64) -> f32 {
    let u1 = uniform(rng).max(1e-7);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// GPT-2's byte → printable character table, which byte-level BPE vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap_or('?')
        })
        .collect()
}

/// A tokenizer.json (Hugging Face tokenizers) whose 256 tokens are the bytes: id = byte value,
/// no merges, so any UTF-8 text encodes and decodes exactly.
pub fn byte_level_tokenizer_json() -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars().iter().enumerate().map(|(i, c)| (c.to_string(), i.into())).collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    serde_json::to_vec(&tok).unwrap_or_default()
}

/// The config.json to save: the given one, marked as transformers' Llama with f32 weights.
pub fn output_config(config_json: &[u8], file: &str) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config_json).map_err(|e| Error::format(file, format!("malformed: {e}")))?;
    let obj = v.as_object_mut().ok_or_else(|| Error::format(file, "not a JSON object"))?;
    obj.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
    obj.insert("torch_dtype".into(), "float32".into());
    obj.insert("tie_word_embeddings".into(), false.into());
    serde_json::to_vec_pretty(&v).map_err(|e| Error::format(file, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn byte_level_tokenizer_round_trips_any_text() {
        let tok = Tokenizer::from_hf(&byte_level_tokenizer_json(), None, None, "bytes").unwrap();
        let text = "Héllo, wörld!\n\t🦀 ";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn init_has_the_configs_shapes_and_spread() {
        let cfg = crate::models::registry::from_hf_json(include_bytes!("../../tests/fixtures/llama-tiny/config.json"), "config.json").unwrap().1;
        let bytes = init_safetensors(&cfg, 1).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 3 + 9 * cfg.n_layers);
        let q: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("model.layers.1.self_attn.q_proj.weight").unwrap().data());
        let std = (q.iter().map(|x| x * x).sum::<f32>() / q.len() as f32).sqrt();
        assert!((std - INIT_STD).abs() < 0.002, "std {std}");
    }
}
