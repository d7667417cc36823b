//! Plans a session's GPU memory before allocating it: the KV cache (per layer: the whole context,
//! or a ring of its window for sliding-window layers) and the activations, against a memory
//! budget and the adapter's per-buffer limits. wgpu cannot tell how much memory an adapter has,
//! so the budget is `QUILL_GPU_MEMORY` when set, else a conservative default per adapter type
//! (`default_budget`). A context that does not fit is an error naming the bytes it needs and
//! the largest one that fits; with no context asked for, the model's own is used, or the
//! largest that fits when that is smaller.

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::{LoadedModel, ModelConfig};
use crate::ops::attention::{partials_len, ring_len, KvFormat};
use crate::weights::{DType, TensorSource};

/// Environment variable overriding the memory budget: bytes, or a number with K, M or G
/// (powers of 1024), e.g. `QUILL_GPU_MEMORY=12G`.
pub const BUDGET_ENV: &str = "QUILL_GPU_MEMORY";

const GIB: u64 = 1 << 30;

/// The budget when `QUILL_GPU_MEMORY` is unset. CPU adapters (lavapipe) and integrated GPUs
/// share the host's memory with everything else: 4 GiB. Discrete GPUs: 8 GiB. Anything else
/// (virtual adapters, browsers, which report no type): 2 GiB.
pub fn default_budget(device_type: wgpu::DeviceType) -> u64 {
    match device_type {
        wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu => 4 * GIB,
        wgpu::DeviceType::DiscreteGpu => 8 * GIB,
        _ => 2 * GIB,
    }
}

/// GPU memory a session may use in all (weights included), and where that figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

impl Budget {
    /// `QUILL_GPU_MEMORY` when set (a malformed value is an error naming it), else the default
    /// for the adapter's type.
    pub fn for_adapter(device_type: wgpu::DeviceType, env: Option<&str>) -> Result<Budget> {
        match env {
            Some(v) => Ok(Budget { bytes: parse_bytes(v).ok_or_else(|| Error::arg(BUDGET_ENV, format!("'{v}' is not a byte count such as 6000000000, 512M or 12G")))?, source: BUDGET_ENV.to_string() }),
            None => Ok(Budget { bytes: default_budget(device_type), source: format!("the default for a {device_type:?} adapter; set {BUDGET_ENV} to change it") }),
        }
    }

    /// The budget of this context's adapter.
    pub fn of(ctx: &Context) -> Result<Budget> {
        Budget::for_adapter(ctx.info.device_type, std::env::var(BUDGET_ENV).ok().as_deref())
    }
}

/// "123", "512M", "12G", "1.5G" (K/M/G are powers of 1024) as bytes.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let mult = match unit {
        'B' => 1u64,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => GIB,
        _ => return None,
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0 && v * (mult as f64) < u64::MAX as f64).then(|| (v * mult as f64) as u64)
}

/// What a session's memory depends on, taken from the model's config.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionShape {
    /// Per layer: Some(window) for a sliding-window layer (its cache is a ring), None for a
    /// layer that sees the whole context.
    pub windows: Vec<Option<usize>>,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// The model's own context.
    pub max_ctx: usize,
    /// Most tokens one forward pass takes.
    pub max_batch: usize,
    /// Widths of the per-token activation buffers and the vocabulary.
    pub dim: usize,
    pub n_heads: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    /// How the KV cache stores values: f16 takes half the bytes of f32.
    pub kv_format: KvFormat,
    /// Sequences (slots) sharing the state, each with its own KV cache rows and token ids
    /// (`generate::Batch`; `quill serve --parallel`).
    pub n_slots: usize,
}

