//! The Llama family (Llama 2/3, SmolLM2, TinyLlama): RMSNorm, rotary positions,
//! grouped-query attention, SwiGLU MLP, pre-norm residuals, optional attention biases.
//! The forward pass here is shared: Qwen2 (`qwen2.rs`, Llama plus Q/K/V biases) keeps only
//! its config and tensor-name table and builds this struct.
//! Model code only calls ops; it never touches wgpu.

use super::config::ModelConfig;
use super::state::{LogitRows, State};
use crate::error::Result;
use crate::gpu::{Context, Recorder, Tensor};
use crate::ops::matmul::{linear, Store};
use crate::ops::{activation, attention, embed, norm, rope};
use crate::weights::TensorSource;

/// Which of a table's two spellings a file uses: llama.cpp's GGUF names or Hugging Face's.
#[derive(Clone, Copy)]
pub enum Naming {
    Gguf,
    HuggingFace,
}

/// The table from our names to the file's for Llama: `layer` is None for the tensors outside
/// the blocks. Architectures that share this forward pass keep their own table (`qwen2.rs`).
pub fn name(n: Naming, ours: &str, layer: Option<usize>) -> String {
    let (gguf, hf) = match ours {
        "embed" => ("token_embd.weight", "model.embed_tokens.weight"),
        "norm" => ("output_norm.weight", "model.norm.weight"),
        "lm_head" => ("output.weight", "lm_head.weight"),
        "attn_norm" => ("attn_norm.weight", "input_layernorm.weight"),
        "wq" => ("attn_q.weight", "self_attn.q_proj.weight"),
        "wk" => ("attn_k.weight", "self_attn.k_proj.weight"),
        "wv" => ("attn_v.weight", "self_attn.v_proj.weight"),
        // Present with attention_bias = true.
        "bq" => ("attn_q.bias", "self_attn.q_proj.bias"),
        "bk" => ("attn_k.bias", "self_attn.k_proj.bias"),
        "bv" => ("attn_v.bias", "self_attn.v_proj.bias"),
        "bo" => ("attn_output.bias", "self_attn.o_proj.bias"),
        "wo" => ("attn_output.weight", "self_attn.o_proj.weight"),
        "ffn_norm" => ("ffn_norm.weight", "post_attention_layernorm.weight"),
        "w_gate" => ("ffn_gate.weight", "mlp.gate_proj.weight"),
        "w_up" => ("ffn_up.weight", "mlp.up_proj.weight"),
        "w_down" => ("ffn_down.weight", "mlp.down_proj.weight"),
        _ => unreachable!("no Llama tensor named {ours}"),
    };
    file_name(n, gguf, hf, layer)
}

/// A name of either spelling, inside block `layer` or outside the blocks.
pub(super) fn file_name(n: Naming, gguf: &str, hf: &str, layer: Option<usize>) -> String {
    match (n, layer) {
        (Naming::Gguf, Some(i)) => format!("blk.{i}.{gguf}"),
        (Naming::HuggingFace, Some(i)) => format!("model.layers.{i}.{hf}"),
        (Naming::Gguf, None) => gguf.to_string(),
        (Naming::HuggingFace, None) => hf.to_string(),
    }
}

/// Loads a Llama model whose file names its tensors as `naming` says.
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, naming: Naming, progress: &mut dyn FnMut(u64)) -> Result<Llama> {
    Llama::load(ctx, cfg, src, &|ours, layer| name(naming, ours, layer), progress)
}

pub struct Layer {
    pub attn_norm: Tensor, // (dim,)
    pub wq: Tensor,        // (n_heads * head_dim, dim)
    pub wk: Tensor,        // (n_kv_heads * head_dim, dim)
    pub wv: Tensor,        // (n_kv_heads * head_dim, dim)
    pub bq: Option<Tensor>, // (n_heads * head_dim,)  qwen2, or llama with attention_bias
    pub bk: Option<Tensor>, // (n_kv_heads * head_dim,)
    pub bv: Option<Tensor>, // (n_kv_heads * head_dim,)
    pub wo: Tensor,        // (dim, n_heads * head_dim)
    pub bo: Option<Tensor>, // (dim,) llama with attention_bias
    pub ffn_norm: Tensor,  // (dim,)
    pub w_gate: Tensor,    // (ffn_dim, dim)
    pub w_up: Tensor,      // (ffn_dim, dim)
    pub w_down: Tensor,    // (dim, ffn_dim)
}

pub struct Llama {
    pub cfg: ModelConfig,
    pub embed: Tensor,           // (vocab, dim)
    pub layers: Vec<Layer>,
    pub norm: Tensor,            // (dim,)
    pub lm_head: Option<Tensor>, // (vocab, dim); None: tied to `embed`
}

/// Reads a tensor of the expected shape and dequantizes it to f32, counting its file bytes.
pub(super) fn read_f32(src: &dyn TensorSource, name: &str, shape: &[usize], progress: &mut dyn FnMut(u64)) -> Result<Vec<f32>> {
    let t = src.expect(name, shape)?;
    let data = t.to_f32().map_err(|e| crate::Error::tensor(src.file_name(), name, e.to_string()))?;
    progress(t.data.len() as u64);
    Ok(data)
}

