//! HTTP routes: the OpenAI endpoints, health, metrics, tokenize/detokenize; API keys and
//! request counting as middleware.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::sse::{Event as Sse, Sse as SseBody};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use quill::models::GenerationDefaults;
use quill::sampling::{SamplingFlags, SamplingParams};
use quill::tokenizer::Tokenizer;

use super::api::{parse, ApiError, Content, DetokenizeRequest, GenRequest, OneOrMany, Stop, TokenizeRequest, BODY_LIMIT, MAX_N, MAX_TOP_LOGPROBS};
use super::engine::{Event, Finish, Handle, Job, TokenLogprob};
use super::metrics::Metrics;

/// What the routes need to know about the model, set once it has loaded.
pub struct ModelInfo {
    pub name: String,
    pub tokenizer: Tokenizer,
    pub ctx_len: usize,
    pub vocab: usize,
    pub defaults: GenerationDefaults,
}

pub struct AppState {
    pub engine: Handle,
    pub metrics: Arc<Metrics>,
    pub info: Arc<OnceLock<ModelInfo>>,
    pub api_key: Option<String>,
    /// Longest a request body may take to arrive.
    pub body_timeout: Duration,
    pub started: u64,
    /// `--stories DIR`: where the studio page saves (page.rs).
    pub stories: Option<std::path::PathBuf>,
}

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .merge(super::page::stories())
        .route_layer(from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .merge(super::page::files())
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every request by route and status.
async fn count(State(st): St, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    st.metrics.requests.with_label_values(&[route.as_str(), resp.status().as_str()]).inc();
    resp
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.as_bytes(), key.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key (send Authorization: Bearer KEY)").code("invalid_api_key").into_response();
        }
    }
    next.run(req).await
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {}", req.method(), req.uri().path())).code("not_found")
}

async fn health(State(st): St) -> Response {
    match st.info.get() {
        Some(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading model"}))).into_response(),
    }
}

async fn metrics(State(st): St) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render(&st.engine.load)).into_response()
}

fn info(st: &AppState) -> Result<&ModelInfo, ApiError> {
    st.info.get().ok_or_else(|| ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading") })
}

/// The body as JSON of type T: 413 over the limit, 408 when it arrives too slowly.
async fn read_json<T: serde::de::DeserializeOwned>(st: &AppState, req: Request) -> Result<T, ApiError> {
    let bytes = match tokio::time::timeout(st.body_timeout, Bytes::from_request(req, &())).await {
        Err(_) => return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body took too long to arrive")),
        Ok(Err(rej)) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ApiError::new(rej.status(), format!("the request body is larger than the limit of {BODY_LIMIT} bytes"))),
        Ok(Err(rej)) => return Err(ApiError::new(rej.status(), rej.body_text())),
        Ok(Ok(b)) => b,
    };
    parse(&bytes)
}

async fn models(State(st): St) -> Result<Json<Value>, ApiError> {
    let i = info(&st)?;
    Ok(Json(json!({"object": "list", "data": [{"id": i.name, "object": "model", "created": st.started, "owned_by": "quill", "context_length": i.ctx_len}]})))
}

async fn tokenize(State(st): St, req: Request) -> Result<Json<Value>, ApiError> {
    let i = info(&st)?;
    let r: TokenizeRequest = read_json(&st, req).await?;
    Ok(Json(json!({"tokens": i.tokenizer.encode(&r.content)?})))
}

async fn detokenize(State(st): St, req: Request) -> Result<Json<Value>, ApiError> {
    let i = info(&st)?;
    let r: DetokenizeRequest = read_json(&st, req).await?;
    if let Some(bad) = r.tokens.iter().find(|&&t| t as usize >= i.vocab) {
        return Err(ApiError::field("tokens", format!("tokens: {bad} is outside the vocabulary of {}", i.vocab)));
    }
    Ok(Json(json!({"content": i.tokenizer.decode(&r.tokens)?})))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(st): St, req: Request) -> Response {
    generate(st, req, Kind::Completion).await.unwrap_or_else(|e| e.into_response())
}

async fn chat(State(st): St, req: Request) -> Response {
    generate(st, req, Kind::Chat).await.unwrap_or_else(|e| e.into_response())
}

