//! The GPT-style decoder shared by GPT-2 and XGLM: absolute positions added to the token
//! embeddings (learned or sinusoidal), pre-LayerNorm blocks, multi-head attention and a GELU
//! MLP, with biases on every linear layer. `gpt2.rs` and `xglm.rs` hold each architecture's
//! config and tensor-name table and build this struct; the math lives here once.
//! Model code only calls ops; it never touches wgpu.

use super::config::{Mlp, ModelConfig, Positions};
use super::state::{LogitRows, State};
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor, Weight};
use crate::ops::activation::{self, Gelu};
use crate::ops::matmul::{linear, Store};
use crate::ops::{attention, embed, norm, posenc};

pub struct Layer {
    pub attn_norm: Tensor,   // (dim,)
    pub attn_norm_b: Tensor, // (dim,)
    pub wq: Weight,          // (n_heads * head_dim, dim)
    pub bq: Tensor,          // (n_heads * head_dim,)
    pub wk: Weight,          // (n_kv_heads * head_dim, dim)
    pub bk: Tensor,          // (n_kv_heads * head_dim,)
    pub wv: Weight,          // (n_kv_heads * head_dim, dim)
    pub bv: Tensor,          // (n_kv_heads * head_dim,)
    pub wo: Weight,          // (dim, n_heads * head_dim)
    pub bo: Tensor,          // (dim,)
    pub ffn_norm: Tensor,    // (dim,)
    pub ffn_norm_b: Tensor,  // (dim,)
    pub w_up: Weight,        // (ffn_dim, dim)   GPT-2 mlp.c_fc, XGLM fc1
    pub b_up: Tensor,        // (ffn_dim,)
    pub w_down: Weight,      // (dim, ffn_dim)   GPT-2 mlp.c_proj, XGLM fc2
    pub b_down: Tensor,      // (dim,)
}

/// Where positions come from.
pub enum PositionTable {
    /// (max_ctx, dim) rows added to the embeddings.
    Learned(Tensor),
    /// Computed on the GPU; see `Positions::Sinusoidal`.
    Sinusoidal { offset: usize, layout: posenc::SinusoidalLayout, embed_scale: f32 },
}

pub struct Gpt {
    pub cfg: ModelConfig,
    pub embed: Weight, // (vocab, dim)
    pub positions: PositionTable,
    pub layers: Vec<Layer>,
    pub norm: Tensor,            // (dim,)
    pub norm_b: Tensor,          // (dim,)
    pub lm_head: Option<Weight>, // (vocab, dim); None: tied to `embed`
    gelu: Gelu,
}

impl Gpt {
    /// Checks that the config describes this block (LayerNorm, GELU MLP, absolute positions).
    pub fn new(cfg: ModelConfig, embed: Weight, positions: PositionTable, layers: Vec<Layer>, norm: Tensor, norm_b: Tensor, lm_head: Option<Weight>) -> Result<Self> {
        let gelu = match cfg.mlp {
            Mlp::Gelu(g) => g,
            Mlp::SwiGlu => return Err(Error::Unsupported(format!("{}: a SwiGLU MLP in a GPT-style block", cfg.arch.name()))),
        };
        let matches = matches!((&positions, cfg.positions), (PositionTable::Learned(_), Positions::Learned) | (PositionTable::Sinusoidal { .. }, Positions::Sinusoidal { .. }));
        if !matches {
            return Err(Error::Unsupported(format!("{}: positions {:?} in a GPT-style block", cfg.arch.name(), cfg.positions)));
        }
        Ok(Gpt { cfg, embed, positions, layers, norm, norm_b, lm_head, gelu })
    }

    pub fn weights(&self) -> Vec<&Weight> {
        let mut v = vec![&self.embed];
        for l in &self.layers {
            v.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_up, &l.w_down]);
        }
        v.extend(self.lm_head.as_ref());
        v
    }

    /// Records the forward pass of `n` tokens whose ids sit in `st.tokens[pos0..pos0 + n]`,
    /// at positions pos0.., writing logits for the rows `rows` asks for into `st.logits`.
    pub fn forward(&self, rec: &mut Recorder, st: &State, pos0: usize, n: usize, rows: LogitRows) -> Result<()> {
        let c = &self.cfg;
        let attn = st.attn_shape(c, pos0, n);
        embed::embed(rec, &self.embed, &st.tokens, pos0, n, &st.x)?;
        match &self.positions {
            PositionTable::Learned(table) => posenc::learned(rec, &st.x, table, pos0, n)?,
            PositionTable::Sinusoidal { offset, layout, embed_scale } => posenc::sinusoidal(rec, &st.x, c.dim, pos0 + offset, n, *embed_scale, *layout)?,
        }
        for (i, l) in self.layers.iter().enumerate() {
            // attention block: x += Wo · attention(Wq·ln(x) + bq, Wk·ln(x) + bk, Wv·ln(x) + bv) + bo
            norm::layer_norm(rec, &st.x, &l.attn_norm, &l.attn_norm_b, &st.xn, n, c.norm_eps, Some(i))?;
            linear(rec, "q_proj", Some(i), &st.xn, &l.wq, Some(&l.bq), &st.q, n, Store::Write)?;
            linear(rec, "k_proj", Some(i), &st.xn, &l.wk, Some(&l.bk), &st.k, n, Store::Write)?;
            linear(rec, "v_proj", Some(i), &st.xn, &l.wv, Some(&l.bv), &st.v, n, Store::Write)?;
            attention::kv_write(rec, &st.k, &st.v, &st.k_cache[i], &st.v_cache[i], attn, i)?;
            attention::attention(rec, &st.q, &st.k_cache[i], &st.v_cache[i], &st.att, &st.att_partials, attn, i)?;
            linear(rec, "o_proj", Some(i), &st.att, &l.wo, Some(&l.bo), &st.x, n, Store::Accumulate)?;
            // MLP block: x += W_down · gelu(W_up·ln(x) + b_up) + b_down
            norm::layer_norm(rec, &st.x, &l.ffn_norm, &l.ffn_norm_b, &st.xn, n, c.norm_eps, Some(i))?;
            linear(rec, "up_proj", Some(i), &st.xn, &l.w_up, Some(&l.b_up), &st.up, n, Store::Write)?;
            activation::gelu(rec, &st.up, n * c.ffn_dim, self.gelu, i)?;
            linear(rec, "down_proj", Some(i), &st.up, &l.w_down, Some(&l.b_down), &st.x, n, Store::Accumulate)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let (src, n_rows) = st.logit_rows(rec, rows, n, c.dim);
        norm::layer_norm(rec, src, &self.norm, &self.norm_b, &st.xn, n_rows, c.norm_eps, None)?;
        linear(rec, "lm_head", None, &st.xn, head, None, &st.logits, n_rows, Store::Write)
    }
}
