//! Causal scaled dot-product attention over a GPU-resident KV cache, with grouped-query heads,
//! and the variants newer models ask for (`AttnOpts`): a sliding window over a ring-buffer
//! cache (Mistral, Gemma 2/3), logit soft-capping (Gemma 2) and an explicit scale (Gemma's
//! query_pre_attn_scalar).

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
    window: u32,
    softcap: f32,
    per_token: u32,
    q_tile: u32,
    head_chunk: u32,
    k_tile: u32,
}

/// What an attention call does beyond causal softmax(q·kᵀ/√d)·v.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttnOpts {
    /// Multiplies q·k before the softmax; None: 1/√head_dim.
    pub scale: Option<f32>,
    /// A query at position p sees only keys in (p - window, p]; None: all of 0..=p.
    /// The layer's cache may then be a ring of `ring_len(window, tokens per call)` positions.
    pub window: Option<usize>,
    /// Scores become cap·tanh(score/cap) before the softmax (Gemma 2: 50).
    pub softcap: Option<f32>,
}

/// How the KV cache stores its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvFormat {
    #[default]
    F32,
    /// Two f16 values per u32 word: half the memory, about 3 decimal digits per value (the
    /// accuracy cost is measured in `f16_cache_matches_rounded_reference_and_costs_little`).
    F16,
}

/// Environment variable choosing the KV cache format where `--kv-cache` is not given.
pub const KV_CACHE_ENV: &str = "QUILL_KV_CACHE";

impl KvFormat {
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
        }
    }
    /// `--kv-cache` / `QUILL_KV_CACHE`: "f32" or "f16"; `what` names the source in the error.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvFormat::F32),
            "f16" => Ok(KvFormat::F16),
            _ => Err(Error::arg(what, format!("'{s}' is not one of f32, f16"))),
        }
    }
    /// u32 words (the cache tensor's elements) of a cache of `values` values.
    pub fn words(self, values: usize) -> usize {
        match self {
            KvFormat::F32 => values,
            KvFormat::F16 => values.div_ceil(2),
        }
    }
    fn constants(self) -> &'static [(&'static str, f64)] {
        match self {
            KvFormat::F32 => &[],
            KvFormat::F16 => &[("KV_F16", 1.0)],
        }
    }
}

/// Positions a sliding-window layer's ring cache needs so that calls of up to `max_tokens`
/// tokens never overwrite a key one of their queries still sees. Its memory does not grow
/// with the context.
pub fn ring_len(window: usize, max_tokens: usize) -> usize {
    window + max_tokens.max(1) - 1
}

/// Keys per workgroup below which a decode step's attention is not split.
const MIN_SPLIT_KEYS: usize = 256;
/// Most key ranges one (token, head) is split into.
pub const MAX_SPLITS: usize = 32;

/// Loop iterations one shader invocation may run on a CPU-type adapter. llvmpipe (lavapipe)
/// counts every iteration of every loop of an invocation against one limit of 65535 (gallivm's
/// `LP_MAX_TGSI_LOOP_ITERATIONS`), and past it every loop simply stops: a workgroup given too
/// many keys attended to only the first few thousand of them, silently (Gemma 3's head_dim 256
/// met it after ~3700 keys). On such adapters a call is cut into key ranges (`Tiling::key_cap`)
/// so that no invocation comes within 10% of the limit.
pub const CPU_LOOP_BUDGET: usize = 58_000;

/// The loop budget of an adapter (`CPU_LOOP_BUDGET` on CPU-type ones; none on GPUs).
pub fn loop_budget(device_type: wgpu::DeviceType) -> Option<usize> {
    matches!(device_type, wgpu::DeviceType::Cpu).then_some(CPU_LOOP_BUDGET)
}

/// Floats of the partial results of a call of `tokens` tokens cut into `ranges` key ranges:
/// (tokens, n_heads, ranges, head_dim + 2), each row a range's running max, sum and output.
fn partials_floats(tokens: usize, n_heads: usize, ranges: usize, head_dim: usize) -> usize {
    tokens * n_heads * ranges * (head_dim + 2)
}

/// Floats of the partial results split attention needs for calls of up to `max_tokens` tokens
/// over up to `keys` keys: (tokens, n_heads, ranges, head_dim + 2). A decode step takes up to
/// `MAX_SPLITS` ranges; on an adapter with a loop budget a longer call takes as many as the
/// budget asks for, counted here for every kernel shape (and `QUILL_ATTN_SHAPE`'s).
pub fn partials_len(n_heads: usize, n_kv_heads: usize, head_dim: usize, max_tokens: usize, keys: usize) -> usize {
    let decode = partials_floats(1, n_heads, MAX_SPLITS, head_dim);
    let env = std::env::var(ATTN_SHAPE_ENV).ok().and_then(|t| KernelShape::parse(&t).ok());
    let shapes = KernelShape::ALL.iter().map(|(_, k)| *k).chain(env);
    let mut most = decode;
    for ks in shapes {
        for t in 1..=max_tokens.max(1) {
            let s = AttnShape { n_tokens: t, n_heads, n_kv_heads, head_dim, ctx_len: keys, pos0: 0, slot: 0 };
            for mixed in [false, true] {
                let tiling = Tiling::with_q_tile(&s, ks, mixed);
                let span = keys.max(1) + tiling.q_tile - 1;
                let (splits, _) = tiling.key_ranges(t, head_dim, keys.max(1), span, ks.threads as usize, Some(CPU_LOOP_BUDGET));
                if splits > 1 {
                    most = most.max(partials_floats(t, n_heads, splits, head_dim));
                }
            }
        }
    }
    most
}

/// The attention kernel's shape on one adapter class: threads per workgroup (the shader's `WG`
/// override), the most query tokens one workgroup takes in prefill, the most keys per staged
/// tile. Workgroup memory may cut the tiles down further (`Tiling`). With `rows`, a call of
/// at most `ROWS_MAX_TOKENS` tokens over few enough keys (`rows_loops`) takes `attention_rows`
/// instead (one invocation per token and head, no workgroup memory: CPU-type adapters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelShape {
    pub threads: u32,
    pub q_tile: usize,
    pub k_tile: usize,
    pub rows: bool,
}

/// Most tokens of a call `attention_rows` takes (a decode step of up to 8 sequences).
pub const ROWS_MAX_TOKENS: usize = 8;
/// Loop iterations an `attention_rows` invocation runs over `keys` keys of `head_dim` (two
/// loops over head_dim / 4 a key, and one each before and after): it takes calls that stay
/// within `CPU_LOOP_BUDGET` (SmolLM2's head_dim 64: 1756 keys; Gemma 3's 256: 448). Longer
/// contexts take the flash kernel, whose split-K also spreads them over more workgroups.
fn rows_loops(keys: usize, head_dim: usize) -> usize {
    let hd4 = head_dim.div_ceil(4);
    keys * (2 * hd4 + 1) + 2 * hd4
}

