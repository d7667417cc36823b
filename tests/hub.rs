//! `--model org/name` against a local HTTP server on 127.0.0.1 that serves
//! tests/fixtures/llama-tiny in the hub's URL layout (/{org}/{name}/resolve/main/{file}),
//! then offline from the Hugging Face cache it filled.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use common::*;

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves the fixture until the process ends; returns the endpoint URL.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request).unwrap();
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = path.strip_prefix("/test-org/llama-tiny/resolve/main/").filter(|f| !f.contains('/') && !f.starts_with("reference"));
            match file.and_then(|f| std::fs::read(fixture(&format!("llama-tiny/{f}"))).ok()) {
                Some(body) => {
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Repo-Commit: {REVISION}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
                    stream.write_all(&body).unwrap();
                }
                None => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap(),
            }
        }
    });
    format!("http://{addr}")
}

fn quill(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quill"));
    c.args(args).env_remove("HF_HUB_OFFLINE").env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn fetches_into_the_hf_cache_then_runs_offline() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let home = std::env::temp_dir().join(format!("quill-hf-home-{}", std::process::id()));
    std::fs::remove_dir_all(&home).ok();
    let home_s = home.to_str().unwrap();
    let endpoint = serve();
    let text = json("perplexity.json")["text"].as_str().unwrap().to_string();
    let want = json("perplexity.json")["llama-tiny"]["mean_nll"].as_f64().unwrap();
    let nll = |o: &Output| -> f64 {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["mean_nll"].as_f64().unwrap()
    };

    let o = quill(&["perplexity", "--json", "--model", "test-org/llama-tiny", &text], &[("HF_HOME", home_s), ("HF_ENDPOINT", &endpoint)]);
    assert!((nll(&o) - want).abs() < 1e-3);
    let snap = home.join("hub/models--test-org--llama-tiny/snapshots").join(REVISION);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(snap.join(f).is_file(), "{f} not in {}", snap.display());
    }
    assert_eq!(std::fs::read_to_string(home.join("hub/models--test-org--llama-tiny/refs/main")).unwrap(), REVISION);

    // Offline, and with an endpoint that answers nothing: the cache serves.
    let o = quill(&["perplexity", "--json", "--model", "test-org/llama-tiny", &text], &[("HF_HOME", home_s), ("HF_HUB_OFFLINE", "1")]);
    assert!((nll(&o) - want).abs() < 1e-3);
    let o = quill(&["info", "--model", "test-org/llama-tiny"], &[("HF_HOME", home_s), ("HF_ENDPOINT", "https://127.0.0.1:1")]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("architecture: llama"), "{}", String::from_utf8_lossy(&o.stderr));

    // Not cached: clear errors, no panic.
    for (env, needle) in [
        (vec![("HF_HOME", home_s), ("HF_HUB_OFFLINE", "1")], "HF_HUB_OFFLINE"),
        // An https endpoint that refuses connections: the error names the URL it tried.
        (vec![("HF_HOME", home_s), ("HF_ENDPOINT", "https://127.0.0.1:1")], "https://127.0.0.1:1/test-org/other-model"),
        (vec![("HF_HOME", home_s), ("HF_ENDPOINT", endpoint.as_str())], "no config.json"),
    ] {
        let o = quill(&["info", "--model", "test-org/other-model"], &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("test-org/other-model") && err.contains(needle) && !err.contains("panicked"), "{needle}: {err}");
    }
    std::fs::remove_dir_all(&home).ok();
}

// --- Issue 15 item 4: a hostile mirror. Each case is one path on a server that misbehaves;
// quill must give up with a clear error, within 10 s and 1 GB (tests/common/limits.rs). ---

#[path = "common/limits.rs"]
mod limits;

