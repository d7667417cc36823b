//! Rotary position embedding (RoPE), both pair conventions. `rope` computes the plain
//! frequencies theta^(-2i/d) in the kernel; `rope_freqs` reads them from a small table that
//! `RopeFreqs` computes on the CPU, so every scaling (llama3, linear, dynamic NTK, GGUF's
//! rope_freqs.weight) and partial rotary are host code.

use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "rope", body: include_str!("../../shaders/rope.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    rot_dim: u32,
    pos0: u32,
    neox: u32,
    theta: f32,
    amp: f32,
    per_token: u32,
    two_tables: u32,
    long_lo: u32,
    long_hi: u32,
}

/// Which elements form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// (x[i], x[i + d/2]): Hugging Face's rotate-half.
    Neox,
    /// (x[2i], x[2i+1]): the original RoFormer / llama.cpp layout (GGUF llama weights).
    Adjacent,
}

/// FLOPs and bytes of rope over n = n_tokens * n_heads * head_dim elements: per pair two
/// multiplies and an add per output (3 per element); reads and writes x.
pub fn cost(n_tokens: usize, n_heads: usize, head_dim: usize) -> (u64, u64) {
    let n = (n_tokens * n_heads * head_dim) as u64;
    (3 * n, 8 * n)
}

/// Rotates x: (n_tokens, n_heads, head_dim) in place; token t is at position pos0 + t.
#[allow(clippy::too_many_arguments)]
pub fn rope(rec: &mut Recorder, x: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, theta: f32, style: RopeStyle, layer: usize) -> Result<()> {
    if head_dim % 2 != 0 {
        return Err(Error::Shape { op: "rope", msg: format!("head_dim {head_dim} is odd") });
    }
    x.holds("rope", "x", n_tokens * n_heads * head_dim)?;
    let p = Params { theta, ..Params::new(n_tokens, n_heads, head_dim, head_dim, pos0, style) };
    launch(rec, "rope", &[&x.buf], &p, layer)
}

impl Params {
    fn new(n_tokens: usize, n_heads: usize, head_dim: usize, rot_dim: usize, pos0: usize, style: RopeStyle) -> Self {
        Params {
            n_tokens: n_tokens as u32,
            n_heads: n_heads as u32,
            head_dim: head_dim as u32,
            rot_dim: rot_dim as u32,
            pos0: pos0 as u32,
            neox: (style == RopeStyle::Neox) as u32,
            theta: 0.0,
            amp: 1.0,
            per_token: 0,
            two_tables: 0,
            long_lo: 0,
            long_hi: 0,
        }
    }
}

/// One thread per rotated pair.
fn launch(rec: &mut Recorder, entry: &str, buffers: &[&wgpu::Buffer], p: &Params, layer: usize) -> Result<()> {
    let pipe = rec.ctx.pipeline(&SHADER, entry, &[])?;
    let (flops, bytes) = cost(p.n_tokens as usize, p.n_heads as usize, p.rot_dim as usize);
    let info = OpInfo::new("rope", flops, bytes).layer(layer);
    let pairs = (p.n_tokens * p.n_heads * p.rot_dim / 2) as usize;
    rec.dispatch(info, &pipe, buffers, p, grid(rec.ctx, pairs.div_ceil(256) as u32));
    Ok(())
}

/// Rotates the first 2 * inv_freq.len() dimensions of each head of x: (n_tokens, n_heads,
/// head_dim) in place, pair i by (pos0 + t) * inv_freq[i]; inv_freq: (rot_dim / 2,), from
/// `RopeFreqs::inv_freq`.
#[allow(clippy::too_many_arguments)]
pub fn rope_freqs(rec: &mut Recorder, x: &Tensor, inv_freq: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, style: RopeStyle, layer: usize) -> Result<()> {
    rope_freqs_scaled(rec, x, inv_freq, n_tokens, n_heads, head_dim, pos0, style, 1.0, layer)
}

/// `rope_freqs` with cos and sin multiplied by `attention_factor`
/// (`RopeFreqs::attention_factor`: Phi-3's longrope).
#[allow(clippy::too_many_arguments)]
pub fn rope_freqs_scaled(rec: &mut Recorder, x: &Tensor, inv_freq: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, style: RopeStyle, attention_factor: f32, layer: usize) -> Result<()> {
    rope_freqs_at(rec, x, inv_freq, n_tokens, n_heads, head_dim, pos0, None, style, attention_factor, layer)
}

/// `rope_freqs_scaled` where, with `meta` ((n_tokens, 2) u32: slot, position - pos0, as
/// `attention::TokenTable`), token t sits at position pos0 + meta[2t + 1]: a batch of tokens
/// from several sequences.
#[allow(clippy::too_many_arguments)]
pub fn rope_freqs_at(rec: &mut Recorder, x: &Tensor, inv_freq: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, meta: Option<&Tensor>, style: RopeStyle, attention_factor: f32, layer: usize) -> Result<()> {
    let rot_dim = 2 * inv_freq.numel();
    if rot_dim == 0 || rot_dim > head_dim || !(attention_factor > 0.0 && attention_factor.is_finite()) {
        return Err(Error::Shape { op: "rope_freqs", msg: format!("{} frequencies rotate {rot_dim} dimensions of heads of {head_dim} (attention factor {attention_factor})", inv_freq.numel()) });
    }
    x.holds("rope_freqs", "x", n_tokens * n_heads * head_dim)?;
    if let Some(m) = meta {
        m.holds("rope_freqs", "token table", 2 * n_tokens)?;
    }
    let p = Params { amp: attention_factor, per_token: meta.is_some() as u32, ..Params::new(n_tokens, n_heads, head_dim, rot_dim, pos0, style) };
    let ctx = rec.ctx;
    let table = meta.map_or(&ctx.spare[0], |m| &m.buf);
    launch(rec, "rope_freqs", &[&x.buf, &inv_freq.buf, table], &p, layer)
}

