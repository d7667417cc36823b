//! Fused softmax + cross-entropy: the mean loss over the unmasked tokens and dL/dlogits, written
//! over the logits (no second vocabulary-sized buffer). The logits may come in chunks of rows,
//! each its own binding, so (tokens, vocab) never has to fit one.

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "loss", body: include_str!("../../shaders/loss.wgsl") };

/// A target the loss skips (PyTorch's ignore_index): prompt tokens when training on the
/// completion only, padding.
pub const IGNORE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    vocab: u32,
    row0: u32,
    scale: f32,
}

/// Targets with the loss mask applied: targets[i] where mask[i], else IGNORE. Refuses
/// targets outside the vocabulary and a mask that leaves nothing to train on.
pub fn masked_targets(targets: &[u32], mask: Option<&[bool]>, vocab: usize) -> Result<Vec<u32>> {
    if let Some(m) = mask {
        if m.len() != targets.len() {
            return Err(Error::arg("loss mask", format!("{} entries for {} targets", m.len(), targets.len())));
        }
    }
    let out: Vec<u32> = targets.iter().enumerate().map(|(i, &t)| if mask.is_none_or(|m| m[i]) { t } else { IGNORE }).collect();
    if let Some((i, &t)) = out.iter().enumerate().find(|&(_, &t)| t != IGNORE && t as usize >= vocab) {
        return Err(Error::arg("targets", format!("target {t} at position {i} is outside the vocabulary of {vocab}")));
    }
    if out.iter().all(|&t| t == IGNORE) {
        return Err(Error::arg("loss mask", "masks every token: nothing to train on"));
    }
    Ok(out)
}

/// The loss scale that makes the sum a mean over the unmasked targets.
pub fn mean_scale(targets: &[u32]) -> f32 {
    1.0 / targets.iter().filter(|&&t| t != IGNORE).count().max(1) as f32
}

/// How many rows of `vocab` logits one binding holds on this device.
pub fn rows_per_chunk(ctx: &Context, vocab: usize) -> usize {
    (ctx.binding_limit() as usize / (4 * vocab.max(1))).max(1)
}

/// For the chunk `logits` (n_rows, vocab) holding batch rows row0..row0 + n_rows: writes
/// losses[row0 + r] (unscaled) and overwrites the logits with scale * (softmax - onehot).
/// targets: (>= row0 + n_rows,) from `masked_targets`, on the GPU as u32.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(rec: &mut Recorder, logits: &Tensor, targets: &Tensor, losses: &Tensor, row0: usize, n_rows: usize, vocab: usize, scale: f32) -> Result<()> {
    if vocab == 0 || n_rows == 0 {
        return Err(Error::Shape { op: "cross_entropy", msg: format!("empty logits: {n_rows} rows of {vocab}") });
    }
    logits.holds("cross_entropy", "logits", n_rows * vocab)?;
    targets.holds("cross_entropy", "targets", row0 + n_rows)?;
    losses.holds("cross_entropy", "losses", row0 + n_rows)?;
    let pipe = rec.ctx.pipeline(&SHADER, "cross_entropy", &[])?;
    let p = Params { n_rows: n_rows as u32, vocab: vocab as u32, row0: row0 as u32, scale };
    let n = (n_rows * vocab) as u64;
    // max, exp-sum, exp-scale (about 5 per logit); reads the logits three times, writes once.
    let info = OpInfo::new("cross_entropy", 5 * n, 16 * n);
    rec.dispatch(info, &pipe, &[&targets.buf, &logits.buf, &losses.buf], &p, grid(rec.ctx, n_rows as u32));
    Ok(())
}

/// total[0] = scale * sum(losses[..n]): the mean loss, the one number a training step reads back.
pub fn loss_total(rec: &mut Recorder, losses: &Tensor, total: &Tensor, n: usize, scale: f32) -> Result<()> {
    losses.holds("loss_total", "losses", n)?;
    total.holds("loss_total", "total", 1)?;
    let pipe = rec.ctx.pipeline(&SHADER, "loss_total", &[])?;
    let p = Params { n_rows: n as u32, vocab: 0, row0: 0, scale };
    rec.dispatch(OpInfo::new("loss_total", n as u64, 4 * n as u64), &pipe, &[&losses.buf, &total.buf], &p, [1, 1, 1]);
    Ok(())
}

