//! Tokenizer tests against SmolLM2-135M-Instruct: the tokenizer rebuilt from the GGUF's
//! metadata and the one loaded from Hugging Face's tokenizer.json must both give the ids
//! transformers gave (tests/fixtures/smollm2/reference.json, `tokenizer_checks` and
//! `prompts`), and the chat template must render what transformers rendered.

mod common;

use std::path::PathBuf;

use common::{gguf_string, string_array, tiny_gguf};

use quill::tokenizer::{StreamDecoder, Tokenizer};
use quill::weights::gguf::Gguf;
use serde_json::Value;

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2").join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    let p = fixture(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn reference() -> Value {
    serde_json::from_slice(&read_fixture("reference.json")).expect("reference.json is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// A fetched model's bytes (quill::files::models_dir: $QUILL_MODELS, else
/// $XDG_CACHE_HOME/quill/models, else ~/.cache/quill/models). Missing: a panic under CI, a
/// skip (None) elsewhere; `fetch` is the command that fetches it.
fn model_file(path: PathBuf, fetch: &str) -> Option<Vec<u8>> {
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{}: {e}; run {fetch}", path.display()),
        Err(e) => {
            eprintln!("SKIPPING: {}: {e} (run {fetch})", path.display());
            None
        }
    }
}

fn smollm2_gguf() -> Option<Vec<u8>> {
    model_file(quill::files::models_dir().join(GGUF_NAME), "scripts/fetch-model.sh")
}

/// Gemma 3 270M's GGUF, beside SmolLM2's.
fn gemma3_gguf() -> Option<Vec<u8>> {
    model_file(quill::files::gemma3_270m_path(), "scripts/fetch-model.sh gemma3-270m")
}