/// `rope_freqs_at` over a token table with two tables in `inv_freqs` ((2, rot_dim / 2): short
/// then long factors, longrope's): a token of slot s (meta[2t]) turns by the second where bit s
/// of `long_slots` is set, by the first otherwise; each slot of a batch thus gets the factors
/// its own sequence's length picks. Slots 0..64.
#[allow(clippy::too_many_arguments)]
pub fn rope_freqs_per_slot(rec: &mut Recorder, x: &Tensor, inv_freqs: &Tensor, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize, meta: &Tensor, long_slots: u64, style: RopeStyle, attention_factor: f32, layer: usize) -> Result<()> {
    let rot_dim = inv_freqs.numel();
    if rot_dim == 0 || rot_dim % 2 != 0 || rot_dim > head_dim || !(attention_factor > 0.0 && attention_factor.is_finite()) {
        return Err(Error::Shape { op: "rope_freqs", msg: format!("two tables of {} frequencies in all rotate {rot_dim} dimensions of heads of {head_dim} (attention factor {attention_factor})", inv_freqs.numel()) });
    }
    x.holds("rope_freqs", "x", n_tokens * n_heads * head_dim)?;
    meta.holds("rope_freqs", "token table", 2 * n_tokens)?;
    let p = Params { amp: attention_factor, per_token: 1, two_tables: 1, long_lo: long_slots as u32, long_hi: (long_slots >> 32) as u32, ..Params::new(n_tokens, n_heads, head_dim, rot_dim, pos0, style) };
    launch(rec, "rope_freqs", &[&x.buf, &inv_freqs.buf, &meta.buf], &p, layer)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormRopeParams {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    rot_dim: u32,
    pos0: u32,
    neox: u32,
    per_token: u32,
    amp: f32,
    eps: f32,
    w_offset: f32,
    _pad: u32,
}

/// The weights of Qwen3's and Gemma 3's per-head norms of Q and K (each of head_dim), and how
/// they norm (`norm::rms_norm_heads`).
#[derive(Clone, Copy)]
pub struct HeadNorms<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub opts: crate::ops::norm::RmsOpts,
}