/// The shape of every buffer of a `models::state::State` (in 4-byte words): the one list
/// `State::with_slots` allocates from and the plan counts, so the two cannot drift apart.
#[derive(Clone, Debug, PartialEq)]
pub struct StateBuffers {
    pub x: [usize; 2],
    pub xn: [usize; 2],
    pub x_last: [usize; 2],
    pub q: [usize; 2],
    pub k: [usize; 2],
    pub v: [usize; 2],
    pub att: [usize; 2],
    pub att_partials: [usize; 1],
    pub gate: [usize; 2],
    pub up: [usize; 2],
    pub logits: [usize; 2],
    pub work: [usize; 1],
    /// One per slot.
    pub adjust: [usize; 1],
    pub tokens: [usize; 2],
    pub batch_ids: [usize; 1],
    pub meta: [usize; 2],
    /// Per layer, the K cache's and the V cache's (n_slots, n_kv_heads, positions, words per row).
    pub cache: Vec<[usize; 4]>,
    /// Words of the scratch buffer a fork copies one slot's rows through (0 with one slot).
    pub fork_scratch: usize,
    /// Words of the token read-back buffer: `MAX_DECODE_STEPS` ids per slot (`Batch::decode_steps`).
    pub readback: usize,
}

fn words(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

impl StateBuffers {
    /// Words of every buffer but the KV caches, adjustment lists counted once per slot.
    fn activation_words(&self, n_slots: usize) -> u64 {
        let two = [self.x, self.xn, self.x_last, self.q, self.k, self.v, self.att, self.gate, self.up, self.logits, self.tokens, self.meta];
        let one = [self.att_partials, self.work, self.batch_ids];
        two.iter().map(|s| words(s)).sum::<u64>() + one.iter().map(|s| words(s)).sum::<u64>() + n_slots as u64 * words(&self.adjust) + (self.fork_scratch + self.readback) as u64
    }

    /// Words of the largest single buffer.
    fn largest_words(&self) -> u64 {
        let two = [self.x, self.q, self.gate, self.logits, self.tokens];
        let cache = self.cache.iter().map(|c| words(c)).max().unwrap_or(0);
        two.iter().map(|s| words(s)).max().unwrap_or(0).max(cache).max(self.fork_scratch as u64)
    }
}

impl SessionShape {
    /// The shape of a session of `c` prefilling up to `max_batch` tokens per pass, with each
    /// layer's window from the model's block description.
    pub fn new(c: &ModelConfig, max_batch: usize) -> Self {
        SessionShape {
            windows: (0..c.n_layers).map(|i| c.attention(i).window).collect(),
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            max_ctx: c.max_ctx,
            max_batch,
            dim: c.dim,
            n_heads: c.n_heads,
            ffn_dim: c.ffn_dim,
            vocab: c.vocab,
            kv_format: c.kv_format,
            n_slots: 1,
        }
    }

    /// The same shape shared by `n` slots.
    pub fn slots(self, n: usize) -> Self {
        SessionShape { n_slots: n, ..self }
    }

    /// Every buffer of the state for a context of `ctx_len` (see `StateBuffers`).
    pub fn buffers(&self, ctx_len: usize) -> StateBuffers {
        let (b, s) = (self.max_batch.min(ctx_len), self.n_slots);
        let (q, kv) = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim);
        let words_per_row = self.kv_format.words(self.head_dim);
        let cache: Vec<[usize; 4]> = self.layer_positions(ctx_len).into_iter().map(|p| [s, self.n_kv_heads, p, words_per_row]).collect();
        let slot_cache = cache.iter().map(|c| c[1] * c[2] * c[3]).max().unwrap_or(0);
        StateBuffers {
            x: [b, self.dim],
            xn: [b, self.dim],
            x_last: [s, self.dim],
            q: [b, q],
            k: [b, kv],
            v: [b, kv],
            att: [b, q],
            att_partials: [partials_len(self.n_heads, self.n_kv_heads, self.head_dim, b, ctx_len)],
            gate: [b, self.ffn_dim],
            up: [b, self.ffn_dim],
            logits: [b, self.vocab],
            work: [crate::ops::sample::work_len(self.vocab)],
            adjust: [crate::ops::sample::ADJUST_LEN],
            tokens: [s, ctx_len],
            batch_ids: [b],
            meta: [b, 2],
            cache,
            fork_scratch: if s > 1 { slot_cache.max(ctx_len) } else { 0 },
            readback: crate::generate::MAX_DECODE_STEPS * s.max(1),
        }
    }

    /// Positions layer `l`'s cache holds for a context of `ctx_len`: all of them, or for a
    /// sliding-window layer a ring of its window plus one pass's tokens (`ring_len`).
    pub fn layer_positions(&self, ctx_len: usize) -> Vec<usize> {
        let batch = self.max_batch.min(ctx_len);
        self.windows.iter().map(|w| w.map_or(ctx_len, |w| ring_len(w, batch).min(ctx_len))).collect()
    }

    /// Bytes of the KV caches of every layer, every slot.
    pub fn kv_bytes(&self, ctx_len: usize) -> u64 {
        self.buffers(ctx_len).cache.iter().map(|c| 2 * 4 * words(c)).sum()
    }

    /// The state's other buffers (`buffers`), plus room for a few more per-token buffers
    /// architectures add (per token: two of the residual width, two of the attention's).
    pub fn activation_bytes(&self, ctx_len: usize) -> u64 {
        let b = self.max_batch.min(ctx_len) as u64;
        let extra = b * (2 * self.dim + 2 * self.n_heads * self.head_dim + 2 * self.n_kv_heads * self.head_dim) as u64;
        4 * (self.buffers(ctx_len).activation_words(self.n_slots) + extra)
    }

    /// Bytes of the session's largest single buffer (each must fit one binding).
    fn largest_buffer(&self, ctx_len: usize) -> u64 {
        4 * self.buffers(ctx_len).largest_words()
    }
}

