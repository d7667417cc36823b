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

use std::collections::BTreeMap;
use std::str::FromStr;

use minijinja::value::{from_args, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// GGUF `tokenizer.ggml.token_type` codes (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// GPT-2's split: contractions, letter runs, digit runs, other runs, spaces. This is what the
/// `ByteLevel` pre-tokenizer applies itself when `use_regex` is true.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split (from its tokenizer.json): numbers in groups of at most three digits.
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (from its tokenizer.json): like Llama 3's but one digit per piece.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
    /// The Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
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
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen2, SmolLM, …)
    /// is rebuilt; SentencePiece models (`"llama"`) must be run from their Hugging Face folder.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let file = g.file.as_str();
        let model = g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).ok_or_else(|| {
            Error::format(file, "metadata 'tokenizer.ggml.model' is missing: the file carries no tokenizer")
        })?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(Error::Unsupported(format!(
                    "{file}: its tokenizer is SentencePiece (tokenizer.ggml.model = \"llama\"), which quill cannot rebuild \
                     from GGUF; use the model's Hugging Face folder with tokenizer.json instead"
                )))
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{file}: tokenizer.ggml.model = \"{other}\" (only \"gpt2\", byte-level BPE, is read from GGUF; \
                     use the model's Hugging Face folder with tokenizer.json instead)"
                )))
            }
        }

        let tokens = g.strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::format(file, "metadata 'tokenizer.ggml.tokens' is empty"));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(Error::format(file, format!("{} tokens do not fit 32-bit ids", tokens.len())));
        }
        let types = token_types(g, tokens.len())?;
        let merges = g.strings("tokenizer.ggml.merges")?;
        let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");

        let json = byte_level_bpe_json(file, &tokens, &types, &merges, pre)?;
        let inner = tokenizers::Tokenizer::from_str(&json.to_string())
            .map_err(|e| Error::format(file, format!("tokenizer.ggml.* does not make a valid BPE tokenizer: {e}")))?;

        let token_id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                    _ => Err(Error::format(file, format!("metadata '{key}' = {v:?} is not a token id below {}", tokens.len()))),
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
        if eos_ids.is_empty() {
            log::warn!("{file}: no tokenizer.ggml.eos_token_id; generation stops only at the token limit");
        }
        let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let chat_template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
        let text_of = |id: Option<u32>| id.map(|id| tokens[id as usize].to_string()).unwrap_or_default();
        Ok(Tokenizer {
            bos_token: text_of(bos_id),
            eos_token: text_of(eos_ids.first().copied()),
            vocab_size: largest_id(&inner) + 1,
            inner,
            bos_id,
            eos_ids,
            add_bos,
            chat_template,
        })
    }

    /// Loads a Hugging Face tokenizer: `tokenizer.json`, optionally `tokenizer_config.json`
    /// (BOS/EOS tokens, `add_bos_token`, chat template) and `chat_template.jinja` (which, when
    /// present, replaces the config's template, as in transformers).
    ///
    /// `folder` names the model folder in errors, which then say e.g.
    /// `models/smollm2/tokenizer_config.json: ...`.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>, chat_template_jinja: Option<&str>, folder: &str) -> Result<Self> {
        let json_file = in_folder(folder, "tokenizer.json");
        let config_file = in_folder(folder, "tokenizer_config.json");
        // tokenizers 0.22 panics (instead of failing) on a JSON syntax error inside "decoder"
        // (found by fuzz/, kept in fuzz/regressions/tokenizer_json/): check the syntax first.
        serde_json::from_slice::<serde::de::IgnoredAny>(tokenizer_json).map_err(|e| Error::format(&json_file, format!("not valid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| Error::format(&json_file, e.to_string()))?;

        let config: Json = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::format(&config_file, e.to_string()))?,
            None => Json::Null,
        };
        // A special token is written either as "<s>" or as {"content": "<s>", ...}.
        let token_text = |key: &str| -> Option<String> {
            let v = config.get(key)?;
            v.as_str().or_else(|| v.get("content").and_then(Json::as_str)).map(str::to_string)
        };
        let id_of = |key: &str, text: &Option<String>| -> Option<u32> {
            let text = text.as_ref()?;
            let id = inner.token_to_id(text);
            if id.is_none() {
                log::warn!("{config_file}: {key} {text:?} is not in the vocabulary; ignored");
            }
            id
        };
        let bos_token = token_text("bos_token");
        let eos_token = token_text("eos_token");
        let bos_id = id_of("bos_token", &bos_token);
        let eos_ids: Vec<u32> = id_of("eos_token", &eos_token).into_iter().collect();
        if eos_ids.is_empty() {
            log::warn!("{folder}: no usable eos_token in tokenizer_config.json; generation stops only at the token limit");
        }

        // transformers adds BOS through tokenizer.json's post-processor (Llama 3) or because the
        // config says add_bos_token (Llama 2). We always encode without the post-processor and
        // add BOS ourselves, so find out whether it would have.
        let post_processor_adds_bos = match bos_id {
            Some(bos) => inner.encode("a", true).map(|e| e.get_ids().first() == Some(&bos)).unwrap_or(false),
            None => false,
        };
        let add_bos = config.get("add_bos_token").and_then(Json::as_bool).unwrap_or(post_processor_adds_bos);

        let chat_template = match chat_template_jinja {
            Some(t) => Some(t.to_string()),
            None => config_chat_template(&config, &config_file)?,
        };
        Ok(Tokenizer {
            vocab_size: largest_id(&inner) + 1,
            inner,
            bos_id,
            eos_ids,
            add_bos,
            chat_template,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// Text to token ids. Special tokens written in the text (`<|im_start|>`) become their
    /// ids. BOS is put in front when the model wants it (`add_bos`) and the text does not
    /// already start with it (a rendered chat template often does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `false`: skip tokenizer.json's post-processor; BOS is our business (see above).
        let encoding = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        let ids = encoding.get_ids();
        match self.bos_id {
            Some(bos) if self.add_bos && ids.first() != Some(&bos) => Ok(std::iter::once(bos).chain(ids.iter().copied()).collect()),
            _ => Ok(ids.to_vec()),
        }
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

    /// Renders the chat template for `(role, content)` messages. With
    /// `add_generation_prompt` the text ends with the opening of the assistant's turn.
    pub fn apply_chat_template<R: AsRef<str>, C: AsRef<str>>(&self, messages: &[(R, C)], add_generation_prompt: bool) -> Result<String> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template("the model has no chat template (none in its GGUF metadata or tokenizer_config.json); use a raw prompt".into())
        })?;
        let env = chat_environment();
        let template = env.template_from_str(source).map_err(|e| Error::Template(format!("cannot parse the model's template: {}", describe(&e))))?;
        let messages: Vec<JValue> = messages
            .iter()
            .map(|(role, content)| JValue::from(BTreeMap::from([("role", JValue::from(role.as_ref())), ("content", JValue::from(content.as_ref()))])))
            .collect();
        let ctx = BTreeMap::from([
            ("messages", JValue::from(messages)),
            ("add_generation_prompt", JValue::from(add_generation_prompt)),
            ("bos_token", JValue::from(self.bos_token.as_str())),
            ("eos_token", JValue::from(self.eos_token.as_str())),
        ]);
        template.render(ctx).map_err(|e| Error::Template(describe(&e)))
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

/// `tokenizer.ggml.token_type`, one per token; all "normal" when absent.
fn token_types(g: &Gguf, n_tokens: usize) -> Result<Vec<u64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = g.get(key) else { return Ok(vec![1; n_tokens]) };
    let bad = |msg: String| Error::format(&g.file, format!("metadata '{key}': {msg}"));
    let arr = v.as_array().ok_or_else(|| bad("not an array".into()))?;
    if arr.len() != n_tokens {
        return Err(bad(format!("{} entries for {n_tokens} tokens", arr.len())));
    }
    arr.iter().map(|t| t.as_u64().ok_or_else(|| bad(format!("{t:?} is not an integer")))).collect()
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
            match m[first..].find(' ').map(|at| first + at) {
                Some(at) => Ok(json!([&m[..at], &m[at + 1..]])),
                None => Err(Error::format(file, format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"))),
            }
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

    let (pre_tokenizer, ignore_merges) = pre_tokenizer_json(file, pre);
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

/// The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name (the families of
/// llama.cpp's `llama_vocab::impl::load`), and whether BPE keeps a piece that is already
/// a token whole (`ignore_merges`, set by Llama 3).
fn pre_tokenizer_json(file: &str, pre: &str) -> (Json, bool) {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let sequence = |parts: Vec<Json>| json!({"type": "Sequence", "pretokenizers": parts});
    match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => (byte_level(true), false),
        // Every digit on its own first, then GPT-2's split. SmolLM's tokenizer.json has only
        // the GPT-2 split, but its vocabulary holds no multi-digit or " 2"-like tokens, so the
        // two agree (the tests check it).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (sequence(vec![split(r"\p{N}"), byte_level(true)]), false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (sequence(vec![split(LLAMA3_SPLIT), byte_level(false)]), true),
        "qwen2" | "stablelm2" => (sequence(vec![split(QWEN2_SPLIT), byte_level(false)]), false),
        other => {
            log::warn!("{file}: unknown tokenizer.ggml.pre \"{other}\"; splitting text like GPT-2, which may tokenize some text differently from the original model");
            (sequence(vec![split(GPT2_SPLIT), byte_level(false)]), false)
        }
    }
}

/// `chat_template` of tokenizer_config.json: a string, or a list of named templates of which
/// we take "default".
fn config_chat_template(config: &Json, config_file: &str) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |name: &str| list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some(name));
            Ok(named("default").and_then(|t| t.get("template")).and_then(Json::as_str).map(str::to_string))
        }
        Some(_) => Err(Error::format(config_file, "chat_template is neither a string nor a list of named templates")),
    }
}

