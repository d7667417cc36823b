//! The Llama family (Llama 2/3, SmolLM2, TinyLlama): RMSNorm, rotary positions,
//! grouped-query attention, SwiGLU MLP, pre-norm residuals, optional attention biases.
//! The forward pass here is shared: Qwen2 (`qwen2.rs`, Llama plus Q/K/V biases) keeps only
//! its config and tensor-name table and builds this struct.
//! Model code only calls ops; it never touches wgpu.

use super::config::ModelConfig;
use super::state::{LogitRows, State};
use crate::error::Result;
use super::load::LoadOptions;
use crate::gpu::{Context, Recorder, Tensor, Weight};
use crate::ops::matmul::{linear, linear_out, Out, Store};
use crate::weights::DType;
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
pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, naming: Naming, opts: &LoadOptions, progress: &mut dyn FnMut(u64)) -> Result<Llama> {
    Llama::load(ctx, cfg, src, &|ours, layer| name(naming, ours, layer), opts, progress)
}

/// Q, K and V projections: one weight whose rows are [q | k | v] (one dispatch), or three
/// when the file stores them in different formats.
/// Each with its biases (qwen2, or llama with attention_bias).
pub enum Qkv {
    Fused(Weight, Option<Tensor>),
    Split([Weight; 3], Option<[Tensor; 3]>),
}

/// Gate and up projections: one weight with interleaved rows (gate r at 2r, up r at 2r + 1)
/// whose kernel applies SwiGLU as it stores, or two.
pub enum GateUp {
    Fused(Weight),
    Split(Weight, Weight),
}

pub struct Layer {
    pub attn_norm: Tensor,    // (dim,)
    pub qkv: Qkv,             // (n_heads * head_dim + 2 * n_kv_heads * head_dim, dim)
    pub wo: Weight,           // (dim, n_heads * head_dim)
    pub bo: Option<Tensor>,   // (dim,) llama with attention_bias
    pub ffn_norm: Tensor,     // (dim,)
    pub gate_up: GateUp,      // (2 * ffn_dim, dim)
    pub w_down: Weight,       // (dim, ffn_dim)
}

pub struct Llama {
    pub cfg: ModelConfig,
    pub embed: Weight,           // (vocab, dim)
    pub layers: Vec<Layer>,
    pub norm: Tensor,            // (dim,)
    pub lm_head: Option<Weight>, // (vocab, dim); None: tied to `embed`
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

/// Uploads one weight matrix in the storage type `opts` asks for.
pub(super) fn weight(ctx: &Context, src: &dyn TensorSource, name: &str, shape: &[usize], opts: &LoadOptions, progress: &mut dyn FnMut(u64)) -> Result<Weight> {
    fused(ctx, src, &[name.to_string()], &[shape], false, opts, progress)?.ok_or_else(|| crate::Error::tensor(src.file_name(), name, "no storage type"))
}

/// Uploads the matrices `names` (of equal width) as one weight: stacked ([a | b | c]) or with
/// interleaved rows (a0, b0, a1, b1, …). None when their storage types differ.
pub(super) fn fused(ctx: &Context, src: &dyn TensorSource, names: &[String], shapes: &[&[usize]], interleave: bool, opts: &LoadOptions, progress: &mut dyn FnMut(u64)) -> Result<Option<Weight>> {
    let views = names.iter().zip(shapes).map(|(n, s)| src.expect(n, s)).collect::<Result<Vec<_>>>()?;
    let cols = shapes[0][1];
    let target = opts.storage(views[0].dtype, cols);
    if views.iter().any(|v| opts.storage(v.dtype, cols) != target) {
        return Ok(None);
    }
    let mut converted = Vec::with_capacity(views.len());
    for v in &views {
        let bytes = convert(v, target).map_err(|e| crate::Error::tensor(src.file_name(), &v.name, e.to_string()))?;
        progress(v.data.len() as u64);
        converted.push(bytes);
    }
    let row_bytes = target.bytes_for(cols).ok_or_else(|| crate::Error::tensor(src.file_name(), &names[0], format!("{cols} columns are not whole {} blocks", target.name())))?;
    let per: Vec<Vec<&[u8]>> = converted.iter().map(|b| b.chunks(row_bytes).collect()).collect();
    let rows: Vec<&[u8]> = if interleave {
        (0..per[0].len()).flat_map(|r| per.iter().map(move |p| p[r])).collect()
    } else {
        per.concat()
    };
    Weight::from_rows(ctx, &names.join("+"), target, cols, &rows, ctx.binding_limit()).map(Some)
}

/// A tensor's bytes in storage type `to`: borrowed when the file already stores it so.
fn convert<'a>(v: &'a crate::weights::TensorView, to: DType) -> Result<std::borrow::Cow<'a, [u8]>> {
    use std::borrow::Cow;
    if v.dtype == to {
        return Ok(Cow::Borrowed(v.data));
    }
    let f = v.to_f32()?;
    Ok(Cow::Owned(match to {
        DType::F32 => bytemuck::cast_slice(&f).to_vec(),
        DType::F16 => f.iter().flat_map(|&x| crate::weights::dtype::f32_to_f16(x).to_le_bytes()).collect(),
        DType::Q8_0 => crate::weights::dtype::quantize_q8_0(&f),
        other => return Err(crate::Error::Unsupported(format!("converting weights to {}", other.name()))),
    }))
}