/// How the hostile server answers `/{mode}/m/resolve/main/{file}`.
fn hostile_reply(stream: &mut std::net::TcpStream, mode: &str, file: &str) -> std::io::Result<()> {
    let ok = "HTTP/1.1 200 OK\r\nConnection: close\r\n";
    match (mode, file) {
        // No length, and a body that never ends.
        ("endless", _) => {
            write!(stream, "{ok}\r\n")?;
            let chunk = vec![b' '; 1 << 16];
            loop {
                stream.write_all(&chunk)?;
            }
        }
        // A length no config.json has.
        ("huge", _) => write!(stream, "{ok}Content-Length: 1000000000000\r\n\r\n{{"),
        // One byte, then one every 2 s (the test's timeout is 1 s; the real one 15 s, for 20 s).
        ("trickle", _) => drip(stream, 100, std::time::Duration::from_secs(2)),
        // A byte every 100 ms: every read succeeds, the download never gets anywhere.
        ("drip", _) => drip(stream, 100_000, std::time::Duration::from_millis(100)),
        // A real config, an index saying the weights are 1000 bytes, and an endless shard.
        ("bigshard", "config.json") => {
            let body = std::fs::read(fixture("llama-tiny/config.json"))?;
            write!(stream, "{ok}Content-Length: {}\r\n\r\n", body.len())?;
            stream.write_all(&body)
        }
        ("bigshard", "model.safetensors.index.json") => {
            let body = r#"{"metadata": {"total_size": 1000}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}"#;
            write!(stream, "{ok}Content-Length: {}\r\n\r\n{body}", body.len())
        }
        ("bigshard", "model-00001-of-00001.safetensors") => hostile_reply(stream, "endless", file),
        _ => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Announces `len` bytes, then sends one every `every`, forever.
fn drip(stream: &mut std::net::TcpStream, len: usize, every: std::time::Duration) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n")?;
    loop {
        stream.write_all(b" ")?;
        std::thread::sleep(every);
    }
}

/// A server on 127.0.0.1 answering every connection in its own thread; returns the endpoint.
fn serve_hostile() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                if let [mode, "m", "resolve", "main", file] = parts[..] {
                    let _ = hostile_reply(&mut stream, mode, file);
                }
            });
        }
    });
    format!("http://{addr}")
}

fn hostile_download(mode: &str, needles: &[&str]) {
    let home = std::env::temp_dir().join(format!("quill-hf-hostile-{}-{mode}", std::process::id()));
    std::fs::remove_dir_all(&home).ok();
    let endpoint = serve_hostile();
    let repo = format!("{mode}/m");
    let o = limits::Limited::quill(&["write", "--model", &repo, "hello"])
        .env("HF_HOME", home.to_str().unwrap())
        .env("HF_ENDPOINT", &endpoint)
        .env("QUILL_HUB_TIMEOUT", "1")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .run();
    o.clean_error(mode, needles);
    // Nothing half-downloaded is left in the cache.
    let repo_dir = home.join(format!("hub/models--{mode}--m"));
    let left: Vec<_> = std::fs::read_dir(&repo_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{mode}: left in {}: {left:?}", repo_dir.display());
    std::fs::remove_dir_all(&home).ok();
}

#[test]
fn item4_hub_endless_config_json_is_capped() {
    hostile_download("endless", &["endless/m/resolve/main/config.json", "more than 8388608 bytes"]);
}

#[test]
fn item4_hub_config_json_announcing_a_terabyte_is_refused_before_reading() {
    hostile_download("huge", &["config.json", "announces 1000000000000 bytes"]);
}

#[test]
fn item4_hub_server_sending_a_byte_every_2_s_times_out_after_1_s() {
    hostile_download("trickle", &["trickle/m/resolve/main/config.json", "after 1 bytes", "timeout 1 s"]);
}

#[test]
fn item4_hub_server_dripping_bytes_is_a_stalled_download() {
    hostile_download("drip", &["drip/m/resolve/main/config.json", "stalled"]);
}

#[test]
fn item4_hub_shard_beyond_the_index_total_size_is_capped() {
    hostile_download("bigshard", &["model-00001-of-00001.safetensors", "more than 16778216 bytes"]);
}
