//! Model configuration, read from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ops::activation::Gelu;
use crate::ops::posenc::SinusoidalLayout;
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

/// Architectures quill runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family: Llama 2/3, SmolLM2, TinyLlama (RMSNorm, RoPE, SwiGLU, GQA).
    Llama,
    /// Qwen2: Llama plus Q/K/V biases.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, tanh GELU, biases everywhere.
    Gpt2,
    /// XGLM: sinusoidal positions, pre-LayerNorm, exact GELU, biases everywhere.
    Xglm,
}

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Positions {
    /// Rotary, on Q and K (`rope_theta`, `rope_style`).
    Rope,
    /// A learned table of `max_ctx` rows added to the embeddings (GPT-2's `wpe`).
    Learned,
    /// The fixed sin/cos code of position + `offset` added to the embeddings, which are first
    /// multiplied by `embed_scale` (√dim when a model scales its embeddings, else 1).
    Sinusoidal { offset: usize, layout: SinusoidalLayout, embed_scale: f32 },
}

/// The normalization of every block and of the final hidden state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// x / rms(x) · w
    Rms,
    /// (x - mean) / std · w + b
    Layer,
}

/// The MLP's shape and activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// down(silu(gate(x)) · up(x)), no biases.
    SwiGlu,
    /// fc2(gelu(fc1(x))), with biases.
    Gelu(Gelu),
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gpt2 => "gpt2",
            Arch::Xglm => "xglm",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
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
    pub rope_theta: f32,
    /// How Q/K rows pair up for RoPE: GGUF llama weights are permuted for adjacent pairs.
    pub rope_style: RopeStyle,
    /// The LM head is the embedding matrix.
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    /// The attention output projection has a bias (Hugging Face llama with attention_bias).
    pub o_bias: bool,
    pub positions: Positions,
    pub norm: Norm,
    pub mlp: Mlp,
}

