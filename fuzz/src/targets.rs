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
    // Bytes that never form a character are printed as U+FFFD once MAX_HELD_IDS are held, so
    // the stream may group them into more replacement characters than decoding all at once
    // does; and bytes the decoder gave up waiting on (4 * MAX_HELD_IDS ids held in all) are
    // printed as U+FFFD even when later bytes complete a character with them, which is then
    // printed when it completes. So the replacement characters may differ; every character
    // that is valid must be the same, in the same order.
    // The decoder holds at most 4 * MAX_HELD_IDS ids: a character whose bytes are further apart
    // (a run of ids that decode to nothing between them) is printed as U+FFFD by design.
    let mut empty_run = 0;
    let mut longest_empty_run = 0;
    for &id in &ids {
        empty_run = if t.decode(&[id]).is_ok_and(|s| s.is_empty()) { empty_run + 1 } else { 0 };
        longest_empty_run = longest_empty_run.max(empty_run);
    }
    // 16: twice MAX_HELD_IDS (8, in src/tokenizer/stream.rs, not exported).
    if longest_empty_run >= 16 {
        return;
    }
    if let Ok(all) = t.decode(&ids) {
        assert_eq!(valid_chars(&text), valid_chars(&all), "streamed text differs from decoding all ids {ids:?}");
    }
}

/// What the request fuzz target checks against: llama-tiny's tokenizer with SmolLM2's chat
/// template, a context of 128 positions, as `quill serve` holds them.
fn fixture_model() -> &'static quill::openai::ModelInfo {
    static M: std::sync::OnceLock<quill::openai::ModelInfo> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let mut tokenizer = fixture_tokenizer().clone();
        tokenizer.chat_template = Some(include_str!("../../tests/fixtures/chat_templates/smollm2.jinja").to_string());
        let vocab = tokenizer.vocab_size();
        quill::openai::ModelInfo::new("llama-tiny".into(), tokenizer, 128, vocab, Default::default())
    })
}

/// A JSON body -> a validated request, for both generation endpoints (and the tokenize
/// bodies): an accepted request must fit the context and the sampler's limits.
pub fn openai_request(data: &[u8]) {
    use quill::openai::{parse, plan, DetokenizeRequest, Endpoint, GenRequest, TokenizeRequest, MAX_N, MAX_STOPS, MAX_STOP_BYTES, MAX_TOP_LOGPROBS};
    let m = fixture_model();
    if let Ok(r) = parse::<GenRequest>(data) {
        for kind in [Endpoint::Completions, Endpoint::Chat] {
            let Ok(p) = plan(&r, kind, m, 18) else { continue };
            assert!(!p.prompt.is_empty() && p.prompt.len() + p.max_tokens <= m.ctx_len && p.max_tokens >= 1, "{kind:?}: {} + {} tokens", p.prompt.len(), p.max_tokens);
            assert!(p.prompt.iter().all(|&t| (t as usize) < m.vocab));
            assert!((1..=MAX_N as usize).contains(&p.n) && p.logprobs.is_none_or(|k| k <= MAX_TOP_LOGPROBS as usize));
            assert!(p.stop.len() <= MAX_STOPS && p.stop.iter().all(|s| s.len() <= MAX_STOP_BYTES));
            assert!(p.sampling.logit_bias.iter().all(|&(id, b)| (id as usize) < m.vocab && b.abs() <= 100.0));
            assert!(p.sampling.validate().is_ok());
        }
    }
    let _ = parse::<TokenizeRequest>(data);
    let _ = parse::<DetokenizeRequest>(data);
}

/// A chat template (the first part) rendered under the sandbox for the messages that follow
/// it (role, content, role, content…; parts separated by FF 00): it must finish within its
/// fuel, and an error is a fine outcome.
pub fn chat_template(data: &[u8]) {
    let parts = split(data);
    let Ok(source) = std::str::from_utf8(parts[0]) else { return };
    let mut t = fixture_tokenizer().clone();
    t.chat_template = Some(source.to_string());
    let texts: Vec<String> = parts[1..].iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let messages: Vec<(&str, &str)> = texts.chunks(2).map(|c| (c[0].as_str(), c.get(1).map_or("", |s| s.as_str()))).collect();
    for add_generation_prompt in [true, false] {
        if let Ok(text) = t.apply_chat_template(&messages, add_generation_prompt) {
            assert!(text.len() <= quill::tokenizer::MAX_RENDERED_BYTES);
        }
    }
}

/// `text` without its replacement characters (U+FFFD).
fn valid_chars(text: &str) -> String {
    text.chars().filter(|&c| c != '\u{FFFD}').collect()
}