/// A context length that fits, with its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ctx_len: usize,
    /// Positions each layer's cache holds.
    pub layer_positions: Vec<usize>,
    pub kv_bytes: u64,
    pub activation_bytes: u64,
}

/// The context to allocate: `requested` if it fits, else an error naming its bytes and the
/// largest that fits; None takes the model's context or the largest that fits, the smaller.
/// `available`: bytes of the budget not yet used (the weights are loaded); `binding_limit`: the
/// most bytes one buffer may hold.
pub fn plan(shape: &SessionShape, requested: Option<usize>, available: u64, binding_limit: u64, budget: &Budget) -> Result<Plan> {
    let fits = |n: usize| shape.kv_bytes(n) + shape.activation_bytes(n) <= available && shape.largest_buffer(n) <= binding_limit;
    // Memory grows with the context, so the contexts that fit are 1..=largest.
    let (mut lo, mut hi) = (0usize, shape.max_ctx);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let largest = lo;
    let ctx_len = match requested {
        Some(0) => return Err(Error::arg("--ctx", "must be at least 1")),
        Some(n) if n > shape.max_ctx => return Err(Error::arg("--ctx", format!("{n} is more than the model's context of {}", shape.max_ctx))),
        Some(n) if !fits(n) => return Err(Error::arg("--ctx", too_big(shape, n, largest, available, binding_limit, budget))),
        Some(n) => n,
        None if largest == 0 => return Err(Error::arg("--ctx", too_big(shape, 1, 0, available, binding_limit, budget))),
        None => largest,
    };
    Ok(Plan { ctx_len, layer_positions: shape.layer_positions(ctx_len), kv_bytes: shape.kv_bytes(ctx_len), activation_bytes: shape.activation_bytes(ctx_len) })
}

fn too_big(shape: &SessionShape, n: usize, largest: usize, available: u64, binding_limit: u64, budget: &Budget) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let (kv, act) = (shape.kv_bytes(n), shape.activation_bytes(n));
    let fit = match (largest, shape.n_slots) {
        (0, 1) => "no context fits".to_string(),
        (0, s) => format!("no context fits {s} slots (--parallel)"),
        (l, 1) => format!("the largest --ctx that fits is {l}"),
        (l, s) => format!("the largest --ctx that fits {s} slots (--parallel) is {l}"),
    };
    let n_desc = if shape.n_slots > 1 { format!("{n} positions in each of {} slots", shape.n_slots) } else { format!("{n} positions") };
    let buffer = shape.largest_buffer(n);
    if buffer > binding_limit {
        return format!("{n_desc} need a buffer of {buffer} bytes ({:.1} MB), above the adapter's limit of {binding_limit} bytes per buffer; {fit}", mb(buffer));
    }
    format!(
        "{n_desc} need {} bytes ({:.1} MB: KV cache {:.1} MB + activations {:.1} MB) but {available} bytes ({:.1} MB) of the GPU memory budget of {:.1} MB ({}) are left after the weights; {fit}",
        kv + act,
        mb(kv + act),
        mb(kv),
        mb(act),
        mb(available),
        mb(budget.bytes),
        budget.source
    )
}

