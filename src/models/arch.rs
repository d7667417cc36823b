//! What an architecture is to quill: its names in files and the functions that read its
//! config and load its weights. Each architecture's file defines one `pub static ARCH`;
//! `registry.rs` lists them.

use super::builder::Builder;
use super::config::ModelConfig;
use super::decoder::Decoder;
use crate::error::Result;
use crate::weights::gguf::Gguf;

/// An architecture: its names and what reads and loads it.
pub struct Architecture {
    /// Our name for it (`quill info`).
    pub name: &'static str,
    /// Hugging Face `model_type`s it reads.
    pub model_types: &'static [&'static str],
    /// GGUF `general.architecture` values it reads (none: no GGUF form yet).
    pub gguf_names: &'static [&'static str],
    /// From a `config.json` (bytes, file name for messages).
    pub hf_config: fn(&[u8], &str) -> Result<ModelConfig>,
    /// From GGUF metadata; None for architectures whose GGUF files quill does not read.
    pub gguf_config: Option<fn(&Gguf) -> Result<ModelConfig>>,
    /// Every weight, read through a builder already scoped to the file's naming.
    pub load: fn(&ModelConfig, &Builder) -> Result<Decoder>,
}

impl std::fmt::Debug for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Architecture {
    pub fn name(&self) -> &'static str {
        self.name
    }
}

