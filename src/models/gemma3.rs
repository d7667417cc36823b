//! Gemma 3 text models (Hugging Face `model_type: gemma3_text`, GGUF `general.architecture =
//! gemma3`): Gemma 2's block (`gemma2.rs`) with RMSNorms over each head of Q and K, no
//! soft-capping, and sliding-window layers (five of every six, or as `layer_types` says)
//! whose RoPE has its own base (`rope_local_base_freq`, 1e4) apart from the global layers'.

use super::arch::Architecture;
use super::config::{Arch, Attention, ModelConfig, Rope, RopeScaling};
use super::gemma2::{gemma_block, gguf_scale, load_hf_or_gguf, local_layers};
use super::readers::{gguf_base, HfConfig};
use crate::error::Result;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture { name: "gemma3", model_types: &["gemma3_text"], gguf_names: &["gemma3"], hf_config: config, gguf_config: Some(gguf_config), load: load_hf_or_gguf };

/// Gemma 3's sliding layers' RoPE base when a config names none.
const LOCAL_BASE: f64 = 10000.0;

#[derive(serde::Deserialize)]
struct Pattern {
    sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    hidden_pattern: Option<usize>,
}

/// From Gemma 3's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    let p: Pattern = super::config::parse_json(bytes, file)?;
    c.expect_activation(&["gelu_pytorch_tanh", "gelu_tanh"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 1_000_000.0, 1e-6)?;
    cfg.tied_embeddings = c.tie_word_embeddings.unwrap_or(true);
    let a = &mut cfg.block.attention;
    a.qk_norm = true;
    a.scale = c.query_pre_attn_scalar.map(|s| s.powf(-0.5) as f32);
    a.softcap = c.attn_logit_softcapping.map(|s| s as f32);
    cfg.final_softcap = c.final_logit_softcapping.map(|s| s as f32);
    let local_rope = c.rope(Some("sliding_attention"), LOCAL_BASE, cfg.head_dim, file)?;
    // transformers 4.x has one rope_scaling for the global layers only; the local ones are plain.
    let local_rope = if c.rope_parameters.is_none() { Rope { scaling: RopeScaling::None, ..local_rope } } else { local_rope };
    let local = Attention { window: c.sliding_window, rope: Some(local_rope), ..cfg.block.attention };
    let is_local = local_layers(&c, cfg.n_layers, p.sliding_window_pattern.or(p.hidden_pattern).unwrap_or(6));
    gemma_block(&mut cfg, local, is_local);
    cfg.check(file)
}

/// From GGUF metadata (`gemma3.…` keys: `rope.freq_base` for the global layers,
/// `rope.freq_base_swa` for the sliding ones; five sliding layers to one global, as llama.cpp
/// assumes; norms stored + 1).
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let mut cfg = gguf_base(g, Arch(ARCH.name), "gemma3", RopeStyle::Neox)?;
    let local_base = match g.get("gemma3.rope.freq_base_swa") {
        Some(_) => g.f64("gemma3.rope.freq_base_swa")?,
        None => LOCAL_BASE,
    };
    let scale = gguf_scale(&cfg, 62);
    let a = &mut cfg.block.attention;
    a.qk_norm = true;
    a.scale = scale;
    let rope = a.rope.map(|r| Rope { theta: local_base as f32, scaling: RopeScaling::None, ..r });
    let local = Attention { window: a.window.take(), rope, ..*a };
    let is_local = (0..cfg.n_layers).map(|i| (i + 1) % 6 != 0).collect();
    gemma_block(&mut cfg, local, is_local);
    cfg.check(&g.file)
}

#[cfg(test)]
mod tests {
    use crate::models::registry::from_hf_json;

    /// transformers 4.x spellings: rope_theta, rope_local_base_freq, sliding_window_pattern.
    #[test]
    fn reads_an_older_gemma3_config() {
        let json = r#"{"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "head_dim": 32,
            "num_key_value_heads": 1, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 32768,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 512,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 3,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}"#;
        let c = from_hf_json(json.as_bytes(), "config.json").unwrap().1;
        let windows: Vec<_> = (0..6).map(|i| c.attention(i).window).collect();
        assert_eq!(windows, [Some(512), Some(512), None, Some(512), Some(512), None]);
        let (global, local) = (c.attention(2).rope.unwrap(), c.attention(0).rope.unwrap());
        assert_eq!((global.theta, local.theta), (1e6, 1e4));
        assert_eq!(global.scaling, crate::models::config::RopeScaling::Linear { factor: 8.0 });
        assert_eq!(local.scaling, crate::models::config::RopeScaling::None);
        assert!(c.attention(0).qk_norm && c.attention(2).qk_norm);
    }
}
