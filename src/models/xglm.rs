//! XGLM (Hugging Face `model_type: xglm`): the original Transformer's sinusoidal positions in
//! tensor2tensor's layout (sin half, then cos half), offset by 2 as fairseq numbered positions
//! after the padding index; pre-LayerNorm, exact GELU, biases everywhere, tied head.
//! The forward pass is the shared GPT-style block in `gpt.rs`.

use serde::Deserialize;

use super::config::{parse_json, Arch, Mlp, ModelConfig, Norm, Positions};
use super::gpt::{Gpt, Layer, PositionTable};
use super::gpt2::gelu_named;
use super::llama::{read_f32, upload};
use crate::error::{Error, Result};
use crate::gpu::{Context, Weight};
use crate::ops::posenc::SinusoidalLayout;
use crate::weights::TensorSource;

/// Hugging Face's `XGLMSinusoidalPositionalEmbedding.offset`: position p reads row p + 2.
const POSITION_OFFSET: usize = 2;

/// The fields of XGLM's `config.json` that quill reads.
#[derive(Deserialize)]
struct XglmConfig {
    d_model: Option<usize>,
    num_layers: Option<usize>,
    attention_heads: Option<usize>,
    ffn_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    activation_function: Option<String>,
    /// Multiply the token embeddings by √d_model (XGLMConfig's default is true).
    scale_embedding: Option<bool>,
    tie_word_embeddings: Option<bool>,
}

/// From XGLM's `config.json`.
pub fn config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    let c: XglmConfig = parse_json(bytes, file)?;
    let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::format(file, format!("field '{name}' is missing")));
    let dim = need(c.d_model, "d_model")?;
    let n_heads = need(c.attention_heads, "attention_heads")?;
    let gelu = gelu_named(c.activation_function.as_deref().unwrap_or("gelu"), file)?;
    let embed_scale = if c.scale_embedding.unwrap_or(true) { (dim as f32).sqrt() } else { 1.0 };
    ModelConfig {
        arch: Arch::Xglm,
        dim,
        n_layers: need(c.num_layers, "num_layers")?,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: dim / n_heads.max(1),
        ffn_dim: need(c.ffn_dim, "ffn_dim")?,
        vocab: need(c.vocab_size, "vocab_size")?,
        max_ctx: need(c.max_position_embeddings, "max_position_embeddings")?,
        norm_eps: 1e-5, // torch.nn.LayerNorm's default, which XGLM uses
        rope_theta: 10000.0, // unused: positions are sinusoidal
        rope_style: crate::ops::rope::RopeStyle::Neox,
        tied_embeddings: c.tie_word_embeddings.unwrap_or(true),
        qkv_bias: true,
        o_bias: true,
        positions: Positions::Sinusoidal { offset: POSITION_OFFSET, layout: SinusoidalLayout::SplitHalves, embed_scale },
        norm: Norm::Layer,
        mlp: Mlp::Gelu(gelu),
    }
    .check(file)?
    .check_mha(file)
}

/// The table from our names to the file's.
fn name(ours: &str, layer: Option<usize>) -> String {
    let file = match ours {
        "embed" => "embed_tokens.weight",
        "norm" => "layer_norm.weight",
        "norm_b" => "layer_norm.bias",
        "attn_norm" => "self_attn_layer_norm.weight",
        "attn_norm_b" => "self_attn_layer_norm.bias",
        "wq" => "self_attn.q_proj.weight",
        "bq" => "self_attn.q_proj.bias",
        "wk" => "self_attn.k_proj.weight",
        "bk" => "self_attn.k_proj.bias",
        "wv" => "self_attn.v_proj.weight",
        "bv" => "self_attn.v_proj.bias",
        "wo" => "self_attn.out_proj.weight",
        "bo" => "self_attn.out_proj.bias",
        "ffn_norm" => "final_layer_norm.weight",
        "ffn_norm_b" => "final_layer_norm.bias",
        "w_up" => "fc1.weight",
        "b_up" => "fc1.bias",
        "w_down" => "fc2.weight",
        "b_down" => "fc2.bias",
        "lm_head" => return "lm_head.weight".to_string(),
        _ => unreachable!("no XGLM tensor named {ours}"),
    };
    match layer {
        Some(i) => format!("model.layers.{i}.{file}"),
        None => format!("model.{file}"),
    }
}

/// Reads an f32 weight matrix and uploads it.
fn weight(ctx: &Context, src: &dyn TensorSource, name: &str, shape: &[usize], progress: &mut dyn FnMut(u64)) -> Result<Weight> {
    Weight::from_f32(ctx, name, shape, &read_f32(src, name, shape, progress)?)
}

/// Uploads every weight once. `progress` is called with the bytes of each tensor read.
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, progress: &mut dyn FnMut(u64)) -> Result<Gpt> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let embed = Weight::from_f32(ctx, "embed", &[cfg.vocab, d], &read_f32(src, &name("embed", None), &[cfg.vocab, d], progress)?)?;
    let Positions::Sinusoidal { offset, layout, embed_scale } = cfg.positions else { unreachable!("xglm positions are sinusoidal") };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = Some(i);
        layers.push(Layer {
            attn_norm: upload(ctx, src, &name("attn_norm", l), &[d], progress)?,
            attn_norm_b: upload(ctx, src, &name("attn_norm_b", l), &[d], progress)?,
            wq: weight(ctx, src, &name("wq", l), &[d, d], progress)?,
            bq: upload(ctx, src, &name("bq", l), &[d], progress)?,
            wk: weight(ctx, src, &name("wk", l), &[d, d], progress)?,
            bk: upload(ctx, src, &name("bk", l), &[d], progress)?,
            wv: weight(ctx, src, &name("wv", l), &[d, d], progress)?,
            bv: upload(ctx, src, &name("bv", l), &[d], progress)?,
            wo: weight(ctx, src, &name("wo", l), &[d, d], progress)?,
            bo: upload(ctx, src, &name("bo", l), &[d], progress)?,
            ffn_norm: upload(ctx, src, &name("ffn_norm", l), &[d], progress)?,
            ffn_norm_b: upload(ctx, src, &name("ffn_norm_b", l), &[d], progress)?,
            w_up: weight(ctx, src, &name("w_up", l), &[f, d], progress)?,
            b_up: upload(ctx, src, &name("b_up", l), &[f], progress)?,
            w_down: weight(ctx, src, &name("w_down", l), &[d, f], progress)?,
            b_down: upload(ctx, src, &name("b_down", l), &[d], progress)?,
        });
    }
    let norm = upload(ctx, src, &name("norm", None), &[d], progress)?;
    let norm_b = upload(ctx, src, &name("norm_b", None), &[d], progress)?;
    let lm_head = if cfg.tied_embeddings { None } else { Some(weight(ctx, src, &name("lm_head", None), &[cfg.vocab, d], progress)?) };
    Gpt::new(cfg, embed, PositionTable::Sinusoidal { offset, layout, embed_scale }, layers, norm, norm_b, lm_head)
}
