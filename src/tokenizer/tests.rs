//! Unit tests of the tokenizer module on tiny GGUF files built in memory.

use super::template::{civil_from_days, strftime_now};
use super::*;
use crate::weights::gguf::tests::{build, gguf_string};
use crate::weights::gguf::Gguf;

/// GPT-2's map from bytes to the printable characters byte-level BPE stores them as.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

fn string_array(items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for s in items {
        v.extend(gguf_string(s));
    }
    v
}

fn u32_array(items: &[u32]) -> Vec<u8> {
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for x in items {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A tiny byte-level BPE GGUF: <|end|> (control, id 0), <tool> (user-defined, id 1),
/// the 256 byte tokens (ids 2..258), then "he", "hel", "Ġh".
fn tiny_gguf(model: &str, pre: &str, template: Option<&str>) -> Vec<u8> {
    let bytes: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut tokens = vec!["<|end|>", "<tool>"];
    tokens.extend(bytes.iter().map(String::as_str));
    tokens.extend(["he", "hel", "Ġh"]);
    let mut types = vec![3, 4];
    types.extend(std::iter::repeat_n(1, tokens.len() - 2));
    let mut kv = vec![
        ("tokenizer.ggml.model", 8, gguf_string(model)),
        ("tokenizer.ggml.pre", 8, gguf_string(pre)),
        ("tokenizer.ggml.tokens", 9, string_array(&tokens)),
        ("tokenizer.ggml.token_type", 9, u32_array(&types)),
        ("tokenizer.ggml.merges", 9, string_array(&["h e", "he l", "Ġ h"])),
        ("tokenizer.ggml.eos_token_id", 4, 0u32.to_le_bytes().to_vec()),
    ];
    if let Some(t) = template {
        kv.push(("tokenizer.chat_template", 8, gguf_string(t)));
    }
    build(3, &kv, &[])
}

fn tiny(template: Option<&str>) -> Tokenizer {
    let bytes = tiny_gguf("gpt2", "gpt2", template);
    Tokenizer::from_gguf(&Gguf::parse("tiny.gguf", &bytes).unwrap()).unwrap()
}

#[test]
fn merges_special_tokens_and_round_trip() {
    let t = tiny(None);
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(t.encode("hello").unwrap(), vec![id("hel"), id("l"), id("o")]);
    assert_eq!(t.encode(" h").unwrap(), vec![id("Ġh")]);
    // Control and user-defined tokens are matched whole inside the text.
    assert_eq!(t.encode("he<|end|><tool>").unwrap(), vec![id("he"), 0, 1]);
    assert_eq!(t.eos_ids, vec![0]);
    assert!(t.is_eos(0) && !t.is_eos(1));
    assert_eq!(t.vocab_size(), 2 + 256 + 3);
    assert!(!t.add_bos && t.bos_id.is_none());
    for text in ["hello <|end|> wörld", "中文 🐉\r\n\t x", ""] {
        assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn every_pre_tokenizer_builds_and_unknown_ones_are_errors() {
    for &pre in super::pre::KNOWN {
        let bytes = tiny_gguf("gpt2", pre, None);
        let t = Tokenizer::from_gguf(&Gguf::parse("tiny.gguf", &bytes).unwrap()).unwrap_or_else(|e| panic!("pre = {pre}: {e}"));
        let text = "hello 2024 héllo\n\n  x, don't 中文!";
        assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text, "pre = {pre}");
    }
    let bytes = tiny_gguf("gpt2", "something-new", None);
    let e = Tokenizer::from_gguf(&Gguf::parse("tiny.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(e.contains("\"something-new\"") && e.contains("tokenizer.ggml.pre") && e.contains("llama-bpe"), "{e}");
}

/// Pieces of `text` under a pre-tokenizer name, to check the splits themselves.
fn pieces(pre: &str, text: &str) -> Vec<String> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let (json, _) = super::pre::pre_tokenizer_json("t", pre).unwrap();
    let pt: tokenizers::PreTokenizerWrapper = serde_json::from_value(json).unwrap();
    let mut s = PreTokenizedString::from(text);
    pt.pre_tokenize(&mut s).unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(p, _, _)| p.to_string()).collect()
}

#[test]
fn pre_tokenizers_split_numbers_like_their_families() {
    // Llama 3 groups digits by three, Qwen2 and SmolLM split every digit, GPT-2 keeps runs.
    assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
    assert_eq!(pieces("qwen2", "123"), ["1", "2", "3"]);
    assert_eq!(pieces("smollm", " 123"), ["Ġ", "1", "2", "3"]);
    assert_eq!(pieces("gpt2", " 12345"), ["Ġ12345"]);
    // Falcon: punctuation runs, then numbers in threes.
    assert_eq!(pieces("falcon", "a+=1234"), ["a", "+=", "123", "4"]);
    // Tekken: "CamelCase" is two words.
    assert_eq!(pieces("tekken", "CamelCase"), ["Camel", "Case"]);
}

#[test]
fn stream_decoder_waits_for_whole_characters() {
    let t = tiny(None);
    let text = "a中🐉b";
    let ids = t.encode(text).unwrap();
    assert_eq!(ids.len(), 1 + 3 + 4 + 1); // one token per byte
    let mut stream = StreamDecoder::new();
    let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.step(&t, id).unwrap()).collect();
    assert_eq!(pieces.iter().flatten().collect::<Vec<_>>(), ["a", "中", "🐉", "b"]);
    assert_eq!(pieces.iter().filter(|p| p.is_none()).count(), 2 + 3);
    assert_eq!(stream.finish(&t).unwrap(), None);

    // A character cut off at the end comes out of finish() as U+FFFD.
    let mut stream = StreamDecoder::new();
    assert_eq!(stream.step(&t, ids[1]).unwrap(), None);
    assert_eq!(stream.finish(&t).unwrap().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn unknown_and_missing_tokenizers_are_errors() {
    let bytes = tiny_gguf("t5", "default", None);
    let e = Tokenizer::from_gguf(&Gguf::parse("u.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(e.contains("\"t5\"") && e.contains("tokenizer.ggml.model") && e.contains("u.gguf"), "{e}");

    // A SentencePiece vocabulary without its scores.
    let bytes = tiny_gguf("llama", "default", None);
    let e = Tokenizer::from_gguf(&Gguf::parse("sp.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.scores") && e.contains("sp.gguf"), "{e}");

    let bytes = build(3, &[("general.architecture", 8, gguf_string("llama"))], &[]);
    let e = Tokenizer::from_gguf(&Gguf::parse("none.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model") && e.contains("none.gguf"), "{e}");

    let bytes = build(3, &[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.merges", 9, string_array(&[]))], &[]);
    let e = Tokenizer::from_gguf(&Gguf::parse("t.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");

    // A merge of tokens that are not in the vocabulary, and a merge without a space.
    for merge in ["x y", "xy"] {
        let kv = [
            ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
            ("tokenizer.ggml.tokens", 9, string_array(&["a", "b"])),
            ("tokenizer.ggml.merges", 9, string_array(&[merge])),
        ];
        let bytes = build(3, &kv, &[]);
        let e = Tokenizer::from_gguf(&Gguf::parse("m.gguf", &bytes).unwrap()).unwrap_err().to_string();
        assert!(e.contains("m.gguf") && e.contains("tokenizer.ggml.merges[0]"), "{e}");
        // Named by its index, not by where it sits in a JSON text made along the way (issue 15, 7).
        assert!(!e.contains("line ") && !e.contains("column"), "{e}");
    }
    // A merge whose result is missing.
    let kv = [
        ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
        ("tokenizer.ggml.tokens", 9, string_array(&["a", "b"])),
        ("tokenizer.ggml.merges", 9, string_array(&["a b"])),
    ];
    let e = Tokenizer::from_gguf(&Gguf::parse("m.gguf", &build(3, &kv, &[])).unwrap()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.merges[0]") && e.contains("\"ab\"") && !e.contains("column"), "{e}");
}

#[test]
fn chat_template_python_methods_and_errors() {
    let template = "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n\
                    {{ m.role.upper() }}:{{ m['content'].strip() }}{% if m.content.startswith(('x', ' q')) %}!{% endif %}|\n\
                    {% endfor %}{{ {'a': 1}.get('b', 'none') }}{% if add_generation_prompt %}>{% endif %}";
    let t = tiny(Some(template));
    let out = t.apply_chat_template(&[("user", " q1 "), ("assistant", "a")], true).unwrap();
    assert_eq!(out, "USER:q1!|\nASSISTANT:a|\nnone>");

    let e = t.apply_chat_template(&[("robot", "x")], false).unwrap_err().to_string();
    assert!(e.contains("bad role robot"), "{e}");

    let e = tiny(None).apply_chat_template(&[("user", "x")], true).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn dates_for_templates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    let today = strftime_now("%d %b %Y");
    assert_eq!(today.len(), 11, "{today}");
}

fn f32_array(items: &[f32]) -> Vec<u8> {
    let mut v = 6u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for x in items {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A tiny SentencePiece GGUF: <unk> <s> </s> (control), <tool> (user-defined), the 256 byte
/// tokens <0x00>..<0xFF>, then pieces with scores that make "▁hello" win over "▁he"+"llo".
fn tiny_spm(arch: &str, add_space_prefix: bool) -> Tokenizer {
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    let mut tokens = vec!["<unk>", "<s>", "</s>", "<tool>"];
    let mut types = vec![2, 3, 3, 4];
    tokens.extend(bytes.iter().map(String::as_str));
    types.extend(std::iter::repeat_n(6, 256));
    let pieces = ["  ", "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "▁h", "▁he", "▁hello", "hello", "▁w", "or", "▁wor", "ld", "▁world"];
    tokens.extend(pieces);
    types.extend(std::iter::repeat_n(1, pieces.len()));
    let mut scores: Vec<f32> = vec![0.0; 4 + 256];
    scores.extend((0..pieces.len()).map(|i| -(i as f32)));
    let kv = vec![
        ("general.architecture", 8, gguf_string(arch)),
        ("tokenizer.ggml.model", 8, gguf_string("llama")),
        ("tokenizer.ggml.tokens", 9, string_array(&tokens)),
        ("tokenizer.ggml.scores", 9, f32_array(&scores)),
        ("tokenizer.ggml.token_type", 9, u32_array(&types)),
        ("tokenizer.ggml.bos_token_id", 4, 1u32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.eos_token_id", 4, 2u32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.unknown_token_id", 4, 0u32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.add_space_prefix", 7, vec![add_space_prefix as u8]),
    ];
    let bytes = build(3, &kv, &[]);
    Tokenizer::from_gguf(&Gguf::parse("spm.gguf", &bytes).unwrap()).unwrap()
}

#[test]
fn sentencepiece_prefix_bytes_and_specials() {
    let t = tiny_spm("llama", true);
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert!(t.add_bos && !t.add_eos, "SentencePiece GGUFs get BOS unless they say otherwise");
    assert_eq!((t.bos_id, t.eos_ids.clone()), (Some(1), vec![2]));
    // "▁" is prepended; the best-scored merges win: "▁hello", not "▁he" + "llo".
    assert_eq!(t.encode("hello world").unwrap(), vec![1, id("▁hello"), id("▁world")]);
    // Characters with no piece fall back to their UTF-8 bytes.
    let ids = t.encode("hé").unwrap();
    assert_eq!(ids, vec![1, id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    // Control and user-defined tokens are matched whole; as in llama.cpp, "▁" is prepended to
    // the text after them too.
    assert_eq!(t.encode("<tool>hello</s>").unwrap(), vec![1, 3, id("▁hello"), 2]);
    // Text that starts with a space gets its own "▁" in front, as in SentencePiece.
    assert_eq!(t.encode(" hello").unwrap(), vec![1, id("▁"), id("▁hello")]);
    for text in ["hello world", "hé wörld 🐉", "  two"] {
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids[1..]).unwrap(), text, "round trip of {text:?}");
    }

    // Without add_space_prefix nothing is prepended.
    let t = tiny_spm("llama", false);
    assert_eq!(t.encode("hello").unwrap(), vec![1, t.token_to_id("hello").unwrap()]);

    // Gemma: merges follow the file's order, runs of spaces stored as spaces are respelled "▁▁",
    // and nothing is prepended whatever the flag says.
    let t = tiny_spm("gemma3", true);
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(t.encode("hello").unwrap(), vec![1, id("hello")]);
    assert_eq!(t.encode("  hello").unwrap(), vec![1, id("▁▁"), id("hello")]);
    assert_eq!(t.decode(&[id("▁▁"), id("hello")]).unwrap(), "  hello");
}

#[test]
fn sentencepiece_with_huge_tokens_is_refused_quickly() {
    // Two tokens of 64 kB each: cutting them would hash 2 * 65536^2 bytes.
    let long = "x".repeat(1 << 16);
    let kv = vec![
        ("tokenizer.ggml.model", 8, gguf_string("llama")),
        ("tokenizer.ggml.tokens", 9, string_array(&[&long, &long[1..]])),
        ("tokenizer.ggml.scores", 9, f32_array(&[0.0, 0.0])),
    ];
    let bytes = build(3, &kv, &[]);
    let started = std::time::Instant::now();
    let e = Tokenizer::from_gguf(&Gguf::parse("long.gguf", &bytes).unwrap()).unwrap_err().to_string();
    assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
    assert!(e.contains("long.gguf") && e.contains("tokenizer.ggml.tokens") && e.contains("too long"), "{e}");
}

#[test]
fn stream_decoder_does_not_hold_invalid_bytes_for_ever() {
    let t = tiny(None);
    let ff = t.token_to_id(&byte_char(0xFF).to_string()).unwrap();
    let mut stream = StreamDecoder::new();
    let mut pieces: Vec<String> = (0..20).filter_map(|_| stream.step(&t, ff).unwrap()).collect();
    // Printed once MAX_HELD_IDS ids were held, not only at the end.
    assert!(!pieces.is_empty(), "everything was held back");
    pieces.extend(stream.finish(&t).unwrap());
    assert_eq!(pieces.concat(), "\u{FFFD}".repeat(20));
}

#[test]
fn stream_decoder_prints_a_character_completed_after_a_flush() {
    // Seven invalid bytes and the lead byte of "ݠ" (DD A0) are printed as U+FFFD once
    // MAX_HELD_IDS ids changed the text; A0 then completes "ݠ" with the flushed DD. The window's
    // text (7 U+FFFD + "ݠ", 23 bytes) is then shorter than what was printed (8 U+FFFD, 24
    // bytes): "ݠ" and the "b" after it were dropped, and finish() printed the window again.
    let t = tiny(None);
    let id = |b: u8| t.token_to_id(&byte_char(b).to_string()).unwrap();
    let mut ids = vec![id(0xFF); 7];
    ids.extend([id(0xDD), id(0xA0), id(b'b')]);
    let mut stream = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().filter_map(|&i| stream.step(&t, i).unwrap()).collect();
    pieces.extend(stream.finish(&t).unwrap());
    assert_eq!(pieces, ["\u{FFFD}".repeat(8), "ݠ".into(), "b".into()]);
    assert_eq!(t.decode(&ids).unwrap(), "\u{FFFD}".repeat(7) + "ݠb");

    // The same with a three-byte character whose last two bytes come after the flush: held
    // (E4 B8 is still one U+FFFD, as printed) until AD completes "中".
    let mut ids = vec![id(0xFF); 7];
    ids.extend([id(0xE4), id(0xB8), id(0xAD), id(b'c')]);
    let mut stream = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().filter_map(|&i| stream.step(&t, i).unwrap()).collect();
    pieces.extend(stream.finish(&t).unwrap());
    assert_eq!(pieces.concat(), "\u{FFFD}".repeat(8) + "中c");
}
