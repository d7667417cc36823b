//! SentencePiece tokenizers from GGUF (`tokenizer.ggml.model = "llama"`): Llama 2, TinyLlama,
//! Mistral, Phi-3, Gemma.
//!
//! A GGUF stores a SentencePiece BPE vocabulary as tokens, scores and token types, with no
//! merges. llama.cpp tokenizes it by repeatedly joining the adjacent pair whose joined text is
//! the best-scored token. We build the same thing as transformers' GGUF converter does
//! (`integrations/gguf/gguf_tokenizer_mapping.py`): a `tokenizers` BPE whose merges are every
//! way to cut each token in two, ranked best-first, with byte fallback to the `<0xNN>` tokens,
//! and the space written as `▁`. Where transformers and llama.cpp differ (the `▁` in front of
//! text that starts with a space, and after a special token) we follow llama.cpp, which
//! agrees with SentencePiece itself. Gemma differs in three ways the converter also handles: its
//! merge order is the order of the tokens in the file (its scores do not follow it), its runs of
//! spaces are stored as real spaces and must be respelled as `▁`s, and it never prepends `▁`.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{json, Value as Json};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use super::gguf::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// SentencePiece's space.
const SPACE: &str = "\u{2581}";

/// Cutting every token in two costs about the sum of the squared token lengths in bytes (each
/// cut hashes both halves): 2.7e7 for Gemma's 262k tokens. A vocabulary past this bound (a
/// hostile file with megabyte-long tokens) is refused instead of taking minutes.
const MAX_CUT_WORK: u64 = 1 << 28;