/// `norm::rms_norm_heads` of q (n_tokens, n_heads, head_dim) by `norms.q` and of k (n_tokens,
/// n_kv_heads, head_dim) by `norms.k`, then `rope_freqs_at` of both, in place and in one
/// dispatch (four otherwise): what Qwen3's and Gemma 3's attention does to Q and K before the
/// cache write.
#[allow(clippy::too_many_arguments)]
pub fn norm_rope_at(rec: &mut Recorder, q: &Tensor, k: &Tensor, norms: HeadNorms, inv_freq: &Tensor, n_tokens: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize, pos0: usize, meta: Option<&Tensor>, style: RopeStyle, attention_factor: f32, layer: usize) -> Result<()> {
    let rot_dim = 2 * inv_freq.numel();
    if rot_dim == 0 || rot_dim > head_dim || !(attention_factor > 0.0 && attention_factor.is_finite()) {
        return Err(Error::Shape { op: "norm_rope", msg: format!("{} frequencies rotate {rot_dim} dimensions of heads of {head_dim} (attention factor {attention_factor})", inv_freq.numel()) });
    }
    if norms.q.numel() != head_dim || norms.k.numel() != head_dim {
        return Err(Error::Shape { op: "norm_rope", msg: format!("q_norm of {} and k_norm of {} values for heads of {head_dim}", norms.q.numel(), norms.k.numel()) });
    }
    q.holds("norm_rope", "q", n_tokens * n_heads * head_dim)?;
    k.holds("norm_rope", "k", n_tokens * n_kv_heads * head_dim)?;
    if let Some(m) = meta {
        m.holds("norm_rope", "token table", 2 * n_tokens)?;
    }
    let p = NormRopeParams {
        n_tokens: n_tokens as u32,
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: head_dim as u32,
        rot_dim: rot_dim as u32,
        pos0: pos0 as u32,
        neox: (style == RopeStyle::Neox) as u32,
        per_token: meta.is_some() as u32,
        amp: attention_factor,
        eps: norms.opts.eps,
        w_offset: norms.opts.weight_offset,
        _pad: 0,
    };
    let rows = n_tokens * (n_heads + n_kv_heads);
    let pipe = rec.ctx.pipeline(&SHADER, "norm_rope", &[])?;
    let (norm_flops, norm_bytes) = crate::ops::norm::rms_norm_cost(rows, head_dim);
    let (rope_flops, _) = cost(rows, 1, rot_dim);
    let info = OpInfo::new("norm_rope", norm_flops + rope_flops, norm_bytes).layer(layer);
    let ctx = rec.ctx;
    let table = meta.map_or(&ctx.spare[0], |m| &m.buf);
    rec.dispatch(info, &pipe, &[&q.buf, &k.buf, &norms.q.buf, &norms.k.buf, &inv_freq.buf, table], &p, grid(rec.ctx, rows as u32));
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ShiftParams {
    n_rows: u32,
    n_heads: u32,
    cache_len: u32,
    head_dim: u32,
    rot_dim: u32,
    neox: u32,
    f16: u32,
    base: u32,
    row0: u32,
    delta: u32,
    _pad: [u32; 2],
}

/// Where a context shift turns keys: one slot's rows of a layer's K cache
/// (n_slots, n_kv_heads, cache_len, head_dim), f32 or two f16 per u32 word.
#[derive(Clone, Copy, Debug)]
pub struct CacheRows {
    pub slot: usize,
    pub n_slots: usize,
    pub n_kv_heads: usize,
    pub cache_len: usize,
    pub head_dim: usize,
    /// The rows: positions row0 .. row0 + n_rows of the slot.
    pub row0: usize,
    pub n_rows: usize,
    pub f16: bool,
}

/// Turns the keys in `rows` of `k_cache` back by `delta` positions (pair i by
/// -delta · inv_freq[i], cos and sin unscaled): keys rotated for positions p + delta become
/// those of p, as a context shift needs once it has moved the rows down (`State::shift`).
/// Valid wherever a key's angles are the position times a fixed table (not for dynamic NTK or
/// longrope, whose tables depend on the sequence's length). With an f16 cache and rotate-half
/// pairs, rot_dim must be a multiple of 4.
pub fn rope_shift(rec: &mut Recorder, k_cache: &Tensor, inv_freq: &Tensor, rows: CacheRows, delta: usize, style: RopeStyle, layer: usize) -> Result<()> {
    let CacheRows { slot, n_slots, n_kv_heads, cache_len, head_dim, row0, n_rows, f16 } = rows;
    let rot_dim = 2 * inv_freq.numel();
    let shape_err = |msg: String| Err(Error::Shape { op: "rope_shift", msg });
    if rot_dim == 0 || rot_dim > head_dim || head_dim % 2 != 0 {
        return shape_err(format!("{} frequencies rotate {rot_dim} dimensions of heads of {head_dim}", inv_freq.numel()));
    }
    if f16 && style == RopeStyle::Neox && rot_dim % 4 != 0 {
        return shape_err(format!("an f16 cache with rotate-half pairs needs a rotated width that is a multiple of 4, not {rot_dim}"));
    }
    if slot >= n_slots || row0 + n_rows > cache_len || delta > u32::MAX as usize {
        return shape_err(format!("rows {row0}..{} of slot {slot} in a cache of {n_slots} slots of {cache_len} rows (shift {delta})", row0 + n_rows));
    }
    let slot_elems = n_kv_heads * cache_len * head_dim;
    let words = n_slots * slot_elems / if f16 { 2 } else { 1 };
    k_cache.holds("rope_shift", "k cache", words)?;
    if n_rows == 0 || n_kv_heads == 0 {
        return Ok(());
    }
    let base = slot * slot_elems;
    if base > u32::MAX as usize {
        return shape_err(format!("slot {slot} starts at element {base}, past what a u32 index reaches"));
    }
    let p = ShiftParams {
        n_rows: n_rows as u32,
        n_heads: n_kv_heads as u32,
        cache_len: cache_len as u32,
        head_dim: head_dim as u32,
        rot_dim: rot_dim as u32,
        neox: (style == RopeStyle::Neox) as u32,
        f16: f16 as u32,
        base: base as u32,
        row0: row0 as u32,
        delta: delta as u32,
        _pad: [0; 2],
    };
    let units = rot_dim / 2 / if f16 && style == RopeStyle::Neox { 2 } else { 1 };
    let n = n_kv_heads * n_rows * units;
    let pipe = rec.ctx.pipeline(&SHADER, "rope_shift", &[])?;
    let elems = (n_kv_heads * n_rows * rot_dim) as u64;
    let info = OpInfo::new("rope_shift", 3 * elems, 2 * elems * if f16 { 2 } else { 4 }).layer(layer);
    rec.dispatch(info, &pipe, &[&k_cache.buf, &inv_freq.buf], &p, grid(rec.ctx, n.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of `rope_shift` on one slot's rows, given as (n_kv_heads, n_rows, head_dim)
/// f32 values: each pair turned by -delta · inv_freq[i] (the angle in f32, as the kernel).
pub fn reference_shift(x: &[f32], head_dim: usize, delta: usize, inv_freq: &[f32], style: RopeStyle) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = inv_freq.len();
    for chunk in out.chunks_mut(head_dim) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let (s, c) = ((delta as f32 * f) as f64).sin_cos();
            let (a, b) = match style {
                RopeStyle::Neox => (i, i + half),
                RopeStyle::Adjacent => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (chunk[a] as f64, chunk[b] as f64);
            chunk[a] = (x0 * c + x1 * s) as f32;
            chunk[b] = (x1 * c - x0 * s) as f32;
        }
    }
    out
}

/// How RoPE's frequencies are scaled: transformers' `rope_scaling` / `rope_parameters` types,
/// and GGUF's per-frequency factors.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// theta^(-2i/d).
    None,
    /// `linear`: positions / factor, i.e. every frequency / factor.
    Linear { factor: f32 },
    /// `llama3`: transformers' `_compute_llama3_parameters` (low frequencies / factor, high ones
    /// kept, a smooth blend between).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
    /// `dynamic` NTK: once the sequence is longer than `max_position_embeddings`, the base grows
    /// to theta·(factor·seq/max - (factor - 1))^(d/(d-2)) (transformers'
    /// `_compute_dynamic_ntk_parameters`; its update only ever grows within a generation).
    Dynamic { factor: f32, max_position_embeddings: usize },
    /// GGUF `rope_freqs.weight`: frequency i divided by factors[i] (llama.cpp's freq_factors).
    FreqFactors(Vec<f32>),
    /// `longrope` (Phi-3's 128k variants, transformers' `_compute_longrope_parameters`):
    /// frequency i divided by short_factor[i], or long_factor[i] once the sequence is longer
    /// than original_max_position_embeddings; cos and sin scaled by `attention_factor`
    /// (given, or √(1 + ln(max/original) / ln(original)) when max > original).
    LongRope { short_factor: Vec<f32>, long_factor: Vec<f32>, original_max_position_embeddings: usize, max_position_embeddings: usize, attention_factor: Option<f32> },
}

/// RoPE's frequencies for one model: base, rotated width (head_dim, or less for partial
/// rotary) and scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    pub theta: f32,
    /// Dimensions rotated per head (even): head_dim · partial_rotary_factor.
    pub rot_dim: usize,
    pub scaling: RopeScaling,
}