impl Llama {
    pub fn weights(&self) -> Vec<&Weight> {
        let mut v = vec![&self.embed];
        for l in &self.layers {
            match &l.qkv {
                Qkv::Fused(w, _) => v.push(w),
                Qkv::Split(w, _) => v.extend(w.iter()),
            }
            v.push(&l.wo);
            match &l.gate_up {
                GateUp::Fused(w) => v.push(w),
                GateUp::Split(a, b) => v.extend([a, b]),
            }
            v.push(&l.w_down);
        }
        v.extend(self.lm_head.as_ref());
        v
    }

    /// Uploads every weight once, finding each in the file by `names(ours, layer)`, the
    /// architecture's table. The biases read are those `cfg.qkv_bias` and `cfg.o_bias` ask for.
    /// Q/K/V and gate/up are fused into one weight each where their storage types agree.
    /// `progress` is called with the bytes of each tensor read.
    pub fn load(ctx: &Context, cfg: ModelConfig, src: &dyn TensorSource, names: &dyn Fn(&str, Option<usize>) -> String, opts: &LoadOptions, progress: &mut dyn FnMut(u64)) -> Result<Self> {
        let c = &cfg;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let embed = weight(ctx, src, &names("embed", None), &[c.vocab, c.dim], opts, progress)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |ours: &str| names(ours, Some(i));
            let qkv_names = [n("wq"), n("wk"), n("wv")];
            let qkv_shapes: [&[usize]; 3] = [&[q_dim, c.dim], &[kv_dim, c.dim], &[kv_dim, c.dim]];
            let biases = if c.qkv_bias {
                Some([read_f32(src, &n("bq"), &[q_dim], progress)?, read_f32(src, &n("bk"), &[kv_dim], progress)?, read_f32(src, &n("bv"), &[kv_dim], progress)?])
            } else {
                None
            };
            let qkv = match fused(ctx, src, &qkv_names, &qkv_shapes, false, opts, progress)? {
                Some(w) if c.dim % 32 == 0 => Qkv::Fused(w, biases.map(|b| Tensor::upload_f32(ctx, &n("bq"), &[q_dim + 2 * kv_dim], &b.concat())).transpose()?),
                _ => {
                    let mut one = |j: usize| weight(ctx, src, &qkv_names[j], qkv_shapes[j], opts, progress);
                    let w = [one(0)?, one(1)?, one(2)?];
                    let b = match biases {
                        Some([bq, bk, bv]) => Some([Tensor::upload_f32(ctx, &n("bq"), &[q_dim], &bq)?, Tensor::upload_f32(ctx, &n("bk"), &[kv_dim], &bk)?, Tensor::upload_f32(ctx, &n("bv"), &[kv_dim], &bv)?]),
                        None => None,
                    };
                    Qkv::Split(w, b)
                }
            };
            let gu_names = [n("w_gate"), n("w_up")];
            let gu_shape: &[usize] = &[c.ffn_dim, c.dim];
            let gate_up = match fused(ctx, src, &gu_names, &[gu_shape, gu_shape], true, opts, progress)? {
                Some(w) if c.dim % 32 == 0 => GateUp::Fused(w),
                _ => GateUp::Split(weight(ctx, src, &gu_names[0], gu_shape, opts, progress)?, weight(ctx, src, &gu_names[1], gu_shape, opts, progress)?),
            };
            layers.push(Layer {
                attn_norm: upload(ctx, src, &n("attn_norm"), &[c.dim], progress)?,
                qkv,
                wo: weight(ctx, src, &n("wo"), &[c.dim, q_dim], opts, progress)?,
                bo: if c.o_bias { Some(upload(ctx, src, &n("bo"), &[c.dim], progress)?) } else { None },
                ffn_norm: upload(ctx, src, &n("ffn_norm"), &[c.dim], progress)?,
                gate_up,
                w_down: weight(ctx, src, &n("w_down"), &[c.dim, c.ffn_dim], opts, progress)?,
            });
        }
        let norm = upload(ctx, src, &names("norm", None), &[c.dim], progress)?;
        let lm_head = if c.tied_embeddings { None } else { Some(weight(ctx, src, &names("lm_head", None), &[c.vocab, c.dim], opts, progress)?) };
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
            let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
            match &l.qkv {
                Qkv::Fused(w, b) => linear_out(rec, "qkv_proj", Some(i), &st.xn, w, b.as_ref(), Out::Split3(&st.q, &st.k, &st.v, q_dim, q_dim + kv_dim), n)?,
                Qkv::Split([wq, wk, wv], b) => {
                    let [bq, bk, bv] = match b {
                        Some([bq, bk, bv]) => [Some(bq), Some(bk), Some(bv)],
                        None => [None; 3],
                    };
                    linear(rec, "q_proj", Some(i), &st.xn, wq, bq, &st.q, n, Store::Write)?;
                    linear(rec, "k_proj", Some(i), &st.xn, wk, bk, &st.k, n, Store::Write)?;
                    linear(rec, "v_proj", Some(i), &st.xn, wv, bv, &st.v, n, Store::Write)?;
                }
            }
            rope::rope(rec, &st.q, n, c.n_heads, c.head_dim, pos0, c.rope_theta, c.rope_style, i)?;
            rope::rope(rec, &st.k, n, c.n_kv_heads, c.head_dim, pos0, c.rope_theta, c.rope_style, i)?;
            attention::kv_write(rec, &st.k, &st.v, &st.k_cache[i], &st.v_cache[i], attn, i)?;
            attention::attention(rec, &st.q, &st.k_cache[i], &st.v_cache[i], &st.att, &st.att_partials, attn, i)?;
            linear(rec, "o_proj", Some(i), &st.att, &l.wo, l.bo.as_ref(), &st.x, n, Store::Accumulate)?;
            // MLP block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
            norm::rms_norm(rec, &st.x, &l.ffn_norm, &st.xn, n, c.norm_eps, Some(i))?;
            match &l.gate_up {
                GateUp::Fused(w) => linear_out(rec, "gate_up_proj", Some(i), &st.xn, w, None, Out::SwiGlu(&st.gate), n)?,
                GateUp::Split(w_gate, w_up) => {
                    linear(rec, "gate_proj", Some(i), &st.xn, w_gate, None, &st.gate, n, Store::Write)?;
                    linear(rec, "up_proj", Some(i), &st.xn, w_up, None, &st.up, n, Store::Write)?;
                    activation::swiglu(rec, &st.up, &st.gate, n * c.ffn_dim, i)?;
                }
            }
            linear(rec, "down_proj", Some(i), &st.gate, &l.w_down, None, &st.x, n, Store::Accumulate)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let (src, n_rows) = st.logit_rows(rec, rows, n, c.dim);
        norm::rms_norm(rec, src, &self.norm, &st.xn, n_rows, c.norm_eps, None)?;
        linear(rec, "lm_head", None, &st.xn, head, None, &st.logits, n_rows, Store::Write)
    }
}
