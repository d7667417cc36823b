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
