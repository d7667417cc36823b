//! Causal scaled dot-product attention over a GPU-resident KV cache, with grouped-query heads.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "attention", body: include_str!("../../shaders/attention.wgsl") };

/// Longest head the attention kernel holds in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    ctx_len: u32,
    pos0: u32,
    slot: u32,
    scale: f32,
    n_splits: u32,
    split_len: u32,
    _pad: [u32; 2],
}

/// Keys per workgroup below which a decode step's attention is not split.
const MIN_SPLIT_KEYS: usize = 256;
/// Most key ranges one (token, head) is split into.
pub const MAX_SPLITS: usize = 32;

/// Floats of the partial results a split attention needs: (n_heads, MAX_SPLITS, head_dim + 2)
/// for one token.
pub fn partials_len(n_heads: usize, head_dim: usize) -> usize {
    n_heads * MAX_SPLITS * (head_dim + 2)
}

/// Shape of one layer's cache and of the call's tokens.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_tokens: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache holds per slot.
    pub ctx_len: usize,
    /// Position of this call's first token.
    pub pos0: usize,
    /// Sequence slot in the cache.
    pub slot: usize,
}

impl AttnShape {
    fn params(&self) -> Params {
        Params {
            n_tokens: self.n_tokens as u32,
            n_heads: self.n_heads as u32,
            n_kv_heads: self.n_kv_heads as u32,
            head_dim: self.head_dim as u32,
            ctx_len: self.ctx_len as u32,
            pos0: self.pos0 as u32,
            slot: self.slot as u32,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            n_splits: 1,
            split_len: self.ctx_len.next_multiple_of(64) as u32,
            _pad: [0; 2],
        }
    }
    fn check(&self, k_cache: &Tensor) -> Result<()> {
        if self.head_dim > MAX_HEAD_DIM || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Shape {
                op: "attention",
                msg: format!("head_dim {} (max {MAX_HEAD_DIM}), heads {} / kv heads {} must divide", self.head_dim, self.n_heads, self.n_kv_heads),
            });
        }
        if self.pos0 + self.n_tokens > self.ctx_len {
            return Err(Error::Context(format!("positions up to {} do not fit the cache of {}", self.pos0 + self.n_tokens, self.ctx_len)));
        }
        k_cache.holds("attention", "kv cache", (self.slot + 1) * self.n_kv_heads * self.ctx_len * self.head_dim)
    }
}

/// FLOPs and bytes of kv_write: reads K and V rows, writes them into the cache.
pub fn kv_write_cost(s: &AttnShape) -> (u64, u64) {
    (0, 16 * (s.n_tokens * s.n_kv_heads * s.head_dim) as u64)
}

/// FLOPs and bytes of attention: per visited key and head, a dot product and a weighted add
/// over head_dim (4 FLOPs per element); reads q, writes out, reads K and V of every visited
/// key once per query head (what the kernel does).
pub fn attention_cost(s: &AttnShape) -> (u64, u64) {
    let keys: u64 = (0..s.n_tokens).map(|t| (s.pos0 + t + 1) as u64).sum();
    let hd = (s.n_heads * s.head_dim) as u64;
    let n = (s.n_tokens * s.n_heads * s.head_dim) as u64;
    (4 * keys * hd, 4 * (2 * n + 2 * keys * hd))
}

/// Writes this call's K and V rows (n_tokens, n_kv_heads, head_dim) into the layer's cache.
pub fn kv_write(rec: &mut Recorder, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, s: AttnShape, layer: usize) -> Result<()> {
    s.check(k_cache)?;
    let n = s.n_tokens * s.n_kv_heads * s.head_dim;
    k.holds("kv_write", "k", n)?;
    v.holds("kv_write", "v", n)?;
    let pipe = rec.ctx.pipeline(&SHADER, "kv_write", &[])?;
    let (flops, bytes) = kv_write_cost(&s);
    let info = OpInfo::new("kv_write", flops, bytes).layer(layer);
    rec.dispatch(info, &pipe, &[&k.buf, &v.buf, &k_cache.buf, &v_cache.buf], &s.params(), grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// out (n_tokens, n_heads, head_dim) = softmax(q·Kᵀ/√d, causal) · V over cache positions
/// 0 ..= pos0 + t for token t. A decode step over a long context splits the keys into ranges
/// (more workgroups at work) whose partial results, kept in `partials`
/// (`partials_len` floats), a second pass combines.
#[allow(clippy::too_many_arguments)]
pub fn attention(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, layer: usize) -> Result<()> {
    s.check(k_cache)?;
    let n = s.n_tokens * s.n_heads * s.head_dim;
    q.holds("attention", "q", n)?;
    out.holds("attention", "out", n)?;
    let keys = s.pos0 + s.n_tokens;
    let splits = if s.n_tokens == 1 { keys.div_ceil(MIN_SPLIT_KEYS).clamp(1, MAX_SPLITS) } else { 1 };
    let mut p = s.params();
    if splits > 1 {
        partials.holds("attention", "partials", partials_len(s.n_heads, s.head_dim))?;
        p.n_splits = splits as u32;
        p.split_len = keys.div_ceil(splits).next_multiple_of(64) as u32;
    }
    let pipe = rec.ctx.pipeline(&SHADER, "attention", &[])?;
    let (flops, bytes) = attention_cost(&s);
    let info = OpInfo::new("attention", flops, bytes).layer(layer);
    let buffers = [&q.buf, &k_cache.buf, &v_cache.buf, &out.buf, &partials.buf];
    rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (s.n_tokens * s.n_heads * splits) as u32));
    if splits > 1 {
        let pipe = rec.ctx.pipeline(&SHADER, "attention_combine", &[])?;
        let bytes = 4 * (s.n_heads * splits * (s.head_dim + 2) + n) as u64;
        let info = OpInfo::new("attention_combine", 3 * (s.n_heads * splits * s.head_dim) as u64, bytes).layer(layer);
        rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (s.n_tokens * s.n_heads) as u32));
    }
    Ok(())
}

