//! GPT-2 (Hugging Face `model_type: gpt2`): learned positions, LayerNorm, `gelu_new`, fused
//! Q/K/V. Its linear layers are `Conv1D`s that store weights as [in, out]; they are transposed
//! to our [out, in] at load, and the fused `c_attn` is split into Q, K and V rows.
//! The forward pass is the shared GPT-style block in `gpt.rs`.

use serde::Deserialize;

use super::config::{parse_json, Arch, Mlp, ModelConfig, Norm, Positions};
use super::gpt::{Gpt, Layer, PositionTable};
use super::llama::{read_f32, upload};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor, Weight};
use crate::ops::activation::Gelu;
use crate::weights::TensorSource;

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
    let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")));
    let dim = need(c.n_embd, "n_embd")?;
    let n_heads = need(c.n_head, "n_head")?;
    if c.scale_attn_weights == Some(false) || c.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(Error::Unsupported(format!("{file}: scale_attn_weights = false or scale_attn_by_inverse_layer_idx = true")));
    }
    let gelu = gelu_named(c.activation_function.as_deref().unwrap_or("gelu_new"), file)?;
    ModelConfig {
        arch: Arch::Gpt2,
        dim,
        n_layers: need(c.n_layer, "n_layer")?,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: dim / n_heads.max(1),
        ffn_dim: c.n_inner.unwrap_or(4 * dim),
        vocab: need(c.vocab_size, "vocab_size")?,
        max_ctx: need(c.n_positions, "n_positions")?,
        norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5) as f32,
        rope_theta: 10000.0, // unused: positions are learned
        rope_style: crate::ops::rope::RopeStyle::Neox,
        tied_embeddings: c.tie_word_embeddings.unwrap_or(true),
        qkv_bias: true,
        o_bias: true,
        positions: Positions::Learned,
        norm: Norm::Layer,
        mlp: Mlp::Gelu(gelu),
    }
    .check(file)?
    .check_mha(file)
}

/// The table from our names to the file's. Hugging Face saves `GPT2LMHeadModel` with the
/// `transformer.` prefix; a bare `GPT2Model` without it (tried second).
fn name(ours: &str, layer: Option<usize>) -> String {
    let file = match ours {
        "embed" => "wte.weight",
        "positions" => "wpe.weight",
        "norm" => "ln_f.weight",
        "norm_b" => "ln_f.bias",
        "attn_norm" => "ln_1.weight",
        "attn_norm_b" => "ln_1.bias",
        "wqkv" => "attn.c_attn.weight", // (dim, 3 · dim), Conv1D
        "bqkv" => "attn.c_attn.bias",   // (3 · dim,)
        "wo" => "attn.c_proj.weight",   // (dim, dim), Conv1D
        "bo" => "attn.c_proj.bias",
        "ffn_norm" => "ln_2.weight",
        "ffn_norm_b" => "ln_2.bias",
        "w_up" => "mlp.c_fc.weight", // (dim, ffn), Conv1D
        "b_up" => "mlp.c_fc.bias",
        "w_down" => "mlp.c_proj.weight", // (ffn, dim), Conv1D
        "b_down" => "mlp.c_proj.bias",
        "lm_head" => return "lm_head.weight".to_string(),
        _ => unreachable!("no GPT-2 tensor named {ours}"),
    };
    match layer {
        Some(i) => format!("transformer.h.{i}.{file}"),
        None => format!("transformer.{file}"),
    }
}

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

/// Uploads every weight once. `progress` is called with the bytes of each tensor read.
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, progress: &mut dyn FnMut(u64)) -> Result<Gpt> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    // A bare GPT2Model has no `transformer.` prefix.
    let bare = src.tensor(&name("embed", None)).is_none() && src.tensor("wte.weight").is_some();
    let n = |ours: &str, layer: Option<usize>| {
        let full = name(ours, layer);
        if bare {
            full.strip_prefix("transformer.").map(str::to_string).unwrap_or(full)
        } else {
            full
        }
    };
    let embed = Weight::from_f32(ctx, "embed", &[cfg.vocab, d], &read_f32(src, &n("embed", None), &[cfg.vocab, d], progress)?)?;
    let positions = PositionTable::Learned(upload(ctx, src, &n("positions", None), &[cfg.max_ctx, d], progress)?);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = Some(i);
        let up = |name: &str, shape: &[usize], data: &[f32]| Tensor::upload_f32(ctx, name, shape, data);
        let upw = |name: &str, shape: &[usize], data: &[f32]| Weight::from_f32(ctx, name, shape, data);
        // Conv1D: y = x · W + b with W (in, out); the fused c_attn's out is [q | k | v].
        let wqkv = transpose(&read_f32(src, &n("wqkv", l), &[d, 3 * d], progress)?, d, 3 * d);
        let bqkv = read_f32(src, &n("bqkv", l), &[3 * d], progress)?;
        let wo = transpose(&read_f32(src, &n("wo", l), &[d, d], progress)?, d, d);
        let w_up = transpose(&read_f32(src, &n("w_up", l), &[d, f], progress)?, d, f);
        let w_down = transpose(&read_f32(src, &n("w_down", l), &[f, d], progress)?, f, d);
        let rows = |k: usize| k * d * d..(k + 1) * d * d;
        layers.push(Layer {
            attn_norm: upload(ctx, src, &n("attn_norm", l), &[d], progress)?,
            attn_norm_b: upload(ctx, src, &n("attn_norm_b", l), &[d], progress)?,
            wq: upw("wq", &[d, d], &wqkv[rows(0)])?,
            wk: upw("wk", &[d, d], &wqkv[rows(1)])?,
            wv: upw("wv", &[d, d], &wqkv[rows(2)])?,
            bq: up("bq", &[d], &bqkv[..d])?,
            bk: up("bk", &[d], &bqkv[d..2 * d])?,
            bv: up("bv", &[d], &bqkv[2 * d..])?,
            wo: upw("wo", &[d, d], &wo)?,
            bo: upload(ctx, src, &n("bo", l), &[d], progress)?,
            ffn_norm: upload(ctx, src, &n("ffn_norm", l), &[d], progress)?,
            ffn_norm_b: upload(ctx, src, &n("ffn_norm_b", l), &[d], progress)?,
            w_up: upw("w_up", &[f, d], &w_up)?,
            b_up: upload(ctx, src, &n("b_up", l), &[f], progress)?,
            w_down: upw("w_down", &[d, f], &w_down)?,
            b_down: upload(ctx, src, &n("b_down", l), &[d], progress)?,
        });
    }
    let mut get = |name: &str, shape: &[usize]| upload(ctx, src, name, shape, progress);
    let norm = get(&n("norm", None), &[d])?;
    let norm_b = get(&n("norm_b", None), &[d])?;
    let lm_head = if cfg.tied_embeddings { None } else { Some(Weight::from_f32(ctx, "lm_head", &[cfg.vocab, d], &read_f32(src, &n("lm_head", None), &[cfg.vocab, d], progress)?)?) };
    Gpt::new(cfg, embed, positions, layers, norm, norm_b, lm_head)
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
        assert_eq!(c.mlp, Mlp::Gelu(Gelu::Tanh));
        let e = config(json.replace("gelu_new", "relu").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("activation_function 'relu'"), "{e}");
        let e = config(json.replace("\"n_embd\": 64,", "").as_bytes(), "config.json").unwrap_err().to_string();
        assert!(e.contains("n_embd"), "{e}");
    }
}