impl KernelShape {
    /// CPU-type adapters (lavapipe, SwiftShader): few, fat workgroups (a workgroup is a thread's
    /// loop there), long tiles so that barriers are rare; fastest measured on lavapipe.
    /// Decode takes `attention_rows` (SmolLM2 on lavapipe: see README, "Benchmarks").
    pub const CPU: KernelShape = KernelShape { threads: 64, q_tile: 16, k_tile: 64, rows: true };
    /// Integrated GPUs: small workgroups, so that a few compute units still get several each.
    pub const INTEGRATED: KernelShape = KernelShape { threads: 64, q_tile: 4, k_tile: 32, rows: false };
    /// Discrete GPUs: wider workgroups, shorter key tiles (more workgroups resident per unit).
    pub const DISCRETE: KernelShape = KernelShape { threads: 128, q_tile: 8, k_tile: 32, rows: false };
    /// Every shape an adapter class selects (the tests force each on).
    pub const ALL: [(&'static str, KernelShape); 3] = [("cpu", Self::CPU), ("integrated", Self::INTEGRATED), ("discrete", Self::DISCRETE)];

    /// `QUILL_ATTN_SHAPE` (for tuning): a class name (cpu, integrated, discrete) or
    /// "threads,q_tile,k_tile" with 64..=256 threads.
    pub fn parse(text: &str) -> Result<KernelShape> {
        let bad = |why: &str| Error::arg(ATTN_SHAPE_ENV, format!("'{text}' {why} (a class: cpu, integrated, discrete; or threads,q_tile,k_tile)"));
        let text_lc = text.trim().to_ascii_lowercase();
        if let Some((_, shape)) = Self::ALL.iter().find(|(name, _)| *name == text_lc) {
            return Ok(*shape);
        }
        let parts: Vec<usize> = text_lc.split(',').map(|p| p.trim().parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|_| bad("is not a shape"))?;
        match parts[..] {
            [threads @ 64..=256, q_tile @ 1..=64, k_tile @ 1..=512] => Ok(KernelShape { threads: threads as u32, q_tile, k_tile, rows: false }),
            _ => Err(bad("is out of range: threads 64..=256, q_tile 1..=64, k_tile 1..=512")),
        }
    }

    /// The shape for this adapter, or the one `QUILL_ATTN_SHAPE` names.
    pub fn chosen(device_type: wgpu::DeviceType) -> Result<KernelShape> {
        match std::env::var(ATTN_SHAPE_ENV) {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(Self::for_adapter(device_type)),
        }
    }

    pub fn for_adapter(device_type: wgpu::DeviceType) -> KernelShape {
        match device_type {
            wgpu::DeviceType::DiscreteGpu => Self::DISCRETE,
            wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu => Self::INTEGRATED,
            wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => Self::CPU,
        }
    }
}

/// Environment variable overriding the attention kernel's shape (`KernelShape::parse`).
pub const ATTN_SHAPE_ENV: &str = "QUILL_ATTN_SHAPE";

// Workgroup memory of the kernel, as shaders/attention.wgsl declares it.
const MAX_ROWS: usize = 16; // query rows (heads × tokens)
const Q_VEC4: usize = 256; // rows · ceil(head_dim / 4)
const KV_VEC4: usize = 512; // k_tile · ceil(head_dim / 4)
const P_LEN: usize = 512; // rows · k_tile

/// How one call is cut into workgroups: `q_tile` tokens × `head_chunk` query heads of one KV
/// head per workgroup, keys in tiles of `k_tile`, all within the kernel's workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiling {
    q_tile: usize,
    head_chunk: usize,
    k_tile: usize,
}

impl Tiling {
    fn new(s: &AttnShape, ks: KernelShape, at: &Placement) -> Tiling {
        let t = Self::with_q_tile(s, ks, false);
        // A workgroup reads one slot's keys: a table whose tiles would mix slots gets one token each.
        match at {
            Placement::Table(tt) if (0..s.n_tokens).any(|i| tt.token(i).0 != tt.token(i - i % t.q_tile).0) => Self::with_q_tile(s, ks, true),
            _ => t,
        }
    }
    /// The tiling, with one token per workgroup when `one_token`.
    fn with_q_tile(s: &AttnShape, ks: KernelShape, one_token: bool) -> Tiling {
        let hd4 = s.head_dim.div_ceil(4).max(1);
        let max_rows = (Q_VEC4 / hd4).min(MAX_ROWS);
        let head_chunk = (s.n_heads / s.n_kv_heads.max(1)).clamp(1, max_rows);
        let q_tile = if one_token { 1 } else { ks.q_tile.min(max_rows / head_chunk).min(s.n_tokens).max(1) };
        let k_tile = ks.k_tile.min(KV_VEC4 / hd4).min(P_LEN / (q_tile * head_chunk)).max(1);
        Tiling { q_tile, head_chunk, k_tile }
    }
    /// Loop iterations a thread of the attention kernel runs: (outside the key loop, per key
    /// tile), counted from shaders/attention.wgsl's loops as upper bounds (a loop of a CPU
    /// adapter's SIMD group runs while any of its lanes does).
    fn loop_iterations(&self, head_dim: usize, threads: usize) -> (usize, usize) {
        let (d4, rows, tk) = (head_dim.div_ceil(4).max(1), self.q_tile * self.head_chunk, self.k_tile);
        let per = |n: usize| n.div_ceil(threads);
        // Bounds of the tokens; q staged (4 values each); the outputs (4 chunks of 4).
        let fixed = self.q_tile + 5 * per(rows * d4) + 4 * 5 + 8;
        // The tile loop; K and V staged (an f32 row not a multiple of 4 reads up to 3 words
        // one by one); scores (a dot over d4 each); each row's max; probabilities; the outputs.
        let tile = 1 + 2 * 4 * per(tk * d4) + per(rows * tk) * (1 + d4) + (tk + 1) + per(rows * tk) + 4 * (tk + 1);
        (fixed, tile)
    }
    /// Most keys one workgroup may take within `budget` loop iterations (a multiple of 64).
    fn key_cap(&self, head_dim: usize, threads: usize, budget: usize) -> usize {
        let (fixed, tile) = self.loop_iterations(head_dim, threads);
        let tiles = budget.saturating_sub(fixed) / tile;
        (tiles * self.k_tile / 64 * 64).max(64)
    }
    /// (ranges, keys per range) for a call of `n_tokens` whose last query sees `keys` keys and
    /// whose workgroups each span up to `span` of them: a decode step over a long context is
    /// split so that enough workgroups run; under a loop budget no range holds more keys than
    /// `key_cap` allows.
    fn key_ranges(&self, n_tokens: usize, head_dim: usize, keys: usize, span: usize, threads: usize, budget: Option<usize>) -> (usize, usize) {
        let mut splits = if n_tokens == 1 { keys.div_ceil(MIN_SPLIT_KEYS).clamp(1, MAX_SPLITS) } else { 1 };
        if let Some(budget) = budget {
            splits = splits.max(span.div_ceil(self.key_cap(head_dim, threads, budget)));
        }
        (splits, span.div_ceil(splits).next_multiple_of(64))
    }
    fn workgroups(&self, s: &AttnShape, splits: usize) -> usize {
        let chunks = (s.n_heads / s.n_kv_heads).div_ceil(self.head_chunk);
        s.n_tokens.div_ceil(self.q_tile) * s.n_kv_heads * chunks * splits
    }
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

/// Each token's slot and position, for a call whose tokens come from several sequences.
#[derive(Clone, Copy)]
pub struct TokenTable<'a> {
    /// (n_tokens, 2) u32 on the GPU: slot, position - pos0.
    pub meta: &'a Tensor,
    /// The same pairs on the CPU (for the host's checks and the cost counts).
    pub rows: &'a [u32],
    /// Slots the cache holds.
    pub n_slots: usize,
}

/// Where a call's tokens sit in the cache.
#[derive(Clone, Copy)]
pub enum Placement<'a> {
    /// Token t at position pos0 + t of `AttnShape::slot`.
    Run,
    /// Token t where the table says (AttnShape's pos0 added to each position).
    Table(TokenTable<'a>),
}

/// What the host checks of a placement: one past the last position, the most tokens of one
/// slot, the slots addressed.
struct Extent {
    end: usize,
    per_slot: usize,
    slots: usize,
}

impl TokenTable<'_> {
    /// Token t's (slot, position - pos0).
    pub fn token(&self, t: usize) -> (usize, usize) {
        (self.rows[2 * t] as usize, self.rows[2 * t + 1] as usize)
    }
    /// One past the largest position - pos0.
    pub fn end(&self) -> usize {
        self.rows.chunks_exact(2).map(|r| r[1] as usize + 1).max().unwrap_or(0)
    }
    fn check(&self, n_tokens: usize) -> Result<()> {
        if self.rows.len() != 2 * n_tokens || self.meta.numel() < 2 * n_tokens {
            return Err(Error::Shape { op: "attention", msg: format!("a token table of {} pairs ({} on the GPU) for {n_tokens} tokens", self.rows.len() / 2, self.meta.numel() / 2) });
        }
        match (0..n_tokens).map(|t| self.token(t).0).find(|&slot| slot >= self.n_slots) {
            Some(slot) => Err(Error::Shape { op: "attention", msg: format!("token table names slot {slot} of {}", self.n_slots) }),
            None => Ok(()),
        }
    }
}

