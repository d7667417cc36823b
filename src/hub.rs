//! `--model org/name`: a model directory from the Hugging Face hub, kept in the hub's standard
//! cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) as
//! `models--org--name/snapshots/<revision>/` with `refs/main` naming the revision, so other
//! tools' downloads are found and ours are found by them (files are stored in the snapshot
//! directly, not as links into `blobs/`).
//!
//! The endpoint is $HF_ENDPOINT (default https://huggingface.co) in the hub's URL layout,
//! `{endpoint}/{org}/{name}/resolve/main/{file}`, fetched over https (rustls) or http (a local
//! mirror). A repository already in the cache is used as it is; with HF_HUB_OFFLINE=1 only
//! the cache is used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Files of a model directory quill reads; the first is required.
const FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// Is `s` a hub repository id (`org/name`) rather than a path?
pub fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && !Path::new(s).exists()
}

pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| crate::files::home_dir().join(".cache").join("huggingface").join("hub"))
}

fn repo_dir(repo: &str) -> PathBuf {
    cache_dir().join(format!("models--{}", repo.replace('/', "--")))
}

/// The cached snapshot `refs/main` names, when it holds a config.json.
fn cached(repo: &str) -> Option<PathBuf> {
    let dir = repo_dir(repo);
    let rev = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let snap = dir.join("snapshots").join(rev.trim());
    snap.join("config.json").is_file().then_some(snap)
}

/// The local directory of `repo`: the cached snapshot, or a fresh download into the cache.
pub fn model_dir(repo: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if offline {
        return cached(repo).ok_or_else(|| Error::arg("--model", format!("{repo} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set", cache_dir().display())));
    }
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into());
    let endpoint = endpoint.trim_end_matches('/');
    if let Some(snap) = cached(repo) {
        return Ok(snap);
    }
    download(endpoint, repo)
}

