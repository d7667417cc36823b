//! quill: Transformer language models whose math runs in WGSL compute shaders through wgpu.

pub mod error;
pub mod gpu;
pub mod ops;
pub mod sampling;
pub mod weights;

pub use error::{Error, Result};
