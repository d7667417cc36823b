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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        .unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cache").join("huggingface").join("hub"))
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
    let save = |name: &str, bytes: &[u8]| std::fs::write(tmp.join(name), bytes).map_err(|e| Error::io(tmp.join(name), e));
    save("config.json", &config)?;
    for f in &FILES[1..] {
        if let Some((bytes, _)) = get(&url(f))? {
            save(f, &bytes)?;
        }
    }
    let shards = match get(&url("model.safetensors.index.json"))? {
        Some((index, _)) => {
            save("model.safetensors.index.json", &index)?;
            let v: serde_json::Value = serde_json::from_slice(&index).map_err(|e| Error::format(url("model.safetensors.index.json"), e.to_string()))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::format(url("model.safetensors.index.json"), "no weight_map object"))?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
            files.sort();
            files.dedup();
            files
        }
        None => vec!["model.safetensors".to_string()],
    };
    for shard in &shards {
        if shard.contains('/') || shard.contains("..") {
            return Err(Error::format(url("model.safetensors.index.json"), format!("shard name '{shard}' leaves the directory")));
        }
        if !get_to_file(&url(shard), &tmp.join(shard))? {
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

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .redirects(5)
        .user_agent(concat!("quill/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// GET `url` (http or https, following redirects): Some((reader, X-Repo-Commit)), None on 404.
fn open(url: &str) -> Result<Option<(Box<dyn Read + Send + Sync>, Option<String>)>> {
    let fail = |msg: String| Error::arg("--model", format!("fetching {url}: {msg}"));
    match agent().get(url).call() {
        Ok(resp) => {
            let commit = resp.header("x-repo-commit").map(str::to_string);
            Ok(Some((resp.into_reader(), commit)))
        }
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(fail(format!("HTTP {code}: the repository is gated or private (quill sends no token)"))),
        Err(ureq::Error::Status(code, _)) => Err(fail(format!("HTTP {code}"))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// GET a small file into memory: Some((body, X-Repo-Commit)), None on 404.
fn get(url: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
    let Some((mut reader, commit)) = open(url)? else { return Ok(None) };
    let mut body = Vec::new();
    reader.read_to_end(&mut body).map_err(|e| Error::arg("--model", format!("fetching {url}: {e}")))?;
    Ok(Some((body, commit)))
}

/// GET a (possibly large) file straight into `dest`; false on 404.
fn get_to_file(url: &str, dest: &Path) -> Result<bool> {
    let Some((mut reader, _)) = open(url)? else { return Ok(false) };
    let mut file = std::fs::File::create(dest).map_err(|e| Error::io(dest, e))?;
    std::io::copy(&mut reader, &mut file).map_err(|e| Error::arg("--model", format!("fetching {url}: {e}")))?;
    Ok(true)
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
