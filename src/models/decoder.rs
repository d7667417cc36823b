//! The one decoder-only Transformer forward pass, read from the config's block description:
//! embedding (scaled, plus absolute positions where the model has them), then per layer
//! norm → Q/K/V → Q/K norm → RoPE → attention over the KV cache → O (→ post-norm) → +residual,
//! norm → MLP (→ post-norm) → +residual; final norm, LM head. Every architecture loads into
//! this struct; weights the description does not use are None.
//! Model code only calls ops; it never touches wgpu.

use super::builder::{name, Builder, GateUp, Name, Qkv};
use super::config::{Mlp, ModelConfig, Norm, Positions, Rope, RopeScaling};
use super::state::{LogitRows, Placed, Segment, State};
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor, Weight};
use crate::ops::matmul::{self, linear, linear_out, NormIn, Out, RopeKv, Store};
use crate::ops::attention::{AttnOpts, Placement};
use crate::ops::norm::RmsOpts;
use crate::ops::{activation, attention, embed, norm, posenc, rope};

/// A norm's weight, and its bias for LayerNorm.
pub struct NormWeights {
    pub w: Tensor,         // (width,)
    pub b: Option<Tensor>, // (width,) LayerNorm
}

impl NormWeights {
    /// A LayerNorm's weight and bias, `n.weight` and `n.bias`.
    pub fn layer(b: &Builder, n: Name, dim: usize) -> Result<Self> {
        Ok(NormWeights { w: b.vector(n, &[dim])?, b: Some(b.bias(n, &[dim])?) })
    }
}

/// The MLP's input projections.
pub enum MlpIn {
    /// SwiGLU / GeGLU.
    Glu(GateUp), // (2 * ffn_dim, dim)
    /// GELU MLP: fc1 and its bias.
    Up(Weight, Tensor), // (ffn_dim, dim), (ffn_dim,)
}

pub struct Layer {
    pub attn_norm: NormWeights,
    pub qkv: Qkv,                   // (n_heads * head_dim + 2 * n_kv_heads * head_dim, dim)
    pub q_norm: Option<Tensor>,     // (head_dim,)
    pub k_norm: Option<Tensor>,     // (head_dim,)
    pub wo: Weight,                 // (dim, n_heads * head_dim)
    pub bo: Option<Tensor>,         // (dim,)
    pub post_attn_norm: Option<NormWeights>,
    pub ffn_norm: NormWeights,
    pub mlp_in: MlpIn,
    pub w_down: Weight,             // (dim, ffn_dim)
    pub b_down: Option<Tensor>,     // (dim,)
    pub post_ffn_norm: Option<NormWeights>,
}

pub struct Decoder {
    pub cfg: ModelConfig,
    pub embed: Weight,              // (vocab, dim)
    /// Learned positions: (max_ctx, dim).
    pub positions: Option<Tensor>,
    pub layers: Vec<Layer>,
    pub norm: NormWeights,          // (dim,)
    pub lm_head: Option<Weight>,    // (vocab, dim); None: tied to `embed`
    /// RoPE inverse frequencies (n_rot / 2,) of the block's attention and of the local layers'.
    rope_tables: [Option<Tensor>; 2],
    /// Longrope's table with the long factors (n_rot / 2,), for calls beyond the original
    /// context; `rope_tables` then hold the short factors'.
    long_rope_table: Option<Tensor>,
    /// Per layer, where its norm, Q/K/V projection, RoPE and cache write can run as one
    /// dispatch (`matmul::RopeKv`: RMSNorm, one Q/K/V weight without a bias, adjacent RoPE
    /// pairs from a fixed table, no Q/K norm): the norm weight then the RoPE table, the binding
    /// that fused store reads both from.
    qkv_aux: Vec<Option<Tensor>>,
    /// Fold norms, RoPE and the cache write into the projections where the kernels allow
    /// (`QUILL_FUSE=0` turns it off, to compare).
    fuse: bool,
    /// Both of longrope's tables (short, long) for a batch of several slots, where each slot
    /// picks its own by its sequence's length.
    both_rope_tables: Option<Tensor>,
}

/// GGUF's per-frequency RoPE factors (Llama 3.1+ as llama.cpp converts it).
const ROPE_FREQS: Name = name("rope_freqs", "");

/// Environment variable that, set to 0, keeps every norm, RoPE and cache write in its own pass.
pub const FUSE_ENV: &str = "QUILL_FUSE";

