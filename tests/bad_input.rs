//! Broken Hugging Face model directories: each is a tiny fixture copied to a temporary
//! directory and damaged one way. quill must exit 1 with a message naming the field or tensor
//! at fault, and never panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use safetensors::{Dtype, SafeTensors};

/// A fresh copy of tests/fixtures/`name` (model files only) in a temporary directory.
struct Copy(PathBuf);

impl Copy {
    fn of(name: &str, case: &str) -> Copy {
        let dir = std::env::temp_dir().join(format!("quill-bad-input-{}-{case}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture(&format!("{name}/{f}")), dir.join(f)).unwrap();
        }
        Copy(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    /// Rewrites model.safetensors, letting `edit` change (name, dtype, shape, bytes) of each
    /// tensor or drop it (None).
    fn rewrite_weights(&self, edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>) {
        let bytes = std::fs::read(self.path("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in st.tensors() {
            if let Some((dtype, shape, data)) = edit(&name, t.dtype(), t.shape().to_vec(), t.data().to_vec()) {
                kept.push((name, dtype, shape, data));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            kept.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
        std::fs::write(self.path("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    }
    fn edit_config(&self, edit: impl Fn(&mut serde_json::Value)) {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(self.path("config.json")).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(self.path("config.json"), v.to_string()).unwrap();
    }
    /// Runs `quill write` on the directory; expects exit 1, no panic, and every needle in stderr.
    fn expect_error(&self, needles: &[&str]) {
        let o = Command::new(env!("CARGO_BIN_EXE_quill"))
            .args(["write", "--model", self.0.to_str().unwrap(), "--max-tokens", "1", "hello"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}; stderr:\n{err}", o.status);
        assert!(!err.contains("panicked"), "quill panicked:\n{err}");
        for n in needles {
            assert!(err.contains(n), "stderr should mention {n:?}:\n{err}");
        }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn has_gpu() -> bool {
    quill::gpu::context::test_context().is_some()
}

#[test]
fn missing_tensor() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("gpt2-tiny", "missing");
    c.rewrite_weights(|name, d, s, b| (name != "transformer.h.1.mlp.c_fc.bias").then_some((d, s, b)));
    c.expect_error(&["transformer.h.1.mlp.c_fc.bias", "missing"]);
}

#[test]
fn wrong_shape() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("llama-tiny", "shape");
    // Same bytes, another shape: the file is valid, the model is not.
    c.rewrite_weights(|name, d, s, b| Some(if name == "model.layers.0.self_attn.q_proj.weight" { (d, vec![32, 128], b) } else { (d, s, b) }));
    c.expect_error(&["model.layers.0.self_attn.q_proj.weight", "[32, 128]", "expected [64, 64]"]);

    let c = Copy::of("gpt2-tiny", "shape");
    c.rewrite_weights(|name, d, s, b| Some(if name == "transformer.h.0.attn.c_attn.weight" { (d, vec![192, 64], b) } else { (d, s, b) }));
    c.expect_error(&["transformer.h.0.attn.c_attn.weight", "[192, 64]", "expected [64, 192]"]);
}

#[test]
fn unsupported_dtypes() {
    if !has_gpu() {
        return;
    }
    let f64_bytes = |b: Vec<u8>| b.chunks_exact(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes()).collect::<Vec<u8>>();
    let c = Copy::of("xglm-tiny", "f64");
    c.rewrite_weights(|name, d, s, b| Some(if name == "model.layers.0.fc1.bias" { (Dtype::F64, s, f64_bytes(b)) } else { (d, s, b) }));
    c.expect_error(&["model.layers.0.fc1.bias", "F64", "not supported"]);

    let c = Copy::of("qwen2-tiny", "i8");
    c.rewrite_weights(|name, d, s, b| Some(if name == "model.norm.weight" { (Dtype::I8, s, b[..b.len() / 4].to_vec()) } else { (d, s, b) }));
    c.expect_error(&["model.norm.weight", "I8", "not supported"]);
}

#[test]
fn unknown_architecture() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("llama-tiny", "arch");
    c.edit_config(|v| v["model_type"] = "mamba".into());
    c.expect_error(&["model_type 'mamba'", "config.json"]);
}

#[test]
fn malformed_config() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("gpt2-tiny", "json");
    let text = std::fs::read_to_string(c.path("config.json")).unwrap();
    std::fs::write(c.path("config.json"), &text[..text.len() / 2]).unwrap();
    c.expect_error(&["config.json", "malformed"]);

    c.edit_config_from(&text, |v| v["n_embd"] = "wide".into());
    c.expect_error(&["config.json", "field 'n_embd'"]);

    c.edit_config_from(&text, |v| {
        v.as_object_mut().unwrap().remove("n_head");
    });
    c.expect_error(&["config.json", "n_head", "missing"]);

    let c = Copy::of("xglm-tiny", "json");
    c.edit_config(|v| v["attention_heads"] = 5.into());
    c.expect_error(&["config.json", "5 heads"]);

    let c = Copy::of("llama-tiny", "json");
    c.edit_config(|v| {
        v.as_object_mut().unwrap().remove("model_type");
    });
    c.expect_error(&["config.json", "model_type"]);
}

impl Copy {
    fn edit_config_from(&self, original: &str, edit: impl Fn(&mut serde_json::Value)) {
        std::fs::write(self.path("config.json"), original).unwrap();
        self.edit_config(edit);
    }
}

/// Writes a safetensors file by hand whose header says `b`'s data runs past the end of the file.
fn lying_header(path: &Path) {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1000],"data_offsets":[8,4008]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]); // 8 bytes of `a`, then 8 of the 4000 `b` claims
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn safetensors_header_lying_about_offsets() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("llama-tiny", "offsets");
    lying_header(&c.path("model.safetensors"));
    c.expect_error(&["model.safetensors", "tensor 'b'", "data_offsets [8, 4008]", "16 bytes"]);

    // A real header cut off with its data: the header length now points past the end.
    let c = Copy::of("llama-tiny", "cut");
    let bytes = std::fs::read(c.path("model.safetensors")).unwrap();
    std::fs::write(c.path("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    c.expect_error(&["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn tokenizer_json_missing() {
    if !has_gpu() {
        return;
    }
    let c = Copy::of("gpt2-tiny", "tokenizer");
    std::fs::remove_file(c.path("tokenizer.json")).unwrap();
    c.expect_error(&["tokenizer.json", "missing"]);
}
