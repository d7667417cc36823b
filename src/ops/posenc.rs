//! Positional encodings, one family with three members:
//! - `learned`: a trained table gathered by position and added to the embeddings (GPT-2);
//! - `sinusoidal`: the original Transformer's fixed sin/cos code, computed on the GPU, no
//!   table uploaded (XGLM, with the tensor2tensor layout);
//! - RoPE: rotates Q and K per head instead of touching the embeddings; its kernel lives in
//!   `shaders/rope.wgsl` and its launcher in `ops::rope`, re-exported here.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};
use super::attention::TokenTable;

pub use super::rope::{rope, RopeStyle};

pub const SHADER: Shader = Shader { name: "posenc", body: include_str!("../../shaders/posenc.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    dim: u32,
    pos0: u32,
    n_positions: u32,
    interleaved: u32,
    freq_denom: f32,
    scale: f32,
    per_token: u32,
}

/// How the sin and cos halves of a sinusoidal code are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinusoidalLayout {
    /// PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(…): "Attention Is All You Need".
    Interleaved,
    /// PE(pos, i) = sin(pos · 10000^(-i/(d/2-1))), PE(pos, i + d/2) = cos(…): tensor2tensor and
    /// fairseq, as Hugging Face's XGLM, M2M100 and FSMT build it.
    SplitHalves,
}

impl SinusoidalLayout {
    /// The exponent's denominator: inv_freq_i = 10000^(-i / denom).
    fn freq_denom(self, dim: usize) -> f32 {
        match self {
            SinusoidalLayout::Interleaved => (dim / 2) as f32,
            SinusoidalLayout::SplitHalves => (dim / 2 - 1).max(1) as f32,
        }
    }
}

/// FLOPs and bytes of `learned` over (n_tokens, dim): one add; reads x and a table row, writes x.
pub fn learned_cost(n_tokens: usize, dim: usize) -> (u64, u64) {
    let n = (n_tokens * dim) as u64;
    (n, 12 * n)
}

/// FLOPs and bytes of `sinusoidal` over (n_tokens, dim): per pair an exp, a range reduction,
/// sin, cos and two multiply-adds (~16 FLOPs, 8 per element); reads and writes x.
pub fn sinusoidal_cost(n_tokens: usize, dim: usize) -> (u64, u64) {
    let n = (n_tokens * dim) as u64;
    (8 * n, 8 * n)
}

/// x[t, :] += table[pos0 + t, :] for t < n_tokens; x: (>= n_tokens, dim), table: (n_positions, dim).
pub fn learned(rec: &mut Recorder, x: &Tensor, table: &Tensor, pos0: usize, n_tokens: usize) -> Result<()> {
    learned_at(rec, x, table, pos0, n_tokens, None)
}

/// The GPU token table to bind and the flag, for tokens placed by `at` (a spare buffer, never
/// read, without one), and one past the last position.
fn placement<'a>(ctx: &'a crate::gpu::Context, at: Option<&TokenTable<'a>>, pos0: usize, n_tokens: usize) -> Result<(&'a wgpu::Buffer, u32, usize)> {
    match at {
        None => Ok((&ctx.spare[0], 0, pos0 + n_tokens)),
        Some(t) => {
            t.meta.holds("positions", "token table", 2 * n_tokens)?;
            Ok((&t.meta.buf, 1, pos0 + t.end()))
        }
    }
}

/// `learned` where, with a token table, token t sits at position pos0 + its table position.
pub fn learned_at(rec: &mut Recorder, x: &Tensor, table: &Tensor, pos0: usize, n_tokens: usize, at: Option<&TokenTable>) -> Result<()> {
    let [n_positions, dim] = table.shape[..] else {
        return Err(Error::Shape { op: "learned_positions", msg: format!("table must be 2-D, is {:?}", table.shape) });
    };
    let (meta, per_token, end) = placement(rec.ctx, at, pos0, n_tokens)?;
    if end > n_positions {
        return Err(Error::Context(format!("positions up to {end} exceed the model's {n_positions} learned positions")));
    }
    x.holds("learned_positions", "x", n_tokens * dim)?;
    let pipe = rec.ctx.pipeline(&SHADER, "learned", &[])?;
    let p = Params { n_tokens: n_tokens as u32, dim: dim as u32, pos0: pos0 as u32, n_positions: n_positions as u32, interleaved: 0, freq_denom: 1.0, scale: 1.0, per_token };
    let (flops, bytes) = learned_cost(n_tokens, dim);
    let info = OpInfo::new("learned_positions", flops, bytes);
    rec.dispatch(info, &pipe, &[&table.buf, &x.buf, meta], &p, grid(rec.ctx, (n_tokens * dim).div_ceil(256) as u32));
    Ok(())
}

