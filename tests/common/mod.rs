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
