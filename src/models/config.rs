//! A model's configuration: its sizes, and a typed description of its blocks that the one
//! forward pass (`decoder.rs`) reads. Each architecture's file fills it in from its
//! `config.json` or GGUF metadata; `registry.rs` picks the architecture.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ops::activation::Gelu;
use crate::ops::attention::KvFormat;
use crate::ops::posenc::SinusoidalLayout;
use crate::ops::rope::RopeStyle;

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Positions {
    /// Rotary, on Q and K, in every layer's attention (`Attention::rope`).
    Rope,
    /// A learned table of `max_ctx` rows added to the embeddings (GPT-2's `wpe`).
    Learned,
    /// The fixed sin/cos code of position + `offset` added to the embeddings (after they are
    /// multiplied by the config's `embed_scale`).
    Sinusoidal { offset: usize, layout: SinusoidalLayout },
}

/// How RoPE's frequencies are rescaled for contexts longer than the training one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// NTK-aware: the base grows with the sequence length beyond `original_ctx`.
    Dynamic { factor: f32, original_ctx: usize },
    /// Llama 3.1's per-frequency scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_ctx: usize },
    /// Frequencies divided by the GGUF tensor `rope_freqs.weight` (llama.cpp's form of Llama 3).
    FreqFactors,
    /// Phi-3's `longrope` (`su`): frequency i divided by a short factor while a call's last
    /// position is within `original_ctx`, by a long one beyond (transformers' rule), and cos and
    /// sin multiplied by `attention_factor`. The factors: `ModelConfig::longrope_factors`, or the
    /// GGUF tensors `rope_factors_short` / `rope_factors_long`.
    LongRope { original_ctx: usize, attention_factor: f32 },
}

/// Longrope's per-frequency factors as `config.json` gives them (rot_dim / 2 each).
#[derive(Clone, Debug, PartialEq)]
pub struct LongRopeFactors {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
}

/// Rotary positions of one layer's attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    /// How Q/K rows pair up: GGUF llama weights are permuted for adjacent pairs.
    pub style: RopeStyle,
    pub scaling: RopeScaling,
    /// Leading dims of each head that rotate (head_dim unless the rotary is partial).
    pub n_rot: usize,
}

/// One layer's attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// None when positions are absolute (added to the embeddings).
    pub rope: Option<Rope>,
    /// RMSNorm over each head of Q and K before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// A query at position p sees keys in (p - window, p].
    pub window: Option<usize>,
    /// Logits scale; None: head_dim^-0.5.
    pub scale: Option<f32>,
    /// Logits become cap·tanh(s / cap) before the softmax (Gemma 2).
    pub softcap: Option<f32>,
    pub qkv_bias: bool,
    /// The attention output projection has a bias.
    pub o_bias: bool,
}

/// The normalization of every block and of the final hidden state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// x / rms(x) · w. Gemma's `(1 + w)` is this with 1 added to w at load (as the GGUF
    /// converter stores it), so the kernels see one form.
    Rms,
    /// (x - mean) / std · w + b
    Layer,
}

/// The MLP's shape and activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// down(silu(gate(x)) · up(x)), no biases.
    SwiGlu,
    /// down(gelu_tanh(gate(x)) · up(x)), no biases (Gemma).
    GeGlu,
    /// fc2(gelu(fc1(x))), with biases.
    Gelu(Gelu),
}

/// What every block is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub norm: Norm,
    /// The attention of every layer, except those `LocalLayers` names.
    pub attention: Attention,
    pub mlp: Mlp,
    /// Norms after attention and after the MLP too, before their residual adds (Gemma).
    pub post_norms: bool,
}

/// Layers whose attention differs from the block's: sliding-window layers with their own RoPE
/// base (Gemma 2 and 3).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalLayers {
    pub attention: Attention,
    /// `is_local[i]`: layer i uses `attention`.
    pub is_local: Vec<bool>,
}

/// An architecture's name (`Architecture::name`), as a config carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch(pub &'static str);

impl Arch {
    pub fn name(self) -> &'static str {
        self.0
    }
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// The architecture that read this config.
    pub arch: Arch,
    /// Model width (hidden size).
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// MLP inner width.
    pub ffn_dim: usize,
    pub vocab: usize,
    /// Longest context the model was trained for.
    pub max_ctx: usize,
    pub norm_eps: f32,
    /// The LM head is the embedding matrix.
    pub tied_embeddings: bool,
    pub positions: Positions,
    /// Token embeddings are multiplied by this (√dim for Gemma and XGLM, else 1).
    pub embed_scale: f32,
    /// Final logits become cap·tanh(l / cap) (Gemma 2).
    pub final_softcap: Option<f32>,
    pub block: Block,
    pub local: Option<LocalLayers>,
    /// How the KV cache stores keys and values (a load option, not the file's: `--kv-cache`).
    pub kv_format: KvFormat,
    /// Longrope's factors from `config.json`; None for other scalings, or when a GGUF file
    /// holds them as tensors.
    pub longrope_factors: Option<LongRopeFactors>,
}

