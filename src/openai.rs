//! OpenAI's `/v1/completions` and `/v1/chat/completions` request bodies: parsing with errors
//! that name the field, and validation against the served model into what the engine runs;
//! plus the stop-string scanner. No HTTP or tokio here (`quill serve` does that in src/serve/),
//! so the `openai_request` fuzz target reaches all of it and the browser build can use it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::models::GenerationDefaults;
use crate::ops::sample::MAX_TOP_LOGPROBS as TOP_LOGPROBS;
use crate::sampling::{SamplingFlags, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Largest request body accepted; a bigger one gets 413.
pub const BODY_LIMIT: usize = 2 << 20;
/// Most choices (`n`) one request may ask for.
pub const MAX_N: u32 = 16;
/// Most alternatives per token (`logprobs` / `top_logprobs`), as OpenAI allows.
pub const MAX_TOP_LOGPROBS: u32 = TOP_LOGPROBS as u32;
/// Most stop strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;
/// Longest stop string in bytes: the scanner holds back up to this much text and compares
/// each held suffix against every stop, so the bound keeps each token's check small.
pub const MAX_STOP_BYTES: usize = 1024;
/// OpenAI's range for a `logit_bias` value.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// An error in OpenAI's shape: an HTTP status, a message, the field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (a full queue, a model still loading).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, code: None, retry_after: None }
    }
    /// 400 about one request field.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.to_string()), ..Self::new(400, message) }
    }
    /// Names what the error is about when it is not a body field (a header).
    pub fn param(mut self, name: &str) -> Self {
        self.param = Some(name.to_string());
        self
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
    /// OpenAI's error `type` for the status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            404 => "not_found_error",
            429 | 503 => "server_busy",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
    /// The response body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// A quill error about a request: argument errors name the field in OpenAI's spelling
/// (`--top-p` becomes `top_p`); template, tokenizer and context errors are the client's (400).
impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match &e {
            crate::Error::Arg { arg, msg } => {
                let name = arg.trim_start_matches("--").replace('-', "_");
                ApiError::field(&name, format!("{name}: {msg}"))
            }
            crate::Error::Template(_) | crate::Error::Tokenizer(_) | crate::Error::Context(_) => ApiError::new(400, e.to_string()),
            _ => ApiError::new(500, e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
    /// A prompt given as token ids (completions only).
    Tokens(Vec<u32>),
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: Content,
    /// Accepted as OpenAI defines it; chat templates here do not use it.
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

crate::with_writer_fields! {
    /// The body of `/v1/completions` and `/v1/chat/completions` (one struct: [`plan`] checks
    /// which of `prompt` / `messages` the endpoint takes). Unknown fields are refused, never ignored.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GenRequest {
        /// Accepted and not checked: a server serves one model, whatever the client calls it.
        pub model: Option<String>,
        pub prompt: Option<OneOrMany>,
        pub messages: Option<Vec<Message>>,
        pub max_tokens: Option<u64>,
        pub max_completion_tokens: Option<u64>,
        pub temperature: Option<f32>,
        pub top_p: Option<f32>,
        pub n: Option<u32>,
        pub stream: Option<bool>,
        pub stream_options: Option<StreamOptions>,
        pub stop: Option<Stop>,
        pub seed: Option<i64>,
        pub presence_penalty: Option<f32>,
        pub frequency_penalty: Option<f32>,
        /// Token id (as a string, JSON keys are strings) -> bias in [-100, 100].
        pub logit_bias: Option<HashMap<String, f64>>,
        /// An integer (top-N) for completions, a boolean for chat.
        pub logprobs: Option<Value>,
        pub top_logprobs: Option<u32>,
        pub echo: Option<bool>,
        /// Accepted (OpenAI's end-user id); quill keeps no per-user state.
        pub user: Option<String>,
        // quill's own extras (then llama-server's samplers, by its names: with_writer_fields).
        pub top_k: Option<usize>,
        pub min_p: Option<f32>,
        pub repeat_penalty: Option<f32>,
        pub ignore_eos: Option<bool>,
        /// KoboldCpp's banned phrases: refused unless empty (see [`writers_samplers`]).
        pub banned_strings: Option<Vec<String>>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

/// Checks a JSON body's `Content-Type` header: 415 naming the header unless it is
/// `application/json` (any case, parameters such as `charset` allowed) or a `+json` type.
/// A missing header is accepted, as llama-server accepts it: a client that sends none meant
/// JSON; one that says `text/plain` or a form (curl's `-d` without `-H`) sent something else,
/// and is told so rather than parsed.
pub fn check_content_type(header: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(raw) = header else { return Ok(()) };
    let value = String::from_utf8_lossy(raw);
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    let shown: String = value.chars().take(100).collect();
    Err(ApiError::new(415, format!("Content-Type: {shown:?} is not supported: this endpoint takes a JSON body (send the header Content-Type: application/json)")).param("Content-Type"))
}

/// Parses a JSON body: malformed JSON (and invalid UTF-8, and nesting past serde_json's
/// recursion limit) and wrong types are 400s, the latter naming the field.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > BODY_LIMIT {
        return Err(ApiError::new(413, format!("the request body is larger than the limit of {BODY_LIMIT} bytes")));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(400, format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::new(400, format!("the body does not have the expected shape: {inner}"))
        } else {
            ApiError::field(&path, format!("{path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::new(400, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What the requests are checked against: the served model, set once it has loaded.
#[derive(Clone)]
pub struct ModelInfo {
    pub name: String,
    pub tokenizer: Tokenizer,
    pub ctx_len: usize,
    pub vocab: usize,
    pub defaults: GenerationDefaults,
    /// Bytes of the longest token as the vocabulary spells it (at least the text it covers).
    pub max_token_bytes: usize,
}

impl ModelInfo {
    pub fn new(name: String, tokenizer: Tokenizer, ctx_len: usize, vocab: usize, defaults: GenerationDefaults) -> Self {
        let max_token_bytes = (0..tokenizer.vocab_size() as u32).filter_map(|id| tokenizer.id_to_token(id)).map(|t| t.len()).max().unwrap_or(1).max(1);
        ModelInfo { name, tokenizer, ctx_len, vocab, defaults, max_token_bytes }
    }

    /// Most bytes of text a prompt that fits the context can have: no token covers more
    /// than the longest one's spelling. Longer text is refused before it is tokenized
    /// (tokenizing the 2 MiB a body may hold takes seconds).
    pub fn max_prompt_bytes(&self) -> usize {
        self.ctx_len.saturating_mul(self.max_token_bytes)
    }

    /// The ids of `text`, refused unread when it is longer than any prompt that fits.
    fn encode(&self, field: &str, text: &str) -> Result<Vec<u32>, ApiError> {
        if text.len() > self.max_prompt_bytes() {
            return Err(ApiError::field(
                field,
                format!("{field}: {} bytes of text cannot fit the context of {} positions (no token covers more than {} bytes)", text.len(), self.ctx_len, self.max_token_bytes),
            )
            .code("context_length_exceeded"));
        }
        Ok(self.tokenizer.encode(text)?)
    }
}

/// A request turned into what the engine runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub n: usize,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks a parsed request against the model; `capacity` is how many sequences the server
/// can hold at once (slots + queue), the most choices one request may ask for.
pub fn plan(r: &GenRequest, kind: Endpoint, i: &ModelInfo, capacity: usize) -> Result<Plan, ApiError> {
    let prompt_field = if kind == Endpoint::Chat { "messages" } else { "prompt" };
    if r.echo == Some(true) {
        return Err(ApiError::field("echo", "echo: not supported"));
    }
    let n = r.n.unwrap_or(1);
    if n == 0 || n > MAX_N || n as usize > capacity {
        return Err(ApiError::field("n", format!("n: {n} must be between 1 and {}", MAX_N.min(capacity.min(u32::MAX as usize) as u32))));
    }
    let stop = stops(r)?;
    let logit_bias = logit_bias(r, i.vocab)?;
    let logprobs = logprobs(r, kind)?;
    // The prompt last: tokenizing and rendering a template are the expensive checks.
    let prompt = prompt_ids(r, kind, i)?;
    if prompt.is_empty() {
        return Err(ApiError::field(prompt_field, format!("{prompt_field}: is empty: give some text to continue")));
    }
    if prompt.len() >= i.ctx_len {
        return Err(ApiError::field(
            prompt_field,
            format!("{prompt_field}: the prompt has {} tokens but the context holds {} positions (one more is needed to generate)", prompt.len(), i.ctx_len),
        )
        .code("context_length_exceeded"));
    }
    let max_tokens = max_tokens(r, kind, prompt.len(), i.ctx_len)?;
    let flags = SamplingFlags { temperature: r.temperature, top_k: r.top_k, top_p: r.top_p, min_p: r.min_p, repeat_penalty: r.repeat_penalty };
    let seed = r.seed.map_or_else(clock_seed, |s| s as u64);
    let sampling = SamplingParams {
        seed,
        presence_penalty: r.presence_penalty.unwrap_or(0.0),
        frequency_penalty: r.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        ..SamplingParams::resolve(&flags, &i.defaults).0
    };
    let sampling = writers_samplers(r, sampling, &i.tokenizer)?;
    let stream = r.stream.unwrap_or(false);
    let include_usage = r.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Plan { prompt, sampling, max_tokens, n: n as usize, stop, logprobs, ignore_eos: r.ignore_eos.unwrap_or(false), stream, include_usage })
}

/// llama-server's writer's samplers of the request onto `s`, validated. Banned phrases need
/// a decode loop that can take tokens back (`quill write --ban` has one); the server streams
/// each token of its batched steps as it is drawn, so a non-empty `banned_strings` is refused
/// rather than ignored.
fn writers_samplers(r: &GenRequest, s: SamplingParams, tok: &Tokenizer) -> Result<SamplingParams, ApiError> {
    if r.banned_strings.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::field(
            "banned_strings",
            "banned_strings: not supported by quill serve: its batched decode loop streams each token as it is drawn and cannot take text back (quill write --ban can); ban single tokens with logit_bias",
        ));
    }
    let fields = r.writer_fields();
    Ok(fields.apply(s, tok)?)
}

/// The prompt's ids: the completion's `prompt` (text or ids), or the chat's `messages`
/// through the model's chat template (which runs in its sandbox).
fn prompt_ids(r: &GenRequest, kind: Endpoint, i: &ModelInfo) -> Result<Vec<u32>, ApiError> {
    match kind {
        Endpoint::Completions => {
            if r.messages.is_some() {
                return Err(ApiError::field("messages", "messages: not a field of /v1/completions (use prompt, or /v1/chat/completions)"));
            }
            match &r.prompt {
                Some(OneOrMany::One(p)) => i.encode("prompt", p),
                Some(OneOrMany::Many(v)) if v.len() == 1 => i.encode("prompt", &v[0]),
                Some(OneOrMany::Many(v)) => Err(ApiError::field("prompt", format!("prompt: one prompt per request (got {})", v.len()))),
                Some(OneOrMany::Tokens(ids)) => match ids.iter().find(|&&t| t as usize >= i.vocab) {
                    Some(bad) => Err(ApiError::field("prompt", format!("prompt: token {bad} is outside the vocabulary of {}", i.vocab))),
                    None => Ok(ids.clone()),
                },
                None => Err(ApiError::field("prompt", "prompt: required")),
            }
        }
        Endpoint::Chat => {
            if r.prompt.is_some() {
                return Err(ApiError::field("prompt", "prompt: not a field of /v1/chat/completions (use messages, or /v1/completions)"));
            }
            let msgs = r.messages.as_ref().filter(|m| !m.is_empty()).ok_or_else(|| ApiError::field("messages", "messages: at least one message is required"))?;
            let turns = msgs.iter().enumerate().map(|(k, m)| Ok((m.role.clone(), message_text(k, m)?))).collect::<Result<Vec<_>, ApiError>>()?;
            i.encode("messages", &i.tokenizer.apply_chat_template(&turns, true)?)
        }
    }
}

/// A message's text: a string, or text parts joined.
fn message_text(k: usize, m: &Message) -> Result<String, ApiError> {
    match &m.content {
        Content::Text(s) => Ok(s.clone()),
        Content::Parts(parts) => {
            let mut s = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    _ => return Err(ApiError::field(&format!("messages[{k}].content"), format!("messages[{k}].content: only text parts are supported (got type {:?})", p.kind))),
                }
            }
            Ok(s)
        }
    }
}

/// `max_completion_tokens` (or the older `max_tokens`), within the room the prompt leaves.
fn max_tokens(r: &GenRequest, kind: Endpoint, prompt: usize, ctx_len: usize) -> Result<usize, ApiError> {
    let room = ctx_len - prompt;
    let (name, max) = match (r.max_completion_tokens, r.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    match max {
        Some(0) => Err(ApiError::field(name, format!("{name}: must be at least 1"))),
        Some(m) if m > room as u64 => Err(ApiError::field(name, format!("{name}: {m} plus the prompt's {prompt} tokens exceed the context of {ctx_len} positions (at most {room})"))
            .code("context_length_exceeded")),
        Some(m) => Ok(m as usize),
        // OpenAI's default for completions is 16; chat runs to the end of the context.
        None if kind == Endpoint::Completions => Ok(room.min(16)),
        None => Ok(room),
    }
}

/// `stop`: at most [`MAX_STOPS`] strings of at most [`MAX_STOP_BYTES`] bytes each.
fn stops(r: &GenRequest) -> Result<Vec<String>, ApiError> {
    let stops = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() <= MAX_STOPS => v.clone(),
        Some(Stop::Many(v)) => return Err(ApiError::field("stop", format!("stop: at most {MAX_STOPS} strings (got {})", v.len()))),
    };
    if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::field("stop", format!("stop: a stop string of {} bytes is longer than the limit of {MAX_STOP_BYTES}", long.len())));
    }
    Ok(stops)
}

