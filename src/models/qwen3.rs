//! Qwen3 (Hugging Face `model_type: qwen3`, GGUF `general.architecture = qwen3`): Llama with
//! an RMSNorm over each head of Q and K before RoPE, no biases, head_dim set on its own, and
//! rotate-half RoPE in both file formats (llama.cpp does not permute Qwen3's Q/K rows).

use super::arch::Architecture;
use super::builder::Builder;
use super::config::{Arch, ModelConfig};
use super::decoder::{self, Decoder, LLAMA_NAMES};
use super::readers::{gguf_base, HfConfig};
use crate::error::Result;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture { name: "qwen3", model_types: &["qwen3"], gguf_names: &["qwen3"], hf_config: config, gguf_config: Some(gguf_config), load };

/// From Qwen3's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["silu"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-6)?;
    let a = &mut cfg.block.attention;
    a.qk_norm = true;
    (a.qkv_bias, a.o_bias) = (c.attention_bias.unwrap_or(false), c.attention_bias.unwrap_or(false));
    super::qwen2::sliding_layers(bytes, file, &mut cfg)?;
    cfg.check(file)
}

/// From GGUF metadata (`qwen3.…` keys, Q/K rows in Hugging Face's order).
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let mut cfg = gguf_base(g, Arch(ARCH.name), "qwen3", RopeStyle::Neox)?;
    cfg.block.attention.qk_norm = true;
    cfg.check(&g.file)
}

/// Qwen3 names its tensors as Llama does, its Q/K norms `q_norm` / `attn_q_norm`.
fn load(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    decoder::load(cfg, b, &LLAMA_NAMES, false)
}

#[cfg(test)]
mod tests {
    use crate::models::registry::from_hf_json;

    #[test]
    fn reads_a_qwen3_config() {
        let json = r#"{"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 32,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256,
            "rope_theta": 1000000.0, "tie_word_embeddings": true}"#;
        let (arch, c) = from_hf_json(json.as_bytes(), "config.json").unwrap();
        assert_eq!(arch.name, "qwen3");
        // head_dim is its own field: 4 heads of 32 in a width of 64.
        assert_eq!((c.head_dim, c.n_heads * c.head_dim, c.dim), (32, 128, 64));
        let a = c.attention(1);
        assert!(a.qk_norm && !a.qkv_bias && c.tied_embeddings);
        assert_eq!(a.rope.unwrap().theta, 1e6);
    }
}
