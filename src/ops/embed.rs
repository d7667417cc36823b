//! Token embedding gather.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "embed", body: include_str!("../../shaders/embed.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    dim: u32,
    id_offset: u32,
    vocab: u32,
}

/// FLOPs and bytes of embed: reads n_tokens ids and rows of dim floats, writes them.
pub fn cost(n_tokens: usize, dim: usize) -> (u64, u64) {
    (0, 8 * (n_tokens * dim) as u64 + 4 * n_tokens as u64)
}

/// out[t, :] = table[ids[id_offset + t], :] for t < n_tokens.
/// table: (vocab, dim); ids: u32 on the GPU; out: (>= n_tokens, dim).
pub fn embed(rec: &mut Recorder, table: &Tensor, ids: &Tensor, id_offset: usize, n_tokens: usize, out: &Tensor) -> Result<()> {
    let [vocab, dim] = table.shape[..] else {
        return Err(Error::Shape { op: "embed", msg: format!("table must be 2-D, is {:?}", table.shape) });
    };
    ids.holds("embed", "ids", id_offset + n_tokens)?;
    out.holds("embed", "out", n_tokens * dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "embed", &[])?;
    let p = Params { n_tokens: n_tokens as u32, dim: dim as u32, id_offset: id_offset as u32, vocab: vocab as u32 };
    let (flops, bytes) = cost(n_tokens, dim);
    let info = OpInfo::new("embed", flops, bytes);
    let wg = grid(rec.ctx, (n_tokens * dim).div_ceil(256) as u32);
    rec.dispatch(info, &pipe, &[&table.buf, &ids.buf, &out.buf], &p, wg);
    Ok(())
}

/// CPU reference.
pub fn reference(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter().flat_map(|&id| table[id as usize * dim..(id as usize + 1) * dim].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn embed_matches_reference_on_odd_sizes(ctx) {
        for &(vocab, dim, n) in &[(1usize, 1usize, 1usize), (37, 13, 5), (301, 67, 19)] {
            let table = test_values(vocab * dim, 3);
            let ids: Vec<u32> = (0..n + 2).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
            let t = Tensor::upload_f32(ctx, "table", &[vocab, dim], &table).unwrap();
            let id_buf = Tensor { buf: ctx.upload("ids", &ids).unwrap(), shape: vec![ids.len()] };
            let out = Tensor::zeros(ctx, "out", &[n, dim]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            embed(&mut rec, &t, &id_buf, 2, n, &out).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, n * dim).await.unwrap();
            // A gather copies bits: exact.
            compare(&got, &reference(&table, dim, &ids[2..]), 0.0, 0.0).unwrap_or_else(|e| panic!("vocab {vocab} dim {dim}: {e}"));
        }
    });
}