/// A minijinja error with its cause chain (the template line lives in the chain).
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// A Jinja environment that behaves like transformers' chat-template sandbox.
fn chat_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // transformers renders with trim_blocks and lstrip_blocks; templates are written for it.
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the template raised: {msg}")))
    });
    env.add_function("strftime_now", |format: String| -> String { strftime_now(&format) });
    env.set_unknown_method_callback(python_method);
    env
}

/// The Python `str` and `dict` methods chat templates call (`.strip()`, `.startswith()`,
/// `.get()`, `.items()`, …), which Jinja2 offers and minijinja does not.
fn python_method(_: &mut minijinja::State, value: &JValue, method: &str, args: &[JValue]) -> std::result::Result<JValue, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let chars = |c: Option<&str>| -> Vec<char> { c.map_or_else(Vec::new, |c| c.chars().collect()) };
        let strip = |c: &Option<&str>, ch: char| if c.is_some() { chars(*c).contains(&ch) } else { ch.is_whitespace() };
        return Ok(match method {
            "strip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_matches(|ch| strip(&c, ch)))
            }
            "lstrip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_start_matches(|ch| strip(&c, ch)))
            }
            "rstrip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_end_matches(|ch| strip(&c, ch)))
            }
            "startswith" | "endswith" => {
                let (p,): (JValue,) = from_args(args)?;
                // Python accepts one prefix or a tuple of them.
                let prefixes: Vec<JValue> = if p.kind() == ValueKind::Seq { p.try_iter()?.collect() } else { vec![p] };
                let hit = prefixes.iter().filter_map(|p| p.as_str()).any(|p| if method == "startswith" { s.starts_with(p) } else { s.ends_with(p) });
                JValue::from(hit)
            }
            "upper" => JValue::from(s.to_uppercase()),
            "lower" => JValue::from(s.to_lowercase()),
            "title" | "capitalize" => {
                let mut out = String::with_capacity(s.len());
                let mut start = true;
                for ch in s.chars() {
                    if start { out.extend(ch.to_uppercase()) } else { out.extend(ch.to_lowercase()) }
                    start = method == "title" && !ch.is_alphanumeric();
                }
                JValue::from(out)
            }
            "replace" => {
                let (old, new, count): (&str, &str, Option<usize>) = from_args(args)?;
                JValue::from(match count {
                    Some(n) => s.replacen(old, new, n),
                    None => s.replace(old, new),
                })
            }
            "split" => {
                let (sep, max): (Option<&str>, Option<i64>) = from_args(args)?;
                let max = max.filter(|&m| m >= 0).map(|m| m as usize + 1).unwrap_or(usize::MAX);
                let parts: Vec<JValue> = match sep {
                    Some(sep) => s.splitn(max, sep).map(JValue::from).collect(),
                    None => s.split_whitespace().take(max).map(JValue::from).collect(),
                };
                JValue::from(parts)
            }
            "join" => {
                let (items,): (JValue,) = from_args(args)?;
                let items: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
                JValue::from(items.join(s))
            }
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "get" => {
                let (key, default): (JValue, Option<JValue>) = from_args(args)?;
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() { default.unwrap_or(JValue::from(())) } else { v })
            }
            "items" => {
                let (): () = from_args(args)?;
                let pairs: Vec<JValue> = value.try_iter()?.map(|k| Ok(JValue::from(vec![k.clone(), value.get_item(&k)?]))).collect::<std::result::Result<_, minijinja::Error>>()?;
                Ok(JValue::from(pairs))
            }
            "keys" => Ok(JValue::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => Ok(JValue::from(value.try_iter()?.map(|k| value.get_item(&k)).collect::<std::result::Result<Vec<_>, _>>()?)),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

/// Python's `strftime` for the current UTC time, for templates that print today's date
/// (Llama 3.2). Knows %Y %m %d %b %B %a %A %H %M %S %%; anything else is copied.
fn strftime_now(format: &str) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"]; // 1970-01-01 was a Thursday
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Turns generated ids into text as they come, one piece per call, never cutting a UTF-8
/// character that spans several tokens (CJK and emoji often take two or three byte tokens).
///
/// The text of a token depends on its neighbours (a character's bytes, or a SentencePiece
/// leading space), so we decode a window: `ids[prefix..read]` was already printed, and
/// `ids[prefix..]` is decoded again with it as context; what it adds is new. While that text
/// ends in U+FFFD the last character is incomplete and we wait for more ids.
///
/// A model that truly produces invalid bytes would keep the stream waiting; [`finish`]
/// flushes what is left, U+FFFD included.
///
/// [`finish`]: StreamDecoder::finish
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the context window: ids before it are printed and no longer needed.
    prefix: usize,
    /// End of what has been printed.
    read: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds one generated id; returns the text it completes, or `None` while a character is
    /// still incomplete.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let printed = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        if text.len() <= printed.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = new_part(&text, &printed) else { return Ok(None) };
        let piece = piece.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(piece))
    }

    /// Returns whatever has not been printed yet, even an incomplete character (as U+FFFD);
    /// `None` when everything was.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let printed = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        let rest = new_part(&text, &printed).unwrap_or(&text);
        Ok((!rest.is_empty()).then(|| rest.to_string()))
    }
}