fn download(endpoint: &str, repo: &str) -> Result<PathBuf> {
    let url = |file: &str| format!("{endpoint}/{repo}/resolve/main/{file}");
    let config = get(&url("config.json"))?;
    let Some((config, revision)) = config else {
        return Err(Error::arg("--model", format!("{repo}: no config.json at {} (not a model repository, or a private one)", url("config.json"))));
    };
    let revision = revision.filter(|r| r.chars().all(|c| c.is_ascii_alphanumeric())).unwrap_or_else(|| "main".into());
    let dir = repo_dir(repo);
    let snap = dir.join("snapshots").join(&revision);
    let tmp = dir.join(format!("incomplete-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // A refused or failed download leaves nothing behind (after the rename below, nothing is
    // left at `tmp` to remove).
    let _cleanup = RemoveOnDrop(tmp.clone());
    let save = |name: &str, bytes: &[u8]| std::fs::write(tmp.join(name), bytes).map_err(|e| Error::io(tmp.join(name), e));
    save("config.json", &config)?;
    for f in &FILES[1..] {
        if let Some((bytes, _)) = get(&url(f))? {
            save(f, &bytes)?;
        }
    }
    let (shards, cap) = match get(&url("model.safetensors.index.json"))? {
        Some((index, _)) => {
            save("model.safetensors.index.json", &index)?;
            let label = url("model.safetensors.index.json");
            let v: serde_json::Value = serde_json::from_slice(&index).map_err(|e| Error::format(&label, e.to_string()))?;
            (crate::files::shard_names(&index, &label)?, shard_cap(Some(&v)))
        }
        None => (vec!["model.safetensors".to_string()], shard_cap(None)),
    };
    for shard in &shards {
        if !get_to_file(&url(shard), &tmp.join(shard), cap)? {
            return Err(Error::arg("--model", format!("{repo}: {} is missing", url(shard))));
        }
    }
    // Move the complete download into place, then point refs/main at it.
    std::fs::create_dir_all(dir.join("snapshots")).map_err(|e| Error::io(dir.join("snapshots"), e))?;
    std::fs::remove_dir_all(&snap).ok();
    std::fs::rename(&tmp, &snap).map_err(|e| Error::io(&snap, e))?;
    std::fs::create_dir_all(dir.join("refs")).map_err(|e| Error::io(dir.join("refs"), e))?;
    std::fs::write(dir.join("refs").join("main"), &revision).map_err(|e| Error::io(dir.join("refs/main"), e))?;
    Ok(snap)
}

/// The connect and read timeout, and the window over which a download must make progress:
/// $QUILL_HUB_TIMEOUT seconds, else 15 (a server that sends a byte every 20 s times out).
fn timeout() -> Duration {
    let secs = std::env::var("QUILL_HUB_TIMEOUT").ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| s.is_finite() && *s > 0.0);
    Duration::from_secs_f64(secs.unwrap_or(15.0).min(3600.0))
}

/// Least bytes a download must receive in each `timeout()` window (or the rest of the file):
/// a trickling server is a stalled one.
const MIN_BYTES_PER_WINDOW: u64 = 16 << 10;

/// Most bytes of one weight file when the index does not say: 64 GiB.
const SHARD_CAP: u64 = 64 << 30;
/// The index's `metadata.total_size` counts tensor data only; a shard adds its JSON header.
const SHARD_HEADER_ALLOWANCE: u64 = 16 << 20;

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout())
        .timeout_read(timeout())
        .redirects(5)
        .user_agent(concat!("quill/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response body: reader, X-Repo-Commit, Content-Length.
type Body = (Box<dyn Read + Send + Sync>, Option<String>, Option<u64>);

/// GET `url` (http or https, following redirects): Some(body), None on 404.
fn open(url: &str) -> Result<Option<Body>> {
    let fail = |msg: String| Error::arg("--model", format!("fetching {url}: {msg}"));
    match agent().get(url).call() {
        Ok(resp) => {
            let commit = resp.header("x-repo-commit").map(str::to_string);
            let len = resp.header("content-length").and_then(|l| l.trim().parse::<u64>().ok());
            Ok(Some((resp.into_reader(), commit, len)))
        }
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(fail(format!("HTTP {code}: the repository is gated or private (quill sends no token)"))),
        Err(ureq::Error::Status(code, _)) => Err(fail(format!("HTTP {code}"))),
        // The transport error's own text repeats the URL.
        Err(ureq::Error::Transport(t)) => Err(fail(match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        })),
    }
}

/// Copies `body` into `sink`, refusing more than `cap` bytes and a server that stalls (fewer
/// than MIN_BYTES_PER_WINDOW in a `timeout()` window); with `progress`, reports on stderr.
fn copy_guarded(url: &str, body: Body, cap: u64, sink: &mut dyn std::io::Write, progress: bool) -> Result<u64> {
    let fail = |msg: String| Error::arg("--model", format!("fetching {url}: {msg}"));
    let (mut reader, _, len) = body;
    if let Some(len) = len.filter(|&l| l > cap) {
        return Err(fail(format!("the server announces {len} bytes, more than the {cap} quill accepts for this file")));
    }
    let window = timeout();
    let (mut total, mut window_bytes, mut window_start, mut last_report) = (0u64, 0u64, Instant::now(), Instant::now());
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf).map_err(|e| fail(format!("{e} after {total} bytes (timeout {} s)", window.as_secs_f64())))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > cap {
            return Err(fail(format!("more than {cap} bytes, the most quill accepts for this file; the server is broken or hostile")));
        }
        sink.write_all(&buf[..n]).map_err(|e| fail(format!("writing: {e}")))?;
        window_bytes += n as u64;
        if window_start.elapsed() >= window {
            let rest = len.map_or(MIN_BYTES_PER_WINDOW, |l| l.saturating_sub(total).min(MIN_BYTES_PER_WINDOW));
            if window_bytes < rest {
                return Err(fail(format!("stalled: {window_bytes} bytes in {:.0} s (after {total} bytes); giving up", window.as_secs_f64())));
            }
            (window_bytes, window_start) = (0, Instant::now());
        }
        if progress && last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            let of = len.map(|l| format!(" of {} MB", l >> 20)).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "downloading {url}: {} MB{of}", total >> 20);
        }
    }
}

/// GET a small file into memory (at most `files::small_file_cap` bytes): Some((body, X-Repo-Commit)), None on 404.
fn get(url: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
    let Some(body) = open(url)? else { return Ok(None) };
    let commit = body.1.clone();
    let file = url.rsplit('/').next().unwrap_or_default();
    let mut bytes = Vec::new();
    copy_guarded(url, body, crate::files::small_file_cap(file), &mut bytes, false)?;
    Ok(Some((bytes, commit)))
}

/// GET a (possibly large) file of at most `cap` bytes straight into `dest`; false on 404.
fn get_to_file(url: &str, dest: &Path, cap: u64) -> Result<bool> {
    let Some(body) = open(url)? else { return Ok(false) };
    let mut file = std::io::BufWriter::new(std::fs::File::create(dest).map_err(|e| Error::io(dest, e))?);
    copy_guarded(url, body, cap, &mut file, true)?;
    file.flush().map_err(|e| Error::io(dest, e))?;
    Ok(true)
}

/// The most bytes one shard may have: the index's total size (plus a header), else SHARD_CAP.
fn shard_cap(index: Option<&serde_json::Value>) -> u64 {
    let total = index.and_then(|v| v.pointer("/metadata/total_size")).and_then(|t| t.as_u64());
    total.map_or(SHARD_CAP, |t| t.saturating_add(SHARD_HEADER_ALLOWANCE).min(SHARD_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M"));
        assert!(!is_repo_id("model.gguf"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("/abs"));
    }

}
