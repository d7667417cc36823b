//! A Llama GGUF file built in the test from tests/fixtures/llama-tiny (its weights as F32 and
//! its byte-level BPE tokenizer), with knobs to make it inconsistent: fewer or more tokens than
//! embedding rows, a repeated tensor, a huge tokens array. The weights are not permuted the
//! way llama.cpp's converter does, so its text is not llama-tiny's: these files test loading.
//!
//! Include with `#[path = "common/tiny_gguf.rs"] mod tiny_gguf;` next to `mod common;`.
#![allow(dead_code)]

use safetensors::SafeTensors;

use crate::common::fixture;

/// GGUF value types.
const U32: u32 = 4;
const F32: u32 = 6;
const STRING: u32 = 8;
const ARRAY: u32 = 9;

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn string_array<S: AsRef<str>>(items: &[S]) -> Vec<u8> {
    let mut v = STRING.to_le_bytes().to_vec();
    v.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for s in items {
        v.extend(string(s.as_ref()));
    }
    v
}

/// How to build the file.
pub struct Spec {
    /// Tokens in tokenizer.ggml.tokens: llama-tiny's 1000, then made-up ones (or fewer).
    pub tokens: usize,
    /// Rows of token_embd.weight and output.weight (llama-tiny's are 1000).
    pub rows: usize,
    /// Write this tensor a second time, with the same data.
    pub duplicate: Option<&'static str>,
    /// Change one weight: (GGUF tensor name, flat index, value).
    pub poke: Option<(&'static str, usize, f32)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { tokens: 1000, rows: 1000, duplicate: None, poke: None }
    }
}

/// llama-tiny's tokens by id, and its merges as "a b".
fn tokenizer() -> (Vec<String>, Vec<String>) {
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("llama-tiny/tokenizer.json")).unwrap()).unwrap();
    let mut by_id: Vec<(u64, String)> = t["model"]["vocab"].as_object().unwrap().iter().map(|(k, v)| (v.as_u64().unwrap(), k.clone())).collect();
    for a in t["added_tokens"].as_array().unwrap() {
        let (id, s) = (a["id"].as_u64().unwrap(), a["content"].as_str().unwrap().to_string());
        if !by_id.iter().any(|(i, _)| *i == id) {
            by_id.push((id, s));
        }
    }
    by_id.sort();
    let merges = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
        })
        .collect();
    (by_id.into_iter().map(|(_, s)| s).collect(), merges)
}

/// HF name -> GGUF name for llama-tiny's tensors.
fn gguf_name(hf: &str) -> String {
    let table = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = table.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, leaf) = rest.split_once('.').unwrap();
    let leaf = match leaf {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unexpected llama-tiny tensor {other}"),
    };
    format!("blk.{layer}.{leaf}")
}

/// The file's bytes.
pub fn build(spec: &Spec) -> Vec<u8> {
    let (mut tokens, mut merges) = tokenizer();
    tokens.truncate(spec.tokens);
    // Merges must stay within the tokens kept.
    let kept: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    merges.retain(|m| m.split_once(' ').is_some_and(|(a, b)| kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())));
    while tokens.len() < spec.tokens {
        tokens.push(format!("<extra_{}>", tokens.len()));
    }
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let kv: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", STRING, string("llama")),
        ("llama.embedding_length", U32, u32v(64)),
        ("llama.block_count", U32, u32v(2)),
        ("llama.attention.head_count", U32, u32v(4)),
        ("llama.attention.head_count_kv", U32, u32v(2)),
        ("llama.feed_forward_length", U32, u32v(128)),
        ("llama.context_length", U32, u32v(256)),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5f32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.model", STRING, string("gpt2")),
        ("tokenizer.ggml.tokens", ARRAY, string_array(&tokens)),
        ("tokenizer.ggml.merges", ARRAY, string_array(&merges)),
        ("tokenizer.ggml.eos_token_id", U32, u32v(0)),
    ];

    let bytes = std::fs::read(fixture("llama-tiny/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (hf, t) in st.tensors() {
        let name = gguf_name(&hf);
        let mut shape = t.shape().to_vec();
        let mut data = t.data().to_vec();
        if name == "token_embd.weight" || name == "output.weight" {
            shape[0] = spec.rows;
            data.resize(spec.rows * shape[1] * 4, 0);
        }
        if let Some((_, i, v)) = spec.poke.filter(|(n, _, _)| *n == name) {
            data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        tensors.push((name, shape, data));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(d) = spec.duplicate {
        let t = tensors.iter().find(|t| t.0 == d).unwrap().clone();
        tensors.push(t);
    }
    write(&kv, &tensors)
}

/// GGUF v3 bytes of (key, type, payload) metadata and (name, row-major shape, F32 data) tensors.
pub fn write(kv: &[(&str, u32, Vec<u8>)], tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, ty, payload) in kv {
        b.extend(string(k));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(payload);
    }
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        b.extend(string(name));
        b.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            b.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for (_, _, data) in tensors {
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(32) * 32, 0);
    }
    b
}
