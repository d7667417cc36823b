//! A GPU tensor: a storage buffer and its logical shape (row-major, outermost first).
//! Elements are f32 (activations, weights) or u32 (token ids); the op that reads a tensor
//! knows which.

use super::Context;
use crate::error::{Error, Result};
use crate::weights::{repack, DType};

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

/// A weight matrix [rows, cols] in a storage format the kernels read directly (f32, f16, bf16 or a
/// GGML block type), laid out as `weights::repack` describes. A matrix larger than one storage
/// binding is held as several chunks of whole rows; the kernels take one chunk per dispatch,
/// so model code never sees the split.
pub struct Weight {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<WeightChunk>,
}

pub struct WeightChunk {
    /// First row of the matrix in this chunk.
    pub row0: usize,
    pub rows: usize,
    pub quants: wgpu::Buffer,
    /// None for f32 and f16.
    pub scales: Option<wgpu::Buffer>,
}

impl Weight {
    /// Uploads rows given as the file's bytes of `dtype` (each `dtype.bytes_for(cols)` long),
    /// splitting them into chunks of at most `limit` bytes per binding.
    pub fn from_rows(ctx: &Context, name: &str, dtype: DType, cols: usize, rows: &[&[u8]], limit: u64) -> Result<Self> {
        let err = |msg: String| Error::Shape { op: "upload", msg: format!("{name}: {msg}") };
        let row_bytes = dtype.bytes_for(cols).ok_or_else(|| err(format!("{cols} columns are not whole {} blocks", dtype.name())))?;
        if let Some(bad) = rows.iter().position(|r| r.len() != row_bytes) {
            return Err(err(format!("row {bad} has {} bytes, expected {row_bytes}", rows[bad].len())));
        }
        let (qb, sb) = (repack::quant_bytes_per_row(dtype, cols), repack::scale_bytes_per_row(dtype, cols));
        let widest = qb.max(sb).max(1) as u64;
        let mut per_chunk = (limit / widest) as usize;
        if per_chunk == 0 {
            return Err(Error::MissingCapability {
                adapter: ctx.adapter_name().to_string(),
                msg: format!("one row of {name} needs {widest} bytes but one binding holds at most {limit}"),
            });
        }
        if per_chunk < rows.len() && per_chunk >= 32 {
            per_chunk -= per_chunk % 32; // chunks start at even rows (fused gate/up pairs)
        }
        let mut chunks = Vec::new();
        for (c, part) in rows.chunks(per_chunk).enumerate() {
            let label = format!("{name} [{c}]");
            // Rows are repacked straight into the buffers' mappings, one row at a time: the
            // repacked matrix is never held whole beside the file's bytes.
            let repacked = |keep_quants: bool| {
                move |view: &mut wgpu::BufferViewMut| {
                    let (mut q, mut s) = (Vec::with_capacity(qb), Vec::with_capacity(sb));
                    let width = if keep_quants { qb } else { sb };
                    for (i, r) in part.iter().enumerate() {
                        q.clear();
                        s.clear();
                        repack::repack_row(dtype, r, &mut q, &mut s);
                        view.slice(i * width..(i + 1) * width).copy_from_slice(if keep_quants { &q } else { &s });
                    }
                }
            };
            chunks.push(WeightChunk {
                row0: c * per_chunk,
                rows: part.len(),
                quants: ctx.upload_with(&label, qb * part.len(), repacked(true))?,
                scales: if sb == 0 { None } else { Some(ctx.upload_with(&label, sb * part.len(), repacked(false))?) },
            });
        }
        Ok(Weight { name: name.to_string(), dtype, rows: rows.len(), cols, chunks })
    }

    /// An f32 matrix [rows, cols] from values.
    pub fn from_f32(ctx: &Context, name: &str, shape: &[usize], data: &[f32]) -> Result<Self> {
        let [rows, cols] = shape[..] else {
            return Err(Error::Shape { op: "upload", msg: format!("{name}: a weight must be 2-D, is {shape:?}") });
        };
        if rows * cols != data.len() {
            return Err(Error::Shape { op: "upload", msg: format!("{name}: shape {shape:?} holds {} values, got {}", rows * cols, data.len()) });
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let row_list: Vec<&[u8]> = bytes.chunks(4 * cols.max(1)).collect();
        Self::from_rows(ctx, name, DType::F32, cols, &row_list, ctx.binding_limit())
    }

    /// Bytes the kernels read for the whole matrix.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.quants.size() + c.scales.as_ref().map_or(0, |s| s.size())).sum()
    }
}
