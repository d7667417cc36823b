//! Native peak memory while loading a model at a real size: the loader reads the memory-mapped
//! GGUF a tensor at a time (the browser's path), hands each tensor's mapped pages back and
//! settles wgpu's staging copies as it goes, so a 1.07 G-weight Q4_0 model (663 MB) is held
//! about once (on lavapipe the "GPU" buffers are this process's memory too), not two or three
//! times. Measured as the peak resident set (VmHWM) of a child process that only loads.
//!
//! The model is the synthetic 1B of `scripts/make-synthetic-gguf.py` (random weights,
//! SmolLM2's tokenizer), written to target/synthetic/ when missing (needs `pip install gguf
//! numpy` and the fetched SmolLM2); without them the test skips, unless CI is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "QUILL_LOAD_MEMORY_CHILD";

fn synthetic_1b() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("target/synthetic/llama-1b-q4_0.gguf");
    if path.is_file() {
        return Some(path);
    }
    let made = Command::new("python3")
        .arg(root.join("scripts/make-synthetic-gguf.py"))
        .args(["--shape", "1b", "--type", "q4_0", "--out"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {} could not be made (pip install gguf numpy; scripts/fetch-model.sh)", path.display());
    }
    eprintln!("SKIPPING: {} could not be made (pip install gguf numpy; scripts/fetch-model.sh)", path.display());
    None
}

/// This process's peak resident set, in bytes, from /proc/self/status.
fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn loading_the_1b_model_holds_it_about_once() {
    if let Some(path) = std::env::var_os(CHILD) {
        // The child: load, report the peak, nothing else.
        let ctx = quill::gpu::Context::new_blocking().expect("an adapter");
        let model = quill::files::load_model(&ctx, Path::new(&path), &mut common::no_progress).unwrap();
        println!("VMHWM={} WEIGHTS={}", vm_hwm(), model.model.weight_bytes());
        return;
    }
    if quill::gpu::Context::new_blocking().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but there is no adapter");
        return eprintln!("SKIPPING: no adapter");
    }
    let Some(path) = synthetic_1b() else { return };
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["loading_the_1b_model_holds_it_about_once", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the loading child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let field = |k: &str| -> u64 {
        let at = stdout.find(k).unwrap_or_else(|| panic!("no {k} in the child's output:\n{stdout}")) + k.len();
        stdout[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (peak, weights) = (field("VMHWM="), field("WEIGHTS="));
    let ratio = peak as f64 / file_bytes as f64;
    eprintln!("loading {}: peak RSS {:.1} MB for a {:.1} MB file ({ratio:.2}x; weights {:.1} MB on the GPU)", path.display(), peak as f64 / 1e6, file_bytes as f64 / 1e6, weights as f64 / 1e6);
    assert!(weights as f64 > 0.9 * file_bytes as f64, "the weights ({weights} bytes) are not the file's ({file_bytes})");
    assert!(ratio < 1.5, "peak RSS {peak} bytes is {ratio:.2}x the file's {file_bytes} bytes (at most 1.5x)");
}