/// A linear layer whose input norm may be folded in (`Decoder::norm_into`).
#[allow(clippy::too_many_arguments)]
fn project(rec: &mut Recorder, op: &'static str, i: Option<usize>, x: &Tensor, norm: Option<NormIn>, w: &Weight, bias: Option<&Tensor>, out: Out, n: usize) -> Result<()> {
    match norm {
        Some(nm) => matmul::linear_normed(rec, op, i, x, nm, w, out, n),
        None => linear_out(rec, op, i, x, w, bias, out, n),
    }
}

/// GGUF's longrope factors (Phi-3's 128k variants as llama.cpp converts them).
const ROPE_FACTORS_SHORT: Name = name("rope_factors_short", "");
const ROPE_FACTORS_LONG: Name = name("rope_factors_long", "");

/// How one attention call turns Q and K (`Decoder::rope_turn`).
enum Turn<'a> {
    /// By one table of inverse frequencies, cos and sin times the factor.
    Table(&'a Tensor, f32),
    /// Longrope in a batch: the short then the long table, the slots that take the long one
    /// (a bit each), the factor, and the call's token table.
    PerSlot(&'a Tensor, u64, f32, &'a Tensor),
    /// Not at all (no table for this layer).
    None,
}

/// Which of longrope's two tables a RoPE table is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Factors {
    Short,
    Long,
    /// The short then the long table in one tensor (`rope::rope_freqs_per_slot`).
    Both,
}

/// The inverse frequencies of `rope`, computed on the CPU (every scaling is CPU code) and
/// uploaded once. Dynamic NTK's table is the plain one up to its original context; the forward
/// pass refuses positions beyond it. For longrope, `which` picks the short or the long factors,
/// from `cfg.longrope_factors` or the file's tensors.
fn rope_table(b: &Builder, cfg: &ModelConfig, rope: &Rope, which: Factors) -> Result<Tensor> {
    let scaling = match rope.scaling {
        RopeScaling::LongRope { original_ctx, attention_factor } => {
            let n = rope.n_rot / 2;
            let (short_factor, long_factor) = match &cfg.longrope_factors {
                Some(f) => (f.short.clone(), f.long.clone()),
                None => (b.f32(ROPE_FACTORS_SHORT, &[n])?, b.f32(ROPE_FACTORS_LONG, &[n])?),
            };
            let attention_factor = Some(attention_factor);
            rope::RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings: original_ctx, max_position_embeddings: cfg.max_ctx, attention_factor }
        }
        RopeScaling::None => rope::RopeScaling::None,
        RopeScaling::Linear { factor } => rope::RopeScaling::Linear { factor },
        RopeScaling::Dynamic { factor, original_ctx } => rope::RopeScaling::Dynamic { factor, max_position_embeddings: original_ctx },
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_ctx } => {
            rope::RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: original_ctx }
        }
        RopeScaling::FreqFactors => rope::RopeScaling::FreqFactors(b.f32(ROPE_FREQS, &[rope.n_rot / 2])?),
    };
    let freqs = rope::RopeFreqs { theta: rope.theta, rot_dim: rope.n_rot, scaling };
    let seq_len = match rope.scaling {
        RopeScaling::Dynamic { original_ctx, .. } => original_ctx,
        RopeScaling::LongRope { original_ctx, .. } if which == Factors::Long => original_ctx + 1,
        _ => 1,
    };
    let err = |e: Error| Error::format(b.file(), format!("RoPE frequencies: {e}"));
    if let (Factors::Both, RopeScaling::LongRope { original_ctx, .. }) = (which, rope.scaling) {
        let both = [freqs.inv_freq(1).map_err(err)?, freqs.inv_freq(original_ctx + 1).map_err(err)?].concat();
        return Tensor::upload_f32(b.ctx(), "rope inv_freq short, long", &[both.len()], &both);
    }
    freqs.upload(b.ctx(), seq_len).map_err(err)
}

/// The RoPE table of a state whose context is longer than a `dynamic` NTK model's original
/// one, or None where the plain table serves. transformers grows the base for the longest
/// position of each forward call, so keys cached by earlier calls keep the frequencies they
/// were written with and its logits depend on how a sequence is split into calls. quill fixes
/// one table for the whole context instead (as vLLM does, there for the full scaled context):
/// the base for `ctx_len` positions, from the first token on, so every cached key and query
/// turns alike. A sequence of exactly `ctx_len` tokens in one call equals transformers'.
pub(crate) fn dynamic_rope_table(ctx: &crate::gpu::Context, cfg: &ModelConfig, ctx_len: usize) -> Result<Option<Tensor>> {
    let mut table = None;
    for i in 0..cfg.n_layers {
        let Some(rope) = cfg.attention(i).rope else { continue };
        let RopeScaling::Dynamic { factor, original_ctx } = rope.scaling else { continue };
        if ctx_len <= original_ctx {
            continue;
        }
        let freqs = rope::RopeFreqs { theta: rope.theta, rot_dim: rope.n_rot, scaling: rope::RopeScaling::Dynamic { factor, max_position_embeddings: original_ctx } };
        match &table {
            None => table = Some((rope, freqs.upload(ctx, ctx_len)?)),
            Some((first, _)) if *first != rope => {
                return Err(Error::Unsupported(format!("{}: dynamic NTK RoPE that differs between layers", cfg.arch.name())));
            }
            Some(_) => {}
        }
    }
    Ok(table.map(|(_, t)| t))
}

