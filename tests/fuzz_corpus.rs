//! Replays the fuzz corpora (fuzz/corpus/<target>/, seeds from tests/fixtures by
//! fuzz/make-seeds.py) and every crash a campaign found (fuzz/regressions/<target>/) through
//! the fuzz targets' own code (fuzz/src/targets.rs), on stable Rust and without AFL: this is
//! the CI smoke of the fuzzing (scripts/fuzz-smoke.sh). Each input must finish without a
//! panic, well within the time limit.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest one input may take (a hang found by AFL is a bug like a crash).
const PER_INPUT: Duration = Duration::from_secs(2);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(target)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}: run fuzz/make-seeds.py");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let start = Instant::now();
        if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("{target}: {} panics: {msg}", f.display());
        }
        assert!(start.elapsed() < PER_INPUT, "{target}: {} took {:?}", f.display(), start.elapsed());
    }
}

/// Every target's corpus and regressions (one test, so a new target is one line).
#[test]
fn fuzz_corpora_and_regressions_replay_without_panics() {
    let targets: [(&str, fn(&[u8])); 6] = [
        ("gguf", targets::gguf),
        ("safetensors", targets::safetensors),
        ("tokenizer_json", targets::tokenizer_json),
        ("stream_decoder", targets::stream_decoder),
        ("openai_request", targets::openai_request),
        ("chat_template", targets::chat_template),
    ];
    for (name, run) in targets {
        replay(name, run);
    }
}
