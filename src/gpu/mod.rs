//! GPU plumbing: the context (adapter, device, limits, pipeline cache), tensors, and the
//! recorder every op dispatches through.

pub mod context;
pub mod profiler;
pub mod recorder;
pub mod tensor;

pub use context::{Context, Pipeline, Shader};
pub use recorder::{grid, BindCache, OpInfo, Recorder};
pub use tensor::{Tensor, Weight, WeightChunk};
