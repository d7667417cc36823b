//! Model files parsed from bytes into named tensors (storage type + raw data). No GPU here:
//! the same code loads a model natively (from a memory map) and in a browser (from bytes).

pub mod dtype;
pub mod gguf;
pub mod repack;
pub mod safetensors;

pub use dtype::DType;

use crate::error::{Error, Result};

/// A tensor as a file stores it, borrowing the file's bytes.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: String,
    /// Row-major, outermost first: a linear weight is [out_features, in_features].
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        dtype::dequantize(self.dtype, self.data, self.numel())
    }
}

/// Where a model's tensors come from: a GGUF file or a set of safetensors files.
pub trait TensorSource {
    /// Names the file(s) in error messages.
    fn file_name(&self) -> &str;
    fn tensor(&self, name: &str) -> Option<TensorView<'_>>;

    /// The tensor `name`, which must exist and have `shape`.
    fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        let t = self.tensor(name).ok_or_else(|| Error::tensor(self.file_name(), name, "missing"))?;
        if t.shape != shape {
            return Err(Error::tensor(self.file_name(), name, format!("shape {:?}, expected {:?}", t.shape, shape)));
        }
        Ok(t)
    }
}

impl TensorSource for gguf::Gguf<'_> {
    fn file_name(&self) -> &str {
        &self.file
    }
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        gguf::Gguf::tensor(self, name)
    }
}
