//! quill: Transformer language models whose math runs in WGSL compute shaders through wgpu.

pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
pub mod generate;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod models;
pub mod ops;
pub mod openai;
pub mod perplexity;
pub mod plan;
pub mod sampling;
pub mod story;
pub mod tokenizer;
pub mod train;
pub mod weights;
pub mod writer;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
