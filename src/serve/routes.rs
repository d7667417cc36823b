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

use quill::openai::{check_content_type, clock_seed, parse, plan, ApiError, DetokenizeRequest, Endpoint as Kind, GenRequest, TokenizeRequest, BODY_LIMIT};
use quill::sampling::SamplingParams;

/// What the routes check requests against, set once the model has loaded.
pub use quill::openai::ModelInfo;

use super::api::HttpError;
use super::engine::{Event, Finish, Handle, Job, TokenLogprob};
use super::metrics::Metrics;

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
            return HttpError(ApiError::new(401, "invalid or missing API key (send Authorization: Bearer KEY)").code("invalid_api_key")).into_response();
        }
    }
    next.run(req).await
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn not_found(req: Request) -> HttpError {
    HttpError(ApiError::new(404, format!("no route {} {}", req.method(), req.uri().path())).code("not_found"))
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

/// A full queue is a rate limit, not an outage: 429 with `Retry-After`, as llama-server and
/// OpenAI answer it, so clients back off and retry this replica while a load balancer keeps
/// it in rotation (nginx's passive health checks count 503, not 429, against a replica).
/// 503 is kept for what the replica cannot serve at all: loading the model, shutting down.
fn queue_full() -> ApiError {
    ApiError::new(429, "the server is busy: every slot and the queue are full; retry later").retry_after(1).code("queue_full")
}

fn info(st: &AppState) -> Result<&ModelInfo, ApiError> {
    st.info.get().ok_or_else(|| ApiError::new(503, "the model is still loading").retry_after(5))
}

/// The body as JSON of type T: 415 when its Content-Type is not JSON, 413 over the limit,
/// 408 when it arrives too slowly.
async fn read_json<T: serde::de::DeserializeOwned>(st: &AppState, req: Request) -> Result<T, ApiError> {
    check_content_type(req.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()))?;
    let bytes = match tokio::time::timeout(st.body_timeout, Bytes::from_request(req, &())).await {
        Err(_) => return Err(ApiError::new(408, "the request body took too long to arrive")),
        Ok(Err(rej)) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ApiError::new(413, format!("the request body is larger than the limit of {BODY_LIMIT} bytes"))),
        Ok(Err(rej)) => return Err(ApiError::new(rej.status().as_u16(), rej.body_text())),
        Ok(Ok(b)) => b,
    };
    parse(&bytes)
}

async fn models(State(st): St) -> Result<Json<Value>, HttpError> {
    let i = info(&st)?;
    Ok(Json(json!({"object": "list", "data": [{"id": i.name, "object": "model", "created": st.started, "owned_by": "quill", "context_length": i.ctx_len}]})))
}

async fn tokenize(State(st): St, req: Request) -> Result<Json<Value>, HttpError> {
    let i = info(&st)?;
    let r: TokenizeRequest = read_json(&st, req).await?;
    // Text longer than any prompt of this context is not tokenized (seconds of CPU for 2 MiB).
    if r.content.len() > i.max_prompt_bytes() {
        return Err(ApiError::field("content", format!("content: {} bytes are more than any prompt of the context of {} positions can hold", r.content.len(), i.ctx_len)).into());
    }
    Ok(Json(json!({"tokens": i.tokenizer.encode(&r.content)?})))
}

async fn detokenize(State(st): St, req: Request) -> Result<Json<Value>, HttpError> {
    let i = info(&st)?;
    let r: DetokenizeRequest = read_json(&st, req).await?;
    if let Some(bad) = r.tokens.iter().find(|&&t| t as usize >= i.vocab) {
        return Err(ApiError::field("tokens", format!("tokens: {bad} is outside the vocabulary of {}", i.vocab)).into());
    }
    Ok(Json(json!({"content": i.tokenizer.decode(&r.tokens)?})))
}

async fn completions(State(st): St, req: Request) -> Response {
    generate(st, req, Kind::Completions).await.unwrap_or_else(|e| HttpError(e).into_response())
}

async fn chat(State(st): St, req: Request) -> Response {
    generate(st, req, Kind::Chat).await.unwrap_or_else(|e| HttpError(e).into_response())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn generate(st: Arc<AppState>, req: Request, kind: Kind) -> Result<Response, ApiError> {
    let received = Instant::now();
    let i = info(&st)?;
    let r: GenRequest = read_json(&st, req).await?;
    let load = &st.engine.load;
    // Tokenizing and rendering the chat template take CPU time: off the async workers.
    let capacity = load.slots + load.max_queue;
    let shared = st.clone();
    let p = tokio::task::spawn_blocking(move || plan(&r, kind, info(&shared)?, capacity)).await.map_err(|e| ApiError::new(500, format!("checking the request failed: {e}")))??;
    if !load.admit(p.n) {
        return Err(queue_full());
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
        return Err(ApiError::new(503, "the server is shutting down"));
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
            (Kind::Completions, _) => "text_completion",
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
            (Kind::Completions, _) => json!({"index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish}),
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
            Kind::Completions => {
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
        let Some((c, e)) = rx.recv().await else { return Err(ApiError::new(500, "the engine stopped before the request finished")) };
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
            Event::Failed(msg) => return Err(ApiError::new(500, format!("generation failed: {msg}"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::engine::Load;
    use std::sync::atomic::AtomicUsize;

    fn loading_state() -> Arc<AppState> {
        let (tx, _rx) = std::sync::mpsc::channel();
        let load = Arc::new(Load { outstanding: AtomicUsize::new(0), busy: AtomicUsize::new(0), slots: 1, max_queue: 0 });
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        Arc::new(AppState { engine: Handle { tx, load }, metrics, info: Arc::new(OnceLock::new()), api_key: None, body_timeout: Duration::from_secs(1), started: 0, stories: None })
    }

    /// While the model loads, /health and a completion answer 503 with Retry-After (the
    /// replica cannot serve yet); a full queue is 429 (see `queue_full`).
    #[tokio::test]
    async fn loading_is_503_and_a_full_queue_429() {
        let st = loading_state();
        assert_eq!(health(State(st.clone())).await.status(), StatusCode::SERVICE_UNAVAILABLE);
        let req = Request::builder().method("POST").uri("/v1/completions").body(axum::body::Body::from(r#"{"prompt": "hi"}"#)).expect("request");
        let e = generate(st, req, Kind::Completions).await.err().expect("refused while loading");
        assert_eq!((e.status, e.retry_after), (503, Some(5)), "{e}");
        assert!(e.message.contains("loading"), "{e}");
        let busy = queue_full();
        assert_eq!((busy.status, busy.retry_after, busy.code), (429, Some(1), Some("queue_full")));
    }
}