/// The part of `text` after `printed`, if `text` still starts with it.
fn new_part<'t>(text: &'t str, printed: &str) -> Option<&'t str> {
    text.strip_prefix(printed).or_else(|| text.get(printed.len()..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::gguf::tests::{build, gguf_string};

    /// GPT-2's map from bytes to the printable characters byte-level BPE stores them as.
    fn byte_char(b: u8) -> char {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable(b) {
            return b as char;
        }
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).unwrap()
    }

    fn string_array(items: &[&str]) -> Vec<u8> {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            v.extend(gguf_string(s));
        }
        v
    }

    fn u32_array(items: &[u32]) -> Vec<u8> {
        let mut v = 4u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for x in items {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }

    /// A tiny byte-level BPE GGUF: <|end|> (control, id 0), <tool> (user-defined, id 1),
    /// the 256 byte tokens (ids 2..258), then "he", "hel", "Ġh".
    fn tiny_gguf(model: &str, pre: &str, template: Option<&str>) -> Vec<u8> {
        let bytes: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        let mut tokens = vec!["<|end|>", "<tool>"];
        tokens.extend(bytes.iter().map(String::as_str));
        tokens.extend(["he", "hel", "Ġh"]);
        let mut types = vec![3, 4];
        types.extend(std::iter::repeat_n(1, tokens.len() - 2));
        let mut kv = vec![
            ("tokenizer.ggml.model", 8, gguf_string(model)),
            ("tokenizer.ggml.pre", 8, gguf_string(pre)),
            ("tokenizer.ggml.tokens", 9, string_array(&tokens)),
            ("tokenizer.ggml.token_type", 9, u32_array(&types)),
            ("tokenizer.ggml.merges", 9, string_array(&["h e", "he l", "Ġ h"])),
            ("tokenizer.ggml.eos_token_id", 4, 0u32.to_le_bytes().to_vec()),
        ];
        if let Some(t) = template {
            kv.push(("tokenizer.chat_template", 8, gguf_string(t)));
        }
        build(3, &kv, &[])
    }

    fn tiny(template: Option<&str>) -> Tokenizer {
        let bytes = tiny_gguf("gpt2", "gpt2", template);
        Tokenizer::from_gguf(&Gguf::parse("tiny.gguf", &bytes).unwrap()).unwrap()
    }

    #[test]
    fn merges_special_tokens_and_round_trip() {
        let t = tiny(None);
        let id = |s: &str| t.token_to_id(s).unwrap();
        assert_eq!(t.encode("hello").unwrap(), vec![id("hel"), id("l"), id("o")]);
        assert_eq!(t.encode(" h").unwrap(), vec![id("Ġh")]);
        // Control and user-defined tokens are matched whole inside the text.
        assert_eq!(t.encode("he<|end|><tool>").unwrap(), vec![id("he"), 0, 1]);
        assert_eq!(t.eos_ids, vec![0]);
        assert!(t.is_eos(0) && !t.is_eos(1));
        assert_eq!(t.vocab_size(), 2 + 256 + 3);
        assert!(!t.add_bos && t.bos_id.is_none());
        for text in ["hello <|end|> wörld", "中文 🐉\r\n\t x", ""] {
            assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
        }
    }

    #[test]
    fn every_pre_tokenizer_builds() {
        for pre in ["smollm", "llama-bpe", "qwen2", "starcoder", "something-new"] {
            let bytes = tiny_gguf("gpt2", pre, None);
            let t = Tokenizer::from_gguf(&Gguf::parse("tiny.gguf", &bytes).unwrap()).unwrap();
            let text = "hello 2024 héllo\n\n  x";
            assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text, "pre = {pre}");
        }
    }

    #[test]
    fn stream_decoder_waits_for_whole_characters() {
        let t = tiny(None);
        let text = "a中🐉b";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids.len(), 1 + 3 + 4 + 1); // one token per byte
        let mut stream = StreamDecoder::new();
        let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.step(&t, id).unwrap()).collect();
        assert_eq!(pieces.iter().flatten().collect::<Vec<_>>(), ["a", "中", "🐉", "b"]);
        assert_eq!(pieces.iter().filter(|p| p.is_none()).count(), 2 + 3);
        assert_eq!(stream.finish(&t).unwrap(), None);

        // A character cut off at the end comes out of finish() as U+FFFD.
        let mut stream = StreamDecoder::new();
        assert_eq!(stream.step(&t, ids[1]).unwrap(), None);
        assert_eq!(stream.finish(&t).unwrap().as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn sentencepiece_and_missing_tokenizer_are_errors() {
        let bytes = tiny_gguf("llama", "default", None);
        let e = Tokenizer::from_gguf(&Gguf::parse("sp.gguf", &bytes).unwrap()).unwrap_err().to_string();
        assert!(e.contains("SentencePiece") && e.contains("tokenizer.json") && e.contains("sp.gguf"), "{e}");

        let bytes = build(3, &[("general.architecture", 8, gguf_string("llama"))], &[]);
        let e = Tokenizer::from_gguf(&Gguf::parse("none.gguf", &bytes).unwrap()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model") && e.contains("none.gguf"), "{e}");

        let bytes = build(3, &[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.merges", 9, string_array(&[]))], &[]);
        let e = Tokenizer::from_gguf(&Gguf::parse("t.gguf", &bytes).unwrap()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.tokens"), "{e}");

        // A merge of tokens that are not in the vocabulary, and a merge without a space.
        for merge in ["x y", "xy"] {
            let kv = [
                ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
                ("tokenizer.ggml.tokens", 9, string_array(&["a", "b"])),
                ("tokenizer.ggml.merges", 9, string_array(&[merge])),
            ];
            let bytes = build(3, &kv, &[]);
            let e = Tokenizer::from_gguf(&Gguf::parse("m.gguf", &bytes).unwrap()).unwrap_err().to_string();
            assert!(e.contains("m.gguf"), "{e}");
        }
    }

    #[test]
    fn chat_template_python_methods_and_errors() {
        let template = "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n\
                        {{ m.role.upper() }}:{{ m['content'].strip() }}{% if m.content.startswith(('x', ' q')) %}!{% endif %}|\n\
                        {% endfor %}{{ {'a': 1}.get('b', 'none') }}{% if add_generation_prompt %}>{% endif %}";
        let t = tiny(Some(template));
        let out = t.apply_chat_template(&[("user", " q1 "), ("assistant", "a")], true).unwrap();
        assert_eq!(out, "USER:q1!|\nASSISTANT:a|\nnone>");

        let e = t.apply_chat_template(&[("robot", "x")], false).unwrap_err().to_string();
        assert!(e.contains("bad role robot"), "{e}");

        let e = tiny(None).apply_chat_template(&[("user", "x")], true).unwrap_err().to_string();
        assert!(e.contains("no chat template"), "{e}");
    }

    #[test]
    fn dates_for_templates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let today = strftime_now("%d %b %Y");
        assert_eq!(today.len(), 11, "{today}");
    }
}
