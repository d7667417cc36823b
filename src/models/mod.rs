//! Model architectures and the loaders that turn files (as bytes) into a model and its
//! tokenizer. One forward pass (`decoder.rs`) reads a typed block description (`config.rs`);
//! each architecture is one file with its config readers and name table, listed once in
//! `registry.rs`; `builder.rs` reads weights by scoped names.

pub mod arch;
pub mod builder;
pub mod config;
pub mod consistency;
pub mod decoder;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod load;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod readers;
pub mod registry;
pub mod state;
pub mod xglm;

pub use config::{Arch, ModelConfig};
pub use load::{GenerationDefaults, LoadedModel};
pub use registry::{Architecture, ARCHITECTURES};
pub use state::{LogitRows, State};

/// A model on the GPU.
pub type Model = decoder::Decoder;

impl Model {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Bytes of weight matrices on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weights().iter().map(|w| w.bytes()).sum()
    }
    /// The storage types of the weight matrices, e.g. "Q4_1 ×90, Q8_0 ×1".
    pub fn weight_types(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for w in self.weights() {
            match counts.iter_mut().find(|(n, _)| *n == w.dtype.name()) {
                Some((_, c)) => *c += 1,
                None => counts.push((w.dtype.name(), 1)),
            }
        }
        counts.iter().map(|(n, c)| format!("{n} ×{c}")).collect::<Vec<_>>().join(", ")
    }
}