/// CPU reference: q (t, h, d); k, v: all positions 0..pos0+t of one slot, (kv_h, positions, d).
pub fn reference(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, positions: usize) -> Vec<f32> {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f32; s.n_tokens * s.n_heads * d];
    for t in 0..s.n_tokens {
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qv = &q[(t * s.n_heads + h) * d..][..d];
            let len = s.pos0 + t + 1;
            let scores: Vec<f64> = (0..len)
                .map(|j| {
                    let kr = &k[(kvh * positions + j) * d..][..d];
                    qv.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for dd in 0..d {
                let acc: f64 = (0..len).map(|j| e[j] * v[(kvh * positions + j) * d + dd] as f64).sum();
                out[(t * s.n_heads + h) * d + dd] = (acc / z) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::gpu::Context;
    use crate::ops::{compare, test_values};

    /// Prefills `pre` tokens, then runs `n_tokens` more in a second call, as generation does,
    /// and compares the second call's output with the reference.
    async fn run(ctx: &Context, n_heads: usize, n_kv_heads: usize, head_dim: usize, pre: usize, n_tokens: usize, slot: usize) {
        let ctx_len = pre + n_tokens + 3;
        let n_slots = slot + 1;
        let total = pre + n_tokens;
        let k_all = test_values(total * n_kv_heads * head_dim, 41);
        let v_all = test_values(total * n_kv_heads * head_dim, 42);
        let q: Vec<f32> = test_values(n_tokens * n_heads * head_dim, 43).iter().map(|x| x * 3.0).collect();
        let cache_len = n_slots * n_kv_heads * ctx_len * head_dim;
        let kc = Tensor::zeros(ctx, "k cache", &[cache_len]).unwrap();
        let vc = Tensor::zeros(ctx, "v cache", &[cache_len]).unwrap();
        let row = n_kv_heads * head_dim;
        for (pos0, count) in [(0, pre), (pre, n_tokens)] {
            if count == 0 {
                continue;
            }
            let s = AttnShape { n_tokens: count, n_heads, n_kv_heads, head_dim, ctx_len, pos0, slot };
            let kt = Tensor::upload_f32(ctx, "k", &[count, row], &k_all[pos0 * row..(pos0 + count) * row]).unwrap();
            let vt = Tensor::upload_f32(ctx, "v", &[count, row], &v_all[pos0 * row..(pos0 + count) * row]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            kv_write(&mut rec, &kt, &vt, &kc, &vc, s, 0).unwrap();
            rec.submit().unwrap();
        }
        let s = AttnShape { n_tokens, n_heads, n_kv_heads, head_dim, ctx_len, pos0: pre, slot };
        let qt = Tensor::upload_f32(ctx, "q", &[n_tokens, n_heads * head_dim], &q).unwrap();
        let out = Tensor::zeros(ctx, "out", &[n_tokens, n_heads * head_dim]).unwrap();
        let partials = Tensor::zeros(ctx, "partials", &[partials_len(n_heads, head_dim)]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        attention(&mut rec, &qt, &kc, &vc, &out, &partials, s, 0).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&out.buf, 0, n_tokens * n_heads * head_dim).await.unwrap();
        // Reference layout: (kv_head, position, d).
        let to_heads = |x: &[f32]| -> Vec<f32> {
            let mut o = vec![0f32; x.len()];
            for p in 0..total {
                for h in 0..n_kv_heads {
                    for d in 0..head_dim {
                        o[(h * total + p) * head_dim + d] = x[(p * n_kv_heads + h) * head_dim + d];
                    }
                }
            }
            o
        };
        let want = reference(&q, &to_heads(&k_all), &to_heads(&v_all), s, total);
        // Outputs are convex combinations of values in [-1, 1]; f32 softmax and sums over
        // up to a few thousand keys stay within 2e-5.
        compare(&got, &want, 2e-5, 1e-4).unwrap_or_else(|e| panic!("heads {n_heads}/{n_kv_heads} d {head_dim} pre {pre} t {n_tokens}: {e}"));
    }

    gpu_test!(fn attention_prefill_matches_reference(ctx) {
        run(ctx, 1, 1, 2, 0, 1, 0).await;
        run(ctx, 4, 2, 16, 0, 34, 0).await;
        run(ctx, 3, 1, 7 * 2, 0, 5, 1).await;
        run(ctx, 9, 3, 64, 0, 70, 0).await; // more keys than one tile
    });

    gpu_test!(fn attention_decode_over_cache_matches_reference(ctx) {
        run(ctx, 9, 3, 64, 130, 1, 0).await;
        run(ctx, 2, 2, 130, 63, 2, 1).await; // head_dim > 128 uses the third accumulator
        run(ctx, 4, 1, 8, 64, 1, 0).await; // exactly one full tile before
    });

    gpu_test!(fn split_key_ranges_combine_to_the_reference(ctx) {
        // A decode step over more than 256 keys is split into ranges of whole tiles.
        run(ctx, 9, 3, 64, 300, 1, 0).await; // 2 ranges, the second partly filled
        run(ctx, 2, 1, 130, 1000, 1, 1).await; // 4 ranges, head_dim > 128
        run(ctx, 3, 3, 16, 3 * 256 + 1, 1, 0).await; // 4 ranges: the last holds one key
        run(ctx, 2, 2, 8, 40 * 256, 1, 0).await; // more than MAX_SPLITS ranges' worth: 32 ranges of 320
    });
}

#[path = "attention_backward.rs"]
pub mod backward;