impl Decoder {
    /// Checks that the forward pass can honour everything the config describes, and uploads
    /// the RoPE tables (reading `rope_freqs.weight` through `b` where the config says so).
    pub fn new(b: &Builder, cfg: ModelConfig, embed: Weight, positions: Option<Tensor>, layers: Vec<Layer>, norm: NormWeights, lm_head: Option<Weight>) -> Result<Self> {
        let arch = cfg.arch.name();
        let refuse = |what: String| Err(Error::Unsupported(format!("{arch}: {what} (not implemented in quill's forward pass)")));
        if cfg.block.post_norms && cfg.block.norm != Norm::Rms {
            return refuse("post-norms with LayerNorm".into());
        }
        if cfg.embed_scale != 1.0 && matches!(cfg.positions, Positions::Learned) {
            return refuse(format!("embedding scale {} with learned positions", cfg.embed_scale));
        }
        if matches!(cfg.positions, Positions::Learned) != positions.is_some() {
            return refuse(format!("positions {:?} without their table", cfg.positions));
        }
        if layers.len() != cfg.n_layers {
            return Err(Error::format(arch, format!("{} layers loaded for {}", layers.len(), cfg.n_layers)));
        }
        let attentions = [Some(&cfg.block.attention), cfg.local.as_ref().map(|l| &l.attention)];
        let [global, local] = attentions.map(|a| a.and_then(|a| a.rope.as_ref()).map(|r| rope_table(b, &cfg, r, Factors::Short)).transpose());
        let rope_tables = [global?, local?];
        if cfg.local.as_ref().and_then(|l| l.attention.rope).is_some_and(|r| matches!(r.scaling, RopeScaling::LongRope { .. })) {
            return refuse("longrope on sliding-window layers".into());
        }
        let (long_rope_table, both_rope_tables) = match cfg.block.attention.rope {
            Some(r) if matches!(r.scaling, RopeScaling::LongRope { .. }) => (Some(rope_table(b, &cfg, &r, Factors::Long)?), Some(rope_table(b, &cfg, &r, Factors::Both)?)),
            _ => (None, None),
        };
        let qkv_aux = Self::qkv_aux(b, &cfg, &layers, &rope_tables)?;
        let fuse = std::env::var(FUSE_ENV).map_or(true, |v| v.trim() != "0");
        Ok(Decoder { cfg, embed, positions, layers, norm, lm_head, rope_tables, long_rope_table, both_rope_tables, qkv_aux, fuse })
    }

