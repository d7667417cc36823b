//! `quill serve` end to end on the llama-tiny fixture, all traffic on 127.0.0.1: response
//! shapes, bad requests, faults (disconnects, a full queue, slow clients, SIGTERM under load)
//! and the `openai` Python client (tests/serve/openai_client.py).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const KEY: &str = "test-key";

struct Server {
    child: Child,
    base: String,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Starts `quill serve` on the tiny model with an ephemeral port and waits until /health
/// says 200; None (a skip) without a GPU adapter.
fn start(extra: &[&str]) -> Option<Server> {
    quill::gpu::context::test_context()?;
    let template = fixture("serve/chat_template.jinja").display().to_string();
    let tiny = fixture("llama-tiny").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(["serve", "--model", &tiny, "--port", "0", "--ctx", "128", "--chat-template-file", &template])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start quill serve");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on http://") {
                let _ = tx.send(a.to_string());
            }
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("quill serve printed its address");
    let server = Server { child, base: format!("http://{addr}"), addr, log };
    let deadline = Instant::now() + Duration::from_secs(180);
    while get(&server, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "not ready in time:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build()
}

/// (status, body, Retry-After) of a response, error statuses included (0: no answer).
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String, Option<String>) {
    let r = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return (0, e.to_string(), None),
    };
    let retry = r.header("retry-after").map(str::to_string);
    (r.status(), r.into_string().unwrap_or_default(), retry)
}

fn get(s: &Server, path: &str) -> (u16, String) {
    let (code, body, _) = answer(agent().get(&format!("{}{path}", s.base)).set("Authorization", &format!("Bearer {KEY}")).call());
    (code, body)
}

/// POSTs a body with the right key; returns (status, body as JSON or Null, Retry-After).
fn post(s: &Server, path: &str, body: &str) -> (u16, Value, Option<String>) {
    post_key(s, path, body, Some(KEY))
}

fn post_key(s: &Server, path: &str, body: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut r = agent().post(&format!("{}{path}", s.base)).set("Content-Type", "application/json");
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let (code, text, retry) = answer(r.send_string(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null), retry)
}