/// The tokenizer of a GGUF's SentencePiece vocabulary (see the module comment).
pub(super) fn sentencepiece(g: &Gguf, tokens: &[&str], types: &[u64]) -> Result<tokenizers::Tokenizer> {
    let file = g.file.as_str();
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
    let add_space_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
    // llama.cpp (and SentencePiece) put "▁" in front of the text, even text that starts with a
    // space, and again after each special token; transformers' Metaspace does neither, so this
    // is a normalizer, which runs on each piece of text between special tokens. Gemma never
    // prepends.
    let prepend = add_space_prefix && !gemma;
    // Gemma stores a token of two or more spaces as spaces; everything else spells them `▁`.
    let spelled: Vec<Cow<str>> = tokens
        .iter()
        .map(|&t| if gemma && t.contains(' ') && t.trim().is_empty() { Cow::Owned(SPACE.repeat(t.chars().count())) } else { Cow::Borrowed(t) })
        .collect();
    let work: u64 = spelled.iter().map(|t| (t.len() as u64).saturating_mul(t.len() as u64)).fold(0, u64::saturating_add);
    if work > MAX_CUT_WORK {
        return Err(Error::format(
            file,
            format!("metadata 'tokenizer.ggml.tokens': tokens too long for a SentencePiece vocabulary (sum of squared lengths {work} > {MAX_CUT_WORK})"),
        ));
    }
    let ranks: Vec<f64> = if gemma { (0..tokens.len()).map(|i| -(i as f64)).collect() } else { scores(g, tokens.len())? };

    // Like a Python dict built from the list: a repeated token keeps its last id.
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(spelled.len());
    for (id, tok) in spelled.iter().enumerate() {
        vocab.insert(tok, id as u32);
    }
    let merges = merges_from_vocab(&spelled, &vocab, &ranks);

    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_u64())
        .and_then(|id| spelled.get(id as usize))
        .map(|t| t.to_string())
        .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));

    // Control tokens are special; user-defined ones are matched whole in the text too (llama.cpp
    // does). A user-defined token Gemma respelled is left to BPE, as transformers does.
    let added = |kind: u64| -> Vec<AddedToken> {
        types
            .iter()
            .enumerate()
            .filter(|&(id, &t)| t == kind && spelled[id] == tokens[id])
            .map(|(id, _)| AddedToken::from(tokens[id].to_string(), kind == TOKEN_TYPE_CONTROL).normalized(false))
            .collect()
    };

    let normalizer = if prepend {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace_space()]})
    } else {
        replace_space()
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prepend {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    if merges.is_empty() && tokens.len() > 1 {
        log::warn!("{file}: no token of the SentencePiece vocabulary is two others joined; text is cut into characters");
    }

    // The model is built directly: a 262k vocabulary with 500k merges written out as JSON and
    // parsed back would double the load time. The small parts are tokenizer.json's own forms.
    let bad = |what: &str, e: String| Error::format(file, format!("tokenizer.ggml.* does not make a valid SentencePiece {what}: {e}"));
    let bpe_vocab: Vocab = vocab.iter().map(|(t, &id)| (t.to_string(), id)).collect();
    let bpe_merges: Merges = merges.iter().map(|&(l, r)| (l.to_string(), r.to_string())).collect();
    let mut bpe = BPE::builder().vocab_and_merges(bpe_vocab, bpe_merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let mut t = tokenizers::Tokenizer::new(bpe.build().map_err(|e| bad("BPE", e.to_string()))?);
    let normalizer: Option<NormalizerWrapper> = serde_json::from_value(normalizer).map_err(|e| bad("normalizer", e.to_string()))?;
    let decoder: DecoderWrapper =
        serde_json::from_value(json!({"type": "Sequence", "decoders": decoders})).map_err(|e| bad("decoder", e.to_string()))?;
    t.with_normalizer(normalizer);
    t.with_decoder(Some(decoder));
    t.add_special_tokens(&added(TOKEN_TYPE_CONTROL));
    t.add_tokens(&added(TOKEN_TYPE_USER_DEFINED));
    Ok(t)
}

fn replace_space() -> Json {
    json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
}

/// `tokenizer.ggml.scores`, one per token.
fn scores(g: &Gguf, n_tokens: usize) -> Result<Vec<f64>> {
    let key = "tokenizer.ggml.scores";
    let bad = |msg: String| Error::format(&g.file, format!("metadata '{key}': {msg}"));
    let arr = g.get(key).ok_or_else(|| bad("missing; a SentencePiece vocabulary needs a score per token".into()))?;
    let arr = arr.as_array().ok_or_else(|| bad("not an array".into()))?;
    if arr.len() != n_tokens {
        return Err(bad(format!("{} entries for {n_tokens} tokens", arr.len())));
    }
    arr.iter()
        .enumerate()
        .map(|(i, s)| s.as_f64().filter(|s| s.is_finite()).ok_or_else(|| bad(format!("entry {i} is not a finite number"))))
        .collect()
}

/// The merges a SentencePiece vocabulary implies, best first: for each token, every cut into
/// two tokens, ranked by the token's score (then longer left part first). This is
/// transformers' `generate_merges`, which is what makes BPE pick the pair llama.cpp's SPM
/// tokenizer picks.
fn merges_from_vocab<'t>(tokens: &'t [Cow<'t, str>], vocab: &HashMap<&str, u32>, ranks: &[f64]) -> Vec<(&'t str, &'t str)> {
    // (left, right, rank of the joined token, chars in left, chars in right)
    let mut merges: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    let mut seen: HashMap<&str, ()> = HashMap::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let tok: &str = tok;
        // A repeated token is cut once, with the rank of its last id (a Python dict's value).
        if seen.insert(tok, ()).is_some() {
            continue;
        }
        let rank = ranks[vocab.get(tok).map_or(id, |&i| i as usize)];
        let start = merges.len();
        for (at, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((l, r, rank, l.chars().count(), r.chars().count()));
            }
        }
        merges[start..].sort_by_key(|m| (vocab[m.0], vocab[m.1]));
    }
    // Stable, descending on (rank, left length, right length): ties keep the order above.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges.into_iter().map(|m| (m.0, m.1)).collect()
}