/// CPU reference in f64: (mean loss over unmasked rows, dL/dlogits).
pub fn reference(logits: &[f64], targets: &[u32], vocab: usize) -> (f64, Vec<f64>) {
    let scale = 1.0 / targets.iter().filter(|&&t| t != IGNORE).count().max(1) as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(logits.len());
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if t == IGNORE {
            grad.extend(std::iter::repeat_n(0.0, vocab));
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += scale * (lse - row[t as usize]);
        grad.extend(row.iter().enumerate().map(|(i, v)| scale * ((v - lse).exp() - (i == t as usize) as u8 as f64)));
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{check, to_f32, values};

    #[test]
    fn reference_equals_finite_differences() {
        let (rows, vocab) = (4, 7);
        let logits: Vec<f64> = values(rows * vocab, 21).iter().map(|v| 3.0 * v).collect();
        let targets = [3, IGNORE, 0, 6];
        let (_, grad) = reference(&logits, &targets, vocab);
        check("cross_entropy dlogits", &logits, &grad, |l| reference(l, &targets, vocab).0).unwrap();
    }

    #[test]
    fn bad_targets_and_masks_are_refused() {
        assert!(masked_targets(&[1, 9], None, 9).unwrap_err().to_string().contains("position 1"));
        assert!(masked_targets(&[1, 2], Some(&[false, false]), 9).is_err());
        assert!(masked_targets(&[1, 2], Some(&[true]), 9).is_err());
        assert_eq!(masked_targets(&[1, 2], Some(&[false, true]), 9).unwrap(), vec![IGNORE, 2]);
    }

    gpu_test!(fn cross_entropy_matches_reference_in_chunks(ctx) {
        // 11 rows in chunks of 4 (the last partial), a vocabulary wider than a workgroup.
        for &(rows, vocab, chunk) in &[(1usize, 1usize, 1usize), (11, 515, 4), (5, 3, 5)] {
            let logits: Vec<f64> = values(rows * vocab, 22).iter().map(|v| 4.0 * v).collect();
            let raw: Vec<u32> = (0..rows).map(|r| ((r * 7919) % vocab) as u32).collect();
            let mask: Vec<bool> = (0..rows).map(|r| rows == 1 || r % 3 != 1).collect();
            let targets = masked_targets(&raw, Some(&mask), vocab).unwrap();
            let (want_loss, want_grad) = reference(&logits, &targets, vocab);
            let scale = mean_scale(&targets);
            let tt = Tensor { buf: ctx.upload("targets", &targets).unwrap(), shape: vec![rows] };
            let losses = Tensor::zeros(ctx, "losses", &[rows]).unwrap();
            let total = Tensor::zeros(ctx, "total", &[1]).unwrap();
            let lf = to_f32(&logits);
            let chunks: Vec<Tensor> = lf.chunks(chunk * vocab).map(|c| Tensor::upload_f32(ctx, "logits", &[c.len() / vocab, vocab], c).unwrap()).collect();
            let mut rec = Recorder::new(ctx, "test");
            for (i, c) in chunks.iter().enumerate() {
                cross_entropy(&mut rec, c, &tt, &losses, i * chunk, c.shape[0], vocab, scale).unwrap();
            }
            loss_total(&mut rec, &losses, &total, rows, scale).unwrap();
            rec.submit().unwrap();
            let mut got = Vec::new();
            for c in &chunks {
                got.extend(ctx.read_f32_async(&c.buf, 0, c.numel()).await.unwrap());
            }
            let got_loss = ctx.read_f32_async(&total.buf, 0, 1).await.unwrap();
            // exp and log are a few ulp in f32 and the sums run over <= 515 terms, on gradients
            // of at most `scale`: 1e-6 absolute, 1e-4 relative; the loss is O(5), 1e-4 relative.
            compare(&got, &to_f32(&want_grad), 1e-6, 1e-4).unwrap_or_else(|e| panic!("rows {rows} vocab {vocab}: {e}"));
            compare(&got_loss, &[want_loss as f32], 1e-5, 1e-4).unwrap_or_else(|e| panic!("loss rows {rows} vocab {vocab}: {e}"));
        }
    });
}
