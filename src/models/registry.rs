//! The one table of architectures quill runs: Hugging Face `model_type` / GGUF
//! `general.architecture` to the architecture's config readers and loader. Adding an
//! architecture is its own file (config readers, name table, `pub static ARCH`) plus one line
//! in `ARCHITECTURES`. Configs name their architecture (`config::Arch`) without pointing
//! back here, so configs, the decoder and the architectures form no cycle.

use serde::Deserialize;

pub use super::arch::Architecture;
use super::config::{parse_json, ModelConfig};
use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// Every architecture, in the order `quill` lists them.
pub static ARCHITECTURES: &[&Architecture] = &[
    &super::llama::ARCH,
    &super::qwen2::ARCH,
    &super::qwen3::ARCH,
    &super::mistral::ARCH,
    &super::phi3::ARCH,
    &super::gemma2::ARCH,
    &super::gemma3::ARCH,
    &super::gpt2::ARCH,
    &super::xglm::ARCH,
];

/// "a, b and c" of every name `names` picks from the registry.
fn known(names: fn(&Architecture) -> &'static [&'static str]) -> String {
    let all: Vec<&str> = ARCHITECTURES.iter().flat_map(|a| names(a).iter().copied()).collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => all.join(""),
    }
}

/// The architecture of a `config.json`'s `model_type`, and the config it reads.
pub fn from_hf_json(bytes: &[u8], file: &str) -> Result<(&'static Architecture, ModelConfig)> {
    #[derive(Deserialize)]
    struct ModelType {
        model_type: String,
    }
    let t: ModelType = parse_json(bytes, file)?;
    match ARCHITECTURES.iter().find(|a| a.model_types.contains(&t.model_type.as_str())) {
        Some(a) => Ok((a, (a.hf_config)(bytes, file)?)),
        None => Err(Error::Unsupported(format!("{file}: model_type '{}' (quill runs {})", t.model_type, known(|a| a.model_types)))),
    }
}

/// The architecture of a GGUF file's `general.architecture`, and the config it reads.
pub fn from_gguf(g: &Gguf) -> Result<(&'static Architecture, ModelConfig)> {
    let name = g.str("general.architecture")?;
    let arch = ARCHITECTURES.iter().find(|a| a.gguf_names.contains(&name));
    match arch.and_then(|a| a.gguf_config.map(|read| (a, read))) {
        Some((a, read)) => Ok((a, read(g)?)),
        None => Err(Error::Unsupported(format!("{}: architecture '{name}' (quill runs {} GGUF files)", g.file, known(|a| a.gguf_names)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_belongs_to_one_architecture() {
        let mut seen = std::collections::HashSet::new();
        for a in ARCHITECTURES {
            for n in a.model_types.iter().map(|n| format!("hf {n}")).chain(a.gguf_names.iter().map(|n| format!("gguf {n}"))) {
                assert!(seen.insert(n.clone()), "{n} is claimed twice");
            }
            assert_eq!(a.gguf_config.is_some(), !a.gguf_names.is_empty(), "{}", a.name);
        }
    }

    #[test]
    fn an_unknown_model_type_lists_the_known_ones() {
        let e = from_hf_json(br#"{"model_type": "mamba"}"#, "c.json").unwrap_err().to_string();
        assert!(e.contains("model_type 'mamba'"), "{e}");
        for a in ARCHITECTURES {
            for t in a.model_types {
                assert!(e.contains(t), "{t} missing from: {e}");
            }
        }
    }
}
