//! Model architectures: a config, a weights struct, `load` and `forward`, and the loaders
//! that turn files (as bytes) into a model and its tokenizer.

pub mod config;
pub mod llama;
pub mod load;
pub mod state;

pub use config::{Arch, ModelConfig};
pub use load::{GenerationDefaults, LoadedModel};
pub use state::{LogitRows, State};

/// A model on the GPU. Every architecture quill runs is one variant.
pub enum Model {
    Llama(llama::Llama),
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => &m.cfg,
        }
    }
    pub fn forward(&self, rec: &mut crate::gpu::Recorder, st: &State, pos0: usize, n: usize, rows: LogitRows) -> crate::Result<()> {
        match self {
            Model::Llama(m) => m.forward(rec, st, pos0, n, rows),
        }
    }
}