/// Plans one session of `model` on `ctx`'s adapter, prefilling up to `max_batch` tokens per
/// pass; the model's weights count against the budget (other sessions alive at the same time
/// do not: the budget is per session).
pub fn plan_session(ctx: &Context, model: &LoadedModel, requested: Option<usize>, max_batch: usize) -> Result<Plan> {
    plan_slots(ctx, model, requested, max_batch, 1)
}

/// `plan_session` for `n_slots` sequences sharing one state (`generate::Batch`): every
/// slot's KV cache and token ids count, so `quill serve --parallel S --ctx N` that does not
/// fit is refused before anything is allocated, with the bytes.
pub fn plan_slots(ctx: &Context, model: &LoadedModel, requested: Option<usize>, max_batch: usize, n_slots: usize) -> Result<Plan> {
    let budget = Budget::of(ctx)?;
    let available = budget.bytes.saturating_sub(model.model.weight_bytes());
    plan(&SessionShape::new(model.config(), max_batch).slots(n_slots), requested, available, ctx.binding_limit(), &budget)
}

/// Plans a session before any weight is read, from the header: `weight_bytes` (what the
/// weights will take on the GPU) against `budget`, then the context as `plan` does. A model
/// whose weights alone exceed the budget is refused with both figures.
pub fn plan_before_load(cfg: &ModelConfig, weight_bytes: u64, requested: Option<usize>, binding_limit: u64, budget: &Budget) -> Result<Plan> {
    if weight_bytes >= budget.bytes {
        let mb = |b: u64| b as f64 / 1e6;
        return Err(Error::arg("model", format!("its weights need {weight_bytes} bytes ({:.1} MB) on the GPU but the GPU memory budget is {:.1} MB ({})", mb(weight_bytes), mb(budget.bytes), budget.source)));
    }
    let shape = SessionShape::new(cfg, crate::generate::DEFAULT_MAX_BATCH);
    plan(&shape, requested, budget.bytes - weight_bytes, binding_limit, budget)
}

/// What the page checks before a model's first weight is uploaded, for GGUF files and Hugging
/// Face folders alike: `plan_before_load` for a context of `requested`, refused in words as
/// "<name> does not fit this GPU with a context of N: <why>; a context of M positions fits
/// (weights, largest binding, largest buffer)". `binding_limit` is what one buffer may hold;
/// `max_buffer` is the adapter's buffer limit, shown beside it.
pub fn fit_before_load(name: &str, cfg: &ModelConfig, weight_bytes: u64, requested: usize, binding_limit: u64, max_buffer: u64, budget: &Budget) -> Result<Plan> {
    plan_before_load(cfg, weight_bytes, Some(requested), binding_limit, budget).map_err(|e| {
        // The plan words a refused context for the command line ("invalid argument --ctx: …");
        // here the sentence already says which context, so only the reason follows.
        let e = match e {
            Error::Arg { msg, .. } => msg,
            e => e.to_string(),
        };
        let mb = |b: u64| b as f64 / 1e6;
        let largest = plan_before_load(cfg, weight_bytes, None, binding_limit, budget).map(|p| format!("; a context of {} positions fits", p.ctx_len)).unwrap_or_default();
        Error::format(
            name,
            format!(
                "does not fit this GPU with a context of {requested}: {e}{largest} (weights {:.1} MB, largest binding {:.1} MB, largest buffer {:.1} MB)",
                mb(weight_bytes),
                mb(binding_limit),
                mb(max_buffer)
            ),
        )
    })
}

/// One tensor as the weights check sees it: its name, shape (outermost first) and file type.
pub struct TensorShape<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub dtype: DType,
}

