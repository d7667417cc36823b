//! The OpenAI request and error shapes, parsing with errors that name the field, and the
//! stop-string scanner that keeps stop strings out of the text.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body accepted; a bigger one gets 413.
pub const BODY_LIMIT: usize = 2 << 20;
/// Most choices (`n`) one request may ask for.
pub const MAX_N: u32 = 16;
/// Most alternatives per token (`logprobs` / `top_logprobs`), as OpenAI allows.
pub const MAX_TOP_LOGPROBS: u32 = quill::ops::sample::MAX_TOP_LOGPROBS as u32;

/// An error in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (a full queue).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, code: None, retry_after: None }
    }
    /// 400 about one request field.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.to_string()), ..Self::new(StatusCode::BAD_REQUEST, message) }
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 | 503 => "server_busy",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// A quill error about a request: argument errors name the field in OpenAI's spelling
/// (`--top-p` becomes `top_p`).
impl From<quill::Error> for ApiError {
    fn from(e: quill::Error) -> Self {
        match &e {
            quill::Error::Arg { arg, msg } => ApiError::field(&arg.trim_start_matches("--").replace('-', "_"), format!("{}: {msg}", arg.trim_start_matches("--").replace('-', "_"))),
            quill::Error::Template(_) | quill::Error::Tokenizer(_) | quill::Error::Context(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
    #[allow(dead_code)]
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The body of `/v1/completions` and `/v1/chat/completions` (one struct: the routes check
/// which of `prompt` / `messages` they take). Unknown fields are refused, never ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenRequest {
    /// Accepted and not checked: a server serves one model, whatever the client calls it.
    #[allow(dead_code)]
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
    pub logit_bias: Option<HashMap<String, f32>>,
    /// An integer (top-N) for completions, a boolean for chat.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<u32>,
    pub echo: Option<bool>,
    /// Accepted (OpenAI's end-user id); quill keeps no per-user state.
    #[allow(dead_code)]
    pub user: Option<String>,
    // quill's own extras.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
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

/// Parses a JSON body: malformed JSON and wrong types are 400s, the latter naming the field.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::new(StatusCode::BAD_REQUEST, format!("the body does not have the expected shape: {inner}"))
        } else {
            ApiError::field(&path, format!("{path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
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

    /// Length of the longest suffix of the held text that begins some stop string.
    fn undecided_suffix(&self) -> usize {
        let h = &self.held;
        (1..=h.len()).rev().find(|&k| h.is_char_boundary(h.len() - k) && self.stops.iter().any(|s| s.len() > k && s.starts_with(&h[h.len() - k..]))).unwrap_or(0)
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
    }

    #[test]
    fn parse_names_the_bad_field() {
        let e = parse::<GenRequest>(br#"{"max_tokens": "ten"}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("max_tokens")));
        let e = parse::<GenRequest>(br#"{"prompt": "x", "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = parse::<GenRequest>(b"{\"prompt\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse::<GenRequest>(b"[1]").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let r = parse::<GenRequest>(br#"{"prompt": ["a"], "stop": "x", "n": 2}"#).unwrap();
        assert!(matches!(r.prompt, Some(OneOrMany::Many(_))) && r.n == Some(2));
    }
}
