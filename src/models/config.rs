//! Model configuration, read from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

/// Architectures quill runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family: Llama 2/3, SmolLM2, TinyLlama (RMSNorm, RoPE, SwiGLU, GQA).
    Llama,
    /// Qwen2: Llama plus Q/K/V biases.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
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
}

impl ModelConfig {
    fn check(self, file: &str) -> Result<Self> {
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

    /// From GGUF metadata (`general.architecture` = llama or qwen2).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch_name = g.str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(Error::Unsupported(format!("{}: architecture '{other}' (quill runs llama and qwen2 GGUF files)", g.file))),
        };
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
        ModelConfig {
            arch,
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
            // llama.cpp's converter permutes Q/K rows so that adjacent pairs rotate together;
            // qwen2 GGUF files keep Hugging Face's rotate-half order.
            rope_style: if arch == Arch::Llama { RopeStyle::Adjacent } else { RopeStyle::Neox },
            tied_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            qkv_bias: arch == Arch::Qwen2,
            o_bias: false,
        }
        .check(&g.file)
    }

    /// From a Hugging Face `config.json`.
    pub fn from_hf_json(bytes: &[u8], file: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_slice(bytes).map_err(|e| Error::format(file, format!("malformed config.json: {e}")))?;
        let arch = match c.model_type.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(Error::Unsupported(format!("{file}: model_type '{other}' (quill runs llama and qwen2)"))),
        };
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")));
        let dim = need(c.hidden_size, "hidden_size")?;
        let n_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let rope = c.rope_parameters.as_ref().or(c.rope_scaling.as_ref());
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref().or(r.kind.as_deref())) {
            if kind != "default" {
                return Err(Error::Unsupported(format!("{file}: rope_type '{kind}' (only the default RoPE is implemented)")));
            }
        }
        let rope_theta = c.rope_theta.or(rope.and_then(|r| r.rope_theta)).unwrap_or(10000.0);
        if c.mlp_bias.unwrap_or(false) {
            return Err(Error::Unsupported(format!("{file}: mlp_bias = true")));
        }
        ModelConfig {
            arch,
            dim,
            n_layers: need(c.num_hidden_layers, "num_hidden_layers")?,
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            head_dim: c.head_dim.unwrap_or(dim / n_heads.max(1)),
            ffn_dim: need(c.intermediate_size, "intermediate_size")?,
            vocab: need(c.vocab_size, "vocab_size")?,
            max_ctx: need(c.max_position_embeddings, "max_position_embeddings")?,
            norm_eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            rope_style: RopeStyle::Neox,
            tied_embeddings: c.tie_word_embeddings.unwrap_or(arch == Arch::Qwen2),
            qkv_bias: arch == Arch::Qwen2 || c.attention_bias.unwrap_or(false),
            // Qwen2 has Q/K/V biases only; llama's attention_bias covers the output projection too.
            o_bias: arch == Arch::Llama && c.attention_bias.unwrap_or(false),
        }
        .check(file)
    }

    /// Bytes of f32 weights.
    pub fn weight_bytes(&self) -> u64 {
        let (d, f, v) = (self.dim as u64, self.ffn_dim as u64, self.vocab as u64);
        let (hq, hkv) = ((self.n_heads * self.head_dim) as u64, (self.n_kv_heads * self.head_dim) as u64);
        let per_layer = 2 * d + d * hq + 2 * d * hkv + hq * d + 3 * d * f;
        let head = if self.tied_embeddings { 0 } else { v * d };
        4 * (v * d + self.n_layers as u64 * per_layer + d + head)
    }

    /// Bytes of the KV cache for `ctx` positions of one sequence.
    pub fn kv_bytes(&self, ctx: usize) -> u64 {
        4 * 2 * (self.n_layers * self.n_kv_heads * self.head_dim * ctx) as u64
    }
}

#[derive(Deserialize)]
struct HfRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
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
            (with("vocab_size", "\"many\""), "config.json"),
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