impl Placement<'_> {
    /// The GPU table to bind (a spare buffer that is never read for a run).
    fn meta<'b>(&'b self, ctx: &'b crate::gpu::Context) -> &'b wgpu::Buffer {
        match self {
            Placement::Run => &ctx.spare[0],
            Placement::Table(t) => &t.meta.buf,
        }
    }
    /// (slot, position - pos0) of every token.
    fn tokens(&self, s: &AttnShape) -> Vec<(usize, usize)> {
        match self {
            Placement::Run => (0..s.n_tokens).map(|t| (s.slot, t)).collect(),
            Placement::Table(t) => (0..s.n_tokens).map(|i| t.token(i)).collect(),
        }
    }
    fn extent(&self, s: &AttnShape) -> Extent {
        match self {
            Placement::Run => Extent { end: s.pos0 + s.n_tokens, per_slot: s.n_tokens, slots: s.slot + 1 },
            Placement::Table(t) => {
                let mut per_slot = vec![0usize; t.n_slots];
                let mut end = 0;
                for i in 0..s.n_tokens {
                    let (slot, pos) = t.token(i);
                    per_slot[slot.min(t.n_slots.saturating_sub(1))] += 1;
                    end = end.max(s.pos0 + pos + 1);
                }
                Extent { end, per_slot: per_slot.into_iter().max().unwrap_or(0), slots: t.n_slots }
            }
        }
    }
}

impl AttnShape {
    fn params(&self, o: &AttnOpts) -> Params {
        Params {
            n_tokens: self.n_tokens as u32,
            n_heads: self.n_heads as u32,
            n_kv_heads: self.n_kv_heads as u32,
            head_dim: self.head_dim as u32,
            ctx_len: self.ctx_len as u32,
            pos0: self.pos0 as u32,
            slot: self.slot as u32,
            scale: o.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt()),
            n_splits: 1,
            split_len: (self.pos0 + self.n_tokens).next_multiple_of(64) as u32,
            window: o.window.unwrap_or(0) as u32,
            softcap: o.softcap.unwrap_or(0.0),
            per_token: 0,
            q_tile: 1,
            head_chunk: 1,
            k_tile: 1,
        }
    }
    /// `params` for tokens placed by `at`.
    fn params_at(&self, o: &AttnOpts, at: &Placement) -> Params {
        let end = at.extent(self).end;
        Params { per_token: matches!(at, Placement::Table(_)) as u32, split_len: end.next_multiple_of(64) as u32, ..self.params(o) }
    }
    /// Keys the query at `pos` sees.
    fn visible(&self, o: &AttnOpts, pos: usize) -> usize {
        o.window.map_or(pos + 1, |w| w.min(pos + 1))
    }
    fn check(&self, k_cache: &Tensor, o: &AttnOpts, format: KvFormat, at: &Placement) -> Result<()> {
        if let Placement::Table(t) = at {
            t.check(self.n_tokens)?;
        }
        let Extent { end, per_slot, slots } = at.extent(self);
        if format == KvFormat::F16 && self.head_dim % 2 != 0 {
            return Err(Error::Shape { op: "attention", msg: format!("an f16 KV cache needs an even head_dim, got {}", self.head_dim) });
        }
        if self.head_dim > MAX_HEAD_DIM || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Shape {
                op: "attention",
                msg: format!("head_dim {} (max {MAX_HEAD_DIM}), heads {} / kv heads {} must divide", self.head_dim, self.n_heads, self.n_kv_heads),
            });
        }
        match o.window {
            Some(0) => return Err(Error::Shape { op: "attention", msg: "a sliding window of 0 positions".into() }),
            // A cache shorter than the positions is a ring: it must hold the window and the call's tokens.
            Some(w) if end > self.ctx_len && self.ctx_len < ring_len(w, per_slot) => {
                return Err(Error::Context(format!("a ring cache of {} positions cannot hold a window of {w} and {per_slot} new tokens (needs {})", self.ctx_len, ring_len(w, per_slot))));
            }
            None if end > self.ctx_len => {
                return Err(Error::Context(format!("positions up to {end} do not fit the cache of {}", self.ctx_len)));
            }
            _ => {}
        }
        if o.softcap.is_some_and(|c| !(c > 0.0 && c.is_finite())) || o.scale.is_some_and(|c| !c.is_finite()) {
            return Err(Error::Shape { op: "attention", msg: format!("soft-cap {:?} must be positive and scale {:?} finite", o.softcap, o.scale) });
        }
        k_cache.holds("attention", "kv cache", format.words(slots * self.n_kv_heads * self.ctx_len * self.head_dim))
    }
}

/// FLOPs and bytes of kv_write: reads K and V rows, writes them into the cache.
pub fn kv_write_cost(s: &AttnShape) -> (u64, u64) {
    (0, 16 * (s.n_tokens * s.n_kv_heads * s.head_dim) as u64)
}

/// FLOPs and bytes of attention: per visited key and head, a dot product and a weighted add
/// over head_dim (4 FLOPs per element); reads q, writes out, reads K and V of every visited
/// key once per query head. That is the logical traffic: the flash kernel reads each K/V row
/// once per KV head and query tile, so GB/s figures from this count overstate its DRAM traffic.
pub fn attention_cost(s: &AttnShape) -> (u64, u64) {
    attention_cost_with(s, &AttnOpts::default())
}

/// `attention_cost` with a window counted.
pub fn attention_cost_with(s: &AttnShape, o: &AttnOpts) -> (u64, u64) {
    attention_cost_at(s, o, &Placement::Run.tokens(s), KvFormat::F32)
}

