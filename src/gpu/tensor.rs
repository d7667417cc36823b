//! A GPU tensor: a storage buffer and its logical shape (row-major, outermost first).
//! Elements are f32 (activations, weights) or u32 (token ids); the op that reads a tensor
//! knows which.

use super::Context;
use crate::error::{Error, Result};

pub struct Tensor {
    pub buf: wgpu::Buffer,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn upload_f32(ctx: &Context, label: &str, shape: &[usize], data: &[f32]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape { op: "upload", msg: format!("{label}: shape {shape:?} holds {n} values, got {}", data.len()) });
        }
        Ok(Tensor { buf: ctx.upload(label, data)?, shape: shape.to_vec() })
    }
    pub fn zeros(ctx: &Context, label: &str, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        Ok(Tensor { buf: ctx.storage(label, n as u64 * 4)?, shape: shape.to_vec() })
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Checks that this tensor can hold `n` elements for `op`.
    pub fn holds(&self, op: &'static str, what: &str, n: usize) -> Result<()> {
        if (self.buf.size() as usize) < n * 4 {
            return Err(Error::Shape { op, msg: format!("{what} holds {} elements, needs {n}", self.buf.size() / 4) });
        }
        Ok(())
    }
}