impl ModelConfig {
    pub(crate) fn check(self, file: &str) -> Result<Self> {
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
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) || !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(format!("rope theta {} and norm eps {} must be positive numbers", self.rope_theta, self.norm_eps));
        }
        if self.max_ctx == 0 {
            return bad("context length 0".into());
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

    /// From GGUF metadata (`general.architecture` = llama or qwen2).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        match g.str("general.architecture")? {
            "llama" => Self::llama_family_gguf(g, "llama")?.check(&g.file),
            "qwen2" => super::qwen2::gguf_config(g),
            other => Err(Error::Unsupported(format!("{}: architecture '{other}' (quill runs llama and qwen2 GGUF files)", g.file))),
        }
    }

    /// The `{arch_name}.…` keys that llama.cpp writes alike for the Llama family (llama, qwen2),
    /// read as a Llama config; not yet checked, so that an architecture can adjust it first.
    pub(super) fn llama_family_gguf(g: &Gguf, arch_name: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch_name}.{k}");
        let dim = g.usize(&key("embedding_length"))?;
        let n_heads = g.usize(&key("attention.head_count"))?;
        let n_kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => g.usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => g.usize(&key("attention.key_length"))?,
            None => dim / n_heads.max(1),
        };
        let vocab = g
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .map(|t| t.shape[0])
            .ok_or_else(|| Error::tensor(&g.file, "token_embd.weight", "missing"))?;
        let rope_theta = match g.get(&key("rope.freq_base")) {
            Some(_) => g.f64(&key("rope.freq_base"))? as f32,
            None => 10000.0,
        };
        if g.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
            return Err(Error::Unsupported(format!("{}: per-frequency RoPE scaling (rope_freqs.weight, Llama 3.1+)", g.file)));
        }
        if g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()).is_some_and(|t| t != "none") {
            return Err(Error::Unsupported(format!("{}: RoPE scaling '{}'", g.file, g.str(&key("rope.scaling.type"))?)));
        }
        Ok(ModelConfig {
            arch: Arch::Llama,
            dim,
            n_layers: g.usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: g.usize(&key("feed_forward_length"))?,
            vocab,
            max_ctx: g.usize(&key("context_length"))?,
            norm_eps: g.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta,
            // llama.cpp's converter permutes llama's Q/K rows so that adjacent pairs rotate together.
            rope_style: RopeStyle::Adjacent,
            tied_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            qkv_bias: false,
            o_bias: false,
            positions: Positions::Rope,
            norm: Norm::Rms,
            mlp: Mlp::SwiGlu,
        })
    }

    /// From a Hugging Face `config.json`, by its `model_type`.
    pub fn from_hf_json(bytes: &[u8], file: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct ModelType {
            model_type: String,
        }
        let t: ModelType = parse_json(bytes, file)?;
        match t.model_type.as_str() {
            "llama" => Self::from_llama_json(bytes, file),
            "qwen2" => super::qwen2::config(bytes, file),
            "gpt2" => super::gpt2::config(bytes, file),
            "xglm" => super::xglm::config(bytes, file),
            other => Err(Error::Unsupported(format!("{file}: model_type '{other}' (quill runs llama, qwen2, gpt2 and xglm)"))),
        }
    }

    /// From the `config.json` of a llama model.
    fn from_llama_json(bytes: &[u8], file: &str) -> Result<Self> {
        let c: HfConfig = parse_json(bytes, file)?;
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")));
        let dim = need(c.hidden_size, "hidden_size")?;
        let n_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let rope_theta = HfRope::theta(c.rope_theta, c.rope_parameters.as_ref(), c.rope_scaling.as_ref(), file)?;
        if c.mlp_bias.unwrap_or(false) {
            return Err(Error::Unsupported(format!("{file}: mlp_bias = true")));
        }
        ModelConfig {
            arch: Arch::Llama,
            dim,
            n_layers: need(c.num_hidden_layers, "num_hidden_layers")?,
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            head_dim: c.head_dim.unwrap_or(dim / n_heads.max(1)),
            ffn_dim: need(c.intermediate_size, "intermediate_size")?,
            vocab: need(c.vocab_size, "vocab_size")?,
            max_ctx: need(c.max_position_embeddings, "max_position_embeddings")?,
            norm_eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_style: RopeStyle::Neox,
            tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
            // attention_bias covers Q, K, V and the output projection.
            qkv_bias: c.attention_bias.unwrap_or(false),
            o_bias: c.attention_bias.unwrap_or(false),
            positions: Positions::Rope,
            norm: Norm::Rms,
            mlp: Mlp::SwiGlu,
        }
        .check(file)
    }

    /// "positions: … norm: … mlp: …", for `quill info`.
    pub fn describe_blocks(&self) -> String {
        let positions = match self.positions {
            Positions::Rope => {
                let pairs = if self.rope_style == RopeStyle::Neox { "rotate-half" } else { "adjacent pairs" };
                format!("RoPE (theta {}, {pairs})", self.rope_theta)
            }
            Positions::Learned => format!("learned ({} rows)", self.max_ctx),
            Positions::Sinusoidal { offset, layout, embed_scale } => format!("sinusoidal ({layout:?}, offset {offset}, embedding scale {embed_scale})"),
        };
        let norm = match self.norm {
            Norm::Rms => "RMSNorm",
            Norm::Layer => "LayerNorm",
        };
        let mlp = match self.mlp {
            Mlp::SwiGlu => "SwiGLU".to_string(),
            Mlp::Gelu(g) => format!("GELU ({g:?})"),
        };
        format!("positions: {positions}  norm: {norm} (eps {})  mlp: {mlp}", self.norm_eps)
    }

    /// Bytes of f32 weights.
    pub fn weight_bytes(&self) -> u64 {
        let (d, f, v) = (self.dim as u64, self.ffn_dim as u64, self.vocab as u64);
        let (hq, hkv) = ((self.n_heads * self.head_dim) as u64, (self.n_kv_heads * self.head_dim) as u64);
        let norm = if self.norm == Norm::Layer { 2 * d } else { d };
        let attn = d * hq + 2 * d * hkv + hq * d + if self.qkv_bias { hq + 2 * hkv } else { 0 } + if self.o_bias { d } else { 0 };
        let mlp = match self.mlp {
            Mlp::SwiGlu => 3 * d * f,
            Mlp::Gelu(_) => 2 * d * f + f + d,
        };
        let head = if self.tied_embeddings { 0 } else { v * d };
        let positions = if self.positions == Positions::Learned { self.max_ctx as u64 * d } else { 0 };
        4 * (v * d + positions + self.n_layers as u64 * (2 * norm + attn + mlp) + norm + head)
    }

    /// Bytes of the KV cache for `ctx` positions of one sequence.
    pub fn kv_bytes(&self, ctx: usize) -> u64 {
        4 * 2 * (self.n_layers * self.n_kv_heads * self.head_dim * ctx) as u64
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

/// `rope_parameters` (transformers 5) or `rope_scaling` (4.x) of a Hugging Face config.
#[derive(Deserialize)]
pub(super) struct HfRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl HfRope {
    /// The RoPE base from a config's top-level `rope_theta` or its RoPE parameters (default
    /// 10000), refusing any RoPE type but the default.
    pub(super) fn theta(top_level: Option<f64>, parameters: Option<&HfRope>, scaling: Option<&HfRope>, file: &str) -> Result<f32> {
        let rope = parameters.or(scaling);
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref().or(r.kind.as_deref())) {
            if kind != "default" {
                return Err(Error::Unsupported(format!("{file}: rope_type '{kind}' (only the default RoPE is implemented)")));
            }
        }
        Ok(top_level.or(rope.and_then(|r| r.rope_theta)).unwrap_or(10000.0) as f32)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<HfRope>,
    rope_scaling: Option<HfRope>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn reads_a_llama_config() {
        let c = ModelConfig::from_hf_json(TINY.as_bytes(), "config.json").unwrap();
        assert_eq!((c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab), (64, 2, 4, 2, 16, 1000));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_style, RopeStyle::Neox);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (with("num_hidden_layers", "4294967296"), "layers"),
            (with("hidden_size", "0"), "dim"),
            (with("num_key_value_heads", "3"), "KV heads"),
            (with("model_type", "\"mamba\""), "mamba"),
            (with("mlp_bias", "true"), "mlp_bias"),
            (with("rope_parameters", r#"{"rope_theta": 5e5, "rope_type": "llama3"}"#), "llama3"),
            (with("vocab_size", "\"many\""), "field 'vocab_size'"),
            ("{not json".to_string(), "malformed"),
        ];
        for (json, needle) in cases {
            let e = ModelConfig::from_hf_json(json.as_bytes(), "dir/config.json").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut v: serde_json::Value = serde_json::from_str(TINY).unwrap();
        v.as_object_mut().unwrap().remove("intermediate_size");
        let e = ModelConfig::from_hf_json(v.to_string().as_bytes(), "dir/config.json").unwrap_err().to_string();
        assert!(e.contains("intermediate_size"), "{e}");
    }
}
