//! Qwen2 and Qwen2.5 (Hugging Face `model_type: qwen2`, GGUF `general.architecture = qwen2`):
//! Llama with biases on the Q, K and V projections (none on the output projection), and
//! rotate-half RoPE in both file formats. The forward pass is Llama's, in `llama.rs`; this
//! file holds Qwen2's config and its tensor-name table.

use serde::Deserialize;

use super::config::{parse_json, Arch, HfRope, Mlp, ModelConfig, Norm, Positions};
use super::llama::{Llama, Naming};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;
use crate::weights::TensorSource;

/// Qwen2Config's `sliding_window` when the field is absent (an explicit null means none).
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}

/// The fields of Qwen2's `config.json` that quill reads.
#[derive(Deserialize)]
struct Qwen2Config {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    intermediate_size: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    /// transformers 4.x; 5 moved it into `rope_parameters`.
    rope_theta: Option<f64>,
    rope_parameters: Option<HfRope>,
    rope_scaling: Option<HfRope>,
    tie_word_embeddings: Option<bool>,
    use_sliding_window: Option<bool>,
    #[serde(default = "default_sliding_window")]
    sliding_window: Option<usize>,
}

/// From Qwen2's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c: Qwen2Config = parse_json(bytes, file)?;
    let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")));
    let dim = need(c.hidden_size, "hidden_size")?;
    let n_heads = need(c.num_attention_heads, "num_attention_heads")?;
    let max_ctx = need(c.max_position_embeddings, "max_position_embeddings")?;
    // Attention limited to the last `sliding_window` positions differs from full attention
    // once a sequence is longer than the window; quill's attention is always full.
    if let (Some(true), Some(window)) = (c.use_sliding_window, c.sliding_window) {
        if window < max_ctx {
            return Err(Error::Unsupported(format!(
                "{file}: use_sliding_window = true (sliding_window {window} < max_position_embeddings {max_ctx}); quill's attention has no window"
            )));
        }
    }
    if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(Error::Unsupported(format!("{file}: hidden_act '{act}' (Qwen2's MLP is SwiGLU, with silu)")));
    }
    ModelConfig {
        arch: Arch::Qwen2,
        dim,
        n_layers: need(c.num_hidden_layers, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
        head_dim: dim / n_heads.max(1),
        ffn_dim: need(c.intermediate_size, "intermediate_size")?,
        vocab: need(c.vocab_size, "vocab_size")?,
        max_ctx,
        norm_eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
        rope_theta: HfRope::theta(c.rope_theta, c.rope_parameters.as_ref(), c.rope_scaling.as_ref(), file)?,
        rope_style: RopeStyle::Neox,
        // transformers' Qwen2Config defaults to an untied head; released Qwen2 checkpoints say true.
        tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
        qkv_bias: true,
        o_bias: false,
        positions: Positions::Rope,
        norm: Norm::Rms,
        mlp: Mlp::SwiGlu,
    }
    .check(file)
}

/// From GGUF metadata: llama.cpp writes Qwen2's hyperparameters under the same keys as
/// llama's (`qwen2.block_count`, …) but leaves Q/K rows in Hugging Face's rotate-half order.
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let base = ModelConfig::llama_family_gguf(g, "qwen2")?;
    ModelConfig { arch: Arch::Qwen2, rope_style: RopeStyle::Neox, qkv_bias: true, o_bias: false, ..base }.check(&g.file)
}

/// The table from our names to the file's: Qwen2 names its tensors as Llama does (both
/// spellings), except that its o_proj has no bias.
pub fn name(n: Naming, ours: &str, layer: Option<usize>) -> String {
    if ours == "bo" {
        unreachable!("no Qwen2 tensor named {ours}");
    }
    super::llama::name(n, ours, layer)
}

