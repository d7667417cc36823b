//! Text ⇄ token ids, chat templates and streaming detokenization.
//!
//! The BPE itself is Hugging Face's `tokenizers` crate. A tokenizer comes from one of two places:
//! - a GGUF file's `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf`]): we rebuild the
//!   `tokenizer.json` that describes the same byte-level BPE (vocab, merges, special tokens and
//!   the pre-tokenizer named by `tokenizer.ggml.pre`) and load that;
//! - a Hugging Face model folder ([`Tokenizer::from_hf`]): `tokenizer.json` as is, plus
//!   `tokenizer_config.json` for the BOS/EOS tokens and the chat template.
//!
//! Both loaders take bytes, never paths, so the web build shares them.
//!
//! Chat templates are Jinja, rendered with minijinja set up like transformers' sandbox
//! (`trim_blocks`, `lstrip_blocks`, `raise_exception`) plus the handful of Python string and
//! dict methods that templates call.

mod gguf;
mod hf;
mod limits;
mod pre;
mod spm;
mod stream;
mod template;

#[cfg(test)]
mod tests;

pub use stream::StreamDecoder;
pub use template::{template_text, MAX_RENDERED_BYTES, MAX_TEMPLATE_BYTES, TEMPLATE_FUEL};

use crate::error::{Error, Result};

/// A loaded tokenizer with what generation needs to know about its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_id: Option<u32>,
    /// Tokens that end generation (EOS, and end-of-turn where the model names one).
    pub eos_ids: Vec<u32>,
    /// Whether [`Tokenizer::encode`] puts `bos_id` in front of the text.
    pub add_bos: bool,
    /// Whether [`Tokenizer::encode`] puts the first of `eos_ids` after the text (a GGUF's
    /// `tokenizer.ggml.add_eos_token`; embedding models want it, chat models do not).
    pub add_eos: bool,
    /// The Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
    /// Where `chat_template` came from, for error messages (see [`Tokenizer::chat_template_origin`]).
    template_origin: String,
    /// Whether `chat_template` is the built-in default of the architecture.
    template_is_default: bool,
    /// Text of the BOS/EOS tokens, as the chat template sees them (`bos_token`, `eos_token`).
    bos_token: String,
    eos_token: String,
    /// One more than the largest id the tokenizer knows.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Text to token ids. Special tokens written in the text (`<|im_start|>`) become their
    /// ids. BOS is put in front when the model wants it (`add_bos`) and the text does not
    /// already start with it (a rendered chat template often does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `false`: skip tokenizer.json's post-processor; BOS is our business (see above).
        let encoding = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 2);
        match self.bos_id {
            Some(bos) if self.add_bos && ids.first() != Some(&bos) => out.push(bos),
            _ => {}
        }
        out.extend_from_slice(ids);
        match self.eos_ids.first() {
            Some(&eos) if self.add_eos && ids.last() != Some(&eos) => out.push(eos),
            _ => {}
        }
        Ok(out)
    }

    /// Token ids to text. Special tokens are kept (`<|im_end|>` appears as text) so nothing the
    /// model produced is hidden; ids the tokenizer does not know are skipped. Bytes that do not
    /// form whole UTF-8 characters come out as U+FFFD (see [`StreamDecoder`] for streaming).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// One more than the largest token id the tokenizer knows. The model's embedding may have
    /// more rows (padding), never fewer.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` as stored (byte-level BPE shows a space as `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// `name` inside `folder`, for error messages.
fn in_folder(folder: &str, name: &str) -> String {
    match folder.trim_end_matches('/') {
        "" => name.to_string(),
        f => format!("{f}/{name}"),
    }
}

fn largest_id(t: &tokenizers::Tokenizer) -> usize {
    t.get_vocab(true).values().copied().max().map_or(0, |id| id as usize)
}
