//! GPT-2 (Hugging Face `model_type: gpt2`): learned positions, LayerNorm, `gelu_new`, fused
//! Q/K/V. Its linear layers are `Conv1D`s that store weights as [in, out]; they are transposed
//! to our [out, in] at load, and the fused `c_attn` is split into Q, K and V rows.
//! The forward pass is the shared GPT-style block in `gpt.rs`.

use serde::Deserialize;

use super::builder::{name, Builder, Name, Qkv};
use super::config::{need, parse_json, Arch, Mlp, ModelConfig, Norm, Positions};
use super::decoder::{Decoder, Layer, MlpIn, NormWeights};
use super::arch::Architecture;
use crate::error::{Error, Result};
use crate::ops::activation::Gelu;

pub static ARCH: Architecture = Architecture { name: "gpt2", model_types: &["gpt2"], gguf_names: &[], hf_config: config, gguf_config: None, load };

/// The fields of GPT-2's `config.json` that quill reads.
#[derive(Deserialize)]
struct Gpt2Config {
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    /// MLP width; null means 4 · n_embd.
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    vocab_size: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    tie_word_embeddings: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// The activation a Hugging Face `activation_function` names, for the GELU MLPs quill runs.
pub(super) fn gelu_named(name: &str, file: &str) -> Result<Gelu> {
    match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Gelu::Tanh),
        "gelu" => Ok(Gelu::Erf),
        other => Err(Error::Unsupported(format!("{file}: activation_function '{other}' (gelu, gelu_new and gelu_pytorch_tanh are implemented)"))),
    }
}

/// From GPT-2's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c: Gpt2Config = parse_json(bytes, file)?;
    let dim = need(c.n_embd, "n_embd", file)?;
    let n_heads = need(c.n_head, "n_head", file)?;
    if c.scale_attn_weights == Some(false) || c.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(Error::Unsupported(format!("{file}: scale_attn_weights = false or scale_attn_by_inverse_layer_idx = true")));
    }
    let gelu = gelu_named(c.activation_function.as_deref().unwrap_or("gelu_new"), file)?;
    let eps = c.layer_norm_epsilon.unwrap_or(1e-5) as f32;
    let mut cfg = ModelConfig::new(Arch(ARCH.name), dim, need(c.n_layer, "n_layer", file)?, n_heads, n_heads, dim / n_heads.max(1), c.n_inner.unwrap_or(4 * dim), need(c.vocab_size, "vocab_size", file)?, need(c.n_positions, "n_positions", file)?, eps);
    cfg.tied_embeddings = c.tie_word_embeddings.unwrap_or(true);
    cfg.positions = Positions::Learned;
    cfg.block.norm = Norm::Layer;
    cfg.block.mlp = Mlp::Gelu(gelu);
    let a = &mut cfg.block.attention;
    (a.rope, a.qkv_bias, a.o_bias) = (None, true, true);
    cfg.check(file)?.check_mha(file)
}

/// The table from our names to the file's (Hugging Face only). `GPT2LMHeadModel` saves them
/// under `transformer.`; a bare `GPT2Model` without it.
const ROOT: Name = name("", "transformer");
const LAYERS: Name = name("", "h");
const EMBED: Name = name("", "wte");
const POSITIONS: Name = name("", "wpe");
const NORM: Name = name("", "ln_f");
const ATTN_NORM: Name = name("", "ln_1");
const QKV: Name = name("", "attn.c_attn"); // (dim, 3 · dim), Conv1D
const O: Name = name("", "attn.c_proj"); // (dim, dim), Conv1D
const FFN_NORM: Name = name("", "ln_2");
const UP: Name = name("", "mlp.c_fc"); // (dim, ffn), Conv1D
const DOWN: Name = name("", "mlp.c_proj"); // (ffn, dim), Conv1D
const LM_HEAD: Name = name("", "lm_head");

/// A Conv1D weight stored (rows, cols) = (in, out), as our (out, in).
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Conv1D `n` of (in, out) as an f32 weight (out, in).
fn conv1d(b: &Builder, n: Name, d_in: usize, d_out: usize) -> Result<crate::gpu::Weight> {
    b.weight_from_f32(&b.full_name(n, ".weight"), &[d_out, d_in], &transpose(&b.f32(n, &[d_in, d_out])?, d_in, d_out))
}

/// Uploads every weight once, as f32.
fn load(cfg: &ModelConfig, root: &Builder) -> Result<Decoder> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let ctx = root.ctx();
    let bare = !root.pp(ROOT).has(EMBED) && root.has(EMBED);
    let b = if bare { root.clone() } else { root.pp(ROOT) };
    let embed = b.weight_from_f32("embed", &[cfg.vocab, d], &b.f32(EMBED, &[cfg.vocab, d])?)?;
    let positions = b.vector(POSITIONS, &[cfg.max_ctx, d])?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let lb = b.pp(LAYERS).index(i);
        // Conv1D: y = x · W + b with W (in, out); the fused c_attn's out is [q | k | v].
        let wqkv = transpose(&lb.f32(QKV, &[d, 3 * d])?, d, 3 * d);
        let bqkv = lb.read_f32(&lb.full_name(QKV, ".bias"), &[3 * d])?;
        let rows = |k: usize| k * d * d..(k + 1) * d * d;
        let w = |k: usize, label: &str| lb.weight_from_f32(label, &[d, d], &wqkv[rows(k)]);
        let bias = |k: usize, label: &str| crate::gpu::Tensor::upload_f32(ctx, label, &[d], &bqkv[k * d..(k + 1) * d]);
        layers.push(Layer {
            attn_norm: NormWeights::layer(&lb, ATTN_NORM, d)?,
            qkv: Qkv::Split([w(0, "wq")?, w(1, "wk")?, w(2, "wv")?], Some([bias(0, "bq")?, bias(1, "bk")?, bias(2, "bv")?])),
            q_norm: None,
            k_norm: None,
            wo: conv1d(&lb, O, d, d)?,
            bo: Some(lb.bias(O, &[d])?),
            post_attn_norm: None,
            ffn_norm: NormWeights::layer(&lb, FFN_NORM, d)?,
            mlp_in: MlpIn::Up(conv1d(&lb, UP, d, f)?, lb.bias(UP, &[f])?),
            w_down: conv1d(&lb, DOWN, f, d)?,
            b_down: Some(lb.bias(DOWN, &[d])?),
            post_ffn_norm: None,
        });
    }
    let norm = NormWeights::layer(&b, NORM, d)?;
    let lm_head = if cfg.tied_embeddings { None } else { Some(root.weight_from_f32("lm_head", &[cfg.vocab, d], &root.f32(LM_HEAD, &[cfg.vocab, d])?)?) };
    Decoder::new(root, cfg.clone(), embed, Some(positions), layers, norm, lm_head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv1d_weights_are_transposed() {
        // (in 2, out 3) -> (out 3, in 2)
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn reads_a_gpt2_config() {
        let json = r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": null, "n_positions": 256,
            "vocab_size": 1000, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}"#;
        let c = config(json.as_bytes(), "config.json").unwrap();
        assert_eq!((c.dim, c.n_heads, c.head_dim, c.ffn_dim, c.max_ctx), (64, 4, 16, 256, 256));
        assert_eq!(c.block.mlp, Mlp::Gelu(Gelu::Tanh));
        let e = config(json.replace("gelu_new", "relu").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("activation_function 'relu'"), "{e}");
        let e = config(json.replace("\"n_embd\": 64,", "").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("n_embd"), "{e}");
    }
}
