//! What each fuzz target does with its input. Every one only parses and builds: an `Err` is a
//! fine outcome, a panic, a hang or a huge allocation is a bug. Shared by fuzz/ (AFL) and
//! tests/fuzz_corpus.rs (replay of the corpora and of every crash found).

use quill::models::registry;
use quill::tokenizer::{StreamDecoder, Tokenizer};
use quill::weights::gguf::Gguf;
use quill::weights::safetensors::SafetensorsSource;
use quill::weights::TensorSource;

/// GGUF parser, metadata -> config, tokenizer from GGUF metadata, and every tensor's view.
pub fn gguf(data: &[u8]) {
    let Ok(g) = Gguf::parse("fuzz.gguf", data) else { return };
    let _ = registry::from_gguf(&g);
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let _ = t.encode("Hello, world! 123");
    }
    for info in &g.tensors {
        if let Ok(Some(view)) = TensorSource::tensor(&g, &info.name) {
            // Decoding stays bounded: only small tensors are decoded whole.
            if view.data.len() <= 1 << 16 {
                let _ = view.to_f32();
            }
        }
    }
}

/// Splits `data` at the first two 0xFF 0x00 markers: (config.json, index.json, safetensors shards…).
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == [0xFF, 0x00]) {
        parts.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    parts.push(rest);
    parts
}

/// config.json -> config, model.safetensors.index.json -> shard names, and the safetensors
/// header reader over one or more shards: parts separated by the bytes FF 00.
pub fn safetensors(data: &[u8]) {
    let parts = split(data);
    let _ = registry::from_hf_json(parts[0], "fuzz/config.json");
    if let Some(index) = parts.get(1) {
        let _ = quill::files::shard_names(index, "fuzz/model.safetensors.index.json");
    }
    let shards: Vec<(String, &[u8])> = parts.iter().skip(2).enumerate().map(|(i, p)| (format!("shard{i}.safetensors"), *p)).collect();
    if let Ok(src) = SafetensorsSource::parse(&shards) {
        for name in src.names() {
            if let Ok(Some(view)) = src.tensor(name) {
                if view.data.len() <= 1 << 16 {
                    let _ = view.to_f32();
                }
            }
            let _ = src.expect(name, &[1, 2]);
        }
    }
}

/// tokenizer.json (and, after an FF 00 marker, tokenizer_config.json) -> tokenizer.
pub fn tokenizer_json(data: &[u8]) {
    let parts = split(data);
    if let Ok(t) = Tokenizer::from_hf(parts[0], parts.get(1).copied(), None, "fuzz") {
        if let Ok(ids) = t.encode("Hello, world! 123 ünïcödé 🐉") {
            let _ = t.decode(&ids);
        }
    }
}

/// A fixed byte-level BPE tokenizer (llama-tiny's), built once.
pub fn fixture_tokenizer() -> &'static Tokenizer {
    static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let json = include_bytes!("../../tests/fixtures/llama-tiny/tokenizer.json");
        Tokenizer::from_hf(json, None, None, "tests/fixtures/llama-tiny").expect("the fixture's tokenizer loads")
    })
}

/// The streaming UTF-8 decoder over arbitrary ids (2 bytes each; some beyond the vocabulary):
/// what it prints, then flushes, must be what decoding all ids at once gives.
pub fn stream_decoder(data: &[u8]) {
    let t = fixture_tokenizer();
    let ids: Vec<u32> = data.chunks_exact(2).take(256).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32 % 1100).collect();
    let mut d = StreamDecoder::new();
    let mut text = String::new();
    for &id in &ids {
        match d.step(t, id) {
            Ok(Some(piece)) => text.push_str(&piece),
            Ok(None) => {}
            Err(_) => return, // an id outside the vocabulary: an error, as it should be
        }
    }
    if let Ok(Some(rest)) = d.finish(t) {
        text.push_str(&rest);
    }
    if let Ok(all) = t.decode(&ids) {
        assert_eq!(text, all, "streamed text differs from decoding all ids {ids:?}");
    }
}
