//! The GPU state of `n_slots` sequences: activation buffers sized for the largest batch of
//! tokens, the KV cache of every slot, the logits, and each slot's token ids on the GPU (where
//! sampling writes the next id). A forward pass takes a batch of tokens from several slots:
//! `Segment`s, each a run of one slot's positions.

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, Recorder, Tensor};
use crate::ops::attention::{Placement, TokenTable};

/// Which positions of a forward pass produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Each segment's last token (generation): row i for segment i.
    Last,
    /// Every token's (perplexity, teacher forcing): row t for token t of the batch.
    All,
}

/// A run of one slot's tokens in a batch: positions pos0 .. pos0 + n of slot `slot`, whose
/// ids sit in that slot's token row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub slot: usize,
    pub pos0: usize,
    pub n: usize,
}

/// Where a forward pass's tokens are, as the ops take it: the ids to embed (a tensor and the
/// first index), the first position and slot (a single run) or a token table.
pub struct Placed<'a> {
    pub n: usize,
    pub ids: (&'a Tensor, usize),
    pub pos0: usize,
    pub slot: usize,
    pub at: Placement<'a>,
    /// One past the last position of any token.
    pub end: usize,
    /// With a token table: each segment's slot and one past its last position (per-slot
    /// choices such as longrope's factors); empty for a single run (`end` says it).
    pub slot_ends: Vec<(usize, usize)>,
}

pub struct State {
    /// Most tokens one forward pass takes.
    pub max_batch: usize,
    /// Positions the KV cache holds per slot.
    pub ctx_len: usize,
    /// Sequences the state holds.
    pub n_slots: usize,
    pub x: Tensor,      // (max_batch, dim) residual stream
    pub xn: Tensor,     // (max_batch, dim) normed
    pub x_last: Tensor, // (n_slots, dim) each segment's last residual, for their logits alone
    pub q: Tensor,      // (max_batch, n_heads * head_dim)
    pub k: Tensor,      // (max_batch, n_kv_heads * head_dim)
    pub v: Tensor,      // (max_batch, n_kv_heads * head_dim)
    pub att: Tensor,    // (max_batch, n_heads * head_dim)
    pub att_partials: Tensor, // split attention's partial results (ops::attention::partials_len)
    pub gate: Tensor,   // (max_batch, ffn_dim)
    pub up: Tensor,     // (max_batch, ffn_dim)
    pub logits: Tensor, // (max_batch, vocab)
    pub work: Tensor,   // (ops::sample::work_len(vocab),) sampler scratch
    pub adjust: Vec<Tensor>, // per slot: the sampler's sparse logit adjustments (DRY), ops::sample::write_adjust
    pub tokens: Tensor, // (n_slots, ctx_len) u32 ids of each slot's sequence
    pub batch_ids: Tensor, // (max_batch,) u32 ids of a batch of several slots, gathered per pass
    pub meta: Tensor,      // (max_batch, 2) u32 each token's slot and position - step (TokenTable)
    /// What `meta` holds, on the CPU: `set_table` writes both.
    table: Vec<u32>,
    /// One slot's largest block (a layer's K cache, or its ids), for `fork`; None with one slot.
    fork_scratch: Option<wgpu::Buffer>,
    /// Token ids read back to the CPU.
    pub readback: wgpu::Buffer,
    pub k_cache: Vec<Tensor>, // per layer (n_slots, n_kv_heads, cache_len[layer], head_dim), u32 pairs of f16 for KvFormat::F16
    pub v_cache: Vec<Tensor>,
    /// Positions each layer's cache holds: ctx_len, or for a sliding-window layer a ring of
    /// its window plus a call's tokens (`attention::ring_len`), so its memory stays at its window.
    pub cache_len: Vec<usize>,
    /// The RoPE table of a `dynamic` NTK model whose context is longer than its original one
    /// (`decoder::dynamic_rope_table`), fixed for the state's context.
    pub rope_dynamic: Option<Tensor>,
}

