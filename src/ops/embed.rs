//! Token embedding gather from a table in any storage format (dequantized on the GPU).

use super::matmul::{quant_shader, QuantParams};
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor, Weight};
use crate::weights::DType;

pub const SHADER: Shader = Shader { name: "embed", body: include_str!("../../shaders/embed.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    dim: u32,
    id_offset: u32,
    vocab: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// FLOPs and bytes of embed: reads n_tokens ids and rows of `row_bytes`, writes f32 rows.
pub fn cost(n_tokens: usize, dim: usize, row_bytes: u64) -> (u64, u64) {
    (0, n_tokens as u64 * (row_bytes + 4 * dim as u64 + 4))
}

/// out[t, :] = table[ids[id_offset + t], :] for t < n_tokens.
/// table: (vocab, dim); ids: u32 on the GPU; out: (>= n_tokens, dim).
pub fn embed(rec: &mut Recorder, table: &Weight, ids: &Tensor, id_offset: usize, n_tokens: usize, out: &Tensor) -> Result<()> {
    embed_scaled(rec, table, ids, id_offset, n_tokens, out, 1.0)
}

/// The scale Gemma multiplies its embeddings by: √dim computed in f64 and rounded to f32, as
/// transformers builds `torch.tensor(hidden_size ** 0.5, dtype=float32)`.
pub fn gemma_scale(dim: usize) -> f32 {
    (dim as f64).sqrt() as f32
}

/// `embed` with every value multiplied by `scale` in f32 (Gemma: `gemma_scale(dim)`).
#[allow(clippy::too_many_arguments)]
pub fn embed_scaled(rec: &mut Recorder, table: &Weight, ids: &Tensor, id_offset: usize, n_tokens: usize, out: &Tensor, scale: f32) -> Result<()> {
    let (vocab, dim) = (table.rows, table.cols);
    ids.holds("embed", "ids", id_offset + n_tokens)?;
    out.holds("embed", "out", n_tokens * dim)?;
    let (flops, bytes) = cost(n_tokens, dim, table.bytes() / vocab.max(1) as u64);
    let info = OpInfo::new("embed", flops, bytes);
    if dim % 4 != 0 || dim % table.dtype.block_len() != 0 {
        // Plain f32 gather for tables of odd widths.
        if table.dtype != DType::F32 || table.chunks.len() != 1 {
            return Err(Error::Shape { op: "embed", msg: format!("a {} table of width {dim} must be f32 in one binding", table.dtype.name()) });
        }
        let pipe = rec.ctx.pipeline(&SHADER, "embed", &[])?;
        let p = Params { n_tokens: n_tokens as u32, dim: dim as u32, id_offset: id_offset as u32, vocab: vocab as u32, scale, _pad: [0; 3] };
        let wg = grid(rec.ctx, (n_tokens * dim).div_ceil(256) as u32);
        rec.dispatch(info, &pipe, &[&table.chunks[0].quants, &ids.buf, &out.buf], &p, wg);
        return Ok(());
    }
    let shader = quant_shader(table.dtype);
    let pipe = rec.ctx.pipeline(shader, "embed", &[])?;
    let [spare0, spare1] = &rec.ctx.spare;
    for (i, c) in table.chunks.iter().enumerate() {
        let p = QuantParams {
            t: n_tokens as u32,
            k: dim as u32,
            n: c.rows as u32,
            row0: c.row0 as u32,
            n_total: vocab as u32,
            id_offset: id_offset as u32,
            vocab: vocab as u32,
            scale,
            ..Default::default()
        };
        let scales = c.scales.as_ref().unwrap_or(&c.quants);
        let buffers = [&ids.buf, &c.quants, scales, &c.quants, &out.buf, spare0, spare1];
        let info = if i == 0 { info } else { OpInfo { flops: 0, bytes: 0, ..info } };
        rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (n_tokens * dim / 4).div_ceil(64) as u32));
    }
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
        for &(vocab, dim, n) in &[(1usize, 1usize, 1usize), (37, 13, 5), (301, 67, 19), (301, 68, 19)] {
            let table = test_values(vocab * dim, 3);
            let ids: Vec<u32> = (0..n + 2).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
            let t = Weight::from_f32(ctx, "table", &[vocab, dim], &table).unwrap();
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

    gpu_test!(fn scaled_embeddings_match_reference(ctx) {
        // Gemma's √dim in f32 on an odd-width f32 table (plain gather) and on a quantized one
        // split across bindings (quant.wgsl's embed), as Gemma 3's 178 MB table is.
        let ids: Vec<u32> = vec![3, 0, 76, 41, 3];
        let id_buf = Tensor { buf: ctx.upload("ids", &ids).unwrap(), shape: vec![ids.len()] };
        for (dtype, dim) in [(DType::F32, 67usize), (DType::Q8_0, 640), (DType::Q4_K, 256)] {
            let vocab = 77;
            let bytes = super::super::matmul::tests::random_rows(dtype, vocab, dim, 9);
            let table = crate::weights::dtype::dequantize(dtype, &bytes, vocab * dim).unwrap();
            let rows: Vec<&[u8]> = bytes.chunks(dtype.bytes_for(dim).unwrap()).collect();
            let row = crate::weights::repack::quant_bytes_per_row(dtype, dim) as u64;
            let t = Weight::from_rows(ctx, "table", dtype, dim, &rows, if dim % 4 == 0 { 20 * row } else { u64::MAX }).unwrap();
            let out = Tensor::zeros(ctx, "out", &[ids.len(), dim]).unwrap();
            let scale = gemma_scale(dim);
            let mut rec = Recorder::new(ctx, "test");
            embed_scaled(&mut rec, &t, &id_buf, 0, ids.len(), &out, scale).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, ids.len() * dim).await.unwrap();
            let want: Vec<f32> = reference(&table, dim, &ids).iter().map(|v| v * scale).collect();
            // One f32 multiply after the exact dequantization of the other test: an ulp or two.
            compare(&got, &want, 1e-7, 1e-6).unwrap_or_else(|e| panic!("{dtype:?} dim {dim} chunks {}: {e}", t.chunks.len()));
        }
        assert_eq!(gemma_scale(640), 25.298221);
    });

    gpu_test!(fn quantized_tables_and_split_bindings_dequantize_exactly(ctx) {
        let (vocab, n) = (77usize, 9usize);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 13 + 5) % vocab) as u32).chain([76, 0]).collect();
        let id_buf = Tensor { buf: ctx.upload("ids", &ids).unwrap(), shape: vec![ids.len()] };
        for dtype in DType::ALL {
            let dim = if dtype.block_len() == 256 { 512 } else { 96 };
            let bytes = super::super::matmul::tests::random_rows(dtype, vocab, dim, 5);
            let rows: Vec<&[u8]> = bytes.chunks(dtype.bytes_for(dim).unwrap()).collect();
            let want_table = crate::weights::dtype::dequantize(dtype, &bytes, vocab * dim).unwrap();
            let row = crate::weights::repack::quant_bytes_per_row(dtype, dim) as u64;
            for limit in [u64::MAX, 32 * row] {
                let t = Weight::from_rows(ctx, "table", dtype, dim, &rows, limit).unwrap();
                let out = Tensor::zeros(ctx, "out", &[ids.len(), dim]).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                embed(&mut rec, &t, &id_buf, 0, ids.len(), &out).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&out.buf, 0, ids.len() * dim).await.unwrap();
                // The same products of an f16 scale and a small integer in f32: within an ulp or two.
                compare(&got, &reference(&want_table, dim, &ids), 1e-7, 1e-6).unwrap_or_else(|e| panic!("{dtype:?} chunks {}: {e}", t.chunks.len()));
            }
        }
    });
}

#[path = "embed_backward.rs"]
pub mod backward;
