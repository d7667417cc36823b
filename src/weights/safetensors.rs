//! Hugging Face safetensors, read through the `safetensors` crate from bytes (a memory map
//! natively, a fetched buffer in the browser). Several shards form one source.

use safetensors::{tensor::TensorView as StView, Dtype, SafeTensors};

use super::{DType, TensorSource, TensorView};
use crate::error::{Error, Result};

pub struct SafetensorsSource<'a> {
    label: String,
    shards: Vec<(String, SafeTensors<'a>)>,
}

impl<'a> SafetensorsSource<'a> {
    /// `files` are (name for errors, bytes) of every shard.
    pub fn parse(files: &[(String, &'a [u8])]) -> Result<Self> {
        let mut shards = Vec::new();
        for (name, bytes) in files {
            let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(name, format!("not a valid safetensors file: {e}")))?;
            shards.push((name.clone(), st));
        }
        let label = files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        Ok(SafetensorsSource { label, shards })
    }
}

fn dtype_of(file: &str, name: &str, t: &StView<'_>) -> Option<Result<DType>> {
    Some(match t.dtype() {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::tensor(file, name, format!("dtype {other:?} is not supported (F32, F16, BF16 are)"))),
    })
}

impl TensorSource for SafetensorsSource<'_> {
    fn file_name(&self) -> &str {
        &self.label
    }
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.shards.iter().find_map(|(file, st)| {
            let t = st.tensor(name).ok()?;
            let dtype = dtype_of(file, name, &t)?.ok()?;
            Some(TensorView { name: name.to_string(), shape: t.shape().to_vec(), dtype, data: t.data() })
        })
    }
    fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        for (file, st) in &self.shards {
            if let Ok(t) = st.tensor(name) {
                if let Some(Err(e)) = dtype_of(file, name, &t) {
                    return Err(e);
                }
            }
        }
        let t = self.tensor(name).ok_or_else(|| Error::tensor(&self.label, name, "missing"))?;
        if t.shape != shape {
            return Err(Error::tensor(&self.label, name, format!("shape {:?}, expected {:?}", t.shape, shape)));
        }
        Ok(t)
    }
}