/// A request turned into what the engine runs.
struct Plan {
    prompt: Vec<u32>,
    sampling: SamplingParams,
    max_tokens: usize,
    n: usize,
    stop: Vec<String>,
    logprobs: Option<usize>,
    ignore_eos: bool,
    stream: bool,
    include_usage: bool,
}

/// The prompt's ids: the completion's `prompt` (text or ids), or the chat's `messages`
/// through the model's chat template.
fn prompt_ids(r: &GenRequest, kind: Kind, i: &ModelInfo) -> Result<Vec<u32>, ApiError> {
    match kind {
        Kind::Completion => {
            if r.messages.is_some() {
                return Err(ApiError::field("messages", "messages: not a field of /v1/completions (use prompt, or /v1/chat/completions)"));
            }
            match &r.prompt {
                Some(OneOrMany::One(p)) => Ok(i.tokenizer.encode(p)?),
                Some(OneOrMany::Many(v)) if v.len() == 1 => Ok(i.tokenizer.encode(&v[0])?),
                Some(OneOrMany::Many(v)) => Err(ApiError::field("prompt", format!("prompt: one prompt per request (got {})", v.len()))),
                Some(OneOrMany::Tokens(ids)) => match ids.iter().find(|&&t| t as usize >= i.vocab) {
                    Some(bad) => Err(ApiError::field("prompt", format!("prompt: token {bad} is outside the vocabulary of {}", i.vocab))),
                    None => Ok(ids.clone()),
                },
                None => Err(ApiError::field("prompt", "prompt: required")),
            }
        }
        Kind::Chat => {
            if r.prompt.is_some() {
                return Err(ApiError::field("prompt", "prompt: not a field of /v1/chat/completions (use messages, or /v1/completions)"));
            }
            let msgs = r.messages.as_ref().filter(|m| !m.is_empty()).ok_or_else(|| ApiError::field("messages", "messages: at least one message is required"))?;
            let mut turns = Vec::with_capacity(msgs.len());
            for (i, m) in msgs.iter().enumerate() {
                let text = match &m.content {
                    Content::Text(s) => s.clone(),
                    Content::Parts(parts) => {
                        let mut s = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => s.push_str(t),
                                _ => return Err(ApiError::field(&format!("messages[{i}].content"), format!("messages[{i}].content: only text parts are supported (got {:?})", p.kind))),
                            }
                        }
                        s
                    }
                };
                turns.push((m.role.clone(), text));
            }
            Ok(i.tokenizer.encode(&i.tokenizer.apply_chat_template(&turns, true)?)?)
        }
    }
}

fn plan(r: &GenRequest, kind: Kind, i: &ModelInfo, capacity: usize) -> Result<Plan, ApiError> {
    let prompt_field = if kind == Kind::Chat { "messages" } else { "prompt" };
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
    if r.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::field("logit_bias", "logit_bias: not supported by quill's GPU sampler"));
    }
    if r.echo == Some(true) {
        return Err(ApiError::field("echo", "echo: not supported"));
    }
    let n = r.n.unwrap_or(1);
    if n == 0 || n > MAX_N || n as usize > capacity {
        return Err(ApiError::field("n", format!("n: {n} must be between 1 and {}", MAX_N.min(capacity as u32))));
    }
    let room = i.ctx_len - prompt.len();
    let (max_name, max) = match (r.max_completion_tokens, r.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match max {
        Some(0) => return Err(ApiError::field(max_name, format!("{max_name}: must be at least 1"))),
        Some(m) if m > room as u64 => {
            return Err(ApiError::field(max_name, format!("{max_name}: {m} plus the prompt's {} tokens exceed the context of {} positions (at most {room})", prompt.len(), i.ctx_len))
                .code("context_length_exceeded"))
        }
        Some(m) => m as usize,
        // OpenAI's default for completions is 16; chat runs to the end of the context.
        None if kind == Kind::Completion => room.min(16),
        None => room,
    };
    let stop = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() <= 4 => v.clone(),
        Some(Stop::Many(v)) => return Err(ApiError::field("stop", format!("stop: at most 4 strings (got {})", v.len()))),
    };
    let logprobs = logprobs(r, kind)?;
    let flags = SamplingFlags { temperature: r.temperature, top_k: r.top_k, top_p: r.top_p, min_p: r.min_p, repeat_penalty: r.repeat_penalty };
    let seed = r.seed.map_or_else(clock_seed, |s| s as u64);
    let sampling = SamplingParams {
        seed,
        presence_penalty: r.presence_penalty.unwrap_or(0.0),
        frequency_penalty: r.frequency_penalty.unwrap_or(0.0),
        ..SamplingParams::resolve(&flags, &i.defaults).0
    };
    sampling.validate()?;
    let stream = r.stream.unwrap_or(false);
    let include_usage = r.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Plan { prompt, sampling, max_tokens, n: n as usize, stop, logprobs, ignore_eos: r.ignore_eos.unwrap_or(false), stream, include_usage })
}