    /// `qkv_aux` of every layer, copied on the GPU from the norm weights and RoPE tables.
    fn qkv_aux(b: &Builder, cfg: &ModelConfig, layers: &[Layer], rope_tables: &[Option<Tensor>; 2]) -> Result<Vec<Option<Tensor>>> {
        let ctx = b.ctx();
        let mut rec = Recorder::new(ctx, "fused Q/K/V inputs");
        let mut out = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let r = cfg.attention(i).rope;
            let local = cfg.local.as_ref().is_some_and(|lc| lc.is_local.get(i) == Some(&true));
            let static_table = r.is_some_and(|r| r.style == rope::RopeStyle::Adjacent && !matches!(r.scaling, RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }));
            let table = rope_tables[local as usize].as_ref().filter(|_| static_table);
            let fusable = cfg.block.norm == Norm::Rms && l.q_norm.is_none() && l.k_norm.is_none() && matches!(l.qkv, Qkv::Fused(_, None));
            match table.filter(|_| fusable) {
                Some(t) => {
                    let (g, f) = (l.attn_norm.w.numel(), t.numel());
                    let aux = Tensor::zeros(ctx, "norm weight and RoPE table", &[g + f])?;
                    rec.copy(&l.attn_norm.w.buf, 0, &aux.buf, 0, 4 * g as u64);
                    rec.copy(&t.buf, 0, &aux.buf, 4 * g as u64, 4 * f as u64);
                    out.push(Some(aux));
                }
                None => out.push(None),
            }
        }
        rec.submit()?;
        Ok(out)
    }

    /// The norm before projections of `weights` over `n` tokens, folded into their input
    /// (`NormIn`) where the kernels allow (RMSNorm, mat-vecs, no bias); else its own pass from
    /// `x` into `st.xn`. Returns the projections' input and the fold.
    #[allow(clippy::too_many_arguments)]
    fn norm_into<'a>(&self, rec: &mut Recorder, st: &'a State, x: &'a Tensor, w: &'a NormWeights, weights: &[&Weight], bias: bool, n: usize, layer: Option<usize>) -> Result<(&'a Tensor, Option<NormIn<'a>>)> {
        let shape = matmul::MatVecShape::chosen(rec.ctx)?;
        if self.fuse && self.cfg.block.norm == Norm::Rms && !bias && weights.iter().all(|w| matmul::fuses_norm(rec.ctx, n, w, shape)) {
            return Ok((x, Some(NormIn { aux: &w.w, off: 0, eps: self.cfg.norm_eps })));
        }
        self.norm(rec, x, w, &st.xn, n, layer)?;
        Ok((&st.xn, None))
    }

    pub fn weights(&self) -> Vec<&Weight> {
        let mut v = vec![&self.embed];
        for l in &self.layers {
            match &l.qkv {
                Qkv::Fused(w, _) => v.push(w),
                Qkv::Split(w, _) => v.extend(w.iter()),
            }
            v.push(&l.wo);
            match &l.mlp_in {
                MlpIn::Glu(GateUp::Fused(w)) | MlpIn::Up(w, _) => v.push(w),
                MlpIn::Glu(GateUp::Split(a, b)) => v.extend([a, b]),
            }
            v.push(&l.w_down);
        }
        v.extend(self.lm_head.as_ref());
        v
    }

    fn rms(&self) -> RmsOpts {
        RmsOpts::eps(self.cfg.norm_eps)
    }

    /// out = norm(x) over `n_rows` rows, as the block's norm kind says.
    fn norm(&self, rec: &mut Recorder, x: &Tensor, w: &NormWeights, out: &Tensor, n_rows: usize, layer: Option<usize>) -> Result<()> {
        let eps = self.cfg.norm_eps;
        match (self.cfg.block.norm, &w.b) {
            (Norm::Rms, _) => norm::rms_norm(rec, x, &w.w, out, n_rows, eps, layer),
            (Norm::Layer, Some(b)) => norm::layer_norm(rec, x, &w.w, b, out, n_rows, eps, layer),
            (Norm::Layer, None) => Err(Error::Unsupported(format!("{}: LayerNorm without a bias", self.cfg.arch.name()))),
        }
    }

    /// `linear` of `x` into the residual `st.x`: added directly, or through a post-norm
    /// (Gemma: x += norm(W·a)), with `st.xn` holding W·a in between.
    #[allow(clippy::too_many_arguments)]
    fn project_into_residual(&self, rec: &mut Recorder, op: &'static str, i: usize, st: &State, a: &Tensor, w: &Weight, bias: Option<&Tensor>, post: Option<&NormWeights>, n: usize) -> Result<()> {
        match post {
            None => linear(rec, op, Some(i), a, w, bias, &st.x, n, Store::Accumulate),
            Some(p) => {
                linear(rec, op, Some(i), a, w, bias, &st.xn, n, Store::Write)?;
                norm::rms_norm_with(rec, &st.xn, &p.w, &st.x, n, self.rms(), Store::Accumulate, Some(i))
            }
        }
    }

    /// Records the forward pass of `n` tokens of slot 0 whose ids sit in its token row at
    /// positions pos0..pos0 + n, writing logits for the rows `rows` asks for into `st.logits`.
    pub fn forward(&self, rec: &mut Recorder, st: &State, pos0: usize, n: usize, rows: LogitRows) -> Result<()> {
        self.forward_batch(rec, st, &[Segment { slot: 0, pos0, n }], 0, rows)
    }

    /// Records one forward pass over a batch of tokens from several slots, `segs` (each
    /// position moved on by `step`; several segments need `State::set_table` first): every
    /// weight is read once for the whole batch, and each token attends only to its own slot.
    /// Logits of `rows` go to `st.logits` (with `Last`, row i is segment i's last token).
    pub fn forward_batch(&self, rec: &mut Recorder, st: &State, segs: &[Segment], step: usize, rows: LogitRows) -> Result<()> {
        let c = &self.cfg;
        let p = st.placed(rec, segs, step)?;
        let (n, (ids, id0)) = (p.n, p.ids);
        let table = match &p.at {
            Placement::Table(t) => Some(t),
            Placement::Run => None,
        };
        match (c.positions, &self.positions) {
            (Positions::Learned, Some(positions)) => {
                embed::embed(rec, &self.embed, ids, id0, n, &st.x)?;
                posenc::learned_at(rec, &st.x, positions, p.pos0, n, table)?
            }
            // The sinusoidal op scales the embeddings as it adds the positions.
            (Positions::Sinusoidal { offset, layout }, _) => {
                embed::embed(rec, &self.embed, ids, id0, n, &st.x)?;
                posenc::sinusoidal_at(rec, &st.x, c.dim, p.pos0 + offset, n, c.embed_scale, layout, table)?
            }
            _ if c.embed_scale != 1.0 => embed::embed_scaled(rec, &self.embed, ids, id0, n, &st.x, c.embed_scale)?,
            _ => embed::embed(rec, &self.embed, ids, id0, n, &st.x)?,
        }
        for (i, l) in self.layers.iter().enumerate() {
            self.attention_block(rec, st, l, i, &p)?;
            self.mlp_block(rec, st, l, i, n)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let (src, n_rows) = st.logit_rows(rec, rows, segs, c.dim);
        let (xin, nm) = self.norm_into(rec, st, src, &self.norm, &[head], false, n_rows, None)?;
        project(rec, "lm_head", None, xin, nm, head, None, Out::One(&st.logits, Store::Write), n_rows)?;
        if let Some(cap) = c.final_softcap {
            activation::softcap(rec, &st.logits, n_rows * c.vocab, cap, None)?;
        }
        Ok(())
    }

    /// The RoPE table of layer `i` for a call whose last position is `end - 1`, and what its cos
    /// and sin are multiplied by. Longrope switches to its long factors once a call reaches
    /// beyond the original context, as transformers does (keys already cached keep theirs).
    fn rope_table(&self, i: usize, rope: &Rope, end: usize) -> (Option<&Tensor>, f32) {
        if let (RopeScaling::LongRope { original_ctx, attention_factor }, Some(long)) = (rope.scaling, &self.long_rope_table) {
            let table = if end > original_ctx { long } else { self.rope_tables[0].as_ref().unwrap_or(long) };
            return (Some(table), attention_factor);
        }
        let local = self.cfg.local.as_ref().is_some_and(|l| l.is_local.get(i) == Some(&true));
        (self.rope_tables[local as usize].as_ref(), 1.0)
    }

    /// What a context shift (`State::shift`) turns each layer's keys back with: its RoPE table
    /// and pair style (None for a layer without RoPE). None when the model's keys cannot be
    /// moved to other positions: absolute positions added to the embeddings (learned or
    /// sinusoidal) are in every key and value; dynamic NTK and longrope pick their table by the
    /// sequence's length; a sliding-window ring does not hold the whole context.
    pub fn shift_turns(&self, st: &State) -> Option<Vec<Option<(&Tensor, rope::RopeStyle)>>> {
        let c = &self.cfg;
        if c.positions != super::config::Positions::Rope || st.cache_len.iter().any(|&l| l != st.ctx_len) {
            return None;
        }
        (0..c.n_layers)
            .map(|i| match c.attention(i).rope {
                None => Some(None),
                Some(r) if matches!(r.scaling, RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }) => None,
                Some(r) => self.rope_table(i, &r, 0).0.map(|t| Some((t, r.style))),
            })
            .collect()
    }

    /// Longrope over a batch of several slots: both tables, the slots (a bit each) whose
    /// sequence reaches beyond the original context in this pass (those take the long factors,
    /// as each would alone), and the attention factor. None for any other RoPE, or slots past 64.
    fn per_slot_longrope(&self, rope: &Rope, p: &Placed) -> Option<(&Tensor, u64, f32)> {
        let (RopeScaling::LongRope { original_ctx, attention_factor }, Some(both)) = (rope.scaling, &self.both_rope_tables) else { return None };
        let mut long = 0u64;
        for &(slot, end) in &p.slot_ends {
            if slot >= 64 {
                return None;
            }
            long |= u64::from(end > original_ctx) << slot;
        }
        Some((both, long, attention_factor))
    }

    /// x += Wo · attention(rope(qn(Wq·norm(x))), rope(kn(Wk·norm(x))), Wv·norm(x))
    fn attention_block(&self, rec: &mut Recorder, st: &State, l: &Layer, i: usize, p: &Placed) -> Result<()> {
        let c = &self.cfg;
        let n = p.n;
        let a = c.attention(i);
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let shape = st.attn_shape(c, i, p);
        let opts = AttnOpts { scale: a.scale, window: a.window, softcap: a.softcap };
        let (weights, bias): (Vec<&Weight>, bool) = match &l.qkv {
            Qkv::Fused(w, b) => (vec![w], b.is_some()),
            Qkv::Split(ws, b) => (ws.iter().collect(), b.is_some()),
        };
        let (xin, nm) = self.norm_into(rec, st, &st.x, &l.attn_norm, &weights, bias, n, Some(i))?;
        if let (Some(nm), Some(aux), Qkv::Fused(w, None), Some(r)) = (nm, &self.qkv_aux[i], &l.qkv, a.rope) {
            // Norm, Q/K/V, RoPE and the cache write in one dispatch.
            let tokens = attention::cache_places(&st.k_cache[i], shape, &opts, c.kv_format, &p.at)?;
            let rk = RopeKv {
                q: &st.q,
                k_cache: &st.k_cache[i],
                v_cache: &st.v_cache[i],
                q_rows: q_dim,
                kv_rows: kv_dim,
                head_dim: c.head_dim,
                rot_dim: r.n_rot,
                freqs_off: c.dim,
                amp: 1.0,
                kv_f16: c.kv_format == attention::KvFormat::F16,
                kv_stride: shape.ctx_len * c.head_dim,
                tokens,
            };
            matmul::linear_normed(rec, "qkv_proj", Some(i), xin, NormIn { aux, ..nm }, w, Out::RopeKv(&rk), n)?;
            attention::attention_at(rec, &st.q, &st.k_cache[i], &st.v_cache[i], &st.att, &st.att_partials, shape, &opts, c.kv_format, &p.at, i)?;
            return self.project_into_residual(rec, "o_proj", i, st, &st.att, &l.wo, l.bo.as_ref(), l.post_attn_norm.as_ref(), n);
        }
        match &l.qkv {
            Qkv::Fused(w, b) => project(rec, "qkv_proj", Some(i), xin, nm, w, b.as_ref(), Out::Split3(&st.q, &st.k, &st.v, q_dim, q_dim + kv_dim), n)?,
            Qkv::Split([wq, wk, wv], b) => {
                let [bq, bk, bv] = match b {
                    Some([bq, bk, bv]) => [Some(bq), Some(bk), Some(bv)],
                    None => [None; 3],
                };
                project(rec, "q_proj", Some(i), xin, nm, wq, bq, Out::One(&st.q, Store::Write), n)?;
                project(rec, "k_proj", Some(i), xin, nm, wk, bk, Out::One(&st.k, Store::Write), n)?;
                project(rec, "v_proj", Some(i), xin, nm, wv, bv, Out::One(&st.v, Store::Write), n)?;
            }
        }
        let meta = match &p.at {
            Placement::Table(t) => Some(t.meta),
            Placement::Run => None,
        };
        let turn = a.rope.map(|r| (r, self.rope_turn(st, i, &r, p, meta)));
        let norms = match (&l.q_norm, &l.k_norm) {
            (Some(q), Some(k)) => Some(rope::HeadNorms { q, k, opts: self.rms() }),
            _ => None,
        };
        match (norms, turn) {
            // Qwen3's and Gemma 3's per-head norms and RoPE in one dispatch.
            (Some(norms), Some((r, Turn::Table(table, amp)))) if self.fuse => {
                rope::norm_rope_at(rec, &st.q, &st.k, norms, table, n, c.n_heads, c.n_kv_heads, c.head_dim, p.pos0, meta, r.style, amp, i)?;
            }
            (norms, turn) => {
                if let Some(hn) = norms {
                    norm::rms_norm_heads(rec, &st.q, hn.q, n, c.n_heads, hn.opts, Some(i))?;
                    norm::rms_norm_heads(rec, &st.k, hn.k, n, c.n_kv_heads, hn.opts, Some(i))?;
                }
                match turn {
                    Some((r, Turn::PerSlot(both, long_slots, amp, meta))) => {
                        rope::rope_freqs_per_slot(rec, &st.q, both, n, c.n_heads, c.head_dim, p.pos0, meta, long_slots, r.style, amp, i)?;
                        rope::rope_freqs_per_slot(rec, &st.k, both, n, c.n_kv_heads, c.head_dim, p.pos0, meta, long_slots, r.style, amp, i)?;
                    }
                    Some((r, Turn::Table(table, amp))) => {
                        rope::rope_freqs_at(rec, &st.q, table, n, c.n_heads, c.head_dim, p.pos0, meta, r.style, amp, i)?;
                        rope::rope_freqs_at(rec, &st.k, table, n, c.n_kv_heads, c.head_dim, p.pos0, meta, r.style, amp, i)?;
                    }
                    Some((_, Turn::None)) | None => {}
                }
            }
        }
        attention::kv_write_at(rec, &st.k, &st.v, &st.k_cache[i], &st.v_cache[i], shape, &opts, c.kv_format, &p.at, i)?;
        attention::attention_at(rec, &st.q, &st.k_cache[i], &st.v_cache[i], &st.att, &st.att_partials, shape, &opts, c.kv_format, &p.at, i)?;
        self.project_into_residual(rec, "o_proj", i, st, &st.att, &l.wo, l.bo.as_ref(), l.post_attn_norm.as_ref(), n)
    }

    /// How layer `i`'s Q and K turn in this call: dynamic NTK past the original context by the
    /// state's one table, longrope in a batch by each slot's own factors, else the layer's table.
    fn rope_turn<'a>(&'a self, st: &'a State, i: usize, r: &Rope, p: &Placed<'a>, meta: Option<&'a Tensor>) -> Turn<'a> {
        if let (Some(meta), Some((both, long_slots, amp))) = (meta, self.per_slot_longrope(r, p)) {
            return Turn::PerSlot(both, long_slots, amp, meta);
        }
        let (table, amp) = match (&st.rope_dynamic, r.scaling) {
            (Some(t), RopeScaling::Dynamic { .. }) => (Some(t), 1.0),
            _ => self.rope_table(i, r, p.end),
        };
        table.map_or(Turn::None, |t| Turn::Table(t, amp))
    }

    /// x += W_down · act(W_gate·norm(x), W_up·norm(x))
    fn mlp_block(&self, rec: &mut Recorder, st: &State, l: &Layer, i: usize, n: usize) -> Result<()> {
        let c = &self.cfg;
        let weights: Vec<&Weight> = match &l.mlp_in {
            MlpIn::Glu(GateUp::Fused(w)) => vec![w],
            MlpIn::Glu(GateUp::Split(g, u)) => vec![g, u],
            MlpIn::Up(w, _) => vec![w],
        };
        let bias = matches!(l.mlp_in, MlpIn::Up(..));
        let (xin, nm) = self.norm_into(rec, st, &st.x, &l.ffn_norm, &weights, bias, n, Some(i))?;
        let one = |t| Out::One(t, Store::Write);
        let hidden = match (&l.mlp_in, c.block.mlp) {
            (MlpIn::Glu(GateUp::Fused(w)), Mlp::SwiGlu) => {
                project(rec, "gate_up_proj", Some(i), xin, nm, w, None, Out::SwiGlu(&st.gate), n)?;
                &st.gate
            }
            (MlpIn::Glu(GateUp::Fused(w)), Mlp::GeGlu) => {
                project(rec, "gate_up_proj", Some(i), xin, nm, w, None, Out::GeGlu(&st.gate), n)?;
                &st.gate
            }
            (MlpIn::Glu(GateUp::Split(w_gate, w_up)), Mlp::SwiGlu) => {
                project(rec, "gate_proj", Some(i), xin, nm, w_gate, None, one(&st.gate), n)?;
                project(rec, "up_proj", Some(i), xin, nm, w_up, None, one(&st.up), n)?;
                activation::swiglu(rec, &st.up, &st.gate, n * c.ffn_dim, i)?;
                &st.gate
            }
            (MlpIn::Glu(GateUp::Split(w_gate, w_up)), Mlp::GeGlu) => {
                project(rec, "gate_proj", Some(i), xin, nm, w_gate, None, one(&st.gate), n)?;
                project(rec, "up_proj", Some(i), xin, nm, w_up, None, one(&st.up), n)?;
                activation::geglu(rec, &st.up, &st.gate, n * c.ffn_dim, i)?;
                &st.gate
            }
            (MlpIn::Up(w_up, b_up), Mlp::Gelu(kind)) => {
                linear(rec, "up_proj", Some(i), xin, w_up, Some(b_up), &st.up, n, Store::Write)?;
                activation::gelu(rec, &st.up, n * c.ffn_dim, kind, i)?;
                &st.up
            }
            (_, mlp) => return Err(Error::Unsupported(format!("{}: a {mlp:?} MLP with the weights of another kind", c.arch.name()))),
        };
        self.project_into_residual(rec, "down_proj", i, st, hidden, &l.w_down, l.b_down.as_ref(), l.post_ffn_norm.as_ref(), n)
    }
}