impl RopeFreqs {
    /// The inverse frequencies (rot_dim / 2) for a call whose last position is `seq_len - 1`
    /// (only dynamic NTK depends on it). Arithmetic in f32 in transformers' order, so the table
    /// equals its `inv_freq`.
    pub fn inv_freq(&self, seq_len: usize) -> Result<Vec<f32>> {
        let d = self.rot_dim;
        let bad = |msg: String| Err(Error::Shape { op: "rope_freqs", msg });
        if d == 0 || d % 2 != 0 {
            return bad(format!("rotary dimensions {d} must be even and positive"));
        }
        if !(self.theta > 1.0 && self.theta.is_finite()) {
            return bad(format!("rope base {} must be finite and above 1", self.theta));
        }
        let default = |base: f32| -> Vec<f32> { (0..d / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32)).collect() };
        let positive = |name: &str, v: f32| if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::Shape { op: "rope_freqs", msg: format!("rope scaling {name} {v} must be positive") }) };
        Ok(match &self.scaling {
            RopeScaling::None => default(self.theta),
            RopeScaling::Linear { factor } => {
                positive("factor", *factor)?;
                default(self.theta).iter().map(|f| f / factor).collect()
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                if !(high_freq_factor > low_freq_factor) || *original_max_position_embeddings == 0 {
                    return bad(format!("llama3 rope scaling needs high_freq_factor {high_freq_factor} > low_freq_factor {low_freq_factor} and an original context, got {original_max_position_embeddings}"));
                }
                llama3(&default(self.theta), *factor, *low_freq_factor, *high_freq_factor, *original_max_position_embeddings)
            }
            RopeScaling::Dynamic { factor, max_position_embeddings } => {
                positive("factor", *factor)?;
                if *max_position_embeddings == 0 {
                    return bad("dynamic rope scaling needs max_position_embeddings".into());
                }
                let seq = seq_len.max(*max_position_embeddings) as f32;
                let grow = factor * seq / *max_position_embeddings as f32 - (factor - 1.0);
                default(self.theta * grow.powf(d as f32 / (d - 2).max(1) as f32))
            }
            RopeScaling::FreqFactors(factors) => {
                if factors.len() != d / 2 || factors.iter().any(|&f| !(f > 0.0 && f.is_finite())) {
                    return bad(format!("rope_freqs.weight has {} factors, expected {} positive ones", factors.len(), d / 2));
                }
                default(self.theta).iter().zip(factors).map(|(f, ff)| f / ff).collect()
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, .. } => {
                let factors = if seq_len > *original_max_position_embeddings { long_factor } else { short_factor };
                let name = if seq_len > *original_max_position_embeddings { "long_factor" } else { "short_factor" };
                if factors.len() != d / 2 || factors.iter().any(|&f| !(f > 0.0 && f.is_finite())) {
                    return bad(format!("longrope {name} has {} values, expected {} positive ones", factors.len(), d / 2));
                }
                // 1 / (ext · base^(2i/d)), with base^(2i/d) as the default table's.
                (0..d / 2).map(|i| 1.0 / (factors[i] * self.theta.powf((2 * i) as f32 / d as f32))).collect()
            }
        })
    }

    /// What cos and sin are multiplied by (`rope_freqs_scaled`): 1 except for longrope.
    pub fn attention_factor(&self) -> f32 {
        match &self.scaling {
            RopeScaling::LongRope { attention_factor: Some(a), .. } => *a,
            RopeScaling::LongRope { original_max_position_embeddings: orig, max_position_embeddings: max, .. } if max > orig && *orig > 1 => {
                let factor = *max as f64 / *orig as f64;
                (1.0 + factor.ln() / (*orig as f64).ln()).sqrt() as f32
            }
            _ => 1.0,
        }
    }

    /// `inv_freq` uploaded for `rope_freqs`.
    pub fn upload(&self, ctx: &crate::gpu::Context, seq_len: usize) -> Result<Tensor> {
        let f = self.inv_freq(seq_len)?;
        Tensor::upload_f32(ctx, "rope inv_freq", &[f.len()], &f)
    }
}

/// transformers' `_compute_llama3_parameters`, step by step in f32 as torch evaluates it
/// (`scalar / tensor` is `tensor.reciprocal() * scalar` there; Python scalars become f32).
fn llama3(inv_freq: &[f32], factor: f32, low: f32, high: f32, old_context: usize) -> Vec<f32> {
    let old = old_context as f32;
    let low_freq_wavelen = (old_context as f64 / low as f64) as f32;
    let high_freq_wavelen = (old_context as f64 / high as f64) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let span = (high as f64 - low as f64) as f32;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = (1.0 / f) * two_pi;
            let scaled = if wavelen > low_freq_wavelen { f / factor } else { f };
            if wavelen < high_freq_wavelen || wavelen > low_freq_wavelen {
                return scaled;
            }
            let smooth = ((1.0 / wavelen) * old - low) / span;
            (1.0 - smooth) * scaled / factor + smooth * scaled
        })
        .collect()
}

/// CPU reference (angles in f64 from the same f32 inverse frequency the GPU and HF use).
pub fn reference(x: &[f32], n_heads: usize, head_dim: usize, pos0: usize, theta: f32, style: RopeStyle) -> Vec<f32> {
    let inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    reference_freqs(x, n_heads, head_dim, pos0, &inv_freq, style)
}

/// CPU reference of `rope_freqs`: the first 2 * inv_freq.len() dimensions of each head turn.
pub fn reference_freqs(x: &[f32], n_heads: usize, head_dim: usize, pos0: usize, inv_freq: &[f32], style: RopeStyle) -> Vec<f32> {
    reference_freqs_scaled(x, n_heads, head_dim, pos0, inv_freq, style, 1.0)
}

