//! Gemma 2 (Hugging Face `model_type: gemma2`, GGUF `general.architecture = gemma2`):
//! embeddings × √dim, RMSNorm applied as (1 + w) (Hugging Face stores w; the GGUF converter
//! stores w + 1), norms before and after attention and MLP, GeGLU with tanh GELU, attention
//! scaled by query_pre_attn_scalar^-0.5 and soft-capped, sliding-window and global layers
//! alternating (even layers slide), final logits soft-capped, tied head. Gemma 3
//! (`gemma3.rs`) shares this file's reading of the common fields and its name table.

use super::arch::Architecture;
use super::builder::{name, Builder};
use super::config::{Arch, Attention, LocalLayers, Mlp, ModelConfig};
use super::decoder::{self, Decoder, Names, LLAMA_NAMES};
use super::readers::{gguf_base, HfConfig};
use crate::error::Result;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture { name: "gemma2", model_types: &["gemma2"], gguf_names: &["gemma2"], hf_config: config, gguf_config: Some(gguf_config), load: load_hf_or_gguf };

/// Gemma's tensor names: Llama's, plus the post-norms; its pre-MLP norm has its own name.
pub const GEMMA_NAMES: Names = Names {
    post_attn_norm: name("post_attention_norm", "post_attention_layernorm"),
    ffn_norm: name("ffn_norm", "pre_feedforward_layernorm"),
    post_ffn_norm: name("post_ffw_norm", "post_feedforward_layernorm"),
    ..LLAMA_NAMES
};

/// What Gemma 2 and 3 share, on a config read by `HfConfig::base` or `gguf_base`: the block,
/// the embedding scale, a tied head, and local layers (`is_local`) with `local` attention.
pub(super) fn gemma_block(cfg: &mut ModelConfig, local: Attention, is_local: Vec<bool>) {
    cfg.embed_scale = crate::ops::embed::gemma_scale(cfg.dim);
    cfg.block.mlp = Mlp::GeGlu;
    cfg.block.post_norms = true;
    cfg.local = Some(LocalLayers { attention: local, is_local });
}

/// Which layers slide, from `layer_types` (transformers 5) or, for older configs, every layer
/// but each `pattern`-th (Gemma 2: 2, Gemma 3: `sliding_window_pattern`, default 6).
pub(super) fn local_layers(c: &HfConfig, n_layers: usize, pattern: usize) -> Vec<bool> {
    match &c.layer_types {
        Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
        None => (0..n_layers.min(1 << 12)).map(|i| (i + 1) % pattern.max(1) != 0).collect(),
    }
}

/// The attention scale GGUF files do not store: llama.cpp uses head_dim^-0.5, except for the
/// 27B models (46 layers for Gemma 2, 62 for Gemma 3), which scale by (dim / heads)^-0.5 as
/// their query_pre_attn_scalar says.
pub(super) fn gguf_scale(cfg: &ModelConfig, layers_27b: usize) -> Option<f32> {
    (cfg.n_layers == layers_27b).then(|| ((cfg.dim / cfg.n_heads.max(1)) as f64).powf(-0.5) as f32)
}

/// From Gemma 2's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["gelu_pytorch_tanh", "gelu_tanh"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-6)?;
    cfg.tied_embeddings = c.tie_word_embeddings.unwrap_or(true);
    let a = &mut cfg.block.attention;
    a.scale = c.query_pre_attn_scalar.map(|s| s.powf(-0.5) as f32);
    a.softcap = c.attn_logit_softcapping.map(|s| s as f32);
    cfg.final_softcap = c.final_logit_softcapping.map(|s| s as f32);
    let local = Attention { window: c.sliding_window, ..cfg.block.attention };
    let is_local = local_layers(&c, cfg.n_layers, 2);
    gemma_block(&mut cfg, local, is_local);
    cfg.check(file)
}

/// From GGUF metadata (`gemma2.…` keys; Q/K rows in Hugging Face's order, norms stored + 1).
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let mut cfg = gguf_base(g, Arch(ARCH.name), "gemma2", RopeStyle::Neox)?;
    let softcap = |k: &str| g.get(&format!("gemma2.{k}")).map(|_| g.f64(&format!("gemma2.{k}"))).transpose();
    let attn_softcap = softcap("attn_logit_softcapping")?;
    cfg.final_softcap = softcap("final_logit_softcapping")?.map(|s| s as f32);
    let scale = gguf_scale(&cfg, 46);
    let a = &mut cfg.block.attention;
    (a.scale, a.softcap) = (scale, attn_softcap.map(|s| s as f32));
    let local = Attention { window: a.window.take(), ..*a };
    let is_local = (0..cfg.n_layers).map(|i| i % 2 == 0).collect();
    gemma_block(&mut cfg, local, is_local);
    cfg.check(&g.file)
}

/// Hugging Face files store RMSNorm weights as w (applied as 1 + w); GGUF files as w + 1.
pub(super) fn load_hf_or_gguf(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    let plus_one = b.naming() == super::builder::Naming::HuggingFace;
    decoder::load(cfg, b, &GEMMA_NAMES, plus_one)
}

#[cfg(test)]
mod tests {
    use crate::models::registry::from_hf_json;

    #[test]
    fn reads_a_gemma2_config() {
        let json = r#"{"model_type": "gemma2", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 32,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "sliding_window": 12, "rope_theta": 10000.0}"#;
        let c = from_hf_json(json.as_bytes(), "config.json").unwrap().1;
        // Without layer_types, even layers slide.
        assert_eq!((0..3).map(|i| c.attention(i).window).collect::<Vec<_>>(), [Some(12), None, Some(12)]);
        assert_eq!((c.attention(1).scale, c.attention(0).softcap, c.final_softcap), (Some(0.25), Some(50.0), Some(30.0)));
        assert_eq!(c.embed_scale, 8.0);
        assert!(c.tied_embeddings && c.block.post_norms);
        let e = from_hf_json(json.replace("gelu_pytorch_tanh", "relu").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("relu"), "{e}");
    }
}