/// `logit_bias`: `{"id": bias}` with each id a token of the vocabulary and each bias in
/// [-100, 100], as (id, bias) sorted by id. The bias is added to the logit as given
/// (OpenAI's -100 bans a token in practice, +100 all but forces it).
fn logit_bias(r: &GenRequest, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &r.logit_bias else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(map.len().min(vocab));
    for (key, &bias) in map {
        let field = format!("logit_bias.{key}");
        let id = key.parse::<u32>().ok().filter(|&id| (id as usize) < vocab);
        let Some(id) = id else {
            return Err(ApiError::field(&field, format!("logit_bias: key {key:?} is not a token id of the vocabulary (0 to {})", vocab.saturating_sub(1))));
        };
        if !(-(MAX_LOGIT_BIAS as f64)..=MAX_LOGIT_BIAS as f64).contains(&bias) {
            return Err(ApiError::field(&field, format!("logit_bias: the bias {bias} of token {key} must be between -{MAX_LOGIT_BIAS} and {MAX_LOGIT_BIAS}")));
        }
        out.push((id, bias as f32));
    }
    out.sort_by_key(|e| e.0);
    // "7" and "07" are the same token.
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::field("logit_bias", format!("logit_bias: token {} is given twice", w[0].0)));
    }
    Ok(out)
}