/// `logprobs`: an integer 0..=20 for completions; for chat a boolean, with `top_logprobs`.
fn logprobs(r: &GenRequest, kind: Kind) -> Result<Option<usize>, ApiError> {
    let bad = |msg: &str| ApiError::field("logprobs", format!("logprobs: {msg}"));
    match kind {
        Kind::Completion => {
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
        Kind::Chat => {
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

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn generate(st: Arc<AppState>, req: Request, kind: Kind) -> Result<Response, ApiError> {
    let received = Instant::now();
    let i = info(&st)?;
    let r: GenRequest = read_json(&st, req).await?;
    let load = &st.engine.load;
    let p = plan(&r, kind, i, load.slots + load.max_queue)?;
    if !load.admit(p.n) {
        return Err(ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: every slot and the queue are full; retry later") }.code("queue_full"));
    }
    let (tx, rx) = unbounded_channel();
    let jobs = (0..p.n)
        .map(|c| Job {
            index: c,
            prompt: p.prompt.clone(),
            sampling: SamplingParams { seed: p.sampling.seed.wrapping_add(c as u64), ..p.sampling.clone() },
            max_tokens: p.max_tokens,
            stop: p.stop.clone(),
            logprobs: p.logprobs,
            ignore_eos: p.ignore_eos,
            events: tx.clone(),
            received,
        })
        .collect();
    drop(tx);
    if st.engine.tx.send(jobs).is_err() {
        load.outstanding.fetch_sub(p.n, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
    }
    let reply = Reply { kind, id: format!("{}-{:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, clock_seed()), created: unix_now(), model: i.name.clone() };
    if p.stream {
        Ok(SseBody::new(stream_events(reply, rx, p.n, p.include_usage)).into_response())
    } else {
        collect(reply, rx, p.n).await
    }
}

/// The fields every response object of one request shares.
#[derive(Clone)]
struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }
    fn wrap(&self, stream: bool, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": self.object(stream), "created": self.created, "model": self.model, "choices": choices})
    }
    /// One choice's piece: text (or delta), logprobs, finish reason.
    fn choice(&self, stream: bool, index: usize, text: Option<&str>, lp: Option<Value>, finish: Option<Finish>) -> Value {
        let finish = finish.map(Finish::name);
        match (self.kind, stream) {
            (Kind::Completion, _) => json!({"index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish}),
            (Kind::Chat, false) => json!({"index": index, "message": {"role": "assistant", "content": text.unwrap_or("")}, "logprobs": lp, "finish_reason": finish}),
            (Kind::Chat, true) => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
        }
    }
    /// Logprobs of some tokens in this endpoint's shape; `offset` is the text offset of the
    /// first (completions report it).
    fn logprobs(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match self.kind {
            Kind::Chat => {
                let entry = |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
                let content: Vec<Value> = lps
                    .iter()
                    .map(|t| {
                        let mut e = entry(&t.token, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|a| entry(&a.token, a.logprob)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let mut at = offset;
                let offsets: Vec<usize> = lps
                    .iter()
                    .map(|t| {
                        let o = at;
                        at += t.token.len();
                        o
                    })
                    .collect();
                let tops: Vec<Value> = lps.iter().map(|t| Value::Object(t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect())).collect();
                json!({"tokens": lps.iter().map(|t| &t.token).collect::<Vec<_>>(), "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(), "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}})
}

/// One choice as it accumulates.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    want_logprobs: bool,
    finish: Option<Finish>,
}

/// The whole response, after every choice has finished.
async fn collect(reply: Reply, mut rx: UnboundedReceiver<(usize, Event)>, n: usize) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::default()).collect();
    let (mut prompt, mut completion, mut cached, mut left) = (0, 0, 0, n);
    while left > 0 {
        let Some((c, e)) = rx.recv().await else { return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped before the request finished")) };
        let Some(ch) = choices.get_mut(c) else { continue };
        match e {
            Event::Text { text, logprobs } => {
                ch.text.push_str(&text);
                ch.want_logprobs |= !logprobs.is_empty();
                ch.logprobs.extend(logprobs);
            }
            Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                ch.finish = Some(finish);
                prompt = prompt_tokens;
                completion += completion_tokens;
                cached = cached.max(cached_tokens);
                left -= 1;
            }
            Event::Failed(msg) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("generation failed: {msg}"))),
        }
    }
    let out: Vec<Value> = choices.iter().enumerate().map(|(c, ch)| reply.choice(false, c, Some(&ch.text), ch.want_logprobs.then(|| reply.logprobs(&ch.logprobs, 0)), ch.finish)).collect();
    let mut body = reply.wrap(false, out);
    body["usage"] = usage(prompt, completion, cached);
    Ok(Json(body).into_response())
}

/// State of a stream: the engine's events become server-sent events, one chunk each.
struct Streaming {
    reply: Reply,
    rx: UnboundedReceiver<(usize, Event)>,
    left: usize,
    include_usage: bool,
    offsets: Vec<usize>,
    usage: (usize, usize, usize),
    /// Chat streams open each choice with a role delta first.
    opened: bool,
    ended: bool,
}

fn data(v: &Value) -> Result<Sse, Infallible> {
    Ok(Sse::default().data(v.to_string()))
}

fn stream_events(reply: Reply, rx: UnboundedReceiver<(usize, Event)>, n: usize, include_usage: bool) -> impl Stream<Item = Result<Sse, Infallible>> {
    let s = Streaming { reply, rx, left: n, include_usage, offsets: vec![0; n], usage: (0, 0, 0), opened: false, ended: false };
    stream::unfold(s, |mut s| async move {
        let out = s.next_events().await?;
        Some((stream::iter(out), s))
    })
    .flatten()
}

impl Streaming {
    /// The next events to send; None when the stream is over.
    async fn next_events(&mut self) -> Option<Vec<Result<Sse, Infallible>>> {
        if self.ended {
            return None;
        }
        let r = &self.reply;
        if !self.opened {
            self.opened = true;
            if r.kind == Kind::Chat {
                let roles = (0..self.offsets.len()).map(|c| json!({"index": c, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})).collect();
                return Some(vec![data(&r.wrap(true, roles))]);
            }
        }
        if self.left == 0 {
            self.ended = true;
            let mut out = Vec::new();
            if self.include_usage {
                let mut u = r.wrap(true, Vec::new());
                u["usage"] = usage(self.usage.0, self.usage.1, self.usage.2);
                out.push(data(&u));
            }
            out.push(Ok(Sse::default().data("[DONE]")));
            return Some(out);
        }
        let Some((c, e)) = self.rx.recv().await else {
            self.ended = true;
            return Some(vec![data(&json!({"error": {"message": "the engine stopped before the request finished", "type": "server_error", "param": null, "code": null}}))]);
        };
        let chunk = match e {
            Event::Text { text, logprobs } => {
                let lp = (!logprobs.is_empty()).then(|| r.logprobs(&logprobs, self.offsets.get(c).copied().unwrap_or(0)));
                if let Some(o) = self.offsets.get_mut(c) {
                    *o += text.len();
                }
                r.choice(true, c, Some(&text), lp, None)
            }
            Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                self.left = self.left.saturating_sub(1);
                self.usage = (prompt_tokens, self.usage.1 + completion_tokens, self.usage.2.max(cached_tokens));
                let text = if r.kind == Kind::Chat { None } else { Some("") };
                r.choice(true, c, text, None, Some(finish))
            }
            Event::Failed(msg) => {
                self.ended = true;
                return Some(vec![data(&json!({"error": {"message": format!("generation failed: {msg}"), "type": "server_error", "param": null, "code": null}}))]);
            }
        };
        Some(vec![data(&r.wrap(true, vec![chunk]))])
    }
}
