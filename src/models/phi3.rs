//! Phi-3 (Hugging Face `model_type: phi3`, GGUF `general.architecture = phi3`): Llama with Q,
//! K and V stored as one `qkv_proj` (rows [q | k | v]) and gate and up as one `gate_up_proj`
//! (rows [gate | up]), an optional sliding window, rotate-half RoPE in both formats.

use super::arch::Architecture;
use super::builder::Builder;
use super::config::{Arch, ModelConfig};
use super::decoder::{self, Decoder, LLAMA_NAMES};
use super::readers::{gguf_base, HfConfig};
use crate::error::Result;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

pub static ARCH: Architecture = Architecture { name: "phi3", model_types: &["phi3"], gguf_names: &["phi3"], hf_config: config, gguf_config: Some(gguf_config), load };

/// From Phi-3's `config.json` (with `longrope` / `su` scaling for the 128k variants: `HfConfig::rope`).
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c = HfConfig::parse(bytes, file)?;
    c.expect_activation(&["silu"], file)?;
    let mut cfg = c.base(Arch(ARCH.name), file, 10000.0, 1e-5)?;
    cfg.block.attention.window = c.sliding_window;
    cfg.check(file)
}

/// From GGUF metadata (`phi3.…` keys, longrope as `rope_factors_{short,long}.weight`: `gguf_base`;
/// llama.cpp keeps Phi-3's rotate-half rows).
pub fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let mut cfg = gguf_base(g, Arch(ARCH.name), "phi3", RopeStyle::Neox)?;
    // A window of 0 means none here.
    cfg.block.attention.window = cfg.block.attention.window.filter(|&w| w > 0);
    cfg.check(&g.file)
}

/// Llama's names: the loader takes the fused `qkv_proj` / `attn_qkv` and `gate_up_proj` /
/// `ffn_up` (2 · ffn rows) where the file has no separate Q or gate.
fn load(cfg: &ModelConfig, b: &Builder) -> Result<Decoder> {
    decoder::load(cfg, b, &LLAMA_NAMES, false)
}