/// Reads a tensor of the expected shape, dequantizes it to f32 and uploads it.
pub(super) fn upload(ctx: &Context, src: &dyn TensorSource, name: &str, shape: &[usize], progress: &mut dyn FnMut(u64)) -> Result<Tensor> {
    let data = read_f32(src, name, shape, progress)?;
    Tensor::upload_f32(ctx, name, shape, &data)
}

impl Llama {
    /// Uploads every weight once, finding each in the file by `names(ours, layer)`, the
    /// architecture's table. The biases read are those `cfg.qkv_bias` and `cfg.o_bias` ask for.
    /// `progress` is called with the bytes of each tensor read.
    pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, names: &dyn Fn(&str, Option<usize>) -> String, progress: &mut dyn FnMut(u64)) -> Result<Self> {
        let c = &cfg;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut get = |name: &str, shape: &[usize]| upload(ctx, src, name, shape, progress);
        let embed = get(&names("embed", None), &[c.vocab, c.dim])?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |ours: &str| names(ours, Some(i));
            let bias = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, ours: &str, len: usize| -> Result<Option<Tensor>> {
                let wanted = if ours == "bo" { c.o_bias } else { c.qkv_bias };
                if wanted {
                    Ok(Some(get(&n(ours), &[len])?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: get(&n("attn_norm"), &[c.dim])?,
                wq: get(&n("wq"), &[q_dim, c.dim])?,
                wk: get(&n("wk"), &[kv_dim, c.dim])?,
                wv: get(&n("wv"), &[kv_dim, c.dim])?,
                bq: bias(&mut get, "bq", q_dim)?,
                bk: bias(&mut get, "bk", kv_dim)?,
                bv: bias(&mut get, "bv", kv_dim)?,
                wo: get(&n("wo"), &[c.dim, q_dim])?,
                bo: bias(&mut get, "bo", c.dim)?,
                ffn_norm: get(&n("ffn_norm"), &[c.dim])?,
                w_gate: get(&n("w_gate"), &[c.ffn_dim, c.dim])?,
                w_up: get(&n("w_up"), &[c.ffn_dim, c.dim])?,
                w_down: get(&n("w_down"), &[c.dim, c.ffn_dim])?,
            });
        }
        let norm = get(&names("norm", None), &[c.dim])?;
        let lm_head = if c.tied_embeddings { None } else { Some(get(&names("lm_head", None), &[c.vocab, c.dim])?) };
        Ok(Llama { cfg, embed, layers, norm, lm_head })
    }

    /// Records the forward pass of `n` tokens whose ids sit in `st.tokens[pos0..pos0 + n]`,
    /// at positions pos0.., writing logits for the rows `rows` asks for into `st.logits`.
    pub fn forward(&self, rec: &mut Recorder, st: &State, pos0: usize, n: usize, rows: LogitRows) -> Result<()> {
        let c = &self.cfg;
        let attn = st.attn_shape(c, pos0, n);
        embed::embed(rec, &self.embed, &st.tokens, pos0, n, &st.x)?;
        for (i, l) in self.layers.iter().enumerate() {
            // attention block: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
            norm::rms_norm(rec, &st.x, &l.attn_norm, &st.xn, n, c.norm_eps, Some(i))?;
            linear(rec, "q_proj", Some(i), &st.xn, &l.wq, l.bq.as_ref(), &st.q, n, Store::Write)?;
            linear(rec, "k_proj", Some(i), &st.xn, &l.wk, l.bk.as_ref(), &st.k, n, Store::Write)?;
            linear(rec, "v_proj", Some(i), &st.xn, &l.wv, l.bv.as_ref(), &st.v, n, Store::Write)?;
            rope::rope(rec, &st.q, n, c.n_heads, c.head_dim, pos0, c.rope_theta, c.rope_style, i)?;
            rope::rope(rec, &st.k, n, c.n_kv_heads, c.head_dim, pos0, c.rope_theta, c.rope_style, i)?;
            attention::kv_write(rec, &st.k, &st.v, &st.k_cache[i], &st.v_cache[i], attn, i)?;
            attention::attention(rec, &st.q, &st.k_cache[i], &st.v_cache[i], &st.att, attn, i)?;
            linear(rec, "o_proj", Some(i), &st.att, &l.wo, l.bo.as_ref(), &st.x, n, Store::Accumulate)?;
            // MLP block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
            norm::rms_norm(rec, &st.x, &l.ffn_norm, &st.xn, n, c.norm_eps, Some(i))?;
            linear(rec, "gate_proj", Some(i), &st.xn, &l.w_gate, None, &st.gate, n, Store::Write)?;
            linear(rec, "up_proj", Some(i), &st.xn, &l.w_up, None, &st.up, n, Store::Write)?;
            activation::swiglu(rec, &st.up, &st.gate, n * c.ffn_dim, i)?;
            linear(rec, "down_proj", Some(i), &st.gate, &l.w_down, None, &st.x, n, Store::Accumulate)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let (src, n_rows) = st.logit_rows(rec, rows, n, c.dim);
        norm::rms_norm(rec, src, &self.norm, &st.xn, n_rows, c.norm_eps, None)?;
        linear(rec, "lm_head", None, &st.xn, head, None, &st.logits, n_rows, Store::Write)
    }
}
