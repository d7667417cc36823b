//! Model files parsed into named tensors (storage type + raw data). No GPU here: the same
//! code loads a model natively (from a memory map) and in a browser (from a file the page's
//! worker reads a range at a time, `source.rs`).

pub mod dtype;
pub mod gguf;
pub mod repack;
pub mod safetensors;
pub mod source;

pub use dtype::DType;

use std::borrow::Cow;
use std::ops::Range;

use crate::error::{Error, Result};

/// A tensor as a file stores it: its bytes borrowed from the file in memory, or read from
/// its source for this tensor only.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: String,
    /// Row-major, outermost first: a linear weight is [out_features, in_features].
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Cow<'a, [u8]>,
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        dtype::dequantize(self.dtype, &self.data, self.numel())
    }
}

/// A tensor's shape and storage type, as the file's header gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Bytes of its data in the file.
    pub n_bytes: usize,
}

/// Where a model's tensors come from: a GGUF file or a set of safetensors files, whose
/// headers are parsed and whose data is read tensor by tensor (`meta` reads nothing).
pub trait TensorSource {
    /// Names the file(s) in error messages.
    fn file_name(&self) -> &str;
    /// Shape and type of tensor `name`, or None when the file has no such tensor (or one of a
    /// type quill does not read; `expect` names that).
    fn meta(&self, name: &str) -> Option<TensorMeta>;
    /// Bytes `range` (inside its `n_bytes`) of tensor `name`'s data.
    fn read(&self, name: &str, range: Range<usize>) -> Result<Cow<'_, [u8]>>;

    /// Tensor `name` with its data, or None when the file has none of that name.
    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some(m) = self.meta(name) else { return Ok(None) };
        let data = self.read(name, 0..m.n_bytes)?;
        Ok(Some(TensorView { name: name.to_string(), shape: m.shape, dtype: m.dtype, data }))
    }

    /// The tensor `name`, which must exist and have `shape`; checked before its data is read.
    fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        let m = self.meta(name).ok_or_else(|| Error::tensor(self.file_name(), name, "missing"))?;
        if m.shape != shape {
            return Err(Error::tensor(self.file_name(), name, format!("shape {:?}, expected {:?}", m.shape, shape)));
        }
        let data = self.read(name, 0..m.n_bytes)?;
        Ok(TensorView { name: name.to_string(), shape: m.shape, dtype: m.dtype, data })
    }
}

impl TensorSource for gguf::Gguf<'_> {
    fn file_name(&self) -> &str {
        &self.file
    }
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.info(name).map(|t| TensorMeta { shape: t.shape.clone(), dtype: t.dtype, n_bytes: t.n_bytes })
    }
    fn read(&self, name: &str, range: Range<usize>) -> Result<Cow<'_, [u8]>> {
        let t = self.info(name).ok_or_else(|| Error::tensor(&self.file, name, "missing"))?;
        gguf::Gguf::read(self, t, range)
    }
}
