//! Shared by the integration tests: fixture paths, the default model, JSON helpers.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

pub fn json(path: &str) -> serde_json::Value {
    let p = fixture(path);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The default SmolLM2 GGUF, or None (a skip) when it is absent and CI is unset.
pub fn smollm2_path() -> Option<PathBuf> {
    let p = quill::files::default_model_path();
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {} is missing: run scripts/fetch-model.sh", p.display());
    }
    eprintln!("SKIPPING: {} is missing (run scripts/fetch-model.sh)", p.display());
    None
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn argmax(row: &[f32]) -> u32 {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32
}

pub fn no_progress(_: u64, _: u64) {}

// --- GGUF files built in memory (metadata only), for tokenizer and template tests. ---

pub fn gguf_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn string_array(items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for s in items {
        v.extend(gguf_string(s));
    }
    v
}

/// A GGUF v3 file with metadata only: (key, value type, payload).
pub fn tiny_gguf(kv: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (key, ty, payload) in kv {
        b.extend(gguf_string(key));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(payload);
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b
}
