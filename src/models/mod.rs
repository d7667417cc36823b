//! Model architectures: a config, a weights struct, `load` and `forward`, and the loaders
//! that turn files (as bytes) into a model and its tokenizer.

pub mod config;
pub mod consistency;
pub mod gpt;
pub mod gpt2;
pub mod llama;
pub mod load;
pub mod qwen2;
pub mod state;
pub mod xglm;

pub use config::{Arch, ModelConfig};
pub use load::{GenerationDefaults, LoadedModel};
pub use state::{LogitRows, State};

/// A model on the GPU, one variant per forward pass: llama and qwen2 share `Llama`'s,
/// gpt2 and xglm share `Gpt`'s.
pub enum Model {
    Llama(llama::Llama),
    Gpt(gpt::Gpt),
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => &m.cfg,
            Model::Gpt(m) => &m.cfg,
        }
    }
    /// Every weight matrix, for memory and storage-type summaries.
    pub fn weights(&self) -> Vec<&crate::gpu::Weight> {
        match self {
            Model::Llama(m) => m.weights(),
            Model::Gpt(m) => m.weights(),
        }
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
    pub fn forward(&self, rec: &mut crate::gpu::Recorder, st: &State, pos0: usize, n: usize, rows: LogitRows) -> crate::Result<()> {
        match self {
            Model::Llama(m) => m.forward(rec, st, pos0, n, rows),
            Model::Gpt(m) => m.forward(rec, st, pos0, n, rows),
        }
    }
}