/// Where a Llama-like architecture keeps its tensors, both spellings (see `builder::Name`).
/// Tables differ by a few entries; `LLAMA_NAMES` is the base others update.
pub struct Names {
    /// The blocks' scope: `blk` / `model.layers`.
    pub layers: Name,
    pub embed: Name,
    pub norm: Name,
    pub lm_head: Name,
    pub attn_norm: Name,
    pub q: Name,
    pub k: Name,
    pub v: Name,
    /// Q, K and V in one tensor of rows [q | k | v], where a file stores them so.
    pub qkv: Name,
    pub q_norm: Name,
    pub k_norm: Name,
    pub o: Name,
    pub post_attn_norm: Name,
    pub ffn_norm: Name,
    pub gate: Name,
    pub up: Name,
    /// Gate and up in one tensor of rows [gate | up], where a file stores them so.
    pub gate_up: Name,
    pub down: Name,
    pub post_ffn_norm: Name,
}

/// No such tensor in either spelling.
pub const NONE: Name = name("", "");

pub const LLAMA_NAMES: Names = Names {
    layers: name("blk", "model.layers"),
    embed: name("token_embd", "model.embed_tokens"),
    norm: name("output_norm", "model.norm"),
    lm_head: name("output", "lm_head"),
    attn_norm: name("attn_norm", "input_layernorm"),
    q: name("attn_q", "self_attn.q_proj"),
    k: name("attn_k", "self_attn.k_proj"),
    v: name("attn_v", "self_attn.v_proj"),
    qkv: name("attn_qkv", "self_attn.qkv_proj"),
    q_norm: name("attn_q_norm", "self_attn.q_norm"),
    k_norm: name("attn_k_norm", "self_attn.k_norm"),
    o: name("attn_output", "self_attn.o_proj"),
    post_attn_norm: NONE,
    ffn_norm: name("ffn_norm", "post_attention_layernorm"),
    gate: name("ffn_gate", "mlp.gate_proj"),
    up: name("ffn_up", "mlp.up_proj"),
    gate_up: name("ffn_up", "mlp.gate_up_proj"),
    down: name("ffn_down", "mlp.down_proj"),
    post_ffn_norm: NONE,
};