/// `logprobs`: an integer 0..=20 for completions; for chat a boolean, with `top_logprobs`.
fn logprobs(r: &GenRequest, kind: Endpoint) -> Result<Option<usize>, ApiError> {
    let bad = |msg: &str| ApiError::field("logprobs", format!("logprobs: {msg}"));
    match kind {
        Endpoint::Completions => {
            if r.top_logprobs.is_some() {
                return Err(ApiError::field("top_logprobs", "top_logprobs: a chat field; /v1/completions takes logprobs: N"));
            }
            match &r.logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Ok(Some(k as usize)),
                    _ => Err(bad(&format!("{v} must be an integer from 0 to {MAX_TOP_LOGPROBS}"))),
                },
            }
        }
        Endpoint::Chat => {
            let on = match &r.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(bad(&format!("{v} must be true or false"))),
            };
            match r.top_logprobs {
                Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::field("top_logprobs", format!("top_logprobs: {k} must be at most {MAX_TOP_LOGPROBS}"))),
                Some(_) if !on => Err(ApiError::field("top_logprobs", "top_logprobs: needs logprobs: true")),
                k => Ok(on.then(|| k.unwrap_or(0) as usize)),
            }
        }
    }
}

/// A seed from the clock, for requests that give none.
pub fn clock_seed() -> u64 {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Finds stop strings in generated text as it streams. Text that could still become a stop
/// string (a suffix that is a prefix of one) is held back until the next piece decides, so
/// a stop string split across tokens never leaks out.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        StopScanner { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds a piece of text; returns the text that is safe to emit and whether a stop string
    /// was found (then the text before it is returned and everything after is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self.undecided_suffix();
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// What is still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that begins some stop string (shorter
    /// than the longest stop, so only those suffixes are tried).
    fn undecided_suffix(&self) -> usize {
        let h = &self.held;
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        (1..=h.len().min(longest)).rev().find(|&k| h.is_char_boundary(h.len() - k) && self.stops.iter().any(|s| s.len() > k && s.starts_with(&h[h.len() - k..]))).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = s.push(p);
            out.push_str(&text);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_never_leak_even_across_pieces() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
        // A held prefix that turns out not to be a stop is released.
        assert_eq!(run(&["END"], &["EN", "d", "!"]), ("ENd!".into(), false));
        // Two stops: the earliest in the text wins.
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        // Multibyte text next to a held prefix stays whole.
        assert_eq!(run(&["éé"], &["café", "!"]), ("café!".into(), false));
        assert_eq!(run(&[], &["plain"]), ("plain".into(), false));
        // A long piece with a stop's prefix at its end holds only that prefix back.
        assert_eq!(run(&["xyz"], &[&"a".repeat(5000), "xy", "q"]), ("a".repeat(5000) + "xyq", false));
    }

    #[test]
    fn parse_names_the_bad_field() {
        let e = parse::<GenRequest>(br#"{"max_tokens": "ten"}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("max_tokens")));
        let e = parse::<GenRequest>(br#"{"max_tokens": -1}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("max_tokens")));
        let e = parse::<GenRequest>(br#"{"prompt": "x", "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = parse::<GenRequest>(b"{\"prompt\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse::<GenRequest>(b"[1]").unwrap_err();
        assert_eq!(e.status, 400);
        // JSON has no NaN; a body that writes one is not JSON.
        let e = parse::<GenRequest>(br#"{"prompt": "x", "temperature": NaN}"#).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        // Invalid UTF-8 inside a string.
        let e = parse::<GenRequest>(b"{\"prompt\": \"\xff\xfe\"}").unwrap_err();
        assert_eq!(e.status, 400);
        // Nesting past serde_json's recursion limit is an error, not a stack overflow.
        let deep = format!("{{\"logprobs\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse::<GenRequest>(deep.as_bytes()).unwrap_err().status, 400);
        let r = parse::<GenRequest>(br#"{"prompt": ["a"], "stop": "x", "n": 2}"#).unwrap();
        assert!(matches!(r.prompt, Some(OneOrMany::Many(_))) && r.n == Some(2));
    }

    #[test]
    fn logit_bias_keys_and_values_are_checked_naming_the_key() {
        let bias = |json: &str| logit_bias(&parse::<GenRequest>(json.as_bytes()).unwrap(), 100);
        assert_eq!(bias(r#"{"logit_bias": {"7": -100, "3": 2.5}}"#).unwrap(), vec![(3, 2.5), (7, -100.0)]);
        for (json, param) in [
            (r#"{"logit_bias": {"100": 1}}"#, "logit_bias.100"),
            (r#"{"logit_bias": {"-1": 1}}"#, "logit_bias.-1"),
            (r#"{"logit_bias": {"the": 1}}"#, "logit_bias.the"),
            (r#"{"logit_bias": {"5": 100.5}}"#, "logit_bias.5"),
            (r#"{"logit_bias": {"5": -1e300}}"#, "logit_bias.5"),
            (r#"{"logit_bias": {"5": 1, "05": 2}}"#, "logit_bias"),
        ] {
            let e = bias(json).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{json}: {}", e.message);
        }
        let e = parse::<GenRequest>(br#"{"logit_bias": {"5": "x"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias.5"), "{}", e.message);
    }

    #[test]
    fn stop_lists_are_bounded_in_count_and_length() {
        let stop = |json: String| stops(&parse::<GenRequest>(json.as_bytes()).unwrap());
        let many = serde_json::to_string(&vec!["x"; 100_000]).unwrap();
        assert_eq!(stop(format!(r#"{{"stop": {many}}}"#)).unwrap_err().param.as_deref(), Some("stop"));
        let long = "y".repeat(MAX_STOP_BYTES + 1);
        assert_eq!(stop(format!(r#"{{"stop": "{long}"}}"#)).unwrap_err().param.as_deref(), Some("stop"));
        assert_eq!(stop(r#"{"stop": ["a", "b"]}"#.into()).unwrap(), vec!["a", "b"]);
    }
}