impl ModelConfig {
    /// A config of `arch` with the fields every architecture sets and a Llama-like block
    /// (RMSNorm, SwiGLU, default RoPE of base `theta` over whole heads, no biases).
    #[allow(clippy::too_many_arguments)]
    pub fn new(arch: Arch, dim: usize, n_layers: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize, ffn_dim: usize, vocab: usize, max_ctx: usize, norm_eps: f32) -> Self {
        let rope = Rope { theta: 10000.0, style: RopeStyle::Neox, scaling: RopeScaling::None, n_rot: head_dim };
        let attention = Attention { rope: Some(rope), qk_norm: false, window: None, scale: None, softcap: None, qkv_bias: false, o_bias: false };
        ModelConfig {
            arch,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab,
            max_ctx,
            norm_eps,
            tied_embeddings: false,
            positions: Positions::Rope,
            embed_scale: 1.0,
            final_softcap: None,
            block: Block { norm: Norm::Rms, attention, mlp: Mlp::SwiGlu, post_norms: false },
            local: None,
            kv_format: KvFormat::F32,
            longrope_factors: None,
        }
    }

    /// The attention of layer `i`.
    pub fn attention(&self, i: usize) -> &Attention {
        match &self.local {
            Some(l) if l.is_local.get(i) == Some(&true) => &l.attention,
            _ => &self.block.attention,
        }
    }

    /// Every layer's attention (with its RoPE), for checks.
    fn attentions(&self) -> impl Iterator<Item = &Attention> {
        std::iter::once(&self.block.attention).chain(self.local.as_ref().map(|l| &l.attention))
    }