fn from_gguf(bytes: &[u8]) -> Tokenizer {
    let g = Gguf::parse(GGUF_NAME, bytes).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

fn from_hf() -> Tokenizer {
    let template = String::from_utf8(read_fixture("chat_template.jinja")).unwrap();
    Tokenizer::from_hf(&read_fixture("tokenizer.json"), Some(&read_fixture("tokenizer_config.json")), Some(&template), "tests/fixtures/smollm2").unwrap()
}

/// Every `tokenizer_checks` entry encodes to its ids and decodes back to its text.
fn check_reference_ids(t: &Tokenizer, which: &str) {
    let r = reference();
    let checks = r["tokenizer_checks"].as_object().expect("tokenizer_checks");
    assert!(checks.len() >= 10, "reference.json has only {} tokenizer checks", checks.len());
    for (text, want) in checks {
        let want = ids(want);
        let got = t.encode(text).unwrap();
        assert_eq!(got, want, "{which}: encode({text:?})");
        assert_eq!(t.decode(&got).unwrap(), *text, "{which}: decode(encode({text:?}))");
    }
}

#[test]
fn hf_tokenizer_matches_transformers() {
    let t = from_hf();
    check_reference_ids(&t, "tokenizer.json");
    assert_eq!(t.bos_id, Some(1));
    assert_eq!(t.eos_ids, vec![2]);
    assert!(!t.add_bos, "SmolLM2's tokenizer adds no BOS");
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
}

#[test]
fn gguf_tokenizer_matches_transformers() {
    let Some(bytes) = smollm2_gguf() else { return };
    let t = from_gguf(&bytes);
    check_reference_ids(&t, "GGUF");
    // Special tokens from token_type 3 are matched inside text.
    assert_eq!(t.encode("<|im_start|><|endoftext|><file_sep>").unwrap(), vec![1, 0, 5]);
    assert_eq!(t.bos_id, Some(1));
    assert_eq!(t.eos_ids, vec![2]);
    assert!(t.is_eos(2) && !t.is_eos(1));
    assert!(!t.add_bos);
    assert_eq!(t.vocab_size(), 49152);
}

#[test]
fn gguf_tokenizer_encodes_every_reference_prompt() {
    let Some(bytes) = smollm2_gguf() else { return };
    let t = from_gguf(&bytes);
    let r = reference();
    let prompts = r["prompts"].as_object().expect("prompts");
    assert!(!prompts.is_empty());
    for (name, p) in prompts {
        let text = p["text"].as_str().expect("prompt text");
        assert_eq!(t.encode(text).unwrap(), ids(&p["input_ids"]), "prompt {name}: {text:?}");
    }
}

/// Gemma 3's SentencePiece tokenizer, rebuilt from the GGUF, gives the ids transformers and
/// llama.cpp gave on the 40 strings of tests/fixtures/gemma3-270m/reference.json
/// (`tokenizer_checks`, made by make_gemma3_refs.py; the two agree on every string), and the
/// reference prompts' ids with BOS.
#[test]
fn gemma3_gguf_tokenizer_matches_transformers_and_llama_cpp() {
    let Some(mut bytes) = gemma3_gguf() else { return };
    // Only the metadata matters here: a tensor count of 0 (header bytes 8..16) keeps this test
    // independent of which tensor types the weight loader knows.
    bytes[8..16].copy_from_slice(&0u64.to_le_bytes());
    let g = Gguf::parse(quill::files::GEMMA3_270M_FILE, &bytes).unwrap();
    let started = std::time::Instant::now();
    let mut t = Tokenizer::from_gguf(&g).unwrap();
    eprintln!("Gemma 3 tokenizer built in {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!((t.vocab_size(), t.bos_id, t.add_bos, t.add_eos), (262_144, Some(2), true, false));
    // <eos> and <end_of_turn>: the file names no EOT, Gemma's turns end with it.
    assert_eq!(t.eos_ids, vec![1, 106]);
    // The file has no chat template: Gemma 3's default is used, and the tokenizer says so.
    assert!(t.chat_template_is_default(), "{}", t.chat_template_origin());
    let hello = t.apply_chat_template(&[("user", "Hello!")], true).unwrap();
    assert_eq!(hello, "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n");
    assert_eq!(&t.encode(&hello).unwrap()[..2], &[2, 105], "one BOS, then <start_of_turn>");

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3-270m/reference.json");
    let r: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (name, p) in r["prompts"].as_object().expect("prompts") {
        let text = p["prompt"].as_str().expect("prompt text");
        assert_eq!(t.encode(text).unwrap(), ids(&p["input_ids"]), "prompt {name}: {text:?}");
    }
    let checks = r["tokenizer_checks"].as_object().expect("tokenizer_checks");
    assert_eq!(checks.len(), 40);
    t.add_bos = false; // the checks were made without special tokens
    let mut wrong = Vec::new();
    for (text, want) in checks {
        let want = ids(&want["llama_cpp"]);
        let got = t.encode(text).unwrap();
        if got != want {
            wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
        } else {
            assert_eq!(t.decode(&got).unwrap(), *text, "decode(encode({text:?}))");
        }
    }
    assert!(wrong.is_empty(), "{} of 40 strings differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// A Llama-2-style SentencePiece vocabulary (tests/fixtures/spm-tiny, made by make_spm_tiny.py
/// there with sentencepiece) gives SentencePiece's own ids. Strings with special tokens are
/// left out: SentencePiece does not parse them, and after one llama.cpp prepends "▁" again
/// (the unit tests check that rule).
#[test]
fn sentencepiece_gguf_matches_sentencepiece() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tiny");
    let bytes = std::fs::read(dir.join("tokenizer.gguf")).unwrap();
    let mut t = Tokenizer::from_gguf(&Gguf::parse("spm-tiny/tokenizer.gguf", &bytes).unwrap()).unwrap();
    assert!(t.add_bos && t.bos_id == Some(1));
    t.add_bos = false; // the references were made without BOS
    let r: Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let checks = r["tokenizer_checks"].as_object().expect("tokenizer_checks");
    let mut compared = 0;
    for (text, want) in checks.iter().filter(|(text, _)| !text.contains('<')) {
        assert_eq!(t.encode(text).unwrap(), ids(&want["sentencepiece"]), "encode({text:?})");
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} strings compared");
}

#[test]
fn chat_template_renders_like_transformers() {
    let mut tokenizers = vec![("tokenizer_config.json + chat_template.jinja", from_hf())];
    if let Some(bytes) = smollm2_gguf() {
        tokenizers.push(("GGUF", from_gguf(&bytes)));
    }
    let r = reference();
    let reference_chat = r["prompts"]["chat_template"]["text"].as_str().expect("the chat_template prompt");
    let system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    for (which, t) in tokenizers {
        let hi = t.apply_chat_template(&[("user".to_string(), "hi".to_string())], true).unwrap();
        assert_eq!(hi, format!("{system}<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), "{which}");

        let story = t.apply_chat_template(&[("user", "Write a short story about a dragon who learns to paint.")], true).unwrap();
        assert_eq!(story, reference_chat, "{which}");
        assert_eq!(t.encode(&story).unwrap(), ids(&r["prompts"]["chat_template"]["input_ids"]), "{which}");

        // A system message replaces the default one; no generation prompt, no assistant turn.
        let own = t.apply_chat_template(&[("system", "Be brief."), ("user", "hi")], false).unwrap();
        assert_eq!(own, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n", "{which}");
    }
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let mut tokenizers = vec![("tokenizer.json", from_hf())];
    if let Some(bytes) = smollm2_gguf() {
        tokenizers.push(("GGUF", from_gguf(&bytes)));
    }
    let text = "中文测试 🐉 héllo";
    for (which, t) in tokenizers {
        let ids = t.encode(text).unwrap();
        assert!(ids.len() > text.chars().count() / 2, "{which}: {ids:?}");
        let mut stream = StreamDecoder::new();
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.step(&t, id).unwrap() {
                pieces.push(piece);
            }
        }
        if let Some(rest) = stream.finish(&t).unwrap() {
            pieces.push(rest);
        }
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{which}: a piece holds U+FFFD: {pieces:?}");
        assert!(pieces.len() > 1, "{which}: expected several pieces, got {pieces:?}");
        assert_eq!(pieces.concat(), text, "{which}: {pieces:?}");
        // Plain decoding of a cut inside 🐉 (three tokens for four bytes) shows U+FFFD;
        // that is what the stream decoder holds back.
        let dragon = t.encode("🐉").unwrap();
        assert!(dragon.len() > 1);
        assert!(t.decode(&dragon[..1]).unwrap().contains('\u{FFFD}'), "{which}");
    }
}

// --- Malformed GGUF tokenizers: an error that names the problem, never a panic. ---

fn gguf_error(name: &str, kv: &[(&str, u32, Vec<u8>)]) -> String {
    let bytes = tiny_gguf(kv);
    let g = Gguf::parse(name, &bytes).expect("the test file parses as GGUF");
    match Tokenizer::from_gguf(&g) {
        Ok(_) => panic!("{name}: a tokenizer was built"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_tokenizers_are_errors() {
    let tokens = || (9, string_array(&["a", "b", "ab"]));
    let merges = || (9, string_array(&["a b"]));

    // SentencePiece needs a score per token.
    let (tt, tp) = tokens();
    let e = gguf_error("sp.gguf", &[("tokenizer.ggml.model", 8, gguf_string("llama")), ("tokenizer.ggml.tokens", tt, tp)]);
    assert!(e.contains("sp.gguf") && e.contains("tokenizer.ggml.scores"), "{e}");

    let e = gguf_error("wpm.gguf", &[("tokenizer.ggml.model", 8, gguf_string("bert"))]);
    assert!(e.contains("\"bert\""), "{e}");

    let e = gguf_error("none.gguf", &[("general.architecture", 8, gguf_string("llama"))]);
    assert!(e.contains("none.gguf") && e.contains("tokenizer.ggml.model"), "{e}");

    let (mt, mp) = merges();
    let e = gguf_error("notokens.gguf", &[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.merges", mt, mp)]);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("missing"), "{e}");

    let (mt, mp) = merges();
    let e = gguf_error("empty.gguf", &[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.tokens", 9, string_array(&[])), ("tokenizer.ggml.merges", mt, mp)]);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("empty"), "{e}");

    let (tt, tp) = tokens();
    let e = gguf_error("nomerges.gguf", &[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.tokens", tt, tp)]);
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");

    let (tt, tp) = tokens();
    let (mt, mp) = merges();
    let e = gguf_error(
        "eos.gguf",
        &[
            ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
            ("tokenizer.ggml.tokens", tt, tp),
            ("tokenizer.ggml.merges", mt, mp),
            ("tokenizer.ggml.eos_token_id", 4, 99u32.to_le_bytes().to_vec()),
        ],
    );
    assert!(e.contains("eos_token_id") && e.contains("below 3"), "{e}");

    // The same three tokens with a good merge build a working tokenizer.
    let (tt, tp) = tokens();
    let (mt, mp) = merges();
    let bytes = tiny_gguf(&[("tokenizer.ggml.model", 8, gguf_string("gpt2")), ("tokenizer.ggml.tokens", tt, tp), ("tokenizer.ggml.merges", mt, mp)]);
    let t = Tokenizer::from_gguf(&Gguf::parse("ok.gguf", &bytes).unwrap()).unwrap();
    assert_eq!(t.encode("abab").unwrap(), vec![2, 2]);
    assert!(t.apply_chat_template(&[("user", "x")], true).unwrap_err().to_string().contains("no chat template"));
}

#[test]
fn bad_hf_files_are_errors() {
    let e = Tokenizer::from_hf(b"{ not json", None, None, "models/x").unwrap_err().to_string();
    assert!(e.contains("models/x/tokenizer.json"), "{e}");
    let e = Tokenizer::from_hf(&read_fixture("tokenizer.json"), Some(b"[1, 2"), None, "models/x").unwrap_err().to_string();
    assert!(e.contains("models/x/tokenizer_config.json"), "{e}");
    // Without tokenizer_config.json: no special tokens known, no template.
    let t = Tokenizer::from_hf(&read_fixture("tokenizer.json"), None, None, "models/x").unwrap();
    assert_eq!((t.bos_id, t.eos_ids.len(), t.chat_template.is_none()), (None, 0, true));
    // The template from tokenizer_config.json is used when there is no chat_template.jinja.
    let config = br#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}"#;
    let t = Tokenizer::from_hf(&read_fixture("tokenizer.json"), Some(config), None, "models/x").unwrap();
    assert_eq!(t.apply_chat_template(&[("user", "hi")], false).unwrap(), "<|im_start|>hi<|im_end|>");
    assert_eq!((t.bos_id, t.eos_ids.clone()), (Some(1), vec![2]));
}

/// llama.cpp's own tokenizer test data (`models/ggml-vocab-NAME.gguf` with `.inp` and `.out`,
/// which `tests/test-tokenizer-0` checks llama.cpp against): the texts of `.inp`, separated by
/// `\n__ggml_vocab_test__\n`, and per line of `.out` the ids llama.cpp gives them (no BOS or
/// EOS, special tokens not parsed). Returns the texts whose ids differ, or why the vocabulary
/// does not load.
fn llama_cpp_vocab_mismatches(dir: &std::path::Path, name: &str) -> Result<Vec<String>, String> {
    let file = dir.join(format!("ggml-vocab-{name}.gguf"));
    let read = |ext: &str| {
        let p = file.with_extension(format!("gguf{ext}"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let t = Gguf::parse(&file.display().to_string(), &read("")).and_then(|g| Tokenizer::from_gguf(&g)).map_err(|e| e.to_string())?;
    let inp = String::from_utf8(read(".inp")).unwrap();
    let out = String::from_utf8(read(".out")).unwrap();
    // Each text ends with the separator, the last one too (test-tokenizer-0 stops at the end).
    let sep = "\n__ggml_vocab_test__\n";
    let texts: Vec<&str> = inp.strip_suffix(sep).unwrap_or(&inp).split(sep).collect();
    let want: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), want.len(), "{name}: .inp and .out hold different numbers of tests");
    let mut bad = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let mut got = t.encode(text).unwrap();
        // quill's encode adds BOS/EOS as the file asks; llama.cpp's test adds none.
        if t.add_bos && t.bos_id.is_some() && got.first() == t.bos_id.as_ref() && want.first() != t.bos_id.as_ref() {
            got.remove(0);
        }
        if t.add_eos && got.last() == t.eos_ids.first() && want.last() != t.eos_ids.first() {
            got.pop();
        }
        if got != *want {
            bad.push(format!("{text:?}: llama.cpp {want:?}, quill {got:?}"));
        }
    }
    Ok(bad)
}

/// DeepSeek LLM's byte-level BPE (`tokenizer.ggml.pre = deepseek-llm`) gives llama.cpp's ids on
/// every text of llama.cpp's own test (whitespace runs, accents, CJK, emoji, code, digits);
/// tests/fixtures/llama-vocab holds its vocabulary file from the llama-cpp-python 0.3.36 sdist.
#[test]
fn deepseek_llm_pre_tokenizer_matches_llama_cpp() {
    let bad = llama_cpp_vocab_mismatches(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-vocab"), "deepseek-llm").unwrap();
    assert!(bad.is_empty(), "deepseek-llm: {} texts differ:\n{}", bad.len(), bad.join("\n"));
}

/// The same check over every vocabulary of a llama.cpp checkout's `models/` folder named in
/// QUILL_LLAMA_CPP_VOCABS ("dir" or "dir:name,name"); without it, nothing runs. Prints each
/// family's result and fails if any differs.
#[test]
fn llama_cpp_vocab_tests_from_a_checkout() {
    let Some(arg) = std::env::var_os("QUILL_LLAMA_CPP_VOCABS") else { return };
    let arg = arg.to_string_lossy().to_string();
    let (dir, names) = arg.split_once(':').unwrap_or((arg.as_str(), ""));
    let dir = PathBuf::from(dir);
    let names: Vec<String> = if names.is_empty() {
        let mut n: Vec<String> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".gguf.out")?.strip_prefix("ggml-vocab-").map(String::from)).collect();
        n.sort();
        n
    } else {
        names.split(',').map(String::from).collect()
    };
    let mut failed = Vec::new();
    for name in &names {
        match llama_cpp_vocab_mismatches(&dir, name) {
            Ok(bad) if bad.is_empty() => eprintln!("{name}: all texts equal"),
            Ok(bad) => {
                eprintln!("{name}: {} differ, first {}", bad.len(), bad[0]);
                failed.push(name.clone());
            }
            Err(e) => {
                eprintln!("{name}: does not load: {e}");
                failed.push(name.clone());
            }
        }
    }
    assert!(failed.is_empty(), "llama.cpp vocabularies whose ids differ: {failed:?}");
}