/// Uploads every weight once. `progress` is called with the bytes of each tensor read.
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, naming: Naming, opts: &super::load::LoadOptions, progress: &mut dyn FnMut(u64)) -> Result<Llama> {
    Llama::load(ctx, cfg, src, &|ours, layer| name(naming, ours, layer), opts, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::gguf::tests::{build, gguf_string};

    const TINY: &str = r#"{"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 1000, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": 4096}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn reads_a_qwen2_config() {
        let c = ModelConfig::from_hf_json(TINY.as_bytes(), "config.json").unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!((c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.max_ctx), (64, 4, 2, 16, 160, 256));
        assert_eq!((c.rope_theta, c.rope_style), (1e6, RopeStyle::Neox));
        // Without the field, an untied head as in transformers' Qwen2Config.
        assert!(c.qkv_bias && !c.o_bias && !c.tied_embeddings);
        let c = config(with("tie_word_embeddings", "true").as_bytes(), "config.json").unwrap();
        assert!(c.tied_embeddings);
        // transformers 5 keeps the base in rope_parameters.
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"rope_theta": 5e5, "rope_type": "default"});
        assert_eq!(config(v.to_string().as_bytes(), "config.json").unwrap().rope_theta, 5e5);
    }

    #[test]
    fn sliding_windows_that_change_results_are_refused() {
        // Windowed but the window covers every position, or no window at all: same results.
        for (use_window, window) in [("true", "256"), ("true", "null"), ("false", "16")] {
            let json = with("use_sliding_window", use_window);
            let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v["sliding_window"] = serde_json::from_str(window).unwrap();
            config(v.to_string().as_bytes(), "config.json").unwrap_or_else(|e| panic!("{use_window} {window}: {e}"));
        }
        let mut v: serde_json::Value = serde_json::from_str(&with("use_sliding_window", "true")).unwrap();
        v["sliding_window"] = 128.into();
        let e = config(v.to_string().as_bytes(), "dir/config.json").unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("use_sliding_window"), "{e}");
        // Absent, Qwen2Config's default window of 4096 applies.
        v.as_object_mut().unwrap().remove("sliding_window");
        assert!(config(v.to_string().as_bytes(), "config.json").is_ok(), "4096 >= 256 positions");
        v["max_position_embeddings"] = 32768.into();
        assert!(config(v.to_string().as_bytes(), "config.json").is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (json, needle) in [(with("hidden_act", "\"gelu\""), "hidden_act"), (with("rope_scaling", r#"{"type": "yarn", "factor": 4.0}"#), "yarn")] {
            let e = config(json.as_bytes(), "config.json").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = config(v.to_string().as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("vocab_size"), "{e}");
    }

    #[test]
    fn names_in_both_spellings() {
        assert_eq!(name(Naming::HuggingFace, "bq", Some(3)), "model.layers.3.self_attn.q_proj.bias");
        assert_eq!(name(Naming::Gguf, "bv", Some(0)), "blk.0.attn_v.bias");
        assert_eq!(name(Naming::Gguf, "wo", Some(1)), "blk.1.attn_output.weight");
        assert_eq!(name(Naming::HuggingFace, "embed", None), "model.embed_tokens.weight");
        assert_eq!(name(Naming::Gguf, "lm_head", None), "output.weight");
    }

    #[test]
    fn reads_gguf_metadata() {
        let u32v = |v: u32| v.to_le_bytes().to_vec();
        let f32v = |v: f32| v.to_le_bytes().to_vec();
        let kv = [
            ("general.architecture", 8, gguf_string("qwen2")),
            ("qwen2.embedding_length", 4, u32v(64)),
            ("qwen2.block_count", 4, u32v(2)),
            ("qwen2.attention.head_count", 4, u32v(4)),
            ("qwen2.attention.head_count_kv", 4, u32v(2)),
            ("qwen2.feed_forward_length", 4, u32v(160)),
            ("qwen2.context_length", 4, u32v(256)),
            ("qwen2.attention.layer_norm_rms_epsilon", 6, f32v(1e-6)),
            ("qwen2.rope.freq_base", 6, f32v(1e6)),
        ];
        let bytes = build(3, &kv, &[("token_embd.weight", &[64, 1000], 0, vec![0; 64 * 1000 * 4])]);
        let g = Gguf::parse("q.gguf", &bytes).unwrap();
        let c = ModelConfig::from_gguf(&g).unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!((c.dim, c.n_layers, c.n_kv_heads, c.vocab, c.max_ctx), (64, 2, 2, 1000, 256));
        assert_eq!((c.rope_theta, c.rope_style), (1e6, RopeStyle::Neox));
        assert!(c.qkv_bias && !c.o_bias && c.tied_embeddings);
    }
}
