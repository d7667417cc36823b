//! Training: a forward pass that keeps the activations its backward needs, and the backward
//! composed of the ops' backward kernels (`ops::<op>::backward`, `ops::loss`), with the
//! optimizer in `ops::optim`. Model-specific code stays in one small file per family.

pub mod llama;
pub mod adapter;
pub mod run;
pub mod svg;
pub mod scratch;
