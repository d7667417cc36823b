//! Checks, at load, that a model's parts agree with each other, so that a broken or hostile
//! file is an error naming the file instead of text that silently loses tokens or is garbage.
//!
//! The tokenizer rule (what quill accepts between the tokenizer's ids and the embedding's rows):
//! - GGUF: exactly as many tokens as embedding rows (llama.cpp's rule: the converter writes
//!   every row's token, padding included).
//! - Hugging Face: at most as many tokens as rows. `config.json`'s `vocab_size` states the
//!   rows, and models pad them to a round number (Qwen2: 151665 tokens in 151936 rows); the
//!   padding rows are never produced by the tokenizer. More tokens than rows is an error.
//!
//! Special-token ids (BOS, EOS, and generation_config.json's `eos_token_id`) must be below the
//! tokenizer's size. Weights: every 1-D tensor (norm weights, biases) is scanned whole for NaN
//! and infinity, and every matrix at `SAMPLED_ROWS` evenly spaced rows (first and last
//! included), which costs microseconds and catches files damaged wholesale; NaN logits during
//! generation are caught there (`generate.rs`).

use super::config::ModelConfig;
use super::load::GenerationDefaults;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{dtype, TensorSource};

/// Rows of each matrix scanned for non-finite values at load.
pub const SAMPLED_ROWS: usize = 16;

/// Whether the tokenizer may be smaller than the embedding (see the module comment).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VocabRule {
    /// GGUF: tokens == rows.
    Exact,
    /// Hugging Face: tokens <= rows (`vocab_size` pads the embedding).
    Padded,
}

/// Checks tokenizer against embedding, special-token ids, and the weights' values.
/// `file` names the model in errors; `tensors` are the names of every tensor in it.
pub fn check(
    file: &str,
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    defaults: &GenerationDefaults,
    rule: VocabRule,
    src: &dyn TensorSource,
    tensors: &[&str],
) -> Result<()> {
    check_vocab(file, cfg.vocab, tokenizer, rule)?;
    check_special_ids(file, tokenizer, defaults)?;
    for name in tensors {
        scan_tensor(src, name)?;
    }
    Ok(())
}

fn check_vocab(file: &str, rows: usize, tokenizer: &Tokenizer, rule: VocabRule) -> Result<()> {
    let tokens = tokenizer.vocab_size();
    let ok = match rule {
        VocabRule::Exact => tokens == rows,
        VocabRule::Padded => tokens <= rows,
    };
    if ok {
        return Ok(());
    }
    let msg = match rule {
        VocabRule::Exact => format!(
            "the tokenizer has {tokens} tokens but the embedding has {rows} rows; a GGUF file must have one token per row \
             (ids the tokenizer lacks would vanish from the text, ids the model lacks would fail)"
        ),
        VocabRule::Padded => format!(
            "tokenizer.json has {tokens} tokens but config.json's vocab_size (the embedding's rows) is {rows}; \
             the tokenizer may be smaller (padded embeddings), never larger"
        ),
    };
    Err(Error::format(file, msg))
}

fn check_special_ids(file: &str, tokenizer: &Tokenizer, defaults: &GenerationDefaults) -> Result<()> {
    let tokens = tokenizer.vocab_size();
    let named = tokenizer.bos_id.map(|id| ("the BOS token", id)).into_iter();
    let eos = tokenizer.eos_ids.iter().map(|&id| ("an EOS token", id));
    let generation = defaults.eos_ids.iter().map(|&id| ("generation_config.json's eos_token_id", id));
    for (what, id) in named.chain(eos).chain(generation) {
        if id as usize >= tokens {
            return Err(Error::format(file, format!("{what} has id {id}, outside the tokenizer's {tokens} tokens")));
        }
    }
    Ok(())
}

/// The row indices `scan_tensor` reads of a matrix with `rows` rows: SAMPLED_ROWS evenly
/// spaced ones, the first and the last included.
pub fn sampled_rows(rows: usize) -> Vec<usize> {
    if rows <= SAMPLED_ROWS {
        return (0..rows).collect();
    }
    let mut r: Vec<usize> = (0..SAMPLED_ROWS - 1).map(|i| i * rows / (SAMPLED_ROWS - 1)).collect();
    r.push(rows - 1);
    r
}

/// Fails when the tensor's scanned values hold NaN or infinity. Tensors whose storage type
/// cannot be decoded here are left to the loader, which names them.
fn scan_tensor(src: &dyn TensorSource, name: &str) -> Result<()> {
    let Some(t) = src.meta(name) else { return Ok(()) };
    let cols = t.shape.last().copied().unwrap_or(1).max(1);
    let rows = t.shape.iter().product::<usize>() / cols;
    let Some(row_bytes) = t.dtype.bytes_for(cols) else { return Ok(()) };
    // One read of a vector, one per sampled row of a matrix: a streamed file is not read whole.
    let reads: Vec<(usize, usize)> = if t.shape.len() <= 1 { vec![(0, rows)] } else { sampled_rows(rows).into_iter().map(|r| (r, 1)).collect() };
    for (first, n) in reads {
        let Some(range) = first.checked_mul(row_bytes).and_then(|start| Some(start..start.checked_add(n.checked_mul(row_bytes)?)?)) else { return Ok(()) };
        if range.end > t.n_bytes {
            return Ok(());
        }
        let bytes = src.read(name, range)?;
        for (i, row) in bytes.chunks_exact(row_bytes).enumerate() {
            let Ok(values) = dtype::dequantize(t.dtype, row, cols) else { return Ok(()) };
            if let Some(c) = values.iter().position(|x| !x.is_finite()) {
                let at = if t.shape.len() <= 1 { format!("element {}", i * cols + c) } else { format!("row {first}, column {c}") };
                return Err(Error::tensor(src.file_name(), name, format!("holds {} at {at}: the weights are damaged", values[c])));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_rows_cover_first_and_last() {
        assert_eq!(sampled_rows(3), vec![0, 1, 2]);
        let r = sampled_rows(64);
        assert_eq!((r.len(), r[0], r[r.len() - 1]), (SAMPLED_ROWS, 0, 63));
        assert!(r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
        assert!(!r.contains(&1), "row 1 of 64 is not sampled (tests/hostile.rs relies on it): {r:?}");
    }
}
