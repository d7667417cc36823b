//! XGLM (Hugging Face `model_type: xglm`): the original Transformer's sinusoidal positions in
//! tensor2tensor's layout (sin half, then cos half), offset by 2 as fairseq numbered positions
//! after the padding index; pre-LayerNorm, exact GELU, biases everywhere, tied head.
//! The forward pass is the shared GPT-style block in `gpt.rs`.

use serde::Deserialize;

use super::config::{parse_json, Arch, Mlp, ModelConfig, Norm, Positions};
use super::gpt::{Gpt, Layer, PositionTable};
use super::gpt2::gelu_named;
use super::llama::upload;
use crate::error::{Error, Result};
use crate::gpu::Context;
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

/// Uploads every weight once. `progress` is called with the bytes of each tensor read.
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, progress: &mut dyn FnMut(u64)) -> Result<Gpt> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let mut get = |ours: &str, layer: Option<usize>, shape: &[usize]| upload(ctx, src, &name(ours, layer), shape, progress);
    let embed = get("embed", None, &[cfg.vocab, d])?;
    let Positions::Sinusoidal { offset, layout, embed_scale } = cfg.positions else { unreachable!("xglm positions are sinusoidal") };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = Some(i);
        layers.push(Layer {
            attn_norm: get("attn_norm", l, &[d])?,
            attn_norm_b: get("attn_norm_b", l, &[d])?,
            wq: get("wq", l, &[d, d])?,
            bq: get("bq", l, &[d])?,
            wk: get("wk", l, &[d, d])?,
            bk: get("bk", l, &[d])?,
            wv: get("wv", l, &[d, d])?,
            bv: get("bv", l, &[d])?,
            wo: get("wo", l, &[d, d])?,
            bo: get("bo", l, &[d])?,
            ffn_norm: get("ffn_norm", l, &[d])?,
            ffn_norm_b: get("ffn_norm_b", l, &[d])?,
            w_up: get("w_up", l, &[f, d])?,
            b_up: get("b_up", l, &[f])?,
            w_down: get("w_down", l, &[d, f])?,
            b_down: get("b_down", l, &[d])?,
        });
    }
    let norm = get("norm", None, &[d])?;
    let norm_b = get("norm_b", None, &[d])?;
    let lm_head = if cfg.tied_embeddings { None } else { Some(get("lm_head", None, &[cfg.vocab, d])?) };
    Gpt::new(cfg, embed, PositionTable::Sinusoidal { offset, layout, embed_scale }, layers, norm, norm_b, lm_head)
}