/// CPU reference of `rope_freqs_scaled`.
pub fn reference_freqs_scaled(x: &[f32], n_heads: usize, head_dim: usize, pos0: usize, inv_freq: &[f32], style: RopeStyle, attention_factor: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = inv_freq.len();
    for (row, chunk) in out.chunks_mut(head_dim).enumerate() {
        let pos = pos0 + row / n_heads;
        for (i, &inv_freq) in inv_freq.iter().enumerate() {
            let angle = (pos as f32 * inv_freq) as f64;
            let (s, c) = angle.sin_cos();
            let (s, c) = (s * attention_factor as f64, c * attention_factor as f64);
            let (a, b) = match style {
                RopeStyle::Neox => (i, i + half),
                RopeStyle::Adjacent => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (chunk[a] as f64, chunk[b] as f64);
            chunk[a] = (x0 * c - x1 * s) as f32;
            chunk[b] = (x1 * c + x0 * s) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn rope_matches_reference_both_styles_odd_sizes(ctx) {
        for &(t, h, d, pos0) in &[(1usize, 1usize, 2usize, 0usize), (3, 5, 6, 7), (7, 9, 64, 1000), (2, 3, 130, 4095)] {
            for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
                let x = test_values(t * h * d, 31);
                let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                rope(&mut rec, &xt, t, h, d, pos0, 10000.0, style, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
                // Angles up to ~4100 rad lose ~2.4e-4 rad to f32 range reduction; values are in
                // [-1, 1], so x·cos - y·sin carries at most twice the sin/cos error.
                let abs = if pos0 > 100 { 1e-3 } else { 1e-5 } + 2.0 * crate::ops::sin_cos_tolerance(ctx);
                compare(&got, &reference(&x, h, d, pos0, 10000.0, style), abs, 1e-4).unwrap_or_else(|e| panic!("t {t} h {h} d {d} pos0 {pos0} {style:?}: {e}"));
            }
        }
    });

    gpu_test!(fn rope_from_a_frequency_table_matches_reference(ctx) {
        // (tokens, heads, head_dim, rotated dims, pos0): full, partial (Phi-3 style halves and
        // GPT-NeoX quarters), head_dim 256, a late position.
        for &(t, h, d, rot, pos0) in &[(1usize, 1usize, 2usize, 2usize, 0usize), (3, 5, 6, 6, 7), (7, 3, 64, 32, 100), (2, 4, 256, 256, 33), (5, 3, 130, 32, 4000)] {
            let freqs = RopeFreqs { theta: 500000.0, rot_dim: rot, scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 32 } };
            let table = freqs.inv_freq(pos0 + t).unwrap();
            for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
                let x = test_values(t * h * d, 32);
                let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
                let ft = freqs.upload(ctx, pos0 + t).unwrap();
                let mut rec = Recorder::new(ctx, "test");
                rope_freqs(&mut rec, &xt, &ft, t, h, d, pos0, style, 0).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
                // As the plain kernel: the range reduction of angles up to ~4000 rad dominates.
                let abs = if pos0 > 100 { 1e-3 } else { 1e-5 } + 2.0 * crate::ops::sin_cos_tolerance(ctx);
                let want = reference_freqs(&x, h, d, pos0, &table, style);
                compare(&got, &want, abs, 1e-4).unwrap_or_else(|e| panic!("t {t} h {h} d {d} rot {rot} pos0 {pos0} {style:?}: {e}"));
                // Dimensions past the rotated ones are untouched.
                assert!(got.chunks(d).zip(x.chunks(d)).all(|(g, x)| g[rot..] == x[rot..]), "t {t} d {d} rot {rot}: unrotated dims changed");
            }
        }
    });

    gpu_test!(fn rope_with_a_token_table_turns_each_token_by_its_own_position(ctx) {
        // Tokens of a batch from several sequences: positions out of order, repeated, far apart.
        let (h, d, rot) = (3usize, 10usize, 10usize);
        let (pos0, positions) = (2usize, [5u32, 0, 0, 1, 1000, 6, 7]);
        let t = positions.len();
        let rows: Vec<u32> = positions.iter().enumerate().flat_map(|(i, &p)| [i as u32 % 3, p]).collect();
        let freqs = RopeFreqs { theta: 10000.0, rot_dim: rot, scaling: RopeScaling::None };
        let table = freqs.inv_freq(1).unwrap();
        let x = test_values(t * h * d, 34);
        let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
        let meta = Tensor::zeros(ctx, "token table", &[2 * t]).unwrap();
        ctx.queue.write_buffer(&meta.buf, 0, bytemuck::cast_slice(&rows));
        let ft = freqs.upload(ctx, 1).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        rope_freqs_at(&mut rec, &xt, &ft, t, h, d, pos0, Some(&meta), RopeStyle::Neox, 1.0, 0).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
        for (i, &p) in positions.iter().enumerate() {
            let row = &x[i * h * d..(i + 1) * h * d];
            let want = reference_freqs(row, h, d, pos0 + p as usize, &table, RopeStyle::Neox);
            // As above: angles up to ~1000 rad.
            let abs = 1e-3 + 2.0 * crate::ops::sin_cos_tolerance(ctx);
            compare(&got[i * h * d..(i + 1) * h * d], &want, abs, 1e-4).unwrap_or_else(|e| panic!("token {i} at position {}: {e}", pos0 + p as usize));
        }
    });

    gpu_test!(fn norm_rope_matches_per_head_norms_then_rope(ctx) {
        use crate::ops::norm::{self, RmsOpts};
        // (tokens, heads, KV heads, head_dim, rotated dims, pos0, style, weight offset, token
        // positions): Gemma 3 270M's heads (4 on 1 of 256) at a late position; odd sizes with
        // partial rotary and grouped heads (5 on 1 of 10, 6 turned, more dims than one
        // workgroup pass only for 256); Qwen3's shape with a token table.
        let none: &[u32] = &[];
        let cases = [
            (1usize, 4usize, 1usize, 256usize, 256usize, 1000usize, RopeStyle::Neox, 0.0f32, none),
            (3, 5, 1, 10, 6, 7, RopeStyle::Adjacent, 1.0, none),
            (2, 2, 2, 130, 130, 0, RopeStyle::Neox, 1.0, none),
            (4, 4, 2, 64, 64, 2, RopeStyle::Neox, 0.0, &[5, 0, 700, 1]),
        ];
        for (t, h, kv, d, rot, pos0, style, offset, table_positions) in cases {
            let positions = (!table_positions.is_empty()).then_some(table_positions);
            let opts = RmsOpts { eps: 1e-6, weight_offset: offset };
            let freqs = RopeFreqs { theta: 1_000_000.0, rot_dim: rot, scaling: RopeScaling::Linear { factor: 8.0 } };
            let table = freqs.inv_freq(1).unwrap();
            let ft = freqs.upload(ctx, 1).unwrap();
            let q: Vec<f32> = test_values(t * h * d, 61).iter().map(|v| 4.0 * v).collect();
            let k = test_values(t * kv * d, 62);
            let (qw, kw) = (test_values(d, 63), test_values(d, 64));
            let (qt, kt) = (Tensor::upload_f32(ctx, "q", &[t, h * d], &q).unwrap(), Tensor::upload_f32(ctx, "k", &[t, kv * d], &k).unwrap());
            let (qwt, kwt) = (Tensor::upload_f32(ctx, "q_norm", &[d], &qw).unwrap(), Tensor::upload_f32(ctx, "k_norm", &[d], &kw).unwrap());
            let meta = positions.as_ref().map(|ps| {
                let rows: Vec<u32> = ps.iter().enumerate().flat_map(|(i, &p)| [i as u32, p]).collect();
                let m = Tensor::zeros(ctx, "token table", &[2 * t]).unwrap();
                ctx.queue.write_buffer(&m.buf, 0, bytemuck::cast_slice(&rows));
                m
            });
            let mut rec = Recorder::new(ctx, "test");
            norm_rope_at(&mut rec, &qt, &kt, HeadNorms { q: &qwt, k: &kwt, opts }, &ft, t, h, kv, d, pos0, meta.as_ref(), style, 1.0, 0).unwrap();
            rec.submit().unwrap();
            let got_q = ctx.read_f32_async(&qt.buf, 0, t * h * d).await.unwrap();
            let got_k = ctx.read_f32_async(&kt.buf, 0, t * kv * d).await.unwrap();
            // Each token's rows normed, then turned at its position.
            let want = |x: &[f32], w: &[f32], heads: usize| -> Vec<f32> {
                let normed = norm::reference_with(x, w, opts);
                (0..t).flat_map(|i| {
                    let pos = pos0 + positions.as_ref().map_or(i, |ps| ps[i] as usize);
                    reference_freqs(&normed[i * heads * d..(i + 1) * heads * d], heads, d, pos, &table, style)
                }).collect()
            };
            // Normed values reach ~|w| · √d / ‖x‖ · |x| (< 4 here); angles up to ~1000 rad, as above.
            let abs = 4e-3 + 8.0 * crate::ops::sin_cos_tolerance(ctx);
            compare(&got_q, &want(&q, &qw, h), abs, 1e-4).unwrap_or_else(|e| panic!("q: t {t} h {h} d {d} rot {rot} {style:?}: {e}"));
            compare(&got_k, &want(&k, &kw, kv), abs, 1e-4).unwrap_or_else(|e| panic!("k: t {t} kv {kv} d {d} rot {rot} {style:?}: {e}"));
        }
        // A norm weight of another width is refused, naming both.
        let x = Tensor::zeros(ctx, "x", &[64]).unwrap();
        let w = Tensor::zeros(ctx, "w", &[8]).unwrap();
        let f = Tensor::zeros(ctx, "f", &[4]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let err = norm_rope_at(&mut rec, &x, &x, HeadNorms { q: &w, k: &f, opts: RmsOpts::eps(1e-6) }, &f, 1, 1, 1, 8, 0, None, RopeStyle::Neox, 1.0, 0).unwrap_err().to_string();
        assert!(err.contains("q_norm of 8") && err.contains("k_norm of 4"), "{err}");
    });

    gpu_test!(fn rope_per_slot_turns_each_slot_by_its_own_table(ctx) {
        // Longrope in a batch: slots 1 and 40 read the long factors, 0 and 2 the short ones.
        let (h, d, rot) = (3usize, 12usize, 10usize);
        let (pos0, tokens) = (1usize, [(0u32, 5u32), (1, 20), (2, 0), (40, 33), (1, 21), (0, 6), (40, 34)]);
        let t = tokens.len();
        let rows: Vec<u32> = tokens.iter().flat_map(|&(s, p)| [s, p]).collect();
        let f = longrope(rot);
        let (short, long) = (f.inv_freq(1).unwrap(), f.inv_freq(5000).unwrap());
        let both: Vec<f32> = short.iter().chain(&long).copied().collect();
        let x = test_values(t * h * d, 35);
        let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
        let meta = Tensor::zeros(ctx, "token table", &[2 * t]).unwrap();
        ctx.queue.write_buffer(&meta.buf, 0, bytemuck::cast_slice(&rows));
        let bt = Tensor::upload_f32(ctx, "both", &[both.len()], &both).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        rope_freqs_per_slot(&mut rec, &xt, &bt, t, h, d, pos0, &meta, (1 << 1) | (1 << 40), RopeStyle::Neox, 1.2, 0).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
        for (i, &(slot, p)) in tokens.iter().enumerate() {
            let row = &x[i * h * d..(i + 1) * h * d];
            let table = if slot == 1 || slot == 40 { &long } else { &short };
            let want = reference_freqs_scaled(row, h, d, pos0 + p as usize, table, RopeStyle::Neox, 1.2);
            compare(&got[i * h * d..(i + 1) * h * d], &want, 1e-4 + 2.0 * crate::ops::sin_cos_tolerance(ctx), 1e-4).unwrap_or_else(|e| panic!("token {i} of slot {slot}: {e}"));
        }
    });

    gpu_test!(fn the_default_table_reproduces_the_plain_kernel(ctx) {
        let (t, h, d, pos0) = (4usize, 3usize, 64usize, 9usize);
        let x = test_values(t * h * d, 33);
        let freqs = RopeFreqs { theta: 10000.0, rot_dim: d, scaling: RopeScaling::None };
        let a = Tensor::upload_f32(ctx, "a", &[t, h, d], &x).unwrap();
        let b = Tensor::upload_f32(ctx, "b", &[t, h, d], &x).unwrap();
        let ft = freqs.upload(ctx, pos0 + t).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        rope(&mut rec, &a, t, h, d, pos0, 10000.0, RopeStyle::Neox, 0).unwrap();
        rope_freqs(&mut rec, &b, &ft, t, h, d, pos0, RopeStyle::Neox, 0).unwrap();
        rec.submit().unwrap();
        let (ga, gb) = (ctx.read_f32_async(&a.buf, 0, x.len()).await.unwrap(), ctx.read_f32_async(&b.buf, 0, x.len()).await.unwrap());
        // The kernel's pow and the host's powf may differ by an ulp of the frequency.
        compare(&gb, &ga, 1e-5, 1e-5).unwrap();
    });

    /// Values from transformers' `_compute_llama3_parameters` replayed in numpy float32 by
    /// scripts/rope-freqs-reference.py: theta 5e5, head_dim 128, factor 8, low 1, high 4,
    /// original context 8192 (Llama 3.1's).
    #[test]
    fn llama3_frequencies_match_transformers() {
        let freqs = RopeFreqs { theta: 500000.0, rot_dim: 128, scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 } };
        let got = freqs.inv_freq(1).unwrap();
        // 0-28: high frequencies, kept; 29-34: blended; 35-63: divided by 8.
        for (i, want) in [(0, 1.0), (20, 0.016560440883040428), (28, 0.0032114461064338684), (29, 0.0021665706299245358), (31, 0.0008567514596506953), (34, 0.0001785077911335975), (35, 9.556212899042293e-05), (63, 3.068925877869333e-07)] {
            // An ulp or two of f32 powf against numpy's.
            assert!((got[i] as f64 - want).abs() <= 3e-7 * want, "inv_freq[{i}] = {}, expected {want}", got[i]);
        }
    }

    #[test]
    fn linear_dynamic_and_gguf_factors_scale_the_frequencies() {
        let base = RopeFreqs { theta: 10000.0, rot_dim: 64, scaling: RopeScaling::None }.inv_freq(1).unwrap();
        let with = |scaling| RopeFreqs { theta: 10000.0, rot_dim: 64, scaling }.inv_freq(5000).unwrap();
        let linear = with(RopeScaling::Linear { factor: 4.0 });
        assert!(linear.iter().zip(&base).all(|(l, b)| *l == b / 4.0));
        let factors: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 8.0).collect();
        let gguf = with(RopeScaling::FreqFactors(factors.clone()));
        assert!(gguf.iter().zip(&base).zip(&factors).all(|((g, b), f)| *g == b / f));
        // Dynamic NTK, scripts/rope-freqs-reference.py's replay of transformers' (factor 2, max
        // 2048, sequence 5000): base 1e4 · (2·5000/2048 - 1)^(64/62).
        let dynamic = with(RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 2048 });
        for (i, want) in [(0, 1.0), (1, 0.7177864909172058), (17, 0.003563852747902274), (31, 3.4344215237069875e-05)] {
            assert!((dynamic[i] as f64 - want).abs() <= 1e-6 * want, "dynamic inv_freq[{i}] = {}, expected {want}", dynamic[i]);
        }
        // Within the original context dynamic NTK is the plain table.
        let short = RopeFreqs { theta: 10000.0, rot_dim: 64, scaling: RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 2048 } }.inv_freq(100).unwrap();
        assert_eq!(short, base);
    }

    #[test]
    fn bad_scalings_are_errors_naming_the_field() {
        let with = |rot_dim, scaling| RopeFreqs { theta: 10000.0, rot_dim, scaling }.inv_freq(1).unwrap_err().to_string();
        assert!(with(63, RopeScaling::None).contains("63"));
        assert!(with(64, RopeScaling::FreqFactors(vec![1.0; 31])).contains("rope_freqs.weight has 31"));
        assert!(with(64, RopeScaling::Linear { factor: 0.0 }).contains("factor"));
        assert!(with(64, RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 4.0, high_freq_factor: 1.0, original_max_position_embeddings: 8192 }).contains("high_freq_factor"));
    }

    fn longrope(rot_dim: usize) -> RopeFreqs {
        // Phi-3-mini-128k's contexts; factors that differ per frequency.
        let short_factor = (0..rot_dim / 2).map(|i| 1.0 + i as f32 / 64.0).collect();
        let long_factor = (0..rot_dim / 2).map(|i| 1.0 + i as f32).collect();
        RopeFreqs { theta: 10000.0, rot_dim, scaling: RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings: 4096, max_position_embeddings: 131072, attention_factor: None } }
    }

    #[test]
    fn longrope_picks_its_factors_by_length_and_scales_attention() {
        let f = longrope(96);
        let base = RopeFreqs { theta: 10000.0, rot_dim: 96, scaling: RopeScaling::None }.inv_freq(1).unwrap();
        let (short, long) = (f.inv_freq(4096).unwrap(), f.inv_freq(4097).unwrap());
        for i in 0..48 {
            // 1 / (factor · base^(2i/d)) against (1 / base^(2i/d)) / factor: an ulp or two apart.
            assert!((short[i] - base[i] / (1.0 + i as f32 / 64.0)).abs() <= 3e-7 * base[i], "short {i}");
            assert!((long[i] - base[i] / (1.0 + i as f32)).abs() <= 3e-7 * base[i], "long {i}");
        }
        // √(1 + ln(131072 / 4096) / ln(4096)) = √(1 + 5 ln 2 / (12 ln 2)) = √(17/12).
        assert!((f.attention_factor() - (17f32 / 12.0).sqrt()).abs() < 1e-6, "{}", f.attention_factor());
        let given = RopeFreqs { scaling: RopeScaling::LongRope { short_factor: vec![1.0; 48], long_factor: vec![1.0; 48], original_max_position_embeddings: 4096, max_position_embeddings: 131072, attention_factor: Some(1.5) }, ..f.clone() };
        assert_eq!(given.attention_factor(), 1.5);
        let short_list = RopeFreqs { scaling: RopeScaling::LongRope { short_factor: vec![1.0; 47], long_factor: vec![1.0; 48], original_max_position_embeddings: 4096, max_position_embeddings: 131072, attention_factor: None }, ..f };
        assert!(short_list.inv_freq(10).unwrap_err().to_string().contains("short_factor has 47"));
    }

    gpu_test!(fn rope_with_an_attention_factor_matches_reference(ctx) {
        let (t, h, d, pos0) = (3usize, 5usize, 96usize, 4095usize);
        let f = longrope(d);
        for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
            let x = test_values(t * h * d, 34);
            let xt = Tensor::upload_f32(ctx, "x", &[t, h, d], &x).unwrap();
            let ft = f.upload(ctx, pos0 + t).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            rope_freqs_scaled(&mut rec, &xt, &ft, t, h, d, pos0, style, f.attention_factor(), 0).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&xt.buf, 0, t * h * d).await.unwrap();
            let want = reference_freqs_scaled(&x, h, d, pos0, &f.inv_freq(pos0 + t).unwrap(), style, f.attention_factor());
            // As the other kernels at positions near 4100, times the factor (1.19).
            let abs = 1.2e-3 + 2.4 * crate::ops::sin_cos_tolerance(ctx);
            compare(&got, &want, abs, 1e-4).unwrap_or_else(|e| panic!("{style:?}: {e}"));
        }
    });

    gpu_test!(fn rope_shift_turns_a_slots_keys_back_and_leaves_the_rest(ctx) {
        use crate::weights::dtype::{f16_to_f32, f32_to_f16};
        // (slots, kv heads, rows, head_dim, rotated dims, slot, first row, rows turned, delta):
        // partial rotary, odd counts, the last slot's last row, a delta past 2π's many turns.
        let cases = [(1usize, 1usize, 5usize, 2usize, 2usize, 0usize, 0usize, 5usize, 1usize), (3, 3, 11, 10, 8, 1, 2, 7, 4), (2, 5, 9, 12, 4, 1, 0, 9, 1000), (2, 2, 13, 64, 64, 0, 6, 7, 37)];
        for &(slots, heads, len, d, rot, slot, row0, n_rows, delta) in &cases {
            let freqs = RopeFreqs { theta: 10000.0, rot_dim: rot, scaling: RopeScaling::None };
            let inv = freqs.inv_freq(1).unwrap();
            let ft = freqs.upload(ctx, 1).unwrap();
            let n = slots * heads * len * d;
            for style in [RopeStyle::Neox, RopeStyle::Adjacent] {
                for f16 in [false, true] {
                    let x: Vec<f32> = test_values(n, 35).iter().map(|&v| if f16 { f16_to_f32(f32_to_f16(v)) } else { v }).collect();
                    let words: Vec<u32> = if f16 { x.chunks(2).map(|p| u32::from(f32_to_f16(p[0])) | (u32::from(f32_to_f16(p[1])) << 16)).collect() } else { x.iter().map(|v| v.to_bits()).collect() };
                    let cache = Tensor::upload_f32(ctx, "k cache", &[words.len()], bytemuck::cast_slice(&words)).unwrap();
                    let rows = CacheRows { slot, n_slots: slots, n_kv_heads: heads, cache_len: len, head_dim: d, row0, n_rows, f16 };
                    let mut rec = Recorder::new(ctx, "test");
                    let r = rope_shift(&mut rec, &cache, &ft, rows, delta, style, 0);
                    if f16 && style == RopeStyle::Neox && rot % 4 != 0 {
                        assert!(r.unwrap_err().to_string().contains("multiple of 4"));
                        continue;
                    }
                    r.unwrap();
                    rec.submit().unwrap();
                    let got_words = ctx.read_u32_async(&cache.buf, 0, words.len()).await.unwrap();
                    let got: Vec<f32> = if f16 { got_words.iter().flat_map(|&w| [f16_to_f32(w as u16), f16_to_f32((w >> 16) as u16)]).collect() } else { got_words.iter().map(|&w| f32::from_bits(w)).collect() };
                    // Only the slot's rows row0 .. row0 + n_rows of each head turn.
                    let mut want = x.clone();
                    for h in 0..heads {
                        let at = ((slot * heads + h) * len + row0) * d;
                        let turned = reference_shift(&x[at..at + n_rows * d], d, delta, &inv, style);
                        want[at..at + n_rows * d].copy_from_slice(&turned);
                    }
                    if f16 {
                        want = want.iter().map(|&v| f16_to_f32(f32_to_f16(v))).collect();
                    }
                    // Values in [-1, 1]: f32 rounding and sin/cos's error twice over (angles near
                    // 1000 rad lose ~6e-5 to f32 range reduction, as in the RoPE tests); an f16
                    // cache rounds the result to f16 (one ulp at 1 is 2^-10).
                    let abs = if delta > 100 { 1e-3 } else { 1e-5 } + 2.0 * crate::ops::sin_cos_tolerance(ctx) + if f16 { 1e-3 } else { 0.0 };
                    compare(&got, &want, abs, 1e-4).unwrap_or_else(|e| panic!("{slots}x{heads}x{len}x{d} rot {rot} slot {slot} rows {row0}+{n_rows} delta {delta} {style:?} f16 {f16}: {e}"));
                }
            }
        }
        // Rows outside the cache are refused, naming them.
        let ft = RopeFreqs { theta: 10000.0, rot_dim: 4, scaling: RopeScaling::None }.upload(ctx, 1).unwrap();
        let cache = Tensor::upload_f32(ctx, "k cache", &[40], &[0.0; 40]).unwrap();
        let rows = CacheRows { slot: 0, n_slots: 1, n_kv_heads: 1, cache_len: 10, head_dim: 4, row0: 8, n_rows: 3, f16: false };
        let err = rope_shift(&mut Recorder::new(ctx, "test"), &cache, &ft, rows, 1, RopeStyle::Neox, 0).unwrap_err().to_string();
        assert!(err.contains("rows 8..11 of slot 0"), "{err}");
    });
}

#[path = "rope_backward.rs"]
pub mod backward;