/// x[t, :] = x[t, :] * scale + PE(pos0 + t, :) for t < n_tokens; x: (>= n_tokens, dim), dim even.
pub fn sinusoidal(rec: &mut Recorder, x: &Tensor, dim: usize, pos0: usize, n_tokens: usize, scale: f32, layout: SinusoidalLayout) -> Result<()> {
    sinusoidal_at(rec, x, dim, pos0, n_tokens, scale, layout, None)
}

/// `sinusoidal` where, with a token table, token t sits at position pos0 + its table position.
#[allow(clippy::too_many_arguments)]
pub fn sinusoidal_at(rec: &mut Recorder, x: &Tensor, dim: usize, pos0: usize, n_tokens: usize, scale: f32, layout: SinusoidalLayout, at: Option<&TokenTable>) -> Result<()> {
    if dim % 2 != 0 || dim < 2 || x.shape.last() != Some(&dim) {
        return Err(Error::Shape { op: "sinusoidal_positions", msg: format!("x {:?} must end in an even dim {dim}", x.shape) });
    }
    x.holds("sinusoidal_positions", "x", n_tokens * dim)?;
    let (meta, per_token, _) = placement(rec.ctx, at, pos0, n_tokens)?;
    let pipe = rec.ctx.pipeline(&SHADER, "sinusoidal", &[])?;
    let p = Params {
        n_tokens: n_tokens as u32,
        dim: dim as u32,
        pos0: pos0 as u32,
        n_positions: 0,
        interleaved: (layout == SinusoidalLayout::Interleaved) as u32,
        freq_denom: layout.freq_denom(dim),
        scale,
        per_token,
    };
    let (flops, bytes) = sinusoidal_cost(n_tokens, dim);
    let info = OpInfo::new("sinusoidal_positions", flops, bytes);
    rec.dispatch(info, &pipe, &[&x.buf, meta], &p, grid(rec.ctx, (n_tokens * dim / 2).div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of `learned`.
pub fn learned_reference(x: &[f32], table: &[f32], dim: usize, pos0: usize) -> Vec<f32> {
    x.iter().enumerate().map(|(i, &v)| v + table[(pos0 + i / dim) * dim + i % dim]).collect()
}

/// CPU reference of `sinusoidal`, in f64 from the textbook formula.
pub fn sinusoidal_reference(x: &[f32], dim: usize, pos0: usize, scale: f32, layout: SinusoidalLayout) -> Vec<f32> {
    let half = dim / 2;
    let denom = layout.freq_denom(dim) as f64;
    let mut out = x.to_vec();
    for (t, row) in out.chunks_mut(dim).enumerate() {
        let pos = (pos0 + t) as f64;
        for i in 0..half {
            let angle = pos / 10000f64.powf(i as f64 / denom);
            let (a, b) = match layout {
                SinusoidalLayout::Interleaved => (2 * i, 2 * i + 1),
                SinusoidalLayout::SplitHalves => (i, i + half),
            };
            row[a] = (row[a] as f64 * scale as f64 + angle.sin()) as f32;
            row[b] = (row[b] as f64 * scale as f64 + angle.cos()) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn learned_matches_reference_on_odd_sizes(ctx) {
        for &(n_positions, dim, pos0, n) in &[(1usize, 1usize, 0usize, 1usize), (40, 13, 7, 5), (300, 67, 250, 50)] {
            let table = test_values(n_positions * dim, 51);
            let x = test_values(n * dim, 52);
            let tt = Tensor::upload_f32(ctx, "table", &[n_positions, dim], &table).unwrap();
            let xt = Tensor::upload_f32(ctx, "x", &[n, dim], &x).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            learned(&mut rec, &xt, &tt, pos0, n).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&xt.buf, 0, n * dim).await.unwrap();
            // One f32 addition, the same one the reference does: exact.
            compare(&got, &learned_reference(&x, &table, dim, pos0), 0.0, 0.0).unwrap_or_else(|e| panic!("positions {n_positions} dim {dim} pos0 {pos0}: {e}"));
        }
    });

    gpu_test!(fn positions_from_a_token_table_match_reference_per_token(ctx) {
        // Tokens of several sequences in one batch: each at its own position (pos0 + table's).
        let (dim, n_positions, pos0, offsets) = (14usize, 40usize, 3usize, [9u32, 0, 30, 1, 1]);
        let n = offsets.len();
        let rows: Vec<u32> = offsets.iter().enumerate().flat_map(|(i, &p)| [i as u32, p]).collect();
        let meta = Tensor::zeros(ctx, "token table", &[2 * n]).unwrap();
        ctx.queue.write_buffer(&meta.buf, 0, bytemuck::cast_slice(&rows));
        let at = TokenTable { meta: &meta, rows: &rows, n_slots: n };
        let table = test_values(n_positions * dim, 54);
        let x = test_values(n * dim, 55);
        let (tt, xl, xs) = (Tensor::upload_f32(ctx, "table", &[n_positions, dim], &table).unwrap(), Tensor::upload_f32(ctx, "x", &[n, dim], &x).unwrap(), Tensor::upload_f32(ctx, "x", &[n, dim], &x).unwrap());
        let mut rec = Recorder::new(ctx, "test");
        learned_at(&mut rec, &xl, &tt, pos0, n, Some(&at)).unwrap();
        sinusoidal_at(&mut rec, &xs, dim, pos0, n, 2.0, SinusoidalLayout::Interleaved, Some(&at)).unwrap();
        rec.submit().unwrap();
        let (got_l, got_s) = (ctx.read_f32_async(&xl.buf, 0, n * dim).await.unwrap(), ctx.read_f32_async(&xs.buf, 0, n * dim).await.unwrap());
        for (i, &p) in offsets.iter().enumerate() {
            let (row, pos) = (&x[i * dim..(i + 1) * dim], pos0 + p as usize);
            // Exact for the table's one addition; the sinusoidal tolerance as above.
            compare(&got_l[i * dim..(i + 1) * dim], &learned_reference(row, &table, dim, pos), 0.0, 0.0).unwrap_or_else(|e| panic!("learned, token {i} at {pos}: {e}"));
            let abs = 2e-6 + 2.5e-7 * 40.0 + crate::ops::sin_cos_tolerance(ctx);
            compare(&got_s[i * dim..(i + 1) * dim], &sinusoidal_reference(row, dim, pos, 2.0, SinusoidalLayout::Interleaved), abs, 1e-6).unwrap_or_else(|e| panic!("sinusoidal, token {i} at {pos}: {e}"));
        }
        // Past the learned table: refused, naming the position.
        let far = [0u32, 38];
        let at = TokenTable { meta: &meta, rows: &far, n_slots: 1 };
        let e = learned_at(&mut Recorder::new(ctx, "test"), &xl, &tt, pos0, 1, Some(&at)).unwrap_err().to_string();
        assert!(e.contains("42") && e.contains("40 learned positions"), "{e}");
    });

    gpu_test!(fn learned_refuses_positions_past_the_table(ctx) {
        let tt = Tensor::zeros(ctx, "table", &[8, 4]).unwrap();
        let xt = Tensor::zeros(ctx, "x", &[4, 4]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let e = learned(&mut rec, &xt, &tt, 6, 3).unwrap_err().to_string();
        assert!(e.contains("9") && e.contains("8 learned positions"), "{e}");
    });

    gpu_test!(fn sinusoidal_matches_reference_both_layouts_odd_sizes(ctx) {
        for &(dim, pos0, n) in &[(2usize, 0usize, 1usize), (6, 3, 7), (64, 2, 34), (130, 1000, 5), (1026, 2047, 3)] {
            for layout in [SinusoidalLayout::Interleaved, SinusoidalLayout::SplitHalves] {
                for scale in [1.0f32, 8.0] {
                    let x = test_values(n * dim, 53);
                    let xt = Tensor::upload_f32(ctx, "x", &[n, dim], &x).unwrap();
                    let mut rec = Recorder::new(ctx, "test");
                    sinusoidal(&mut rec, &xt, dim, pos0, n, scale, layout).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32_async(&xt.buf, 0, n * dim).await.unwrap();
                    // The angle pos·inv_freq is rounded to f32 (an error of ulp(pos) ≈ pos·6e-8
                    // radians), then reduced to [0, 2π) (one more ulp); sin and cos of the
                    // reduced angle add a few ulp. Values are at most |x|·scale + 1 ≤ 9.
                    let abs = 2e-6 + 2.5e-7 * (pos0 + n) as f32 + crate::ops::sin_cos_tolerance(ctx);
                    compare(&got, &sinusoidal_reference(&x, dim, pos0, scale, layout), abs, 1e-6)
                        .unwrap_or_else(|e| panic!("dim {dim} pos0 {pos0} n {n} {layout:?} scale {scale}: {e}"));
                }
            }
        }
    });

    #[test]
    fn interleaved_is_the_original_transformer_formula() {
        // PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
        let (d, pos) = (8usize, 5usize);
        let pe = sinusoidal_reference(&vec![0.0; d], d, pos, 1.0, SinusoidalLayout::Interleaved);
        for i in 0..d / 2 {
            let a = pos as f64 / 10000f64.powf((2 * i) as f64 / d as f64);
            assert!((pe[2 * i] as f64 - a.sin()).abs() < 1e-7 && (pe[2 * i + 1] as f64 - a.cos()).abs() < 1e-7, "pair {i}");
        }
    }
}
