//! The Llama family (Llama 2/3, SmolLM2, TinyLlama; Hugging Face `model_type: llama`, GGUF
//! `general.architecture = llama`): RMSNorm, rotary positions, grouped-query attention,
//! SwiGLU MLP, pre-norm residuals, optional attention biases (`attention_bias`).

use super::builder::Builder;
use super::config::{Arch, ModelConfig};
use super::decoder::{self, Decoder, LLAMA_NAMES};
use super::readers::{gguf_base, HfConfig};
use super::arch::Architecture;
use crate::error::Result;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture {
    name: "llama",
    model_types: &["llama"],
    gguf_names: &["llama"],
    hf_config: config,
    gguf_config: Some(gguf_config),
    load,
};

/// From a llama `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["silu"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-6)?;
    // attention_bias covers Q, K, V and the output projection.
    let bias = c.attention_bias.unwrap_or(false);
    (cfg.block.attention.qkv_bias, cfg.block.attention.o_bias) = (bias, bias);
    cfg.check(file)
}

/// From GGUF metadata (`llama.…` keys).
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    gguf_base(g, Arch(ARCH.name), "llama", RopeStyle::Adjacent)?.check(&g.file)
}

fn load(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    decoder::load(cfg, b, &LLAMA_NAMES, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::registry::from_hf_json;

    const TINY: &str = r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn reads_a_llama_config() {
        let c = from_hf_json(TINY.as_bytes(), "config.json").unwrap().1;
        assert_eq!((c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab), (64, 2, 4, 2, 16, 1000));
        let rope = c.block.attention.rope.unwrap();
        assert_eq!((rope.theta, rope.style, rope.n_rot), (10000.0, RopeStyle::Neox, 16));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (with("num_hidden_layers", "4294967296"), "layers"),
            (with("hidden_size", "0"), "dim"),
            (with("num_key_value_heads", "3"), "KV heads"),
            (with("model_type", "\"mamba\""), "mamba"),
            (with("mlp_bias", "true"), "mlp_bias"),
            (with("rope_parameters", r#"{"rope_theta": 5e5, "rope_type": "yarn", "factor": 4.0}"#), "yarn"),
            (with("rope_parameters", r#"{"rope_theta": 5e5, "rope_type": "linear"}"#), "factor"),
            (with("vocab_size", "\"many\""), "field 'vocab_size'"),
            ("{not json".to_string(), "malformed"),
        ];
        for (json, needle) in cases {
            let e = from_hf_json(json.as_bytes(), "dir/config.json").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v.as_object_mut().unwrap().remove("intermediate_size");
        let e = from_hf_json(v.to_string().as_bytes(), "dir/config.json").unwrap_err().to_string();
        assert!(e.contains("intermediate_size"), "{e}");
    }
}
