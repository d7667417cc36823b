//! A training run: a text's token ids cut into sequences, a held-out split, AdamW steps with
//! warmup and cosine decay, held-out loss every K steps, and checkpoints that resume. Used by
//! `quill finetune` (a LoRA adapter on a frozen base) and `quill train` (a model from scratch).
//!
//! A checkpoint is one safetensors file (the trained tensors, AdamW's moments, and the run's
//! state in its metadata) written with `files::atomic_write`, so a crash or a full disk while
//! saving leaves the previous checkpoint whole.

use std::collections::HashMap;

use safetensors::tensor::TensorView as StView;
use safetensors::{Dtype, SafeTensors};

use super::llama::{Llama, Optimizer};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::ops::optim::lr_at;

/// Sequences for training and for the held-out loss, each `seq_len + 1` tokens (the targets
/// are tokens 1..; consecutive sequences share one token so every token is a target once).
#[derive(Debug)]
pub struct Data {
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
}

/// Cuts `ids` (from `file`) into sequences of `seq_len` targets and holds out the last
/// `val_split` of them (at least one when `val_split` > 0). `max_ctx` is the model's context.
pub fn split_sequences(ids: &[u32], file: &str, seq_len: usize, val_split: f32, max_ctx: usize) -> Result<Data> {
    if seq_len < 1 {
        return Err(Error::arg("--seq-len", "must be at least 1"));
    }
    if seq_len > max_ctx {
        return Err(Error::arg("--seq-len", format!("{seq_len} is over the model's context of {max_ctx} tokens")));
    }
    if !(0.0..1.0).contains(&val_split) {
        return Err(Error::arg("--val-split", format!("{val_split} is not in [0, 1)")));
    }
    let n = ids.len().saturating_sub(1) / seq_len;
    let n_val = if val_split > 0.0 { ((n as f32 * val_split).round() as usize).max(1) } else { 0 };
    if n < n_val + 1 {
        let need = (n_val.max(if val_split > 0.0 { 1 } else { 0 }) + 1) * seq_len + 1;
        return Err(Error::arg("--data", format!("{file} has {} tokens; --seq-len {seq_len} with --val-split {val_split} needs at least {need} (a training sequence{})", ids.len(), if val_split > 0.0 { " and a held-out one" } else { "" })));
    }
    let seqs: Vec<Vec<u32>> = (0..n).map(|i| ids[i * seq_len..(i + 1) * seq_len + 1].to_vec()).collect();
    let (train, val) = seqs.split_at(n - n_val);
    Ok(Data { train: train.to_vec(), val: val.to_vec() })
}

/// How a run trains.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub steps: usize,
    /// Sequences per step (gradient accumulation over micro-batches of one sequence).
    pub batch: usize,
    pub lr: f32,
    pub warmup: usize,
    /// Held-out loss (and a checkpoint) every this many steps, and after the last.
    pub eval_every: usize,
}

/// One point of the loss curves.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Point {
    pub step: usize,
    pub loss: f32,
}

/// What a run has done: its loss curves and where it stands.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct History {
    /// Steps done.
    pub step: usize,
    pub train: Vec<Point>,
    pub val: Vec<Point>,
    /// Tokens trained on (targets).
    pub tokens: u64,
    pub seconds: f64,
}

/// What the progress display is told after each step.
pub struct Progress<'a> {
    pub history: &'a History,
    pub total_steps: usize,
    pub tokens_per_s: f64,
}

/// Mean held-out loss over `val` (one sequence per submit, no gradients kept).
pub async fn held_out_loss(ctx: &Context, llama: &Llama, val: &[Vec<u32>]) -> Result<f32> {
    llama.eval_loss(ctx, val).await
}

/// Trains `llama` from `history.step` to `opts.steps`, calling `progress` after every step and
/// `checkpoint` after every held-out evaluation. A loss that is not a finite number stops the
/// run with an error naming the step; the last checkpoint written stays as it was.
#[allow(clippy::too_many_arguments)]
pub async fn train(
    ctx: &Context,
    llama: &Llama,
    opt: &mut Optimizer,
    data: &Data,
    opts: &RunOptions,
    history: &mut History,
    progress: &mut dyn FnMut(&Progress),
    checkpoint: &mut dyn FnMut(&Optimizer, &History) -> Result<()>,
) -> Result<()> {
    if opts.steps == 0 || opts.batch == 0 || opts.eval_every == 0 {
        return Err(Error::arg("--steps/--batch/--eval-every", "must each be at least 1"));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(Error::arg("--lr", format!("{} is not a positive number", opts.lr)));
    }
    let start = web_time::Instant::now();
    let (seconds0, tokens0) = (history.seconds, history.tokens);
    while history.step < opts.steps {
        let step = history.step;
        // Sequences in order, wrapping around: an epoch is train.len() / batch steps.
        let batch: Vec<Vec<u32>> = (0..opts.batch).map(|j| data.train[(step * opts.batch + j) % data.train.len()].clone()).collect();
        let lr = lr_at(step, opts.warmup, opts.steps, opts.lr, opts.lr / 10.0);
        let loss = llama.train_step(ctx, opt, &batch, lr).await?;
        if !loss.is_finite() {
            let kept = if history.val.is_empty() { "no checkpoint was written yet".to_string() } else { format!("the last good checkpoint (step {}) is kept", history.val.last().map_or(0, |p| p.step)) };
            return Err(Error::arg("training", format!("the loss is {loss} at step {} (learning rate {lr:e}): stopped; {kept}. Try a lower --lr", step + 1)));
        }
        history.step += 1;
        history.tokens += batch.iter().map(|s| s.len() as u64 - 1).sum::<u64>();
        history.train.push(Point { step: history.step, loss });
        history.seconds = seconds0 + start.elapsed().as_secs_f64();
        if history.step % opts.eval_every == 0 || history.step == opts.steps {
            if !data.val.is_empty() {
                let val = llama.eval_loss(ctx, &data.val).await?;
                history.val.push(Point { step: history.step, loss: val });
            }
            history.seconds = seconds0 + start.elapsed().as_secs_f64();
            checkpoint(opt, history)?;
        }
        let tokens_per_s = (history.tokens - tokens0) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        progress(&Progress { history, total_steps: opts.steps, tokens_per_s });
    }
    Ok(())
}

