//! What Llama-like architectures' configs share: the `config.json` fields transformers
//! writes alike for llama, qwen2/3, mistral, phi3 and gemma, their RoPE settings in both
//! spellings (transformers 5's `rope_parameters`, 4.x's `rope_theta` / `rope_scaling`), and
//! the `{arch}.…` GGUF keys llama.cpp writes alike. Each architecture's file starts from these
//! and sets what differs.

use serde::Deserialize;
use serde_json::Value;

use super::config::{need, parse_json, Arch, LongRopeFactors, ModelConfig, Rope, RopeScaling};
use crate::error::{Error, Result};
use crate::ops::rope::RopeStyle;
use crate::weights::gguf::Gguf;

/// The fields of a Llama-like `config.json` that quill reads.
#[derive(Deserialize, Default)]
pub struct HfConfig {
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub vocab_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub original_max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    pub hidden_activation: Option<String>,
    pub rope_theta: Option<f64>,
    /// Gemma 3 in transformers 4.x: the sliding layers' base.
    pub rope_local_base_freq: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    pub partial_rotary_factor: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub use_sliding_window: Option<bool>,
    pub sliding_window: Option<usize>,
    /// Per layer: "sliding_attention" or "full_attention".
    pub layer_types: Option<Vec<String>>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
}