impl State {
    /// The attention shape of the placed tokens in layer `layer`'s cache.
    pub fn attn_shape(&self, c: &ModelConfig, layer: usize, p: &Placed) -> crate::ops::attention::AttnShape {
        crate::ops::attention::AttnShape {
            n_tokens: p.n,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ctx_len: self.cache_len[layer],
            pos0: p.pos0,
            slot: p.slot,
        }
    }

    /// The state of one sequence.
    pub fn new(ctx: &Context, c: &ModelConfig, ctx_len: usize, max_batch: usize) -> Result<Self> {
        Self::with_slots(ctx, c, ctx_len, max_batch, 1)
    }

    /// The state of `n_slots` sequences of `ctx_len` positions each.
    pub fn with_slots(ctx: &Context, c: &ModelConfig, ctx_len: usize, max_batch: usize, n_slots: usize) -> Result<Self> {
        if n_slots == 0 || max_batch == 0 {
            return Err(Error::arg("slots", format!("{n_slots} slots of batches of {max_batch} tokens: both must be at least 1")));
        }
        // The plan counts the same shapes (`plan::SessionShape::buffers`).
        let b = crate::plan::SessionShape::new(c, max_batch).slots(n_slots).buffers(ctx_len);
        let z = |label: &str, shape: &[usize]| Tensor::zeros(ctx, label, shape);
        let cache_len: Vec<usize> = b.cache.iter().map(|s| s[2]).collect();
        let mut k_cache = Vec::with_capacity(c.n_layers);
        let mut v_cache = Vec::with_capacity(c.n_layers);
        // An f16 cache packs two values in each u32 word (head_dim is even: `ModelConfig::check`).
        for cache_shape in &b.cache {
            k_cache.push(z("k cache", cache_shape)?);
            v_cache.push(z("v cache", cache_shape)?);
        }
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token read-back"),
            size: 4 * b.readback as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let fork_scratch = (b.fork_scratch > 0).then(|| scratch_buffer(ctx, 4 * b.fork_scratch as u64));
        let adjust = (0..n_slots).map(|_| z("sampler adjust", &b.adjust)).collect::<Result<_>>()?;
        Ok(State {
            // A pass never holds more tokens than the context (the buffers are sized so).
            max_batch: b.x[0],
            ctx_len,
            n_slots,
            x: z("x", &b.x)?,
            xn: z("xn", &b.xn)?,
            x_last: z("x_last", &b.x_last)?,
            q: z("q", &b.q)?,
            k: z("k", &b.k)?,
            v: z("v", &b.v)?,
            att: z("att", &b.att)?,
            att_partials: z("attention partials", &b.att_partials)?,
            gate: z("gate", &b.gate)?,
            up: z("up", &b.up)?,
            logits: z("logits", &b.logits)?,
            work: z("sampler work", &b.work)?,
            adjust,
            tokens: z("tokens", &b.tokens)?,
            batch_ids: z("batch ids", &b.batch_ids)?,
            meta: z("token table", &b.meta)?,
            table: Vec::new(),
            fork_scratch,
            readback,
            k_cache,
            v_cache,
            cache_len,
            rope_dynamic: super::decoder::dynamic_rope_table(ctx, c, ctx_len)?,
        })
    }
}

impl State {
    /// Index of slot `slot`'s position `pos` in `tokens`.
    pub fn token_index(&self, slot: usize, pos: usize) -> usize {
        slot * self.ctx_len + pos
    }

    /// Checks a batch: slots in range, each at most once, positions in the context, at most
    /// `max_batch` tokens.
    pub fn check_batch(&self, segs: &[Segment]) -> Result<usize> {
        let n: usize = segs.iter().map(|s| s.n).sum();
        if segs.is_empty() || n == 0 || n > self.max_batch {
            return Err(Error::arg("batch", format!("{n} tokens in {} segments; a forward pass takes 1 to {}", segs.len(), self.max_batch)));
        }
        for (i, s) in segs.iter().enumerate() {
            if s.slot >= self.n_slots || segs[..i].iter().any(|o| o.slot == s.slot) || s.pos0 + s.n > self.ctx_len || s.n == 0 {
                return Err(Error::arg("batch", format!("segment {i} (slot {}, positions {}..{}): slots run 0..{} once each, positions 0..{}", s.slot, s.pos0, s.pos0 + s.n, self.n_slots, self.ctx_len)));
            }
        }
        Ok(n)
    }