/// `attention_cost_with` of tokens given as (slot, position - pos0), reading an f32 or f16 cache.
/// FLOPs count every token's every head against each key it sees; bytes count what must come
/// from memory at least: q and out once, and each slot's K and V rows once for the span of
/// positions its tokens see (shared by the query heads of a KV head and by the slot's tokens).
fn attention_cost_at(s: &AttnShape, o: &AttnOpts, tokens: &[(usize, usize)], format: KvFormat) -> (u64, u64) {
    let keys: u64 = tokens.iter().map(|&(_, t)| s.visible(o, s.pos0 + t) as u64).sum();
    let hd = (s.n_heads * s.head_dim) as u64;
    let n = (s.n_tokens * s.n_heads * s.head_dim) as u64;
    // Per slot: the lowest first key and the highest last key any of its tokens sees.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for &(slot, t) in tokens {
        let pos = s.pos0 + t;
        let first = pos + 1 - s.visible(o, pos);
        match spans.iter_mut().find(|x| x.0 == slot) {
            Some(x) => (x.1, x.2) = (x.1.min(first), x.2.max(pos)),
            None => spans.push((slot, first, pos)),
        }
    }
    let rows: u64 = spans.iter().map(|&(_, lo, hi)| (hi - lo + 1) as u64).sum();
    let kv_row = (format.words(s.n_kv_heads * s.head_dim) * 4) as u64;
    (4 * keys * hd, 4 * 2 * n + 2 * rows * kv_row)
}

/// Writes this call's K and V rows (n_tokens, n_kv_heads, head_dim) into the layer's cache.
pub fn kv_write(rec: &mut Recorder, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, s: AttnShape, layer: usize) -> Result<()> {
    kv_write_with(rec, k, v, k_cache, v_cache, s, &AttnOpts::default(), layer)
}

/// `kv_write` into a cache that may be a ring (with a window in `o`): position p goes to row
/// p % ctx_len.
#[allow(clippy::too_many_arguments)]
pub fn kv_write_with(rec: &mut Recorder, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, s: AttnShape, o: &AttnOpts, layer: usize) -> Result<()> {
    kv_write_as(rec, k, v, k_cache, v_cache, s, o, KvFormat::F32, layer)
}

/// `kv_write_with` into a cache stored as `format` (caches of `format.words(values)` elements).
#[allow(clippy::too_many_arguments)]
pub fn kv_write_as(rec: &mut Recorder, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, layer: usize) -> Result<()> {
    kv_write_at(rec, k, v, k_cache, v_cache, s, o, format, &Placement::Run, layer)
}

/// `kv_write_as` of tokens placed by `at` (each token's row goes to its own slot and position).
#[allow(clippy::too_many_arguments)]
pub fn kv_write_at(rec: &mut Recorder, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, at: &Placement, layer: usize) -> Result<()> {
    s.check(k_cache, o, format, at)?;
    let n = s.n_tokens * s.n_kv_heads * s.head_dim;
    k.holds("kv_write", "k", n)?;
    v.holds("kv_write", "v", n)?;
    let pipe = rec.ctx.pipeline(&SHADER, "kv_write", format.constants())?;
    let (flops, bytes) = kv_write_cost(&s);
    let info = OpInfo::new("kv_write", flops, bytes).layer(layer);
    let threads = if format == KvFormat::F16 { n / 2 } else { n };
    let buffers = [&k.buf, &v.buf, &k_cache.buf, &v_cache.buf, at.meta(rec.ctx)];
    rec.dispatch(info, &pipe, &buffers, &s.params_at(o, at), grid(rec.ctx, threads.div_ceil(256) as u32));
    Ok(())
}

/// For a store that writes this call's K and V rows itself (`matmul::RopeKv`, a Q/K/V
/// projection with RoPE and the cache write folded in): `kv_write_at`'s checks, then each
/// token's first cache element (its slot and cache row, KV head 0) and its position.
pub fn cache_places(k_cache: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, at: &Placement) -> Result<Vec<(u32, u32)>> {
    s.check(k_cache, o, format, at)?;
    let place = |(slot, t): (usize, usize)| {
        let pos = s.pos0 + t;
        ((((slot * s.n_kv_heads) * s.ctx_len + pos % s.ctx_len) * s.head_dim) as u32, pos as u32)
    };
    Ok(at.tokens(&s).into_iter().map(place).collect())
}

/// out (n_tokens, n_heads, head_dim) = softmax(q·Kᵀ/√d, causal) · V over cache positions
/// 0 ..= pos0 + t for token t. A decode step over a long context splits the keys into ranges
/// (more workgroups at work) whose partial results, kept in `partials`
/// (`partials_len` floats), a second pass combines.
#[allow(clippy::too_many_arguments)]
pub fn attention(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, layer: usize) -> Result<()> {
    attention_with(rec, q, k_cache, v_cache, out, partials, s, &AttnOpts::default(), layer)
}

/// `attention` with a sliding window, soft-capping or an explicit scale (`AttnOpts`).
#[allow(clippy::too_many_arguments)]
pub fn attention_with(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, o: &AttnOpts, layer: usize) -> Result<()> {
    attention_as(rec, q, k_cache, v_cache, out, partials, s, o, KvFormat::F32, layer)
}

/// `attention_with` over a cache stored as `format`.
#[allow(clippy::too_many_arguments)]
pub fn attention_as(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, layer: usize) -> Result<()> {
    attention_at(rec, q, k_cache, v_cache, out, partials, s, o, format, &Placement::Run, layer)
}

/// `attention_as` of tokens placed by `at`: each query reads only its own slot's keys.
#[allow(clippy::too_many_arguments)]
pub fn attention_at(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, at: &Placement, layer: usize) -> Result<()> {
    let shape = KernelShape::chosen(rec.ctx.info.device_type)?;
    attention_shaped(rec, q, k_cache, v_cache, out, partials, s, o, format, at, shape, layer)
}