impl HfConfig {
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        parse_json(bytes, file)
    }

    /// The sizes every Llama-like config has, on a Llama block with this config's RoPE (of the
    /// full-attention layers) and `default_theta` where it names none. Not yet checked.
    pub fn base(&self, arch: Arch, file: &str, default_theta: f64, default_eps: f64) -> Result<ModelConfig> {
        let dim = need(self.hidden_size, "hidden_size", file)?;
        let n_heads = need(self.num_attention_heads, "num_attention_heads", file)?;
        let head_dim = self.head_dim.unwrap_or(dim / n_heads.max(1));
        let mut cfg = ModelConfig::new(
            arch,
            dim,
            need(self.num_hidden_layers, "num_hidden_layers", file)?,
            n_heads,
            self.num_key_value_heads.unwrap_or(n_heads),
            head_dim,
            need(self.intermediate_size, "intermediate_size", file)?,
            need(self.vocab_size, "vocab_size", file)?,
            need(self.max_position_embeddings, "max_position_embeddings", file)?,
            self.rms_norm_eps.unwrap_or(default_eps) as f32,
        );
        cfg.tied_embeddings = self.tie_word_embeddings.unwrap_or(false);
        let rope = self.rope(Some("full_attention"), default_theta, head_dim, file)?;
        if matches!(rope.scaling, RopeScaling::LongRope { .. }) {
            cfg.longrope_factors = Some(self.longrope_factors(rope.n_rot, file)?);
        }
        cfg.block.attention.rope = Some(rope);
        if self.mlp_bias.unwrap_or(false) {
            return Err(Error::Unsupported(format!("{file}: mlp_bias = true")));
        }
        Ok(cfg)
    }

    /// The MLP activation must be `want` (silu for SwiGLU, gelu_pytorch_tanh for GeGLU).
    pub fn expect_activation(&self, want: &[&str], file: &str) -> Result<()> {
        match self.hidden_act.as_deref().or(self.hidden_activation.as_deref()) {
            Some(act) if !want.contains(&act) => Err(Error::Unsupported(format!("{file}: hidden_act '{act}' (this architecture's MLP uses {})", want.join(" or ")))),
            _ => Ok(()),
        }
    }

    /// The RoPE of layers of `layer_type` (transformers 5 keeps per-type parameters for
    /// Gemma 3), from `rope_parameters` or the older `rope_theta` + `rope_scaling`.
    pub fn rope(&self, layer_type: Option<&str>, default_theta: f64, head_dim: usize, file: &str) -> Result<Rope> {
        let params = match (&self.rope_parameters, layer_type) {
            (Some(p), Some(t)) if p.get(t).is_some_and(Value::is_object) => p.get(t),
            (Some(p), _) => Some(p),
            (None, _) => self.rope_scaling.as_ref().filter(|v| !v.is_null()),
        };
        let num = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let theta = match layer_type {
            Some("sliding_attention") => num("rope_theta").or(self.rope_local_base_freq).or(self.rope_theta),
            _ => num("rope_theta").or(self.rope_theta),
        }
        .unwrap_or(default_theta);
        let kind = params.and_then(|p| p.get("rope_type").or(p.get("type"))).and_then(Value::as_str).unwrap_or("default");
        let factor = |file: &str| num("factor").map(|f| f as f32).ok_or_else(|| Error::format(file, format!("rope_type '{kind}' without a factor")));
        let original_ctx = num("original_max_position_embeddings").map(|v| v as usize).or(self.original_max_position_embeddings).or(self.max_position_embeddings).unwrap_or(0);
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor(file)? },
            "dynamic" => RopeScaling::Dynamic { factor: factor(file)?, original_ctx },
            "llama3" => RopeScaling::Llama3 {
                factor: factor(file)?,
                low_freq_factor: num("low_freq_factor").unwrap_or(1.0) as f32,
                high_freq_factor: num("high_freq_factor").unwrap_or(4.0) as f32,
                original_ctx,
            },
            "longrope" | "su" => RopeScaling::LongRope { original_ctx, attention_factor: self.longrope_attention_factor(num("attention_factor"), num("factor"), original_ctx) },
            other => return Err(Error::Unsupported(format!("{file}: rope_type '{other}' (default, linear, dynamic, llama3 and longrope are read)"))),
        };
        let partial = num("partial_rotary_factor").or(self.partial_rotary_factor).unwrap_or(1.0);
        let n_rot = (head_dim as f64 * partial) as usize;
        Ok(Rope { theta: theta as f32, style: RopeStyle::Neox, scaling, n_rot })
    }

    /// Longrope's cos/sin multiplier as transformers' `_compute_longrope_parameters` sets it:
    /// `attention_factor` if given, else √(1 + ln(s) / ln(original)) for s = `factor`, or
    /// max_position_embeddings / original when no factor is given; 1 when s <= 1.
    fn longrope_attention_factor(&self, given: Option<f64>, factor: Option<f64>, original_ctx: usize) -> f32 {
        if let Some(a) = given {
            return a as f32;
        }
        let s = factor.unwrap_or(self.max_position_embeddings.unwrap_or(0) as f64 / original_ctx.max(1) as f64);
        if s <= 1.0 || original_ctx < 2 {
            return 1.0;
        }
        (1.0 + s.ln() / (original_ctx as f64).ln()).sqrt() as f32
    }

    /// Longrope's `short_factor` and `long_factor` lists (rot_dim / 2 each, positive).
    fn longrope_factors(&self, n_rot: usize, file: &str) -> Result<LongRopeFactors> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let list = |key: &str| -> Result<Vec<f32>> {
            let bad = || Error::format(file, format!("longrope '{key}' must be a list of {} positive numbers", n_rot / 2));
            let v = params.and_then(|p| p.get(key)).and_then(Value::as_array).ok_or_else(bad)?;
            let f: Vec<f32> = v.iter().map(|x| x.as_f64().map(|x| x as f32).filter(|x| *x > 0.0 && x.is_finite())).collect::<Option<_>>().ok_or_else(bad)?;
            if f.len() != n_rot / 2 {
                return Err(bad());
            }
            Ok(f)
        };
        Ok(LongRopeFactors { short: list("short_factor")?, long: list("long_factor")? })
    }

    /// The sliding window where `use_sliding_window` (absent: on) and a window are set.
    pub fn window(&self) -> Option<usize> {
        self.sliding_window.filter(|_| self.use_sliding_window.unwrap_or(true))
    }
}

