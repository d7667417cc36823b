//! Qwen2 and Qwen2.5 (Hugging Face `model_type: qwen2`, GGUF `general.architecture = qwen2`):
//! Llama with biases on the Q, K and V projections (none on the output projection), and
//! rotate-half RoPE in both file formats (llama.cpp does not permute Qwen2's Q/K rows).

use serde::Deserialize;

use super::builder::Builder;
use super::config::{parse_json, Arch, Attention, LocalLayers, ModelConfig};
use super::decoder::{self, Decoder, LLAMA_NAMES};
use super::readers::{gguf_base, HfConfig};
use super::arch::Architecture;
use crate::error::{Error, Result};
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture {
    name: "qwen2",
    model_types: &["qwen2"],
    gguf_names: &["qwen2"],
    hf_config: config,
    gguf_config: Some(gguf_config),
    load,
};

/// Qwen2Config's `sliding_window` when the field is absent (an explicit null means none).
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}

/// Qwen2's own reading of the window fields.
#[derive(Deserialize)]
struct Qwen2Window {
    use_sliding_window: Option<bool>,
    #[serde(default = "default_sliding_window")]
    sliding_window: Option<usize>,
    /// Layers from this one on slide, when `layer_types` is not given (Qwen2Config: 28).
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

/// Qwen2 and Qwen3's sliding-window layers, as transformers' Qwen2Config sets them: only with
/// `use_sliding_window` (off in every released checkpoint), the layers `layer_types` names
/// `sliding_attention`, or without it those from `max_window_layers` on; each sees the last
/// `sliding_window` positions (a ring cache, as Mistral's).
pub(super) fn sliding_layers(bytes: &[u8], file: &str, cfg: &mut ModelConfig) -> Result<()> {
    let w: Qwen2Window = parse_json(bytes, file)?;
    let Some(window) = w.sliding_window.filter(|_| w.use_sliding_window == Some(true)) else { return Ok(()) };
    let is_local: Vec<bool> = match &w.layer_types {
        Some(types) if types.len() != cfg.n_layers => return Err(Error::format(file, format!("{} layer_types for {} layers", types.len(), cfg.n_layers))),
        Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
        None => (0..cfg.n_layers).map(|i| i >= w.max_window_layers.unwrap_or(28)).collect(),
    };
    if is_local.iter().any(|&l| l) {
        let attention = Attention { window: Some(window), ..cfg.block.attention };
        cfg.local = Some(LocalLayers { attention, is_local });
    }
    Ok(())
}

/// From Qwen2's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["silu"], file)?;
    // Qwen2Config has no head_dim: heads split the width.
    let c = HfConfig { head_dim: None, ..c };
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-6)?;
    (cfg.block.attention.qkv_bias, cfg.block.attention.o_bias) = (true, false);
    sliding_layers(bytes, file, &mut cfg)?;
    cfg.check(file)
}

/// From GGUF metadata: llama.cpp writes Qwen2's hyperparameters under the same keys as
/// llama's (`qwen2.block_count`, …) but leaves Q/K rows in Hugging Face's rotate-half order.
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let mut cfg = gguf_base(g, Arch(ARCH.name), "qwen2", RopeStyle::Neox)?;
    (cfg.block.attention.qkv_bias, cfg.block.attention.o_bias) = (true, false);
    cfg.check(&g.file)
}

/// Qwen2 names its tensors as Llama does (both spellings).
fn load(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    decoder::load(cfg, b, &LLAMA_NAMES, false)
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
        let c = crate::models::registry::from_hf_json(TINY.as_bytes(), "config.json").unwrap().1;
        assert_eq!(c.arch.name(), "qwen2");
        assert_eq!((c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.max_ctx), (64, 4, 2, 16, 160, 256));
        let rope = c.block.attention.rope.unwrap();
        assert_eq!((rope.theta, rope.style), (1e6, RopeStyle::Neox));
        // Without the field, an untied head as in transformers' Qwen2Config.
        assert!(c.block.attention.qkv_bias && !c.block.attention.o_bias && !c.tied_embeddings);
        let c = config(with("tie_word_embeddings", "true").as_bytes(), "config.json").unwrap();
        assert!(c.tied_embeddings);
        // transformers 5 keeps the base in rope_parameters.
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"rope_theta": 5e5, "rope_type": "default"});
        assert_eq!(config(v.to_string().as_bytes(), "config.json").unwrap().block.attention.rope.unwrap().theta, 5e5);
    }

    #[test]
    fn sliding_windows_follow_qwen2config() {
        let windows = |json: &str| -> Vec<Option<usize>> {
            let c = config(json.as_bytes(), "config.json").unwrap();
            (0..c.n_layers).map(|i| c.attention(i).window).collect()
        };
        // Off, or on without a window: full attention everywhere.
        assert_eq!(windows(&with("use_sliding_window", "false")), [None, None]);
        let mut v: serde_json::Value = serde_json::from_str(&with("use_sliding_window", "true")).unwrap();
        v["sliding_window"] = serde_json::Value::Null;
        assert_eq!(windows(&v.to_string()), [None, None]);
        // On: the layers from max_window_layers on (default 28: none of 2), or as layer_types says.
        v["sliding_window"] = 16.into();
        assert_eq!(windows(&v.to_string()), [None, None]);
        v["max_window_layers"] = 1.into();
        assert_eq!(windows(&v.to_string()), [None, Some(16)]);
        v["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
        assert_eq!(windows(&v.to_string()), [Some(16), None]);
        v["layer_types"] = serde_json::json!(["sliding_attention"]);
        let e = config(v.to_string().as_bytes(), "dir/config.json").unwrap_err().to_string();
        assert!(e.contains("layer_types") && e.contains("dir/config.json"), "{e}");
        // Absent, Qwen2Config's default window of 4096 applies.
        v.as_object_mut().unwrap().remove("sliding_window");
        v.as_object_mut().unwrap().remove("layer_types");
        assert_eq!(windows(&v.to_string()), [None, Some(4096)]);
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
        let c = crate::models::registry::from_gguf(&g).unwrap().1;
        assert_eq!(c.arch.name(), "qwen2");
        assert_eq!((c.dim, c.n_layers, c.n_kv_heads, c.vocab, c.max_ctx), (64, 2, 2, 1000, 256));
        let rope = c.block.attention.rope.unwrap();
        assert_eq!((rope.theta, rope.style), (1e6, RopeStyle::Neox));
        assert!(c.block.attention.qkv_bias && !c.block.attention.o_bias && c.tied_embeddings);
    }
}