/// `attention_at` with the kernel shape given (the tests run every adapter class's shape).
#[allow(clippy::too_many_arguments)]
pub fn attention_shaped(rec: &mut Recorder, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, partials: &Tensor, s: AttnShape, o: &AttnOpts, format: KvFormat, at: &Placement, shape: KernelShape, layer: usize) -> Result<()> {
    s.check(k_cache, o, format, at)?;
    let n = s.n_tokens * s.n_heads * s.head_dim;
    q.holds("attention", "q", n)?;
    out.holds("attention", "out", n)?;
    let keys = s.visible(o, at.extent(&s).end.max(1) - 1);
    let words_per_vec4 = if format == KvFormat::F16 { 8 } else { 4 };
    if shape.rows && s.n_tokens <= ROWS_MAX_TOKENS && rows_loops(keys, s.head_dim) <= CPU_LOOP_BUDGET && s.head_dim % words_per_vec4 == 0 {
        let constants: Vec<(&str, f64)> = format.constants().iter().copied().chain([("AR_HD4", (s.head_dim / 4) as f64)]).collect();
        let pipe = rec.ctx.pipeline(&SHADER, "attention_rows", &constants)?;
        let (flops, bytes) = attention_cost_at(&s, o, &at.tokens(&s), format);
        let info = OpInfo::new("attention", flops, bytes).layer(layer);
        let buffers = [&q.buf, &k_cache.buf, &v_cache.buf, &out.buf, &partials.buf, at.meta(rec.ctx)];
        let p = Params { n_splits: 1, ..s.params_at(o, at) };
        rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (s.n_tokens * s.n_heads).div_ceil(8) as u32));
        return Ok(());
    }
    let tiling = Tiling::new(&s, shape, at);
    // A workgroup's tokens see keys from the first one's first to the last one's position.
    let span = keys + tiling.q_tile - 1;
    let (splits, split_len) = tiling.key_ranges(s.n_tokens, s.head_dim, keys, span, shape.threads as usize, loop_budget(rec.ctx.info.device_type));
    let mut p = s.params_at(o, at);
    if splits > 1 {
        partials.holds("attention", "partials", partials_floats(s.n_tokens, s.n_heads, splits, s.head_dim))?;
        p.n_splits = splits as u32;
        p.split_len = split_len as u32;
    }
    (p.q_tile, p.head_chunk, p.k_tile) = (tiling.q_tile as u32, tiling.head_chunk as u32, tiling.k_tile as u32);
    let constants: Vec<(&str, f64)> = format.constants().iter().copied().chain([("WG", shape.threads as f64)]).collect();
    let pipe = rec.ctx.pipeline(&SHADER, "attention", &constants)?;
    let (flops, bytes) = attention_cost_at(&s, o, &at.tokens(&s), format);
    let info = OpInfo::new("attention", flops, bytes).layer(layer);
    let buffers = [&q.buf, &k_cache.buf, &v_cache.buf, &out.buf, &partials.buf, at.meta(rec.ctx)];
    rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, tiling.workgroups(&s, splits) as u32));
    if splits > 1 {
        let pipe = rec.ctx.pipeline(&SHADER, "attention_combine", format.constants())?;
        let bytes = 4 * (s.n_heads * splits * (s.head_dim + 2) + n) as u64;
        let info = OpInfo::new("attention_combine", 3 * (s.n_heads * splits * s.head_dim) as u64, bytes).layer(layer);
        rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (s.n_tokens * s.n_heads) as u32));
    }
    Ok(())
}

/// CPU reference: q (t, h, d); k, v: all positions 0..pos0+t of one slot, (kv_h, positions, d).
pub fn reference(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, positions: usize) -> Vec<f32> {
    reference_with(q, k, v, s, positions, &AttnOpts::default())
}