/// A checkpoint's bytes: every trained tensor (value, and AdamW's m and v), the optimizer's step
/// and the history in the metadata.
pub async fn checkpoint_bytes(ctx: &Context, llama: &Llama, opt: &Optimizer, history: &History, meta: &HashMap<String, String>) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for (name, p) in llama.named_params() {
        for (suffix, t) in [("", &p.value), (".adam_m", &p.m), (".adam_v", &p.v)] {
            let bytes = ctx.read_bytes_async(&t.buf, 0, (t.numel() * 4) as u64).await?;
            tensors.push((format!("{name}{suffix}"), t.shape.clone(), bytes));
        }
    }
    let views: Vec<(String, StView)> = tensors
        .iter()
        .map(|(n, s, b)| StView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::format("checkpoint", format!("cannot write: {e}")))?;
    let mut meta = meta.clone();
    meta.insert("optimizer_steps".into(), opt.steps.to_string());
    meta.insert("history".into(), serde_json::to_string(history).map_err(|e| Error::format("checkpoint", e.to_string()))?);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::format("checkpoint", format!("cannot write: {e}")))
}

/// A checkpoint's metadata (what `checkpoint_bytes` was given, plus the history).
pub fn checkpoint_meta(bytes: &[u8], file: &str) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::format(file, format!("not a checkpoint: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Restores a checkpoint's tensors and moments into `llama` and `opt` (whose parameters must
/// have the same names and shapes) and returns its history.
pub fn restore(ctx: &Context, llama: &Llama, opt: &mut Optimizer, bytes: &[u8], file: &str) -> Result<History> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(file, format!("not a checkpoint: {e}")))?;
    for (name, p) in llama.named_params() {
        for (suffix, t) in [("", &p.value), (".adam_m", &p.m), (".adam_v", &p.v)] {
            let full = format!("{name}{suffix}");
            let v = st.tensor(&full).map_err(|_| Error::tensor(file, &full, "missing: the checkpoint is of another run or model"))?;
            if v.shape() != t.shape.as_slice() || v.dtype() != Dtype::F32 {
                return Err(Error::tensor(file, &full, format!("shape {:?}, the run's is {:?}", v.shape(), t.shape)));
            }
            ctx.queue.write_buffer(&t.buf, 0, v.data());
        }
    }
    let meta = checkpoint_meta(bytes, file)?;
    let field = |k: &str| meta.get(k).ok_or_else(|| Error::format(file, format!("checkpoint metadata lacks '{k}'")));
    opt.steps = field("optimizer_steps")?.parse().map_err(|_| Error::format(file, "optimizer_steps is not a number"))?;
    serde_json::from_str(field("history")?).map_err(|e| Error::format(file, format!("history: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_overlap_by_one_and_the_tail_is_held_out() {
        let ids: Vec<u32> = (0..23).collect();
        let d = split_sequences(&ids, "t.txt", 5, 0.25, 100).unwrap();
        assert_eq!((d.train.len(), d.val.len()), (3, 1));
        assert_eq!(d.train[1], [5, 6, 7, 8, 9, 10]);
        assert_eq!(d.val[0], [15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn bad_data_and_lengths_say_why() {
        let e = split_sequences(&[], "empty.txt", 8, 0.1, 100).unwrap_err().to_string();
        assert!(e.contains("empty.txt has 0 tokens") && e.contains("needs at least 17"), "{e}");
        let e = split_sequences(&[1; 12], "short.txt", 8, 0.1, 100).unwrap_err().to_string();
        assert!(e.contains("short.txt has 12 tokens"), "{e}");
        let e = split_sequences(&[1; 1000], "t.txt", 300, 0.1, 256).unwrap_err().to_string();
        assert!(e.contains("--seq-len") && e.contains("context of 256"), "{e}");
        let e = split_sequences(&[1; 1000], "t.txt", 8, 1.5, 256).unwrap_err().to_string();
        assert!(e.contains("--val-split"), "{e}");
    }
}