/// The `{arch}.…` keys llama.cpp writes alike for Llama-like models, read as a Llama config
/// whose RoPE pairs rows as `style` says (llama.cpp's converter permutes llama's Q/K rows for
/// adjacent pairs, and leaves other architectures' in rotate-half order); not yet checked, so
/// that an architecture can adjust it first.
pub fn gguf_base(g: &Gguf, arch: Arch, key_arch: &str, style: RopeStyle) -> Result<ModelConfig> {
    let key = |k: &str| format!("{key_arch}.{k}");
    let opt_usize = |k: &str| g.get(&key(k)).map(|_| g.usize(&key(k))).transpose();
    let opt_f64 = |k: &str| g.get(&key(k)).map(|_| g.f64(&key(k))).transpose();
    let dim = g.usize(&key("embedding_length"))?;
    let n_heads = g.usize(&key("attention.head_count"))?;
    let head_dim = opt_usize("attention.key_length")?.unwrap_or(dim / n_heads.max(1));
    let vocab = g.tensors.iter().find(|t| t.name == "token_embd.weight").map(|t| t.shape[0]).ok_or_else(|| Error::tensor(&g.file, "token_embd.weight", "missing"))?;
    let mut cfg = ModelConfig::new(
        arch,
        dim,
        g.usize(&key("block_count"))?,
        n_heads,
        opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
        head_dim,
        g.usize(&key("feed_forward_length"))?,
        vocab,
        g.usize(&key("context_length"))?,
        g.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
    );
    cfg.tied_embeddings = !g.tensors.iter().any(|t| t.name == "output.weight");
    let has = |name: &str| g.tensors.iter().any(|t| t.name == name);
    let scaling = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
        // llama.cpp writes Phi-3's longrope as these two tensors and an attention factor.
        _ if has("rope_factors_long.weight") || has("rope_factors_short.weight") => RopeScaling::LongRope {
            original_ctx: g.usize(&key("rope.scaling.original_context_length"))?,
            attention_factor: opt_f64("rope.scaling.attn_factor")?.unwrap_or(1.0) as f32,
        },
        _ if has("rope_freqs.weight") => RopeScaling::FreqFactors,
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear { factor: g.f64(&key("rope.scaling.factor"))? as f32 },
        Some(other) => return Err(Error::Unsupported(format!("{}: RoPE scaling '{other}' ({} is read)", g.file, key("rope.scaling.type")))),
    };
    let theta = opt_f64("rope.freq_base")?.unwrap_or(10000.0) as f32;
    let n_rot = opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    cfg.block.attention.rope = Some(Rope { theta, style, scaling, n_rot });
    cfg.block.attention.window = opt_usize("attention.sliding_window")?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::registry::{from_gguf, from_hf_json};
    use crate::weights::gguf::tests::{build, gguf_string};

    const LLAMA: &str = r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 256}"#;

    fn rope_of(extra: &str) -> Result<Rope> {
        let json = LLAMA.replace("\"max_position_embeddings\": 256", &format!("\"max_position_embeddings\": 256, {extra}"));
        Ok(from_hf_json(json.as_bytes(), "config.json")?.1.block.attention.rope.expect("rope"))
    }

    /// Both spellings of the RoPE settings: transformers 5's rope_parameters, 4.x's rope_theta
    /// + rope_scaling (whose kind is `type` in older files, `rope_type` in newer ones).
    #[test]
    fn reads_rope_scalings_in_both_spellings() {
        let r = rope_of(r#""rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}"#).unwrap();
        assert_eq!((r.theta, r.scaling), (5e5, RopeScaling::Linear { factor: 2.0 }));
        let r = rope_of(r#""rope_scaling": {"rope_type": "dynamic", "factor": 4.0}"#).unwrap();
        assert_eq!((r.theta, r.scaling), (1e4, RopeScaling::Dynamic { factor: 4.0, original_ctx: 256 }));
        let r = rope_of(r#""rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#).unwrap();
        assert_eq!(r.scaling, RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_ctx: 32 });
        let r = rope_of(r#""rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}"#).unwrap();
        assert_eq!((r.theta, r.n_rot, r.scaling), (1e6, 8, RopeScaling::None));
        let e = rope_of(r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#).unwrap_err().to_string();
        assert!(e.contains("rope_type 'yarn'"), "{e}");
        let e = rope_of(r#""rope_scaling": {"type": "dynamic"}"#).unwrap_err().to_string();
        assert!(e.contains("factor"), "{e}");
    }

    /// Phi-3's longrope from config.json: the factors, the original context, and the attention
    /// factor given or derived from max / original; bad factor lists name the field.
    #[test]
    fn reads_longrope() {
        let json = |params: &str| {
            let llama = LLAMA.replace("\"max_position_embeddings\": 256", &format!("\"max_position_embeddings\": 256, \"rope_parameters\": {params}"));
            from_hf_json(llama.as_bytes(), "config.json")
        };
        let factors = r#""short_factor": [1, 1, 1, 1, 1, 1, 1, 2], "long_factor": [1, 2, 3, 4, 5, 6, 7, 8]"#;
        let c = json(&format!(r#"{{"rope_type": "longrope", "original_max_position_embeddings": 16, {factors}}}"#)).unwrap().1;
        let r = c.block.attention.rope.unwrap();
        // √(1 + ln(256 / 16) / ln 16) = √2.
        assert_eq!(r.scaling, RopeScaling::LongRope { original_ctx: 16, attention_factor: 2f32.sqrt() });
        let f = c.longrope_factors.unwrap();
        assert_eq!((f.short[7], f.long[7]), (2.0, 8.0));
        let c = json(&format!(r#"{{"type": "su", "original_max_position_embeddings": 16, "attention_factor": 1.5, {factors}}}"#)).unwrap().1;
        assert_eq!(c.block.attention.rope.unwrap().scaling, RopeScaling::LongRope { original_ctx: 16, attention_factor: 1.5 });
        for bad in [r#""short_factor": [1, 1], "long_factor": [1, 2, 3, 4, 5, 6, 7, 8]"#, r#""short_factor": [1, 1, 1, 1, 1, 1, 1, -1], "long_factor": [1, 2, 3, 4, 5, 6, 7, 8]"#] {
            let e = json(&format!(r#"{{"rope_type": "longrope", "original_max_position_embeddings": 16, {bad}}}"#)).unwrap_err().to_string();
            assert!(e.contains("short_factor") && e.contains("8 positive numbers"), "{e}");
        }
        let e = json(r#"{"rope_type": "longrope", "original_max_position_embeddings": 16, "short_factor": [1, 1, 1, 1, 1, 1, 1, 1]}"#).unwrap_err().to_string();
        assert!(e.contains("long_factor"), "{e}");
    }

    fn gguf(arch: &str, extra: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let u32v = |v: u32| v.to_le_bytes().to_vec();
        let key = |k: &str| format!("{arch}.{k}");
        let keys: Vec<String> = ["embedding_length", "block_count", "attention.head_count", "feed_forward_length", "context_length", "attention.layer_norm_rms_epsilon"].iter().map(|k| key(k)).collect();
        let mut kv = vec![
            ("general.architecture", 8, gguf_string(arch)),
            (keys[0].as_str(), 4, u32v(64)),
            (keys[1].as_str(), 4, u32v(2)),
            (keys[2].as_str(), 4, u32v(4)),
            (keys[3].as_str(), 4, u32v(128)),
            (keys[4].as_str(), 4, u32v(256)),
            (keys[5].as_str(), 6, 1e-5f32.to_le_bytes().to_vec()),
        ];
        kv.extend(extra.iter().cloned());
        build(3, &kv, &[("token_embd.weight", &[64, 1000], 0, vec![0; 64 * 1000 * 4])])
    }

    /// `rope.dimension_count` is read; one the forward cannot honour (odd, or wider than a
    /// head) is an error naming it.
    #[test]
    fn reads_the_rope_dimension_count() {
        let count = |n: u32| gguf("llama", &[("llama.rope.dimension_count", 4, n.to_le_bytes().to_vec())]);
        let bytes = count(8);
        let c = from_gguf(&Gguf::parse("m.gguf", &bytes).unwrap()).unwrap().1;
        let r = c.block.attention.rope.unwrap();
        assert_eq!((c.head_dim, r.n_rot, r.style), (16, 8, RopeStyle::Adjacent));
        for bad in [7, 18, 0] {
            let bytes = count(bad);
            let e = from_gguf(&Gguf::parse("m.gguf", &bytes).unwrap()).unwrap_err().to_string();
            assert!(e.contains("rope dimension count") && e.contains("m.gguf"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_unknown_gguf_architecture_lists_the_known_ones() {
        let bytes = gguf("mamba", &[]);
        let e = from_gguf(&Gguf::parse("m.gguf", &bytes).unwrap()).unwrap_err().to_string();
        assert!(e.contains("architecture 'mamba'"), "{e}");
        for known in ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"] {
            assert!(e.contains(known), "{known} missing from: {e}");
        }
    }
}
