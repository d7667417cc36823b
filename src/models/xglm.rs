//! XGLM (Hugging Face `model_type: xglm`): the original Transformer's sinusoidal positions in
//! tensor2tensor's layout (sin half, then cos half), offset by 2 as fairseq numbered positions
//! after the padding index; pre-LayerNorm, exact GELU, biases everywhere, tied head.
//! The forward pass is the shared GPT-style block in `gpt.rs`.

use serde::Deserialize;

use super::builder::{name, Builder, Name, Qkv};
use super::config::{need, parse_json, Arch, Mlp, ModelConfig, Norm, Positions};
use super::decoder::{Decoder, Layer, MlpIn, NormWeights};
use super::gpt2::gelu_named;
use super::arch::Architecture;
use crate::error::Result;
use crate::gpu::Weight;
use crate::ops::posenc::SinusoidalLayout;

pub static ARCH: Architecture = Architecture { name: "xglm", model_types: &["xglm"], gguf_names: &[], hf_config: config, gguf_config: None, load };

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
    let dim = need(c.d_model, "d_model", file)?;
    let n_heads = need(c.attention_heads, "attention_heads", file)?;
    let gelu = gelu_named(c.activation_function.as_deref().unwrap_or("gelu"), file)?;
    // torch.nn.LayerNorm's default eps, which XGLM uses.
    let mut cfg = ModelConfig::new(Arch(ARCH.name), dim, need(c.num_layers, "num_layers", file)?, n_heads, n_heads, dim / n_heads.max(1), need(c.ffn_dim, "ffn_dim", file)?, need(c.vocab_size, "vocab_size", file)?, need(c.max_position_embeddings, "max_position_embeddings", file)?, 1e-5);
    cfg.embed_scale = if c.scale_embedding.unwrap_or(true) { (dim as f32).sqrt() } else { 1.0 };
    cfg.tied_embeddings = c.tie_word_embeddings.unwrap_or(true);
    cfg.positions = Positions::Sinusoidal { offset: POSITION_OFFSET, layout: SinusoidalLayout::SplitHalves };
    cfg.block.norm = Norm::Layer;
    cfg.block.mlp = Mlp::Gelu(gelu);
    let a = &mut cfg.block.attention;
    (a.rope, a.qkv_bias, a.o_bias) = (None, true, true);
    cfg.check(file)?.check_mha(file)
}

/// The table from our names to the file's (Hugging Face only).
const ROOT: Name = name("", "model");
const LAYERS: Name = name("", "layers");
const EMBED: Name = name("", "embed_tokens");
const NORM: Name = name("", "layer_norm");
const ATTN_NORM: Name = name("", "self_attn_layer_norm");
const Q: Name = name("", "self_attn.q_proj");
const K: Name = name("", "self_attn.k_proj");
const V: Name = name("", "self_attn.v_proj");
const O: Name = name("", "self_attn.out_proj");
const FFN_NORM: Name = name("", "final_layer_norm");
const UP: Name = name("", "fc1");
const DOWN: Name = name("", "fc2");
const LM_HEAD: Name = name("", "lm_head");

/// An f32 weight matrix (XGLM's weights stay f32 whatever the load options).
fn weight(b: &Builder, n: Name, shape: &[usize]) -> Result<Weight> {
    b.weight_from_f32(&b.full_name(n, ".weight"), shape, &b.f32(n, shape)?)
}

/// Uploads every weight once.
fn load(cfg: &ModelConfig, root: &Builder) -> Result<Decoder> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let b = root.pp(ROOT);
    let embed = b.weight_from_f32("embed", &[cfg.vocab, d], &b.f32(EMBED, &[cfg.vocab, d])?)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let lb = b.pp(LAYERS).index(i);
        layers.push(Layer {
            attn_norm: NormWeights::layer(&lb, ATTN_NORM, d)?,
            qkv: Qkv::Split([weight(&lb, Q, &[d, d])?, weight(&lb, K, &[d, d])?, weight(&lb, V, &[d, d])?], Some([lb.bias(Q, &[d])?, lb.bias(K, &[d])?, lb.bias(V, &[d])?])),
            q_norm: None,
            k_norm: None,
            wo: weight(&lb, O, &[d, d])?,
            bo: Some(lb.bias(O, &[d])?),
            post_attn_norm: None,
            ffn_norm: NormWeights::layer(&lb, FFN_NORM, d)?,
            mlp_in: MlpIn::Up(weight(&lb, UP, &[f, d])?, lb.bias(UP, &[f])?),
            w_down: weight(&lb, DOWN, &[d, f])?,
            b_down: Some(lb.bias(DOWN, &[d])?),
            post_ffn_norm: None,
        });
    }
    let norm = NormWeights::layer(&b, NORM, d)?;
    let lm_head = if cfg.tied_embeddings { None } else { Some(weight(root, LM_HEAD, &[cfg.vocab, d])?) };
    Decoder::new(root, cfg.clone(), embed, None, layers, norm, lm_head)
}