/// Bytes `t` takes on the GPU in the type `storage` gives it: a matrix [rows, cols] in its
/// storage type (its rows split over buffers as the binding limit needs), anything else as
/// one f32 buffer. Also the bytes of the piece that cannot be split (one row, or the whole).
fn gpu_bytes(t: &TensorShape, storage: &dyn Fn(DType, usize) -> DType) -> (u64, u64) {
    let n = t.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
    match t.shape {
        [rows, cols] => {
            let ty = storage(t.dtype, *cols);
            let row = (*cols as u64).div_ceil(ty.block_len() as u64).saturating_mul(ty.block_bytes() as u64);
            (row.saturating_mul(*rows as u64), row)
        }
        _ => (n.saturating_mul(4), n.saturating_mul(4)),
    }
}

/// Refuses, before anything is uploaded, weights the adapter cannot hold: their GPU bytes
/// over the memory budget, or one tensor (or one row of a matrix) larger than one buffer may
/// be. The error names the bytes needed and the limit.
pub fn check_weights(file: &str, tensors: &[TensorShape], storage: &dyn Fn(DType, usize) -> DType, budget: &Budget, binding_limit: u64) -> Result<u64> {
    let mb = |b: u64| b as f64 / 1e6;
    let mut total = 0u64;
    for t in tensors {
        let (bytes, piece) = gpu_bytes(t, storage);
        if piece > binding_limit {
            let what = if t.shape.len() == 2 { "one row of it needs" } else { "it needs" };
            return Err(Error::tensor(file, t.name, format!("{what} a buffer of {piece} bytes ({:.1} MB), above the adapter's limit of {binding_limit} bytes per buffer, and it cannot be split further", mb(piece))));
        }
        total = total.saturating_add(bytes);
    }
    if total > budget.bytes {
        return Err(Error::format(
            file,
            format!("the weights need {total} bytes ({:.1} MB) of GPU memory, more than the budget of {} bytes ({:.1} MB, {})", mb(total), budget.bytes, mb(budget.bytes), budget.source),
        ));
    }
    Ok(total)
}

/// Bytes the tensors `names` of `src` take on the GPU in the types `storage` gives them (as
/// `check_weights` counts them), from the headers alone: nothing is read.
pub fn weight_bytes(src: &dyn TensorSource, names: &[&str], storage: &dyn Fn(DType, usize) -> DType) -> u64 {
    with_shapes(src, names, |shapes| shapes.iter().map(|t| gpu_bytes(t, storage).0).fold(0u64, u64::saturating_add))
}

/// `f` on the shapes and types of the tensors `names` of `src` (headers only: a streamed
/// file is read once, by the upload).
fn with_shapes<R>(src: &dyn TensorSource, names: &[&str], f: impl FnOnce(&[TensorShape]) -> R) -> R {
    let metas: Vec<_> = names.iter().filter_map(|&n| src.meta(n).map(|m| (n, m))).collect();
    let shapes: Vec<TensorShape> = metas.iter().map(|(n, m)| TensorShape { name: n, shape: &m.shape, dtype: m.dtype }).collect();
    f(&shapes)
}

