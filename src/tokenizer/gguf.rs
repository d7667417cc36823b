//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.

use std::str::FromStr;

use serde_json::{json, Value as Json};

use super::pre::pre_tokenizer_json;
use super::spm::sentencepiece;
use super::template::default_template;
use super::{largest_id, Tokenizer};
use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// GGUF `tokenizer.ggml.token_type` codes (llama.cpp's `llama_token_type`).
pub(super) const TOKEN_TYPE_CONTROL: u64 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Control tokens that end a chat turn (Gemma, Llama 3, ChatML, Phi-3).
const END_OF_TURN: [&str; 4] = ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>"];

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata: byte-level
    /// BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen2, SmolLM, …) or SentencePiece
    /// (`"llama"`: Llama 2, Mistral, Phi-3, Gemma; see `spm.rs`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let file = g.file.as_str();
        let model = g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).ok_or_else(|| {
            Error::format(file, "metadata 'tokenizer.ggml.model' is missing: the file carries no tokenizer")
        })?;
        if !matches!(model, "gpt2" | "llama") {
            return Err(Error::Unsupported(format!(
                "{file}: tokenizer.ggml.model = \"{model}\" is not a tokenizer quill rebuilds from GGUF (\"gpt2\", byte-level BPE, \
                 and \"llama\", SentencePiece, are); use the model's Hugging Face folder with tokenizer.json instead"
            )));
        }

        let tokens = g.strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::format(file, "metadata 'tokenizer.ggml.tokens' is empty"));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(Error::format(file, format!("{} tokens do not fit 32-bit ids", tokens.len())));
        }
        let types = token_types(g, tokens.len())?;
        let inner = if model == "llama" {
            sentencepiece(g, &tokens, &types)?
        } else {
            let merges = g.strings("tokenizer.ggml.merges")?;
            let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
            let json = byte_level_bpe_json(file, &tokens, &types, &merges, pre)?;
            tokenizers::Tokenizer::from_str(&json.to_string())
                .map_err(|e| Error::format(file, format!("tokenizer.ggml.* does not make a valid BPE tokenizer: {e}")))?
        };

        let token_id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                    _ => Err(Error::format(file, format!("metadata '{key}' = {} is not a token id below {}", crate::weights::gguf::value_text(v), tokens.len()))),
                },
            }
        };
        let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
        let mut eos_ids = Vec::new();
        // EOT (end of turn, e.g. Llama 3's <|eot_id|>) and EOM also end a reply.
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token_id(key)? {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        // A chat model's end of turn ends a reply even where the file names no EOT (Gemma's
        // <end_of_turn>); llama.cpp does the same.
        for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty == TOKEN_TYPE_CONTROL && END_OF_TURN.contains(tok) && !eos_ids.contains(&(id as u32)) {
                eos_ids.push(id as u32);
            }
        }
        if eos_ids.is_empty() {
            log::warn!("{file}: no tokenizer.ggml.eos_token_id; generation stops only at the token limit");
        }
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        let flag = |key: &str, default: bool| g.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama");
        let add_eos = flag("tokenizer.ggml.add_eos_token", false);
        let (chat_template, template_origin, template_is_default) = gguf_chat_template(g);
        let text_of = |id: Option<u32>| id.map(|id| tokens[id as usize].to_string()).unwrap_or_default();
        Ok(Tokenizer {
            bos_token: text_of(bos_id),
            eos_token: text_of(eos_ids.first().copied()),
            vocab_size: largest_id(&inner) + 1,
            inner,
            bos_id,
            eos_ids,
            add_bos,
            add_eos,
            chat_template,
            template_origin,
            template_is_default,
        })
    }
}

/// The file's `tokenizer.chat_template`, else the architecture's default (see
/// `template::default_template`): (template, where it came from, whether it is the default).
fn gguf_chat_template(g: &Gguf) -> (Option<String>, String, bool) {
    let key = "tokenizer.chat_template";
    if let Some(t) = g.get(key).and_then(|v| v.as_str()) {
        return (Some(t.to_string()), format!("{}: {key}", g.file), false);
    }
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    match default_template(arch) {
        Some(t) => (Some(t.to_string()), format!("quill's default chat template for {arch} ({} has no {key})", g.file), true),
        None => (None, format!("{}: {key}", g.file), false),
    }
}

/// `tokenizer.ggml.token_type`, one per token; all "normal" when absent.
fn token_types(g: &Gguf, n_tokens: usize) -> Result<Vec<u64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = g.get(key) else { return Ok(vec![1; n_tokens]) };
    let bad = |msg: String| Error::format(&g.file, format!("metadata '{key}': {msg}"));
    let arr = v.as_array().ok_or_else(|| bad("not an array".into()))?;
    if arr.len() != n_tokens {
        return Err(bad(format!("{} entries for {n_tokens} tokens", arr.len())));
    }
    arr.iter().map(|t| t.as_u64().ok_or_else(|| bad(format!("{} is not an integer", crate::weights::gguf::value_text(t))))).collect()
}

/// The `tokenizer.json` of a byte-level BPE (what transformers would save for this model).
/// Control tokens become special added tokens and user-defined ones plain added tokens, so
/// both are matched whole in the input text before BPE runs.
fn byte_level_bpe_json(file: &str, tokens: &[&str], types: &[u64], merges: &[&str], pre: &str) -> Result<Json> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut duplicates = 0usize;
    for (id, tok) in tokens.iter().enumerate() {
        // A vocabulary should not repeat a string; if one does, its first id wins.
        if vocab.contains_key(*tok) {
            duplicates += 1;
        } else {
            vocab.insert(tok.to_string(), json!(id));
        }
    }
    if duplicates > 0 {
        log::warn!("{file}: {duplicates} tokens repeat an earlier token's text; they are never produced by encoding");
    }

    // "a b" means: merge "a" with "b". Byte-level tokens hold no spaces (a space is "Ġ"), but
    // like llama.cpp we split at the first space after the first character.
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let first = m.chars().next().map_or(0, char::len_utf8);
            let Some(at) = m[first..].find(' ').map(|at| first + at) else {
                return Err(Error::format(file, format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space")));
            };
            // Checked here, so that a bad merge is named by its index and not by the line and
            // column of the JSON this function builds for the tokenizers crate.
            let (a, b) = (&m[..at], &m[at + 1..]);
            for part in [a.to_string(), b.to_string(), format!("{a}{b}")] {
                if !vocab.contains_key(&part) {
                    return Err(Error::format(file, format!("tokenizer.ggml.merges[{i}] = {m:?} needs the token {part:?}, which tokenizer.ggml.tokens does not have")));
                }
            }
            Ok(json!([a, b]))
        })
        .collect::<Result<Vec<_>>>()?;

    let added_tokens: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, &t)| {
            let special = t == TOKEN_TYPE_CONTROL;
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": !special, "special": special})
        })
        .collect();

    let (pre_tokenizer, ignore_merges) = pre_tokenizer_json(file, pre)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
        },
    }))
}