/// Loads a Llama-like model (RMSNorm, RoPE or none, GLU MLP) whose tensors `names` locates,
/// reading what the config's block description asks for. `norm_plus_one`: the file stores
/// RMSNorm weights as w for (1 + w) (Hugging Face Gemma).
pub fn load(cfg: &ModelConfig, b: &Builder, names: &Names, norm_plus_one: bool) -> Result<Decoder> {
    let c = cfg;
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let norm = |b: &Builder, n: Name, width: usize| -> Result<NormWeights> {
        let w = if norm_plus_one { b.vector_plus_one(n, &[width])? } else { b.vector(n, &[width])? };
        Ok(NormWeights { w, b: None })
    };
    let embed = b.weight(names.embed, &[c.vocab, c.dim])?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let lb = b.pp(names.layers).index(i);
        let a = c.attention(i);
        let shapes = [[q_dim, c.dim], [kv_dim, c.dim], [kv_dim, c.dim]];
        let qkv = if lb.has(names.qkv) && !lb.has(names.q) { lb.qkv_fused(names.qkv, shapes)? } else { lb.qkv([names.q, names.k, names.v], shapes, a.qkv_bias)? };
        let gu_shape = [c.ffn_dim, c.dim];
        let gate_up = if lb.has(names.gate_up) && !lb.has(names.gate) { lb.gate_up_stacked(names.gate_up, gu_shape)? } else { lb.gate_up(names.gate, names.up, gu_shape)? };
        let post = |n: Name| if c.block.post_norms { norm(&lb, n, c.dim).map(Some) } else { Ok(None) };
        let qk_norm = |n: Name| if a.qk_norm { norm(&lb, n, c.head_dim).map(|w| Some(w.w)) } else { Ok(None) };
        layers.push(Layer {
            attn_norm: norm(&lb, names.attn_norm, c.dim)?,
            qkv,
            q_norm: qk_norm(names.q_norm)?,
            k_norm: qk_norm(names.k_norm)?,
            wo: lb.weight(names.o, &[c.dim, q_dim])?,
            bo: if a.o_bias { Some(lb.bias(names.o, &[c.dim])?) } else { None },
            post_attn_norm: post(names.post_attn_norm)?,
            ffn_norm: norm(&lb, names.ffn_norm, c.dim)?,
            mlp_in: MlpIn::Glu(gate_up),
            w_down: lb.weight(names.down, &[c.dim, c.ffn_dim])?,
            b_down: None,
            post_ffn_norm: post(names.post_ffn_norm)?,
        });
    }
    let final_norm = norm(b, names.norm, c.dim)?;
    let lm_head = if c.tied_embeddings { None } else { Some(b.weight(names.lm_head, &[c.vocab, c.dim])?) };
    Decoder::new(b, cfg.clone(), embed, None, layers, final_norm, lm_head)
}
