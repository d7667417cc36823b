//! Per-sequence GPU state: activation buffers sized for the largest chunk of tokens, the KV
//! cache, the logits, and the token ids on the GPU (where sampling writes the next id).

use super::config::ModelConfig;
use crate::error::Result;
use crate::gpu::{Context, Recorder, Tensor};
use crate::ops::attention::ring_len;

/// Which positions of a forward pass produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last token's (generation): written to row 0.
    Last,
    /// Every token's (perplexity, teacher forcing): row t for token t.
    All,
}

pub struct State {
    /// Most tokens one forward pass takes.
    pub max_batch: usize,
    /// Positions the KV cache holds.
    pub ctx_len: usize,
    pub x: Tensor,      // (max_batch, dim) residual stream
    pub xn: Tensor,     // (max_batch, dim) normed
    pub x_last: Tensor, // (1, dim) last position's residual, for its logits alone
    pub q: Tensor,      // (max_batch, n_heads * head_dim)
    pub k: Tensor,      // (max_batch, n_kv_heads * head_dim)
    pub v: Tensor,      // (max_batch, n_kv_heads * head_dim)
    pub att: Tensor,    // (max_batch, n_heads * head_dim)
    pub att_partials: Tensor, // split attention's partial results (ops::attention::partials_len)
    pub gate: Tensor,   // (max_batch, ffn_dim)
    pub up: Tensor,     // (max_batch, ffn_dim)
    pub logits: Tensor, // (max_batch, vocab)
    pub work: Tensor,   // (vocab,) sampler scratch
    pub adjust: Tensor, // the sampler's sparse logit adjustments (DRY), ops::sample::write_adjust
    pub tokens: Tensor, // (ctx_len,) u32 ids of the sequence
    /// Token ids read back to the CPU.
    pub readback: wgpu::Buffer,
    pub k_cache: Vec<Tensor>, // per layer (n_slots = 1, n_kv_heads, cache_len[layer], head_dim), u32 pairs of f16 for KvFormat::F16
    pub v_cache: Vec<Tensor>,
    /// Positions each layer's cache holds: ctx_len, or for a sliding-window layer a ring of
    /// its window plus a call's tokens (`attention::ring_len`), so its memory stays at its window.
    pub cache_len: Vec<usize>,
}

impl State {
    /// The attention shape of `n` tokens at positions pos0.. of this state's one sequence, in
    /// layer `layer`'s cache.
    pub fn attn_shape(&self, c: &ModelConfig, layer: usize, pos0: usize, n: usize) -> crate::ops::attention::AttnShape {
        crate::ops::attention::AttnShape {
            n_tokens: n,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ctx_len: self.cache_len[layer],
            pos0,
            slot: 0,
        }
    }

    pub fn new(ctx: &Context, c: &ModelConfig, ctx_len: usize, max_batch: usize) -> Result<Self> {
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let z = |label: &str, shape: &[usize]| Tensor::zeros(ctx, label, shape);
        let cache_len: Vec<usize> = (0..c.n_layers).map(|i| c.attention(i).window.map_or(ctx_len, |w| ring_len(w, max_batch).min(ctx_len))).collect();
        let mut k_cache = Vec::with_capacity(c.n_layers);
        let mut v_cache = Vec::with_capacity(c.n_layers);
        // An f16 cache packs two values in each u32 word (head_dim is even: `ModelConfig::check`).
        let words_per_row = c.kv_format.words(c.head_dim);
        for &len in &cache_len {
            let cache_shape = [1, c.n_kv_heads, len, words_per_row];
            k_cache.push(z("k cache", &cache_shape)?);
            v_cache.push(z("v cache", &cache_shape)?);
        }
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token read-back"),
            size: 4 * crate::generate::MAX_DECODE_STEPS as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(State {
            max_batch,
            ctx_len,
            x: z("x", &[max_batch, c.dim])?,
            xn: z("xn", &[max_batch, c.dim])?,
            x_last: z("x_last", &[1, c.dim])?,
            q: z("q", &[max_batch, q_dim])?,
            k: z("k", &[max_batch, kv_dim])?,
            v: z("v", &[max_batch, kv_dim])?,
            att: z("att", &[max_batch, q_dim])?,
            att_partials: z("attention partials", &[crate::ops::attention::partials_len(c.n_heads, c.head_dim)])?,
            gate: z("gate", &[max_batch, c.ffn_dim])?,
            up: z("up", &[max_batch, c.ffn_dim])?,
            logits: z("logits", &[max_batch, c.vocab])?,
            work: z("sampler work", &[c.vocab])?,
            adjust: z("sampler adjust", &[crate::ops::sample::ADJUST_LEN])?,
            tokens: z("tokens", &[ctx_len])?,
            readback,
            k_cache,
            v_cache,
            cache_len,
        })
    }
}

impl State {
    /// The rows of the final residual stream (`x`, `n` tokens of width `dim`) that get logits:
    /// all of them, or the last one copied into `x_last`. Returns the tensor and its row count.
    pub fn logit_rows(&self, rec: &mut Recorder, rows: LogitRows, n: usize, dim: usize) -> (&Tensor, usize) {
        match rows {
            LogitRows::All => (&self.x, n),
            LogitRows::Last => {
                rec.copy(&self.x.buf, ((n - 1) * dim * 4) as u64, &self.x_last.buf, 0, (dim * 4) as u64);
                (&self.x_last, 1)
            }
        }
    }
}