/// CPU reference of `attention_with`; k, v hold every position by its own index (no ring).
pub fn reference_with(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, positions: usize, o: &AttnOpts) -> Vec<f32> {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = o.scale.map_or(1.0 / (d as f64).sqrt(), |c| c as f64);
    let mut out = vec![0f32; s.n_tokens * s.n_heads * d];
    for t in 0..s.n_tokens {
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qv = &q[(t * s.n_heads + h) * d..][..d];
            let len = s.pos0 + t + 1;
            let first = len - s.visible(o, len - 1);
            let scores: Vec<f64> = (first..len)
                .map(|j| {
                    let kr = &k[(kvh * positions + j) * d..][..d];
                    let score = qv.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale;
                    o.softcap.map_or(score, |c| c as f64 * (score / c as f64).tanh())
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for dd in 0..d {
                let acc: f64 = (first..len).map(|j| e[j - first] * v[(kvh * positions + j) * d + dd] as f64).sum();
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
        let partials = Tensor::zeros(ctx, "partials", &[partials_len(n_heads, n_kv_heads, head_dim, n_tokens, total)]).unwrap();
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
        for (name, shape) in KernelShape::ALL {
            let mut rec = Recorder::new(ctx, "test");
            attention_shaped(&mut rec, &qt, &kc, &vc, &out, &partials, s, &AttnOpts::default(), KvFormat::F32, &Placement::Run, shape, 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, n_tokens * n_heads * head_dim).await.unwrap();
            // Outputs are convex combinations of values in [-1, 1]; f32 softmax and sums over
            // up to a few thousand keys stay within 2e-5.
            compare(&got, &want, 2e-5, 1e-4).unwrap_or_else(|e| panic!("{name} shape, heads {n_heads}/{n_kv_heads} d {head_dim} pre {pre} t {n_tokens}: {e}"));
        }
    }

    /// Feeds the positions in calls of `chunks` tokens into a cache of `cache_len` positions (a
    /// ring when shorter than the sequence), attending after each write as generation does,
    /// and compares every call's output with the reference over the whole sequence (with K
    /// and V rounded to f16 for an f16 cache). Returns the largest difference from the f32
    /// reference: what the cache's format costs.
    async fn run_chunks_as(ctx: &Context, n_heads: usize, n_kv_heads: usize, head_dim: usize, chunks: &[usize], cache_len: usize, o: AttnOpts, format: KvFormat) -> f32 {
        let total: usize = chunks.iter().sum();
        let row = n_kv_heads * head_dim;
        let k_all = test_values(total * row, 51);
        let v_all = test_values(total * row, 52);
        let q_all: Vec<f32> = test_values(total * n_heads * head_dim, 53).iter().map(|x| x * 3.0).collect();
        let words = format.words(n_kv_heads * cache_len * head_dim);
        let kc = Tensor::zeros(ctx, "k cache", &[words]).unwrap();
        let vc = Tensor::zeros(ctx, "v cache", &[words]).unwrap();
        let partials = Tensor::zeros(ctx, "partials", &[partials_len(n_heads, n_kv_heads, head_dim, chunks.iter().copied().max().unwrap_or(1), total)]).unwrap();
        let heads_first = |x: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; x.len()];
            for p in 0..total {
                for h in 0..n_kv_heads {
                    out[(h * total + p) * head_dim..][..head_dim].copy_from_slice(&x[(p * n_kv_heads + h) * head_dim..][..head_dim]);
                }
            }
            out
        };
        let (k_ref, v_ref) = (heads_first(&k_all), heads_first(&v_all));
        let as_stored = |x: &[f32]| -> Vec<f32> {
            use crate::weights::dtype::{f16_to_f32, f32_to_f16};
            x.iter().map(|&v| if format == KvFormat::F16 { f16_to_f32(f32_to_f16(v)) } else { v }).collect()
        };
        let (k_stored, v_stored) = (as_stored(&k_ref), as_stored(&v_ref));
        let qrow = n_heads * head_dim;
        let mut pos0 = 0;
        let mut cost = 0f32;
        for &count in chunks {
            let s = AttnShape { n_tokens: count, n_heads, n_kv_heads, head_dim, ctx_len: cache_len, pos0, slot: 0 };
            let kt = Tensor::upload_f32(ctx, "k", &[count, row], &k_all[pos0 * row..(pos0 + count) * row]).unwrap();
            let vt = Tensor::upload_f32(ctx, "v", &[count, row], &v_all[pos0 * row..(pos0 + count) * row]).unwrap();
            let q = &q_all[pos0 * qrow..(pos0 + count) * qrow];
            let qt = Tensor::upload_f32(ctx, "q", &[count, qrow], q).unwrap();
            let out = Tensor::zeros(ctx, "out", &[count, qrow]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            kv_write_as(&mut rec, &kt, &vt, &kc, &vc, s, &o, format, 0).unwrap();
            rec.submit().unwrap();
            let want = reference_with(q, &k_stored, &v_stored, s, total, &o);
            let exact = reference_with(q, &k_ref, &v_ref, s, total, &o);
            for (name, shape) in KernelShape::ALL {
                let mut rec = Recorder::new(ctx, "test");
                attention_shaped(&mut rec, &qt, &kc, &vc, &out, &partials, s, &o, format, &Placement::Run, shape, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&out.buf, 0, count * qrow).await.unwrap();
                // As `run`: convex combinations of values in [-1, 1], f32 softmax over <= 1000 keys.
                compare(&got, &want, 2e-5, 1e-4).unwrap_or_else(|e| panic!("{name} shape, heads {n_heads}/{n_kv_heads} d {head_dim} call at {pos0} of {count} cache {cache_len} {o:?} {format:?}: {e}"));
                cost = got.iter().zip(&exact).fold(cost, |m, (g, w)| m.max((g - w).abs()));
            }
            pos0 += count;
        }
        cost
    }

    async fn run_chunks(ctx: &Context, n_heads: usize, n_kv_heads: usize, head_dim: usize, chunks: &[usize], cache_len: usize, o: AttnOpts) {
        run_chunks_as(ctx, n_heads, n_kv_heads, head_dim, chunks, cache_len, o, KvFormat::F32).await;
    }

    gpu_test!(fn f16_cache_matches_rounded_reference_and_costs_little(ctx) {
        // Prefill and decode (split key ranges), a ring, head_dim 256 and 64, soft-capping.
        let window = AttnOpts { window: Some(300), ..Default::default() };
        let capped = AttnOpts { softcap: Some(50.0), scale: Some(0.5), ..Default::default() };
        let mut cost = 0f32;
        cost = cost.max(run_chunks_as(ctx, 4, 2, 16, &[34, 1, 1], 40, AttnOpts::default(), KvFormat::F16).await);
        cost = cost.max(run_chunks_as(ctx, 2, 1, 256, &[100, 100, 100, 100, 1, 1], ring_len(300, 100), window, KvFormat::F16).await);
        cost = cost.max(run_chunks_as(ctx, 3, 3, 64, &[9, 700, 1], 710, AttnOpts::default(), KvFormat::F16).await);
        cost = cost.max(run_chunks_as(ctx, 2, 2, 8, &[1, 600, 1], 602, capped, KvFormat::F16).await);
        // Odd heads and a head_dim of 34 (17 words, not a multiple of 4), in a ring of window 9.
        let odd = AttnOpts { window: Some(9), ..Default::default() };
        cost = cost.max(run_chunks_as(ctx, 5, 1, 34, &[13, 7, 1, 1], ring_len(9, 13), odd, KvFormat::F16).await);
        // f16 keeps 11 bits: K and V in [-1, 1] move by up to 2^-12, scores (|q| <= 3) by up to
        // d · 3 · 2^-12 · scale; measured on these shapes, the outputs move by at most `cost`.
        eprintln!("f16 KV cache: largest attention output error {cost:.2e} (values in [-1, 1])");
        assert!(cost > 0.0 && cost < 2e-3, "f16 cache costs {cost} (measured 3.9e-4)");
        let mut rec = Recorder::new(ctx, "test");
        let s = AttnShape { n_tokens: 1, n_heads: 1, n_kv_heads: 1, head_dim: 7, ctx_len: 4, pos0: 0, slot: 0 };
        let t = Tensor::zeros(ctx, "t", &[28]).unwrap();
        let err = kv_write_as(&mut rec, &t, &t, &t, &t, s, &AttnOpts::default(), KvFormat::F16, 0).unwrap_err().to_string();
        assert!(err.contains("even head_dim"), "{err}");
    });

    /// Tokens of several slots in one call (a token table): slot i has run `before[i]`
    /// positions and brings `new[i]` more. One kv_write_at and one attention_at over all of
    /// them; each token's output must equal the reference over its own slot's keys alone.
    async fn run_table(ctx: &Context, n_heads: usize, n_kv_heads: usize, head_dim: usize, before: &[usize], new: &[usize], cache_len: usize, o: AttnOpts) {
        let n_slots = before.len();
        let (row, qrow) = (n_kv_heads * head_dim, n_heads * head_dim);
        let words = n_slots * n_kv_heads * cache_len * head_dim;
        let kc = Tensor::zeros(ctx, "k cache", &[words]).unwrap();
        let vc = Tensor::zeros(ctx, "v cache", &[words]).unwrap();
        let partials = Tensor::zeros(ctx, "partials", &[partials_len(n_heads, n_kv_heads, head_dim, new.iter().sum::<usize>().max(1), cache_len.max(before.iter().zip(new).map(|(b, n)| b + n).max().unwrap_or(0)))]).unwrap();
        let total: Vec<usize> = before.iter().zip(new).map(|(b, n)| b + n).collect();
        // Slot i's keys and values at every position, token-major (position, kv_head, d).
        let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..n_slots).map(|i| (test_values(total[i] * row, 50 + i as u64), test_values(total[i] * row, 70 + i as u64))).collect();
        // Each slot's history, written as runs in calls no longer than the batch's (a ring
        // holds a window plus one call's tokens).
        let chunk = new.iter().copied().max().unwrap_or(1).max(1);
        for slot in 0..n_slots {
            for pos0 in (0..before[slot]).step_by(chunk) {
                let count = chunk.min(before[slot] - pos0);
                let s = AttnShape { n_tokens: count, n_heads, n_kv_heads, head_dim, ctx_len: cache_len, pos0, slot };
                let kt = Tensor::upload_f32(ctx, "k", &[count, row], &kv[slot].0[pos0 * row..(pos0 + count) * row]).unwrap();
                let vt = Tensor::upload_f32(ctx, "v", &[count, row], &kv[slot].1[pos0 * row..(pos0 + count) * row]).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                kv_write_with(&mut rec, &kt, &vt, &kc, &vc, s, &o, 0).unwrap();
                rec.submit().unwrap();
            }
        }
        // The batch: slot by slot, its new tokens in order.
        let (mut rows, mut k_new, mut v_new) = (Vec::new(), Vec::new(), Vec::new());
        for slot in 0..n_slots {
            for p in before[slot]..total[slot] {
                rows.extend([slot as u32, p as u32]);
                k_new.extend_from_slice(&kv[slot].0[p * row..(p + 1) * row]);
                v_new.extend_from_slice(&kv[slot].1[p * row..(p + 1) * row]);
            }
        }
        let n = rows.len() / 2;
        let q = test_values(n * qrow, 90).iter().map(|x| x * 3.0).collect::<Vec<f32>>();
        let meta = Tensor::zeros(ctx, "token table", &[2 * n]).unwrap();
        ctx.queue.write_buffer(&meta.buf, 0, bytemuck::cast_slice(&rows));
        let at = Placement::Table(TokenTable { meta: &meta, rows: &rows, n_slots });
        let s = AttnShape { n_tokens: n, n_heads, n_kv_heads, head_dim, ctx_len: cache_len, pos0: 0, slot: 0 };
        let (kt, vt) = (Tensor::upload_f32(ctx, "k", &[n, row], &k_new).unwrap(), Tensor::upload_f32(ctx, "v", &[n, row], &v_new).unwrap());
        let qt = Tensor::upload_f32(ctx, "q", &[n, qrow], &q).unwrap();
        let out = Tensor::zeros(ctx, "out", &[n, qrow]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        kv_write_at(&mut rec, &kt, &vt, &kc, &vc, s, &o, KvFormat::F32, &at, 0).unwrap();
        rec.submit().unwrap();
        for (name, shape) in KernelShape::ALL {
            let mut rec = Recorder::new(ctx, "test");
            attention_shaped(&mut rec, &qt, &kc, &vc, &out, &partials, s, &o, KvFormat::F32, &at, shape, 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&out.buf, 0, n * qrow).await.unwrap();
            check_table(&got, &q, &rows, &kv, &total, s, &o, name);
        }
    }

    /// Each token of a `run_table` call against the reference over its own slot's keys.
    #[allow(clippy::too_many_arguments)]
    fn check_table(got: &[f32], q: &[f32], rows: &[u32], kv: &[(Vec<f32>, Vec<f32>)], total: &[usize], s: AttnShape, o: &AttnOpts, name: &str) {
        let (n_kv_heads, head_dim) = (s.n_kv_heads, s.head_dim);
        let qrow = s.n_heads * head_dim;
        for t in 0..s.n_tokens {
            let (slot, pos) = (rows[2 * t] as usize, rows[2 * t + 1] as usize);
            let heads_first = |x: &[f32]| -> Vec<f32> {
                let mut h = vec![0f32; x.len()];
                for p in 0..total[slot] {
                    for kh in 0..n_kv_heads {
                        h[(kh * total[slot] + p) * head_dim..][..head_dim].copy_from_slice(&x[(p * n_kv_heads + kh) * head_dim..][..head_dim]);
                    }
                }
                h
            };
            let one = AttnShape { n_tokens: 1, pos0: pos, slot, ..s };
            let want = reference_with(&q[t * qrow..(t + 1) * qrow], &heads_first(&kv[slot].0), &heads_first(&kv[slot].1), one, total[slot], o);
            // As `run`: convex combinations of values in [-1, 1], f32 softmax over few keys.
            compare(&got[t * qrow..(t + 1) * qrow], &want, 2e-5, 1e-4).unwrap_or_else(|e| panic!("{name} shape, token {t} (slot {slot}, position {pos}) {o:?}: {e}"));
        }
    }

    gpu_test!(fn a_token_table_mixes_slots_at_their_own_positions(ctx) {
        // Decode tokens of two slots at different positions, a prefill chunk of a third, a slot
        // starting from nothing; odd head sizes, grouped heads.
        run_table(ctx, 4, 2, 20, &[5, 17, 9, 0], &[1, 1, 6, 3], 24, AttnOpts::default()).await;
        // A batched decode step (one token a slot, at most ROWS_MAX_TOKENS: CPU-type adapters
        // take attention_rows), SmolLM2's heads, a slot starting from nothing.
        run_table(ctx, 9, 3, 64, &[5, 17, 0, 40], &[1, 1, 1, 1], 48, AttnOpts::default()).await;
        // A sliding window over per-slot rings that have wrapped: ring of 4 + 6 - 1 rows.
        let o = AttnOpts { window: Some(4), ..Default::default() };
        run_table(ctx, 3, 1, 14, &[13, 2, 30], &[1, 6, 2], ring_len(4, 6), o).await;
        // A slot out of range is an error naming it.
        let meta = Tensor::zeros(ctx, "token table", &[2]).unwrap();
        let rows = [3u32, 0];
        let at = Placement::Table(TokenTable { meta: &meta, rows: &rows, n_slots: 2 });
        let s = AttnShape { n_tokens: 1, n_heads: 1, n_kv_heads: 1, head_dim: 4, ctx_len: 4, pos0: 0, slot: 0 };
        let t = Tensor::zeros(ctx, "t", &[64]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let err = kv_write_at(&mut rec, &t, &t, &t, &t, s, &AttnOpts::default(), KvFormat::F32, &at, 0).unwrap_err().to_string();
        assert!(err.contains("slot 3 of 2"), "{err}");
    });

    gpu_test!(fn flash_tiles_on_odd_shapes_match_reference(ctx) {
        // Every adapter class's shape (the helpers run each): a group of 5 heads on one KV head
        // and 7 heads on 7, head_dim 34 (not a multiple of 4), 64 and 256 (a group of 5 is then
        // cut into head chunks of 4 and 1), prompts that fill no tile evenly, then decode steps.
        run(ctx, 5, 1, 34, 0, 37, 0).await;
        run(ctx, 5, 1, 34, 37, 1, 0).await;
        run(ctx, 7, 7, 64, 0, 45, 0).await;
        run(ctx, 7, 7, 64, 45, 1, 0).await;
        run(ctx, 5, 1, 256, 0, 11, 0).await;
        run(ctx, 5, 1, 256, 290, 1, 0).await; // split key ranges, head chunks
        run(ctx, 20, 1, 8, 0, 9, 0).await; // a group larger than one workgroup's rows
        // A wrapping ring with soft-capping, f16 and f32.
        let o = AttnOpts { window: Some(11), softcap: Some(5.0), scale: None };
        for format in [KvFormat::F32, KvFormat::F16] {
            run_chunks_as(ctx, 5, 1, 34, &[13, 13, 1, 1], ring_len(11, 13), o, format).await;
            run_chunks_as(ctx, 7, 7, 64, &[19, 19, 1], ring_len(11, 19), o, format).await;
        }
        // Prefill chunks of two slots whose query tiles do not mix slots, with a third decoding.
        run_table(ctx, 2, 1, 34, &[3, 10, 7], &[8, 8, 1], 32, AttnOpts::default()).await;
        run_table(ctx, 5, 1, 64, &[0, 21], &[16, 16], 40, AttnOpts::default()).await;
    });

    #[test]
    fn tiles_fit_the_kernels_workgroup_memory() {
        for (hd, heads, kv, tokens) in [(34, 5, 1, 37), (256, 5, 1, 11), (64, 9, 3, 64), (8, 20, 1, 9), (2, 1, 1, 1), (256, 32, 1, 1)] {
            let s = AttnShape { n_tokens: tokens, n_heads: heads, n_kv_heads: kv, head_dim: hd, ctx_len: 64, pos0: 0, slot: 0 };
            for (name, shape) in KernelShape::ALL {
                let t = Tiling::new(&s, shape, &Placement::Run);
                let (hd4, rows) = (hd.div_ceil(4), t.q_tile * t.head_chunk);
                assert!(rows <= MAX_ROWS && rows * hd4 <= Q_VEC4 && t.k_tile * hd4 <= KV_VEC4 && rows * t.k_tile <= P_LEN, "{name} {t:?} d {hd}");
                // The accumulators: 4 vec4 per thread.
                assert!(rows * hd4 <= 4 * shape.threads as usize, "{name} {t:?} d {hd}");
                assert!(t.workgroups(&s, 1) >= kv * tokens.div_ceil(t.q_tile), "{name} {t:?}");
            }
        }
        assert_eq!(KernelShape::for_adapter(wgpu::DeviceType::Cpu), KernelShape::CPU);
        assert_eq!(KernelShape::for_adapter(wgpu::DeviceType::DiscreteGpu), KernelShape::DISCRETE);
        assert_eq!(KernelShape::parse(" Integrated").unwrap(), KernelShape::INTEGRATED);
        assert_eq!(KernelShape::parse("128,2,16").unwrap(), KernelShape { threads: 128, q_tile: 2, k_tile: 16, rows: false });
        for bad in ["32,4,4", "64,0,8", "64,4", "big", "64,4,8,1"] {
            let err = KernelShape::parse(bad).unwrap_err().to_string();
            assert!(err.contains(ATTN_SHAPE_ENV) && err.contains(bad), "{err}");
        }
    }

    gpu_test!(fn sliding_window_over_a_ring_cache_matches_reference(ctx) {
        let o = AttnOpts { window: Some(7), ..Default::default() };
        // Prefill in calls of 5 into a ring of 7 + 5 - 1 positions, then decode steps.
        run_chunks(ctx, 4, 2, 16, &[5, 5, 5, 1, 1, 1], ring_len(7, 5), o).await;
        // The same window in a full cache (no wrap): a prefill longer than the window.
        run_chunks(ctx, 3, 1, 14, &[34, 1], 40, o).await;
        // Split key ranges over a window of 300 in a ring, head_dim 256 (Gemma 3 270M).
        let o = AttnOpts { window: Some(300), ..Default::default() };
        run_chunks(ctx, 2, 1, 256, &[100, 100, 100, 100, 1, 1], ring_len(300, 100), o).await;
        run_chunks(ctx, 3, 3, 64, &[9, 700, 1], ring_len(300, 700), o).await;
    });

    gpu_test!(fn long_contexts_match_reference(ctx) {
        // Gemma 3 270M's shapes far from position 0 (4 heads on one KV head of 256): a prefill
        // chunk of 16 queries after 5000 cached keys, as a 6000-token prompt's last chunks run
        // in a global layer, and a decode step there.
        run(ctx, 4, 1, 256, 5000, 16, 0).await;
        run(ctx, 4, 1, 256, 5015, 1, 0).await;
        // Its sliding layers: window 512 in a ring of 512 + 128 - 1, prefilled in chunks of 128
        // until the ring has wrapped twice, then decode steps.
        let o = AttnOpts { window: Some(512), ..Default::default() };
        let mut chunks = vec![128; 10];
        chunks.extend([1, 1]);
        run_chunks(ctx, 4, 1, 256, &chunks, ring_len(512, 128), o).await;
    });

    gpu_test!(fn every_key_of_a_long_context_is_seen(ctx) {
        // Zero queries attend uniformly: with V = (j, j²/10⁴, 1) at position j, the outputs are
        // the mean position seen, its second moment and the weights' sum, which say exactly
        // which keys were read. lavapipe stopped every loop of a workgroup after 65535
        // iterations, and these calls saw only keys 0..~3700 (head_dim 256) before the key
        // ranges were cut to the loop budget (CPU_LOOP_BUDGET).
        for (pre, d) in [(5000usize, 256usize), (9000, 128), (17000, 64)] {
            let t = 2usize;
            let ctx_len = pre + t;
            let kc = Tensor::zeros(ctx, "k cache", &[ctx_len * d]).unwrap();
            let mut v = vec![0f32; ctx_len * d];
            for j in 0..ctx_len {
                (v[j * d], v[j * d + 1], v[j * d + 2]) = (j as f32, (j * j) as f32 / 1e4, 1.0);
            }
            let vc = Tensor::upload_f32(ctx, "v cache", &[ctx_len * d], &v).unwrap();
            let s = AttnShape { n_tokens: t, n_heads: 1, n_kv_heads: 1, head_dim: d, ctx_len, pos0: pre, slot: 0 };
            let qt = Tensor::zeros(ctx, "q", &[t, d]).unwrap();
            let out = Tensor::zeros(ctx, "out", &[t, d]).unwrap();
            let partials = Tensor::zeros(ctx, "partials", &[partials_len(1, 1, d, t, ctx_len)]).unwrap();
            for (name, shape) in KernelShape::ALL {
                let mut rec = Recorder::new(ctx, "test");
                attention_shaped(&mut rec, &qt, &kc, &vc, &out, &partials, s, &AttnOpts::default(), KvFormat::F32, &Placement::Run, shape, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&out.buf, 0, t * d).await.unwrap();
                for (i, row) in got.chunks(d).enumerate() {
                    // Keys 0 ..= pos: mean pos / 2, second moment pos (2 pos + 1) / 6.
                    let pos = (pre + i) as f64;
                    let (mean, second) = (pos / 2.0, pos * (2.0 * pos + 1.0) / 6.0 / 1e4);
                    let ok = (row[0] as f64 - mean).abs() <= 1e-4 * mean && (row[1] as f64 - second).abs() <= 1e-4 * second && (row[2] - 1.0).abs() <= 1e-5;
                    assert!(ok, "{name} shape, head_dim {d}, query at {pos}: mean position {} (want {mean}), second moment {} (want {second:.1}), weights sum {}", row[0], row[1], row[2]);
                }
            }
        }
        // The ranges a budget asks for stay within it, and the partials counted for a session hold them.
        for (hd, heads, kv) in [(256, 4, 1), (64, 9, 3), (128, 32, 8), (34, 5, 1)] {
            for (_, ks) in KernelShape::ALL {
                for t in [1, 2, 16, 128] {
                    let s = AttnShape { n_tokens: t, n_heads: heads, n_kv_heads: kv, head_dim: hd, ctx_len: 40_000, pos0: 0, slot: 0 };
                    let tiling = Tiling::with_q_tile(&s, ks, false);
                    let (splits, len) = tiling.key_ranges(t, hd, 40_000, 40_000 + tiling.q_tile - 1, ks.threads as usize, Some(CPU_LOOP_BUDGET));
                    let (fixed, tile) = tiling.loop_iterations(hd, ks.threads as usize);
                    assert!(fixed + len.div_ceil(tiling.k_tile) * tile <= CPU_LOOP_BUDGET && splits * len >= 40_000, "{ks:?} d {hd} t {t}: {splits} ranges of {len}");
                    assert!(partials_len(heads, kv, hd, t, 40_000) >= partials_floats(t, heads, splits, hd));
                }
            }
        }
    });

    gpu_test!(fn soft_capping_and_explicit_scale_match_reference(ctx) {
        // Gemma 2's cap of 50 with scores near it (q scaled by 3, scale 1 / √(0.5 · 16)), and a
        // cap small enough to flatten every score.
        for o in [AttnOpts { softcap: Some(50.0), scale: Some(0.5), ..Default::default() }, AttnOpts { softcap: Some(0.7), scale: Some(1.0 / 8f32.sqrt()), window: Some(20) }] {
            run_chunks(ctx, 4, 2, 16, &[34, 1], 40, o).await;
            run_chunks(ctx, 2, 1, 256, &[3, 1], 4, o).await;
            run_chunks(ctx, 2, 2, 8, &[1, 600, 1], 602, o).await; // split key ranges
        }
    });

    gpu_test!(fn attention_refuses_a_ring_too_short_for_the_call(ctx) {
        let o = AttnOpts { window: Some(8), ..Default::default() };
        let s = AttnShape { n_tokens: 4, n_heads: 1, n_kv_heads: 1, head_dim: 4, ctx_len: 10, pos0: 8, slot: 0 };
        let kc = Tensor::zeros(ctx, "k cache", &[40]).unwrap();
        let k = Tensor::zeros(ctx, "k", &[4, 4]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let err = kv_write_with(&mut rec, &k, &k, &kc, &kc, s, &o, 0).unwrap_err().to_string();
        assert!(err.contains("ring cache of 10") && err.contains("needs 11"), "{err}");
    });

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