    /// The token table of a batch of several segments, as `placed` reads it.
    fn table_of(segs: &[Segment]) -> Vec<u32> {
        segs.iter().flat_map(|s| (s.pos0..s.pos0 + s.n).flat_map(move |p| [s.slot as u32, p as u32])).collect()
    }

    /// Uploads the token table of `segs` (each token's slot and position), which every forward
    /// pass over these segments recorded before the next submit reads. A single segment needs
    /// none.
    pub fn set_table(&mut self, ctx: &Context, segs: &[Segment]) -> Result<()> {
        self.check_batch(segs)?;
        self.table = Self::table_of(segs);
        ctx.queue.write_buffer(&self.meta.buf, 0, bytemuck::cast_slice(&self.table));
        Ok(())
    }

    /// Where the tokens of `segs` (every position moved on by `step`: decode steps of one
    /// command buffer) are, for the ops. Several segments gather their ids into `batch_ids` and
    /// need the table `set_table` wrote for them.
    pub fn placed(&self, rec: &mut Recorder, segs: &[Segment], step: usize) -> Result<Placed<'_>> {
        let n = self.check_batch(segs)?;
        let end = segs.iter().map(|s| s.pos0 + s.n + step).max().unwrap_or(0);
        if end > self.ctx_len {
            return Err(Error::Context(format!("positions up to {end} do not fit the context of {} positions", self.ctx_len)));
        }
        if let [s] = segs {
            let ids = (&self.tokens, self.token_index(s.slot, s.pos0 + step));
            return Ok(Placed { n, ids, pos0: s.pos0 + step, slot: s.slot, at: Placement::Run, end, slot_ends: Vec::new() });
        }
        if self.table != Self::table_of(segs) {
            return Err(Error::arg("batch", "a forward pass over several segments needs their token table: call set_table first"));
        }
        let mut t = 0;
        for s in segs {
            let src = (self.token_index(s.slot, s.pos0 + step) * 4) as u64;
            rec.copy(&self.tokens.buf, src, &self.batch_ids.buf, (t * 4) as u64, (s.n * 4) as u64);
            t += s.n;
        }
        let table = TokenTable { meta: &self.meta, rows: &self.table, n_slots: self.n_slots };
        let slot_ends = segs.iter().map(|s| (s.slot, s.pos0 + s.n + step)).collect();
        Ok(Placed { n, ids: (&self.batch_ids, 0), pos0: step, slot: 0, at: Placement::Table(table), end, slot_ends })
    }

    /// The rows of the final residual stream (`x`, the batch's tokens of width `dim`) that get
    /// logits: all of them, or each segment's last one copied into `x_last`. Returns the tensor
    /// and its row count.
    pub fn logit_rows(&self, rec: &mut Recorder, rows: LogitRows, segs: &[Segment], dim: usize) -> (&Tensor, usize) {
        let n: usize = segs.iter().map(|s| s.n).sum();
        match rows {
            LogitRows::All => (&self.x, n),
            LogitRows::Last => {
                let row = (dim * 4) as u64;
                let mut end = 0;
                for (i, s) in segs.iter().enumerate() {
                    end += s.n;
                    rec.copy(&self.x.buf, (end - 1) as u64 * row, &self.x_last.buf, i as u64 * row, row);
                }
                (&self.x_last, segs.len())
            }
        }
    }

    /// Records a context shift of slot `slot`: the KV rows of positions `from .. from + count`
    /// move down to `to .. to + count` (to < from) in every layer, and each layer's keys turn
    /// back by `from - to` positions where `turn[layer]` gives its RoPE table and pair style
    /// (None: a layer without RoPE, whose keys only move). Every layer's cache must hold the
    /// whole context (no sliding-window ring). The moves go through a scratch buffer (a buffer
    /// cannot be copied into itself): `fork_scratch`, made here at the first shift of a
    /// one-slot state. The token ids of the moved positions are the caller's to rewrite.
    pub fn shift(&mut self, ctx: &crate::gpu::Context, rec: &mut Recorder, slot: usize, from: usize, to: usize, count: usize, turn: &[Option<(&Tensor, crate::ops::rope::RopeStyle)>], c: &super::ModelConfig) -> Result<()> {
        let f16 = c.kv_format == crate::ops::attention::KvFormat::F16;
        if slot >= self.n_slots || to >= from || from + count > self.ctx_len || turn.len() != self.k_cache.len() || self.cache_len.iter().any(|&l| l != self.ctx_len) {
            return Err(Error::arg("shift", format!("positions {from}..{} of slot {slot} down to {to}: a slot of 0..{}, to before from, within the context of {} without sliding-window rings", from + count, self.n_slots, self.ctx_len)));
        }
        let block = |cache: &Tensor| (cache.numel() / self.n_slots * 4) as u64;
        let need = self.k_cache.iter().map(block).max().unwrap_or(0);
        if self.fork_scratch.as_ref().is_none_or(|b| b.size() < need) {
            self.fork_scratch = Some(scratch_buffer(ctx, need.max(4)));
        }
        let Some(scratch) = &self.fork_scratch else { return Ok(()) };
        let heads = c.n_kv_heads as u64;
        for (layer, (k, v)) in self.k_cache.iter().zip(&self.v_cache).enumerate() {
            for cache in [k, v] {
                let row = block(cache) / heads / self.ctx_len as u64;
                let bytes = count as u64 * row;
                let head = |h: u64| (slot as u64 * heads + h) * self.ctx_len as u64 * row;
                for h in 0..heads {
                    rec.copy(&cache.buf, head(h) + from as u64 * row, scratch, h * bytes, bytes);
                }
                for h in 0..heads {
                    rec.copy(scratch, h * bytes, &cache.buf, head(h) + to as u64 * row, bytes);
                }
            }
            if let Some((table, style)) = turn[layer] {
                let rows = crate::ops::rope::CacheRows { slot, n_slots: self.n_slots, n_kv_heads: c.n_kv_heads, cache_len: self.ctx_len, head_dim: c.head_dim, row0: to, n_rows: count, f16 };
                crate::ops::rope::rope_shift(rec, k, table, rows, from - to, style, layer)?;
            }
        }
        Ok(())
    }

    /// Records copies of slot `src`'s first `len` positions (every layer's K and V rows, a
    /// ring's rows too, and the token ids) into slot `dst`: a fork, on the GPU. A buffer cannot
    /// be copied into itself, so each block goes through `fork_scratch`. Rows past `len` come
    /// along too; they are rewritten before any query of `dst` reads them.
    pub fn fork(&self, rec: &mut Recorder, src: usize, dst: usize, len: usize) -> Result<()> {
        let scratch = match &self.fork_scratch {
            Some(b) if src < self.n_slots && dst < self.n_slots && src != dst && len <= self.ctx_len => b,
            _ => return Err(Error::arg("fork", format!("slot {src} into slot {dst} ({len} positions): two different slots of 0..{}, at most {} positions", self.n_slots, self.ctx_len))),
        };
        let mut through = |buf: &wgpu::Buffer, block: u64, bytes: u64| {
            rec.copy(buf, src as u64 * block, scratch, 0, bytes);
            rec.copy(scratch, 0, buf, dst as u64 * block, bytes);
        };
        for cache in self.k_cache.iter().chain(&self.v_cache) {
            let block = (cache.numel() / self.n_slots * 4) as u64;
            through(&cache.buf, block, block);
        }
        if len > 0 {
            through(&self.tokens.buf, (self.ctx_len * 4) as u64, (len * 4) as u64);
        }
        Ok(())
    }
}

/// The scratch buffer that forks and context shifts copy a slot's blocks through (a buffer
/// cannot be copied into itself).
fn scratch_buffer(ctx: &Context, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("fork scratch"), size, usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
}