/// [`check_weights`] for the tensors of `src` on `ctx`'s adapter.
pub fn check_source(ctx: &Context, src: &dyn TensorSource, names: &[&str], storage: &dyn Fn(DType, usize) -> DType) -> Result<u64> {
    // The device's own binding limit, not the one the loader splits matrices by (a page may
    // lower that one to try a smaller GPU's splits; a row over it still binds on this device).
    let device_limit = ctx.device.limits().max_storage_buffer_binding_size as u64;
    let budget = Budget::of(ctx)?;
    with_shapes(src, names, |shapes| check_weights(src.file_name(), shapes, storage, &budget, device_limit.max(ctx.binding_limit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape: 30 layers, 3 KV heads of 64, context 8192.
    fn smollm2() -> SessionShape {
        SessionShape { windows: vec![None; 30], n_kv_heads: 3, head_dim: 64, max_ctx: 8192, max_batch: 128, dim: 576, n_heads: 9, ffn_dim: 1536, vocab: 49152, kv_format: KvFormat::F32, n_slots: 1 }
    }
    fn budget() -> Budget {
        Budget { bytes: 4 * GIB, source: "test".into() }
    }

    #[test]
    fn the_model_context_when_it_fits() {
        let p = plan(&smollm2(), None, 4 * GIB, 128 << 20, &budget()).unwrap();
        assert_eq!(p.ctx_len, 8192);
        // 2 (K, V) · 30 layers · 3 heads · 8192 positions · 64 · 4 bytes.
        assert_eq!(p.kv_bytes, 2 * 30 * 3 * 8192 * 64 * 4);
        assert_eq!(plan(&smollm2(), Some(6000), 4 * GIB, 128 << 20, &budget()).unwrap().ctx_len, 6000);
    }

    #[test]
    fn the_largest_that_fits_when_the_model_context_does_not() {
        let s = smollm2();
        let available = s.kv_bytes(3000) + s.activation_bytes(3000) + 1000;
        let p = plan(&s, None, available, 128 << 20, &budget()).unwrap();
        assert!(p.ctx_len >= 3000 && p.kv_bytes + p.activation_bytes <= available, "{p:?}");
        assert!(s.kv_bytes(p.ctx_len + 1) + s.activation_bytes(p.ctx_len + 1) > available);
        // Asking for more names the bytes needed and the largest that fits.
        let err = plan(&s, Some(6000), available, 128 << 20, &budget()).unwrap_err().to_string();
        let need = s.kv_bytes(6000) + s.activation_bytes(6000);
        assert!(err.contains(&format!("6000 positions need {need} bytes")) && err.contains(&format!("largest --ctx that fits is {}", p.ctx_len)), "{err}");
        assert!(err.contains("--ctx"), "{err}");
    }

    #[test]
    fn a_cache_above_the_binding_limit_is_refused() {
        // One layer's K cache at 8192 positions is 6.3 MB; a 4 MiB binding limit holds 5461
        // (with a small vocabulary, so that the logits fit it).
        let s = SessionShape { vocab: 1000, ..smollm2() };
        let err = plan(&s, Some(8192), 4 * GIB, 4 << 20, &budget()).unwrap_err().to_string();
        assert!(err.contains("limit of 4194304 bytes per buffer") && err.contains("largest --ctx that fits is 5461"), "{err}");
        assert_eq!(plan(&s, None, 4 * GIB, 4 << 20, &budget()).unwrap().ctx_len, 5461);
    }

    #[test]
    fn sliding_window_layers_keep_only_their_window() {
        // Gemma 3 270M: 18 layers, 5 of every 6 with a window of 512, 1 KV head of 256.
        let windows = (0..18).map(|l| if l % 6 == 5 { None } else { Some(512) }).collect();
        let s = SessionShape { windows, n_kv_heads: 1, head_dim: 256, max_ctx: 32768, max_batch: 128, dim: 640, n_heads: 4, ffn_dim: 2048, vocab: 262144, kv_format: KvFormat::F32, n_slots: 1 };
        let p = plan(&s, Some(32768), 4 * GIB, 128 << 20, &budget()).unwrap();
        let ring = ring_len(512, 128);
        assert_eq!(p.layer_positions.iter().filter(|&&n| n == ring).count(), 15);
        assert_eq!(p.layer_positions.iter().filter(|&&n| n == 32768).count(), 3);
        // Growing the context grows only the 3 global layers' caches.
        assert_eq!(s.kv_bytes(32768) - s.kv_bytes(16384), 3 * 2 * 16384 * 256 * 4);
        // A context shorter than the ring keeps just the context.
        assert!(s.layer_positions(100).iter().all(|&n| n == 100));
    }

    #[test]
    fn slots_multiply_the_cache_and_are_named_when_they_do_not_fit() {
        let one = smollm2();
        let eight = smollm2().slots(8);
        assert_eq!(eight.kv_bytes(2048), 8 * one.kv_bytes(2048));
        // Token ids, adjustment lists and the fork scratch grow with the slots too.
        assert!(eight.activation_bytes(2048) > one.activation_bytes(2048) + 7 * 4 * 2048);
        let available = one.kv_bytes(2048) + one.activation_bytes(2048) + 1000;
        assert_eq!(plan(&one, Some(2048), available, u64::MAX, &budget()).unwrap().ctx_len, 2048);
        let err = plan(&eight, Some(2048), available, u64::MAX, &budget()).unwrap_err().to_string();
        let need = eight.kv_bytes(2048) + eight.activation_bytes(2048);
        assert!(err.contains(&format!("2048 positions in each of 8 slots need {need} bytes")) && err.contains("fits 8 slots (--parallel) is"), "{err}");
        // The largest context that fits 8 slots holds about an eighth of the positions.
        let p = plan(&eight, None, available, u64::MAX, &budget()).unwrap();
        assert!(p.ctx_len < 2048 / 4 && p.kv_bytes + p.activation_bytes <= available, "{p:?}");
    }

    #[test]
    fn an_f16_cache_counts_half_the_bytes() {
        let f32_shape = smollm2();
        let f16_shape = SessionShape { kv_format: KvFormat::F16, ..smollm2() };
        assert_eq!(2 * f16_shape.kv_bytes(6000), f32_shape.kv_bytes(6000));
        // A budget that holds 3000 positions of f32 cache holds about twice as many of f16.
        let available = f32_shape.kv_bytes(3000) + f32_shape.activation_bytes(3000);
        let n = plan(&f16_shape, None, available, 128 << 20, &budget()).unwrap().ctx_len;
        assert!(n > 5000, "{n}");
    }

    #[test]
    fn bad_requests_and_budgets_are_errors() {
        let s = smollm2();
        assert!(plan(&s, Some(0), 4 * GIB, 128 << 20, &budget()).unwrap_err().to_string().contains("at least 1"));
        assert!(plan(&s, Some(9000), 4 * GIB, 128 << 20, &budget()).unwrap_err().to_string().contains("model's context of 8192"));
        assert!(plan(&s, None, 1000, 128 << 20, &budget()).unwrap_err().to_string().contains("no context fits"));
        assert_eq!(parse_bytes("12G"), Some(12 * GIB));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5K"), Some(1536));
        assert_eq!(parse_bytes("6000000000"), Some(6_000_000_000));
        for bad in ["", "G", "-1G", "12X", "nan", "1e30G"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
        let err = Budget::for_adapter(wgpu::DeviceType::Cpu, Some("lots")).unwrap_err().to_string();
        assert!(err.contains(BUDGET_ENV) && err.contains("'lots'"), "{err}");
        assert_eq!(Budget::for_adapter(wgpu::DeviceType::Cpu, None).unwrap().bytes, 4 * GIB);
    }

    #[test]
    fn before_a_load_the_weights_then_the_context_are_checked() {
        let (_, cfg) = crate::models::registry::from_hf_json(include_bytes!("../tests/fixtures/llama-tiny/config.json"), "config.json").unwrap();
        let shape = SessionShape::new(&cfg, crate::generate::DEFAULT_MAX_BATCH);
        let small = Budget { bytes: 1 << 20, source: "test".into() };
        // Weights alone above the budget: refused with both figures.
        let err = plan_before_load(&cfg, 2 << 20, Some(16), 128 << 20, &small).unwrap_err().to_string();
        assert!(err.contains("2097152 bytes") && err.contains("1.0 MB"), "{err}");
        // Weights that fit: the context asked for, or an error naming the largest that fits.
        let weights = (1 << 20) - shape.kv_bytes(100) - shape.activation_bytes(100);
        assert_eq!(plan_before_load(&cfg, weights, Some(100), 128 << 20, &small).unwrap().ctx_len, 100);
        let err = plan_before_load(&cfg, weights, Some(256), 128 << 20, &small).unwrap_err().to_string();
        assert!(err.contains("256 positions need") && err.contains("the largest --ctx that fits is 100"), "{err}");
        assert_eq!(plan_before_load(&cfg, weights, None, 128 << 20, &small).unwrap().ctx_len, 100);
    }
}