/// Checks OpenAI's error shape and the field it names.
fn expect_error(got: &(u16, Value, Option<String>), status: u16, param: Option<&str>, needle: &str) {
    let (code, body, _) = got;
    assert_eq!(*code, status, "{body}");
    let e = &body["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "not OpenAI's error shape: {body}");
    if let Some(p) = param {
        assert_eq!(e["param"], json!(p), "{body}");
    }
    let msg = e["message"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

/// The data lines of a server-sent event stream, up to and including [DONE].
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Sends a raw request and returns the open connection.
fn raw(s: &Server, path: &str, body: &str) -> TcpStream {
    raw_with(s, path, body, "Content-Type: application/json\r\n")
}

/// A raw request with these extra header lines (each ending in CRLF).
fn raw_with(s: &Server, path: &str, body: &str, headers: &str) -> TcpStream {
    let mut c = TcpStream::connect(&s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n{headers}Content-Length: {}\r\n\r\n", s.addr, body.len());
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body.as_bytes()).unwrap();
    c
}

/// Reads from a stream until `needle` has arrived.
fn read_until(c: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed before {needle:?}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A metric's value from /metrics text (the line that starts with `name`).
fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = get(s, "/metrics");
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no text: {v}")).to_string()
}

/// The CPU reference: log-softmax of the fixture's logits at the prompt's last position
/// (transformers), top 5, highest first.
fn reference_top5() -> (Vec<u32>, Vec<f64>) {
    let (prompt, last) = reference_last_logits();
    let last: Vec<f64> = last.iter().map(|&x| x as f64).collect();
    let m = last.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z = last.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    let mut lp: Vec<f64> = last.iter().map(|x| x - z).collect();
    lp.sort_by(|a, b| b.total_cmp(a));
    lp.truncate(5);
    (prompt, lp)
}

/// The fixture's prompt and its logits at the last position (transformers).
fn reference_last_logits() -> (Vec<u32>, Vec<f32>) {
    let r = json("llama-tiny/reference.json");
    let prompt = ids(&r["input_ids"]);
    let bytes = std::fs::read(fixture("llama-tiny/reference_logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    let all: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let vocab = t.shape()[1];
    let last = all[(prompt.len() - 1) * vocab..prompt.len() * vocab].to_vec();
    (prompt, last)
}

/// The first token's top logprobs of a completion, highest first, after checking that they
/// equal `want`'s first ones within 1e-4 (tokens with the same text share a key: compare what
/// came back, at most 5).
fn top_logprobs_close_to(lp: &Value, want: &[f64], what: &str) -> Vec<f64> {
    let top = lp["choices"][0]["logprobs"]["top_logprobs"][0].as_object().expect("top_logprobs").clone();
    let mut got: Vec<f64> = top.values().map(|v| v.as_f64().unwrap()).collect();
    got.sort_by(|a, b| b.total_cmp(a));
    assert!(!got.is_empty() && got.len() <= 5, "{lp}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "logprob {g} vs {what}'s {w}");
    }
    got
}

/// Sampling that leaves the distribution as the model gives it (for logprobs).
const PLAIN: &str = r#""temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0"#;

#[test]
fn answers_in_openai_shapes_and_refuses_bad_requests() {
    let Some(s) = start(&["--api-key", KEY, "--parallel", "2", "--timeout", "3"]) else { return };
    let mut ok_completions = 0;
    let mut generated = 0u64;
    let mut count = |v: &Value| generated += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);

    // Keys, routes, bodies.
    expect_error(&post_key(&s, "/v1/completions", r#"{"prompt": "hi"}"#, Some("wrong")), 401, None, "API key");
    expect_error(&post_key(&s, "/v1/completions", r#"{"prompt": "hi"}"#, None), 401, None, "API key");
    expect_error(&post(&s, "/v1/nothing", "{}"), 404, None, "/v1/nothing");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "#), 400, None, "not valid JSON");
    // A body that says it is not JSON is 415 naming the header; one that says nothing is JSON.
    for (path, kind) in [("/v1/completions", "text/plain"), ("/v1/chat/completions", "application/x-www-form-urlencoded"), ("/tokenize", "text/plain; charset=utf-8")] {
        let r = agent().post(&format!("{}{path}", s.base)).set("Content-Type", kind).set("Authorization", &format!("Bearer {KEY}"));
        let (code, text, retry) = answer(r.send_string(r#"{"prompt": "hi", "content": "hi"}"#));
        expect_error(&(code, serde_json::from_str(&text).unwrap_or(Value::Null), retry), 415, Some("Content-Type"), kind);
    }
    let mut c = raw_with(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#, "Connection: close\r\n");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "no Content-Type: {reply}");
    count(&serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null));
    ok_completions += 1;
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": "ten"}"#), 400, Some("max_tokens"), "max_tokens");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "temperature": [1]}"#), 400, Some("temperature"), "temperature");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "best_of": 2}"#), 400, None, "best_of");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 1000000000}"#), 400, Some("max_tokens"), "exceed the context of 128");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "presence_penalty": 2.5}"#), 400, Some("presence_penalty"), "between -2 and 2");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "frequency_penalty": -3}"#), 400, Some("frequency_penalty"), "between -2 and 2");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "logit_bias": {"5": 101}}"#), 400, Some("logit_bias.5"), "between -100 and 100");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "logit_bias": {"99999": 1}}"#), 400, Some("logit_bias.99999"), "not a token id");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}"#), 400, Some("stop"), "at most 4");
    expect_error(&post(&s, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 1000}"#), 400, Some("top_logprobs"), "at most");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "n": 100000}"#), 400, Some("n"), "n:");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "top_p": 0}"#), 400, Some("top_p"), "top_p");
    expect_error(&post(&s, "/v1/completions", r#"{"prompt": "hi", "n": 0}"#), 400, Some("n"), "n:");
    expect_error(&post(&s, "/v1/chat/completions", r#"{"prompt": "hi"}"#), 400, Some("prompt"), "messages");
    // Over 128 tokens in few bytes (one token per word): longer text is refused before it is
    // tokenized (its bytes cannot fit), with another message.
    let long = "x y ".repeat(100);
    let (_, tok, _) = post(&s, "/tokenize", &json!({"content": long}).to_string());
    let n_long = tok["tokens"].as_array().map_or(0, |a| a.len());
    assert!(n_long > 128, "{tok}");
    expect_error(&post(&s, "/v1/completions", &json!({"prompt": long}).to_string()), 400, Some("prompt"), &format!("has {n_long} tokens"));
    expect_error(&post(&s, "/detokenize", r#"{"tokens": [5000]}"#), 400, Some("tokens"), "outside the vocabulary");
    let huge = "the lighthouse keeper ".repeat(50_000);
    expect_error(&post(&s, "/v1/completions", &json!({"prompt": huge}).to_string()), 400, Some("prompt"), "bytes of text cannot fit");
    expect_error(&post(&s, "/tokenize", &json!({"content": huge}).to_string()), 400, Some("content"), "more than any prompt");

    // A 10 MB body: 413, whether or not the server reads it all.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let size = 10 << 20;
    let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n");
    c.write_all(head.as_bytes()).unwrap();
    // Read the answer while sending: the server may answer (and hang up) before the end.
    let mut reader = c.try_clone().unwrap();
    let replied = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    });
    let chunk = vec![b' '; 1 << 16];
    for _ in 0..size / chunk.len() {
        if c.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    let reply = replied.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{}", reply.lines().next().unwrap_or(""));

    // Slow clients: a head that never ends, and a body that never comes, time out (--timeout 3).
    let t = Instant::now();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    assert!(t.elapsed() < Duration::from_secs(15), "an unfinished head was kept {:?}", t.elapsed());
    // An idle keep-alive connection is closed too.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_until(&mut c, "\"ok\"");
    let t = Instant::now();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    assert!(t.elapsed() < Duration::from_secs(15), "an idle connection was kept {:?}", t.elapsed());
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n{{\"pro").as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    // Completions: shape, usage, greedy reproducibility, n, stop.
    let greedy = r#""prompt": "The license grants", "temperature": 0, "ignore_eos": true"#;
    let (code, warm, _) = post(&s, "/v1/completions", &format!("{{{greedy}, \"max_tokens\": 12}}"));
    assert_eq!(code, 200, "{warm}");
    ok_completions += 1;
    count(&warm);
    assert_eq!(warm["object"], "text_completion");
    assert!(warm["id"].is_string() && warm["created"].is_u64() && warm["model"] == "llama-tiny", "{warm}");
    assert_eq!(warm["choices"][0]["finish_reason"], "length");
    let u = &warm["usage"];
    assert_eq!(u["completion_tokens"], 12);
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + 12));
    let (_, full, _) = post(&s, "/v1/completions", &format!("{{{greedy}, \"max_tokens\": 12}}"));
    ok_completions += 1;
    count(&full);
    let full_text = text_of(&full);
    assert_eq!(full_text, text_of(&warm), "greedy text changed with the prompt cache");
    assert!(full["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) > 0, "no prefix reuse: {full}");
    // A stop string from the middle of that text (it may span tokens): the text ends before it.
    let chars: Vec<char> = full_text.chars().collect();
    let stop: String = chars[chars.len() / 3..chars.len() / 3 + 3].iter().collect();
    let (_, stopped, _) = post(&s, "/v1/completions", &format!("{{{greedy}, \"max_tokens\": 12, \"stop\": [{}]}}", json!(stop)));
    ok_completions += 1;
    count(&stopped);
    assert_eq!(text_of(&stopped), full_text[..full_text.find(&stop).unwrap()], "stop {stop:?}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    // logit_bias: -100 on the greedy first token (and on every id of its text) makes the
    // sampler pick another, so the text changes.
    let (_, first, _) = post(&s, "/v1/completions", &format!("{{{greedy}, \"max_tokens\": 1}}"));
    count(&first);
    let first = text_of(&first);
    assert!(!first.is_empty() && full_text.starts_with(&first), "{first:?} vs {full_text:?}");
    let (_, ids, _) = post(&s, "/tokenize", &json!({"content": first}).to_string());
    let bias: serde_json::Map<String, Value> = ids["tokens"].as_array().unwrap().iter().map(|id| (id.to_string(), json!(-100))).collect();
    let (code, biased, _) = post(&s, "/v1/completions", &format!("{{{greedy}, \"max_tokens\": 1, \"logit_bias\": {}}}", Value::Object(bias)));
    assert_eq!(code, 200, "{biased}");
    count(&biased);
    ok_completions += 2;
    assert_ne!(text_of(&biased), first, "a -100 bias on the greedy token did not change it");
    // Seeds: same seed, same text; n = 2 gives two choices.
    let seeded = r#""prompt": "Once", "max_tokens": 8, "temperature": 1.0, "seed": 11, "ignore_eos": true"#;
    let (_, a, _) = post(&s, "/v1/completions", &format!("{{{seeded}}}"));
    let (_, b, _) = post(&s, "/v1/completions", &format!("{{{seeded}}}"));
    let (_, two, _) = post(&s, "/v1/completions", &format!("{{{seeded}, \"n\": 2}}"));
    ok_completions += 3;
    for v in [&a, &b, &two] {
        count(v);
    }
    assert_eq!(text_of(&a), text_of(&b));
    let choices = two["choices"].as_array().unwrap();
    assert_eq!((choices.len(), &choices[1]["index"]), (2, &json!(1)), "{two}");
    assert_eq!(two["usage"]["completion_tokens"], 16);
    // OpenAI's penalties run in the GPU sampler (their distribution: ops::sample's tests).
    let (code, pen, _) = post(&s, "/v1/completions", &format!("{{{seeded}, \"presence_penalty\": 1.5, \"frequency_penalty\": 1.0}}"));
    assert_eq!(code, 200, "{pen}");
    ok_completions += 1;
    count(&pen);

    // Logprobs: the top 5 equal the CPU reference log-softmax (transformers' logits).
    let (prompt, want) = reference_top5();
    let (code, lp, _) = post(&s, "/v1/completions", &format!("{{\"prompt\": {}, \"max_tokens\": 1, \"logprobs\": 5, {PLAIN}}}", json!(prompt)));
    assert_eq!(code, 200, "{lp}");
    ok_completions += 1;
    count(&lp);
    top_logprobs_close_to(&lp, &want, "the reference log-softmax");
    let chosen = lp["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    assert!(chosen <= 0.0 && chosen >= want[4] - 10.0);
    // At temperature 0.7 and top-k 40 they are those of the distribution the draw chose from
    // (after the sampler chain: sampling::processed_probs), not of the raw logits.
    let chain = r#""temperature": 0.7, "top_k": 40, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 5"#;
    let (code, lp, _) = post(&s, "/v1/completions", &format!("{{\"prompt\": {}, \"max_tokens\": 1, \"logprobs\": 5, {chain}}}", json!(prompt)));
    assert_eq!(code, 200, "{lp}");
    ok_completions += 1;
    count(&lp);
    let (_, logits) = reference_last_logits();
    let sp = quill::sampling::SamplingParams { temperature: 0.7, top_k: 40, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, seed: 5, ..Default::default() };
    let mut processed: Vec<f64> = quill::sampling::processed_probs(&logits, &prompt, &sp, 0, 0.0).into_iter().filter(|&p| p > 0.0).map(f64::ln).collect();
    assert_eq!(processed.len(), 40, "top-k 40 keeps 40 ids");
    processed.sort_by(|a, b| b.total_cmp(a));
    let got = top_logprobs_close_to(&lp, &processed, "the processed distribution");
    // Renormalised over 40 ids at 0.7, the top is well above its raw log-softmax.
    assert!(got[0] > want[0] + 1e-3, "{} is the raw log-softmax {}", got[0], want[0]);
    let chosen = lp["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    assert!(chosen >= processed[39] - 1e-4 && chosen <= processed[0] + 1e-4, "the chosen id {chosen} is one top-k kept");

    // Streaming completion: chunks in OpenAI's shape, same text as without streaming, [DONE].
    let (code, body, _) = answer(agent().post(&format!("{}/v1/completions", s.base)).set("Authorization", &format!("Bearer {KEY}")).send_string(&format!(
        "{{{greedy}, \"max_tokens\": 12, \"stream\": true, \"stream_options\": {{\"include_usage\": true}}}}"
    )));
    assert_eq!(code, 200, "{body}");
    ok_completions += 1;
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"].get(0).and_then(|ch| ch["text"].as_str())).collect();
    assert_eq!(streamed, full_text);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let usage = chunks.last().unwrap();
    assert_eq!((usage["choices"].as_array().map(Vec::len), &usage["usage"]["completion_tokens"]), (Some(0), &json!(12)), "{usage}");
    count(usage);

    // Chat, plain and streamed (the fixture template).
    let chat = r#""messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 4, "temperature": 0, "ignore_eos": true"#;
    let (code, c, _) = post(&s, "/v1/chat/completions", &format!("{{{chat}}}"));
    assert_eq!(code, 200, "{c}");
    assert_eq!((&c["object"], &c["choices"][0]["message"]["role"]), (&json!("chat.completion"), &json!("assistant")), "{c}");
    count(&c);
    let (_, body, _) = answer(agent().post(&format!("{}/v1/chat/completions", s.base)).set("Authorization", &format!("Bearer {KEY}")).send_string(&format!("{{{chat}, \"stream\": true}}")));
    let events = sse_data(&body);
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{body}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, c["choices"][0]["message"]["content"].as_str().unwrap());
    generated += 4;

    // Models, tokenize and detokenize, metrics.
    let (code, models) = get(&s, "/v1/models");
    assert!(code == 200 && models.contains("\"llama-tiny\""), "{models}");
    let (_, t, _) = post(&s, "/tokenize", r#"{"content": "The license grants"}"#);
    let (_, d, _) = post(&s, "/detokenize", &json!({"tokens": t["tokens"]}).to_string());
    assert_eq!(d["content"], "The license grants");
    assert_eq!(metric(&s, "quill_requests_total{route=\"/v1/completions\",status=\"200\"}"), ok_completions as f64);
    assert!(metric(&s, "quill_requests_total{route=\"/v1/completions\",status=\"400\"}") >= 10.0);
    assert_eq!(metric(&s, "quill_generated_tokens_total"), generated as f64, "{}", get(&s, "/metrics").1);
    assert!(metric(&s, "quill_time_to_first_token_seconds_count") >= ok_completions as f64);
    assert_eq!(metric(&s, "quill_busy_slots"), 0.0);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn a_full_queue_gets_429_and_a_client_that_leaves_frees_its_slot() {
    let Some(s) = start(&["--api-key", KEY, "--parallel", "1", "--max-queue", "0"]) else { return };
    let long = r#"{"prompt": "Once", "max_tokens": 120, "ignore_eos": true, "stream": true}"#;
    let mut c = raw(&s, "/v1/completions", long);
    read_until(&mut c, "data: {");
    // The only slot is busy and no one may wait.
    let busy = post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#);
    expect_error(&busy, 429, None, "busy");
    assert_eq!(busy.2.as_deref(), Some("1"), "Retry-After");
    assert_eq!(busy.1["error"]["code"], "queue_full");
    // Hang up mid-stream: the slot is free after the step in flight.
    drop(c);
    let t = Instant::now();
    let quick = r#"{"prompt": "hi", "max_tokens": 3, "ignore_eos": true}"#;
    let done = loop {
        let r = post(&s, "/v1/completions", quick);
        if r.0 != 429 || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done.0, 200, "{}", done.1);
    assert_eq!(get(&s, "/health").0, 200);
    let generated = metric(&s, "quill_generated_tokens_total");
    assert!(generated < 120.0, "the abandoned stream ran on: {generated} tokens");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// With a request waiting for the only slot, every submit is one step; a streaming client that
/// hangs up then costs at most the one step in flight (`quill_abandoned_tokens_total` ≤ 1),
/// and the waiting request takes the slot in the next step.
#[test]
fn a_client_that_leaves_hands_its_slot_to_the_waiting_request_within_one_step() {
    let Some(s) = start(&["--api-key", KEY, "--parallel", "1", "--max-queue", "1"]) else { return };
    let long = r#"{"prompt": "Once", "max_tokens": 120, "ignore_eos": true, "stream": true}"#;
    let mut c = raw(&s, "/v1/completions", long);
    read_until(&mut c, "data: {");
    let base = format!("{}/v1/completions", s.base);
    let waiting = std::thread::spawn(move || {
        let r = agent().post(&base).set("Content-Type", "application/json").set("Authorization", &format!("Bearer {KEY}"));
        answer(r.send_string(r#"{"prompt": "hi", "max_tokens": 3, "ignore_eos": true}"#))
    });
    let t = Instant::now();
    while metric(&s, "quill_queue_depth") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the second request never queued: {}", get(&s, "/metrics").1);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    let (code, body, _) = waiting.join().expect("the waiting client");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{body}");
    let text = get(&s, "/metrics").1;
    assert!(text.lines().any(|l| l.starts_with("quill_abandoned_tokens_total ")), "no quill_abandoned_tokens_total in /metrics:\n{text}");
    let abandoned = metric(&s, "quill_abandoned_tokens_total");
    eprintln!("tokens drawn for the client that left: {abandoned}");
    assert!(abandoned <= 1.0, "{abandoned} tokens were drawn for the client that left:\n{}", get(&s, "/metrics").1);
    let generated = metric(&s, "quill_generated_tokens_total");
    assert!(generated < 120.0, "the abandoned stream ran on: {generated} tokens");
    assert_eq!(metric(&s, "quill_busy_slots"), 0.0);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// `--parallel 8 --ctx 128` in a memory budget that holds one slot of 128 but not eight:
/// refused at startup (exit status 1), naming the slots and the bytes they need.
#[test]
fn slots_that_do_not_fit_the_memory_budget_are_refused_at_startup() {
    let Some(ctx) = quill::gpu::context::test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let shape = quill::plan::SessionShape::new(model.config(), quill::generate::DEFAULT_MAX_BATCH);
    let need = |slots: usize| shape.clone().slots(slots).kv_bytes(128) + shape.clone().slots(slots).activation_bytes(128);
    assert!(need(8) > need(1));
    let budget = model.model.weight_bytes() + (need(1) + need(8)) / 2;
    let run = |parallel: &str| {
        Command::new(env!("CARGO_BIN_EXE_quill"))
            .args(["serve", "--model", &fixture("llama-tiny").display().to_string(), "--port", "0", "--ctx", "128", "--parallel", parallel])
            .env(quill::plan::BUDGET_ENV, budget.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quill serve")
    };
    let out = run("8").wait_with_output().expect("quill serve exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("128 positions in each of 8 slots need") && err.contains(&format!("{} bytes", need(8))) && err.contains("--parallel"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn sigterm_under_load_lets_running_requests_finish_and_exits_0() {
    let Some(mut s) = start(&["--api-key", KEY, "--parallel", "2", "--max-queue", "8"]) else { return };
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": true}"#;
    let url = format!("{}/v1/completions", s.base);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || answer(agent().post(&url).set("Authorization", &format!("Bearer {KEY}")).send_string(body)))
        })
        .collect();
    let t = Instant::now();
    while metric(&s, "quill_busy_slots") < 1.0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    for c in clients {
        let (code, text, _) = c.join().unwrap();
        assert_eq!(code, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 24, "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "{}", s.log());
    assert!(TcpStream::connect(&s.addr).is_err(), "still accepting after SIGTERM");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// The real `openai` Python package against a live server (pip install openai).
#[test]
fn the_openai_python_client_works() {
    let ok = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI is set but the openai Python package is missing: run scripts/setup.sh");
        eprintln!("SKIPPING: the openai Python package is missing (pip install openai)");
        return;
    }
    let Some(s) = start(&["--api-key", KEY, "--parallel", "2"]) else { return };
    let (prompt, want) = reference_top5();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .env("QUILL_BASE_URL", format!("{}/v1", s.base))
        .env("QUILL_API_KEY", KEY)
        .env("QUILL_REF_PROMPT", json!(prompt).to_string())
        .env("QUILL_REF_TOP5", json!(want).to_string())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\nserver:\n{}", s.log());
    assert!(text.contains("all openai client checks passed"), "{text}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// scripts/replicas.sh: two replicas behind nginx. A bounded load; one replica is killed
/// midway; every request sent after the kill still succeeds, and both served before it.
#[test]
fn two_replicas_behind_nginx_survive_losing_one() {
    if !std::path::Path::new("/usr/sbin/nginx").exists() && !Command::new("sh").args(["-c", "command -v nginx"]).status().is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI is set but nginx is missing: run scripts/setup.sh");
        eprintln!("SKIPPING: nginx is missing (apt-get install nginx)");
        return;
    }
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    // Three consecutive free ports: nginx on p, replicas on p+1 and p+2.
    let port = (0..50).map(|_| free_port()).find(|&p| p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())).expect("free ports");
    let dir = std::env::temp_dir().join(format!("quill-replicas-test-{}", std::process::id()));
    let root = env!("CARGO_MANIFEST_DIR");
    let mut script = Command::new("bash")
        .arg(format!("{root}/scripts/replicas.sh"))
        .args(["--model", &fixture("llama-tiny").display().to_string(), "--port", &port.to_string(), "--", "--ctx", "64", "--parallel", "1"])
        .env("QUILL_BIN", env!("CARGO_BIN_EXE_quill"))
        .env("QUILL_REPLICAS_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Stops the script (which stops nginx and the replicas) however the test ends.
    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
    let out = script.stdout.take().unwrap();
    let _stop = Stop(script);
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready on"), "replicas.sh said {line:?}");
    let base = format!("http://127.0.0.1:{port}");
    let body = r#"{"prompt": "Once", "max_tokens": 4, "ignore_eos": true}"#;
    let send = || answer(agent().post(&format!("{base}/v1/completions")).set("Content-Type", "application/json").send_string(body));
    let served = |i: u16| {
        let (_, text, _) = answer(agent().get(&format!("http://127.0.0.1:{}/metrics", port + i)).call());
        text.lines().filter(|l| l.starts_with("quill_requests_total{route=\"/v1/completions\",status=\"200\"}")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>()
    };
    // Two clients at a time, so least_conn uses both replicas.
    let burst = |k: usize| -> Vec<u16> {
        let hs: Vec<_> = (0..k).map(|_| std::thread::spawn(move || answer(agent().post(&format!("http://127.0.0.1:{port}/v1/completions")).send_string(body)).0)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for _ in 0..3 {
        assert_eq!(burst(2), vec![200, 200]);
    }
    let (one, two) = (served(1), served(2));
    assert!(one > 0.0 && two > 0.0, "both replicas should have served: {one} and {two}");
    let pid = std::fs::read_to_string(dir.join("replica1.pid")).unwrap();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success());
    for i in 0..8 {
        let (code, text, _) = send();
        assert_eq!(code, 200, "request {i} after the kill: {text}");
    }
    assert!(burst(2) == vec![200, 200]);
    assert!(served(2) >= two + 10.0, "the survivor served the rest");
}

/// `Session::restart` (the server's prompt cache): a new prompt sharing a prefix with what a
/// session already holds reuses those KV rows, and its logits and seeded draws are those of a
/// fresh session.
#[test]
fn session_restart_reuses_the_prefix_and_matches_a_fresh_session() {
    let Some(ctx) = quill::gpu::context::test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let r = json("llama-tiny/reference.json");
    let prompt = ids(&r["input_ids"]);
    let s = quill::sampling::SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
    let mut used = quill::generate::Session::new(ctx, &model, 64).unwrap();
    used.push(&prompt[..20]).unwrap();
    for _ in 0..5 {
        used.next_token(&s).unwrap();
    }
    // Shares the first 20 ids with the session, then differs.
    let reused = used.restart(&prompt).unwrap();
    assert_eq!(reused, 20);
    let mut fresh = quill::generate::Session::new(ctx, &model, 64).unwrap();
    fresh.push(&prompt).unwrap();
    let (a, b) = (used.logits_last().unwrap(), fresh.logits_last().unwrap());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1e-4 + 1e-4 * y.abs())).fold(0f32, f32::max);
    assert!(worst <= 1.0, "restarted logits differ from a fresh session's (worst error {worst} tolerances, atol 1e-4 + rtol 1e-4)");
    // Same prompt again: all but the last id reused; same seed, same draws as a fresh session.
    assert_eq!(used.restart(&prompt).unwrap(), prompt.len() - 1);
    let mut fresh = quill::generate::Session::new(ctx, &model, 64).unwrap();
    fresh.push(&prompt).unwrap();
    let draws = |sess: &mut quill::generate::Session| (0..6).map(|_| sess.next_token(&s).unwrap()).collect::<Vec<_>>();
    assert_eq!(draws(&mut used), draws(&mut fresh));
}

/// The studio page at / (embedded, so the server needs nothing beside it) and the story
/// folder of `--stories DIR`: a save replaces the whole file (the previous one kept as ~) in
/// quill's story format (what `quill write --story` reads; the page's older format is moved
/// into it), names stay inside the folder, and a body that is not a story changes nothing.
#[test]
fn serves_the_studio_page_and_keeps_stories_in_their_folder() {
    use quill::story::Story;
    let dir = std::env::temp_dir().join(format!("quill-stories-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(s) = start(&["--stories", &dir.display().to_string()]) else { return };
    let (code, page) = get(&s, "/");
    assert!(code == 200 && page.contains(r#"id="story""#) && page.contains("app.js"), "GET /: {code} {page}");
    for file in ["/app.js", "/context.js", "/style.css"] {
        assert_eq!(get(&s, file).0, 200, "GET {file}");
    }
    let put = |name: &str, body: &str| answer(agent().put(&format!("{}/stories/{name}", s.base)).send_string(body));
    let file = |name: &str| Story::from_json(name, &std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
    let one = r#"{"format": "quill-story", "version": 1, "text": "Once upon a time", "memory": "M"}"#;
    assert_eq!(put("my%20story", one).0, 200);
    assert_eq!(file("my story.json"), Story { memory: "M".into(), ..Story::new("Once upon a time") });
    let two = r#"{"format": "quill-story", "version": 1, "text": "Once upon a time, a lamp", "studio": {"mode": "story"}}"#;
    assert_eq!(put("my%20story", two).0, 200);
    let saved = Story { studio: Some(json!({"mode": "story"})), ..Story::new("Once upon a time, a lamp") };
    assert_eq!(file("my story.json"), saved);
    assert_eq!(file("my story.json~").memory, "M", "the previous version is kept");
    let (code, back) = get(&s, "/stories/my%20story");
    assert_eq!((code, Story::from_json("GET", &back).unwrap()), (200, saved.clone()));
    let (code, list) = get(&s, "/stories");
    assert_eq!((code, serde_json::from_str::<Value>(&list).unwrap()), (200, json!({"stories": ["my story"]})));
    let bad_field = r#"{"format": "quill-story", "version": 1, "text": "", "color": 3}"#;
    for (name, body, why) in [("..%2Fescape", one, "story name"), (".hidden", one, "story name"), ("my%20story", "[1, 2]", "JSON object"), ("my%20story", "{\"text\": ", "not JSON"), ("my%20story", bad_field, "color")] {
        let (code, text, _) = put(name, body);
        assert!(code == 400 && text.contains(why), "PUT /stories/{name} {body}: {code} {text}");
    }
    assert_eq!(file("my story.json"), saved, "refused saves change nothing");
    assert!(!dir.parent().unwrap().join("escape.json").exists());
    // A story the page saved in its older format opens in this one.
    std::fs::write(dir.join("old.json"), include_str!("fixtures/studio-story-v1.json")).unwrap();
    let (code, old) = get(&s, "/stories/old");
    let old = Story::from_json("GET /stories/old", &old).unwrap();
    assert!(code == 200 && old.text.starts_with("The keeper climbed") && old.studio.as_ref().is_some_and(|st| st["pieces"].is_array()), "{old:?}");
    assert_eq!(get(&s, "/stories/nothing").0, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// llama-server's sampler fields: each is accepted and changes the text where it acts (DRY on
/// a repeating prompt at temperature 0; the others against the same seeded plain draw), and a
/// bad value is a 400 naming the field.
#[test]
fn accepts_the_writers_samplers_and_refuses_bad_values() {
    let Some(s) = start(&["--api-key", KEY]) else { return };
    let text = |extra: &str, what: &str| {
        let (code, v, _) = post(&s, "/v1/completions", &format!("{{{what}, \"max_tokens\": 16, \"ignore_eos\": true{extra}}}"));
        assert_eq!(code, 200, "{extra}: {v}");
        text_of(&v)
    };
    // DRY at temperature 0: a prompt that repeats itself, and no breakers. The id that followed
    // its last token before gets a logit bias, so that it is the likeliest next token without
    // DRY (in the set the chain keeps, over which the logprobs are normalized; on a random
    // model it may otherwise lie outside it, where DRY's cut changes nothing they show).
    let prompt = "the license grants the license grants the license grants the license";
    let (code, toks, _) = post(&s, "/tokenize", &json!({"content": prompt}).to_string());
    assert_eq!(code, 200, "{toks}");
    let ids: Vec<u64> = toks["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let last = *ids.last().unwrap();
    let follower = ids[ids.iter().position(|&t| t == last).unwrap() + 1];
    let repeat = format!(r#""prompt": {}, "temperature": 0, "dry_sequence_breakers": [], "logit_bias": {{"{follower}": 8}}"#, json!(prompt));
    // The next token's distribution (logprobs: after the penalties and DRY) changes: the
    // tokens that followed "license" before lose 4 · 2^(L - 1), the follower first among them.
    let next = |extra: &str| {
        let (code, v, _) = post(&s, "/v1/completions", &format!("{{{repeat}, \"max_tokens\": 1, \"logprobs\": 5{extra}}}"));
        assert_eq!(code, 200, "{extra}: {v}");
        v["choices"][0]["logprobs"]["top_logprobs"][0].clone()
    };
    let plain_next = next("");
    assert!(plain_next.is_object(), "{plain_next}");
    let dry_next = next(r#", "dry_multiplier": 4.0, "dry_base": 2.0, "dry_allowed_length": 1, "dry_penalty_last_n": -1"#);
    // Not a rounding difference: an alternative of the plain distribution is gone.
    let (d, p) = (dry_next.as_object().unwrap(), plain_next.as_object().unwrap());
    assert!(p.keys().any(|k| !d.contains_key(k)), "DRY did not change the distribution after a repeat: {dry_next} vs {plain_next}");
    // Equal up to f32 rounding: the second request reuses the first one's cached prefix, so its
    // last position is computed in another pass than the first's whole prompt.
    let off = next(r#", "dry_multiplier": 4.0, "dry_allowed_length": 1, "dry_penalty_last_n": 0"#);
    let (a, b) = (off.as_object().unwrap(), plain_next.as_object().unwrap());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "dry_penalty_last_n 0 is DRY off: {off} vs {plain_next}");
    for (k, v) in a {
        let (x, y) = (v.as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5, "dry_penalty_last_n 0 is DRY off: {k} {x} vs {y}");
    }
    text(r#", "dry_multiplier": 4.0, "dry_allowed_length": 1"#, &repeat);
    // The default breakers (llama.cpp's) are taken when none are given.
    text(r#", "dry_multiplier": 0.8"#, r#""prompt": "Once: \"a\"", "temperature": 0"#);
    // The others, against the same seeded draw without them (temperature 1.5 on a random
    // model: nearly flat, so each cut changes which ids the random numbers land on).
    let seeded = r#""prompt": "The license grants", "temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 5"#;
    let plain = text("", seeded);
    assert_eq!(text(r#", "mirostat": 0, "top_n_sigma": -1, "banned_strings": []"#, seeded), plain, "the off values change nothing");
    for extra in [
        r#", "xtc_probability": 1.0, "xtc_threshold": 0.0001"#,
        r#", "typical_p": 0.2"#,
        r#", "top_n_sigma": 0.5"#,
        r#", "dynatemp_range": 1.4, "dynatemp_exponent": 0.5"#,
        r#", "mirostat": 2, "mirostat_tau": 1.0, "mirostat_eta": 0.2"#,
    ] {
        assert_ne!(text(extra, seeded), plain, "{extra} did not change the seeded text");
    }
    // Chat takes them too.
    let (code, c, _) = post(&s, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "dry_multiplier": 1.0, "xtc_probability": 0.5, "typical_p": 0.9, "mirostat": 2}"#);
    assert_eq!(code, 200, "{c}");

    let bad = |extra: &str, field: &str, needle: &str| expect_error(&post(&s, "/v1/completions", &format!("{{\"prompt\": \"hi\"{extra}}}")), 400, Some(field), needle);
    bad(r#", "dry_multiplier": -1"#, "dry_multiplier", ">= 0");
    bad(r#", "dry_multiplier": 1, "dry_base": 0.5"#, "dry_base", ">= 1");
    bad(r#", "dry_allowed_length": -2"#, "dry_allowed_length", "dry_allowed_length");
    bad(r#", "dry_penalty_last_n": -5"#, "dry_penalty_last_n", "-1");
    bad(r#", "dry_multiplier": 1, "dry_sequence_breakers": [""]"#, "dry_sequence_breakers", "1 to 64 bytes");
    bad(r#", "dry_multiplier": 1, "dry_sequence_breakers": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]"#, "dry_sequence_breakers", "at most 16");
    bad(r#", "dry_sequence_breakers": "\n""#, "dry_sequence_breakers", "dry_sequence_breakers");
    bad(r#", "xtc_threshold": 1.5"#, "xtc_threshold", "[0, 1]");
    bad(r#", "xtc_probability": -0.1"#, "xtc_probability", "[0, 1]");
    bad(r#", "typical_p": 0"#, "typical_p", "(0, 1]");
    bad(r#", "top_n_sigma": -2"#, "top_n_sigma", ">= 0");
    bad(r#", "dynatemp_range": -1"#, "dynatemp_range", ">= 0");
    bad(r#", "dynatemp_exponent": 0"#, "dynatemp_exponent", "> 0");
    bad(r#", "mirostat": 1"#, "mirostat", "not supported");
    bad(r#", "mirostat": 3"#, "mirostat", "0 (off) or 2");
    bad(r#", "mirostat": 2, "mirostat_tau": 0"#, "mirostat_tau", "> 0");
    bad(r#", "mirostat_eta": -1"#, "mirostat_eta", ">= 0");
    bad(r#", "banned_strings": ["slop"]"#, "banned_strings", "cannot take text back");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
