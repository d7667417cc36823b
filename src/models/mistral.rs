//! Mistral (Hugging Face `model_type: mistral`): Llama whose every layer attends over a
//! sliding window of the last `sliding_window` positions (a ring cache of that size). Its GGUF
//! files are written as `llama` by llama.cpp, without the window, so they load as Llama.

use super::arch::Architecture;
use super::builder::Builder;
use super::config::{Arch, ModelConfig};
use super::decoder::{self, Decoder, LLAMA_NAMES};
use super::readers::HfConfig;
use crate::error::Result;

pub static ARCH: Architecture = Architecture { name: "mistral", model_types: &["mistral"], gguf_names: &[], hf_config: config, gguf_config: None, load };

/// From Mistral's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["silu"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-6)?;
    cfg.block.attention.window = c.sliding_window;
    cfg.check(file)
}

fn load(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    decoder::load(cfg, b, &LLAMA_NAMES, false)
}

#[cfg(test)]
mod tests {
    use crate::models::registry::from_hf_json;

    #[test]
    fn reads_the_window() {
        let json = r#"{"model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256,
            "rope_theta": 10000.0, "sliding_window": 10}"#;
        let c = from_hf_json(json.as_bytes(), "config.json").unwrap().1;
        assert_eq!((c.attention(0).window, c.attention(1).window), (Some(10), Some(10)));
        let c = from_hf_json(json.replace("10}", "null}").as_bytes(), "config.json").unwrap().1;
        assert_eq!(c.attention(0).window, None);
        let e = from_hf_json(json.replace("10}", "0}").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("window"), "{e}");
    }
}