    pub(crate) fn check(mut self, file: &str) -> Result<Self> {
        let bad = |msg: String| Err(Error::format(file, msg));
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab == 0 || self.ffn_dim == 0 {
            return bad(format!("dims must be positive: dim {}, layers {}, heads {}, vocab {}, ffn {}", self.dim, self.n_layers, self.n_heads, self.vocab, self.ffn_dim));
        }
        // Bounds far above any real model, so hostile metadata cannot make sizes overflow or
        // ask for absurd allocations before the tensors themselves are checked.
        let limits = [
            ("layers", self.n_layers, 4096),
            ("dim", self.dim, 1 << 17),
            ("heads", self.n_heads, 4096),
            ("ffn", self.ffn_dim, 1 << 19),
            ("vocab", self.vocab, 1 << 22),
            ("context", self.max_ctx, 1 << 24),
        ];
        for (name, v, max) in limits {
            if v > max {
                return bad(format!("{name} = {v} exceeds {max}; the file's metadata is not credible"));
            }
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} attention heads cannot be grouped over {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 || self.head_dim > crate::ops::attention::MAX_HEAD_DIM {
            return bad(format!("head dim {} must be even and at most {}", self.head_dim, crate::ops::attention::MAX_HEAD_DIM));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) || !(self.embed_scale.is_finite() && self.embed_scale > 0.0) {
            return bad(format!("norm eps {} and embedding scale {} must be positive numbers", self.norm_eps, self.embed_scale));
        }
        for a in self.attentions() {
            if let Some(r) = a.rope {
                if !(r.theta.is_finite() && r.theta > 0.0) {
                    return bad(format!("rope theta {} must be a positive number", r.theta));
                }
                if r.n_rot == 0 || r.n_rot % 2 != 0 || r.n_rot > self.head_dim {
                    return bad(format!("rope dimension count {} must be even and at most the head dim {}", r.n_rot, self.head_dim));
                }
                if let RopeScaling::LongRope { original_ctx, attention_factor } = r.scaling {
                    if original_ctx == 0 || !(attention_factor.is_finite() && attention_factor > 0.0) {
                        return bad(format!("longrope needs an original context (got {original_ctx}) and a positive attention factor (got {attention_factor})"));
                    }
                }
            }
            let positive = |v: Option<f32>| v.is_none_or(|v| v.is_finite() && v > 0.0);
            if a.window == Some(0) || !positive(a.scale) || !positive(a.softcap) {
                let shown = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                return bad(format!("attention window {}, scale {} and soft-cap {} must be positive", shown(a.window.map(|w| w.to_string())), shown(a.scale.map(|x| x.to_string())), shown(a.softcap.map(|x| x.to_string()))));
            }
        }
        if let Some(l) = &self.local {
            if l.is_local.len() != self.n_layers {
                return bad(format!("{} layer types for {} layers", l.is_local.len(), self.n_layers));
            }
        }
        if self.max_ctx == 0 {
            return bad("context length 0".into());
        }
        // Dynamic NTK stretches the original context by its factor (the context vLLM serves it
        // with); configs keep the original one in max_position_embeddings.
        if let Some(RopeScaling::Dynamic { factor, original_ctx }) = self.block.attention.rope.map(|r| r.scaling) {
            if !(factor.is_finite() && factor >= 1.0) {
                return bad(format!("dynamic rope scaling factor {factor} must be at least 1"));
            }
            self.max_ctx = self.max_ctx.max(((original_ctx as f64 * factor as f64) as usize).min(1 << 24));
        }
        Ok(self)
    }

    /// Multi-head attention over the whole width, as GPT-style models have: heads split `dim`.
    pub(crate) fn check_mha(self, file: &str) -> Result<Self> {
        if self.n_heads * self.head_dim != self.dim {
            return Err(Error::format(file, format!("{} heads do not divide the width {}", self.n_heads, self.dim)));
        }
        Ok(self)
    }

    /// "positions: … norm: … mlp: …", for `quill info`.
    pub fn describe_blocks(&self) -> String {
        let describe_rope = |r: &Rope| {
            let pairs = if r.style == RopeStyle::Neox { "rotate-half" } else { "adjacent pairs" };
            let scaling = if r.scaling == RopeScaling::None { String::new() } else { format!(", {:?}", r.scaling) };
            format!("RoPE (theta {}, {pairs}{scaling})", r.theta)
        };
        let positions = match self.positions {
            Positions::Rope => self.block.attention.rope.as_ref().map(describe_rope).unwrap_or_default(),
            Positions::Learned => format!("learned ({} rows)", self.max_ctx),
            Positions::Sinusoidal { offset, layout } => format!("sinusoidal ({layout:?}, offset {offset}, embedding scale {})", self.embed_scale),
        };
        let norm = match self.block.norm {
            Norm::Rms => "RMSNorm",
            Norm::Layer => "LayerNorm",
        };
        let mlp = match self.block.mlp {
            Mlp::SwiGlu => "SwiGLU".to_string(),
            Mlp::GeGlu => "GeGLU (tanh)".to_string(),
            Mlp::Gelu(g) => format!("GELU ({g:?})"),
        };
        let mut s = format!("positions: {positions}  norm: {norm} (eps {})  mlp: {mlp}", self.norm_eps);
        let a = &self.block.attention;
        let extras = [
            a.qk_norm.then(|| "Q/K norm".to_string()),
            a.window.map(|w| format!("window {w}")),
            a.scale.map(|v| format!("scale {v}")),
            a.softcap.map(|v| format!("soft-cap {v}")),
            self.block.post_norms.then(|| "post-norms".to_string()),
            (self.embed_scale != 1.0).then(|| format!("embedding scale {}", self.embed_scale)),
            self.final_softcap.map(|v| format!("final soft-cap {v}")),
        ];
        let extras: Vec<String> = extras.into_iter().flatten().collect();
        if !extras.is_empty() {
            s += &format!("  attention: {}", extras.join(", "));
        }
        if let Some(l) = &self.local {
            let n = l.is_local.iter().filter(|&&b| b).count();
            let rope = l.attention.rope.as_ref().map(describe_rope).unwrap_or_default();
            let window = l.attention.window.map_or("none".to_string(), |w| w.to_string());
            s += &format!("  local layers: {n} of {} (window {window}, {rope})", self.n_layers);
        }
        s
    }

    /// Bytes of f32 weights.
    pub fn weight_bytes(&self) -> u64 {
        let (d, f, v) = (self.dim as u64, self.ffn_dim as u64, self.vocab as u64);
        let (hq, hkv) = ((self.n_heads * self.head_dim) as u64, (self.n_kv_heads * self.head_dim) as u64);
        let b = &self.block;
        let norm = if b.norm == Norm::Layer { 2 * d } else { d } * if b.post_norms { 2 } else { 1 };
        let a = &b.attention;
        let qk_norm = if a.qk_norm { 2 * self.head_dim as u64 } else { 0 };
        let attn = d * hq + 2 * d * hkv + hq * d + qk_norm + if a.qkv_bias { hq + 2 * hkv } else { 0 } + if a.o_bias { d } else { 0 };
        let mlp = match b.mlp {
            Mlp::SwiGlu | Mlp::GeGlu => 3 * d * f,
            Mlp::Gelu(_) => 2 * d * f + f + d,
        };
        let head = if self.tied_embeddings { 0 } else { v * d };
        let positions = if self.positions == Positions::Learned { self.max_ctx as u64 * d } else { 0 };
        4 * (v * d + positions + self.n_layers as u64 * (2 * norm + attn + mlp) + norm + head)
    }
}

/// Parses a config file; a type error names the field it is in (serde_json says only where).
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], file: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        // "missing field `x`" names it already, and happens at the end, after the last key.
        let located = e.is_data() && !e.to_string().starts_with("missing field");
        let field = located.then(|| field_at(bytes, e.line(), e.column())).flatten().map(|f| format!(" (field '{f}')")).unwrap_or_default();
        Error::format(file, format!("malformed config.json{field}: {e}"))
    })
}

/// The last `"key":` before (line, column) of a JSON text: the field a parse error is in.
fn field_at(bytes: &[u8], line: usize, column: usize) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let end = (start + column).min(text.len());
    let before = text.get(..end)?;
    let colon = before.rfind(':')?;
    let key_end = before[..colon].trim_end().strip_suffix('"')?;
    let key_start = key_end.rfind('"')?;
    Some(key_end[key_start + 1..].to_string())
}

/// A required field of a config.json.
pub(crate) fn need(v: Option<usize>, name: &str, file: &str) -> Result<usize> {
    v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")))
}
