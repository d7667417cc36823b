//! Chat templates: real templates render what transformers' `apply_chat_template` rendered
//! (tests/fixtures/chat_templates/reference.json, made once by make_chat_refs.py there), and
//! hostile templates (issue 15, item 1) fail fast with a message naming the template and the
//! limit, in bounded time and memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quill::tokenizer::{Tokenizer, MAX_RENDERED_BYTES, MAX_TEMPLATE_BYTES, TEMPLATE_FUEL};
use quill::weights::gguf::Gguf;

/// A tokenizer with `template` as its chat_template.jinja and the given BOS/EOS texts; the
/// vocabulary (SmolLM2's) plays no part in rendering.
fn with_template(template: &str, bos: &str, eos: &str) -> Tokenizer {
    let tokenizer_json = std::fs::read(fixture("smollm2/tokenizer.json")).unwrap();
    let config = serde_json::json!({"bos_token": bos, "eos_token": eos}).to_string();
    Tokenizer::from_hf(&tokenizer_json, Some(config.as_bytes()), Some(template), "models/hostile").unwrap()
}

#[test]
fn real_templates_render_like_transformers() {
    let r = json("chat_templates/reference.json");
    let cases = r["cases"].as_array().expect("cases");
    let mut templates = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["template"].as_str().unwrap();
        templates.insert(name);
        let source = std::fs::read_to_string(fixture(&format!("chat_templates/{name}.jinja"))).unwrap();
        let t = with_template(&source, case["bos_token"].as_str().unwrap(), case["eos_token"].as_str().unwrap());
        let messages: Vec<(String, String)> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_str().unwrap().to_string()))
            .collect();
        let got = t.apply_chat_template(&messages, case["add_generation_prompt"].as_bool().unwrap());
        match (case.get("rendered").and_then(|v| v.as_str()), case.get("error").and_then(|v| v.as_str())) {
            (Some(want), _) => assert_eq!(got.unwrap(), want, "{name}: {messages:?}"),
            (None, Some(raised)) => {
                let e = got.unwrap_err().to_string();
                assert!(e.contains(raised) && e.contains("models/hostile/chat_template.jinja"), "{name}: {e}");
            }
            _ => panic!("{name}: a case with neither a render nor an error"),
        }
    }
    let want = ["gemma2", "gemma3", "llama3", "mistral", "phi3", "qwen3", "smollm2"];
    assert_eq!(templates.into_iter().collect::<Vec<_>>(), want);
    assert_eq!(cases.len(), 3 * want.len());
}

/// A tiny byte-level BPE GGUF whose only interesting metadata is the architecture and,
/// maybe, a chat template.
fn gguf_with(arch: &str, template: Option<&str>) -> Tokenizer {
    let mut kv: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", 8, gguf_string(arch)),
        ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
        ("tokenizer.ggml.tokens", 9, string_array(&["a", "b", "ab", "<bos>"])),
        ("tokenizer.ggml.merges", 9, string_array(&["a b"])),
        ("tokenizer.ggml.bos_token_id", 4, 3u32.to_le_bytes().to_vec()),
    ];
    if let Some(t) = template {
        kv.push(("tokenizer.chat_template", 8, gguf_string(t)));
    }
    Tokenizer::from_gguf(&Gguf::parse("hostile.gguf", &tiny_gguf(&kv)).unwrap()).unwrap()
}

#[test]
fn gguf_without_template_gets_the_architecture_default() {
    let r = json("chat_templates/reference.json");
    let t = gguf_with("gemma3", None);
    assert!(t.chat_template_is_default());
    assert!(t.chat_template_origin().contains("gemma3") && t.chat_template_origin().contains("hostile.gguf"), "{}", t.chat_template_origin());
    // The default for Gemma is Gemma 3's own template: the same renders as transformers'.
    for case in r["cases"].as_array().unwrap().iter().filter(|c| c["template"] == "gemma3") {
        let messages: Vec<(&str, &str)> = case["messages"].as_array().unwrap().iter().map(|m| (m[0].as_str().unwrap(), m[1].as_str().unwrap())).collect();
        let got = t.apply_chat_template(&messages, case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "{messages:?}");
    }
    // A file's own template is used as it is; an architecture with no default has none.
    let own = gguf_with("gemma3", Some("{{ messages[0].content }}!"));
    assert!(!own.chat_template_is_default());
    assert_eq!(own.apply_chat_template(&[("user", "hi")], true).unwrap(), "hi!");
    let e = gguf_with("gpt2", None).apply_chat_template(&[("user", "hi")], true).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
}

/// Peak resident memory of this test process so far (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok());
    kb.unwrap_or(0) * 1024
}

/// Renders `template` from a GGUF's metadata and from a folder's chat_template.jinja; both
/// must fail within `seconds` with every needle in the message, which names the template.
fn expect_refused(template: &str, needles: &[&str]) {
    let from_gguf = gguf_with("llama", Some(template));
    let from_folder = with_template(template, "<s>", "</s>");
    for (t, origin) in [(from_gguf, "hostile.gguf: tokenizer.chat_template"), (from_folder, "models/hostile/chat_template.jinja")] {
        let started = Instant::now();
        let e = t.apply_chat_template(&[("user", "hi")], true).unwrap_err().to_string();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{origin}: took {took:?}");
        assert!(e.contains(origin), "the message should name {origin}: {e}");
        for n in needles {
            assert!(e.contains(n), "the message should say {n:?}: {e}");
        }
        eprintln!("{origin}: refused in {took:?}: {e}");
    }
    let peak = peak_rss();
    assert!(peak < 1 << 30, "peak memory of the test process reached {peak} bytes");
}

#[test]
fn endless_loops_run_out_of_fuel() {
    let nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x";
    expect_refused(nested, &["budget", &TEMPLATE_FUEL.to_string()]);
}

#[test]
fn huge_output_is_capped() {
    let huge = "{% set s = 'x' * 100000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}";
    expect_refused(huge, &["limit", &MAX_RENDERED_BYTES.to_string()]);
}

#[test]
fn a_long_string_printed_inside_a_list_is_capped() {
    // The fuzzer's find (fuzz/regressions/chat_template/list-of-a-long-string-id-000000.bin): an
    // 18.8 MB string inside a list, printed; the list's text is built whole before it is written.
    let listed = "{{- ['Jsma\u{0}\u{f}t' * 2688750] }}";
    expect_refused(listed, &["limit"]);
}

#[test]
fn huge_source_is_refused_before_parsing() {
    // 50 MB of text, as in issue 15. In a GGUF the file's reader refuses it first (metadata
    // strings are bounded at 16 MiB), naming the key; from a folder, the template's own cap does.
    let source = "x".repeat(50_000_000);
    let started = Instant::now();
    let mut kv: Vec<(&str, u32, Vec<u8>)> = vec![("general.architecture", 8, gguf_string("llama")), ("tokenizer.ggml.model", 8, gguf_string("gpt2"))];
    kv.push(("tokenizer.chat_template", 8, gguf_string(&source)));
    let e = Gguf::parse("hostile.gguf", &tiny_gguf(&kv)).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("hostile.gguf") && e.contains("tokenizer.chat_template") && e.contains("50000000 bytes"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let t = with_template(&source, "<s>", "</s>");
    let e = t.apply_chat_template(&[("user", "hi")], true).unwrap_err().to_string();
    for n in ["models/hostile/chat_template.jinja", "50000000 bytes", &MAX_TEMPLATE_BYTES.to_string()] {
        assert!(e.contains(n), "the message should say {n:?}: {e}");
    }
    let peak = peak_rss();
    assert!(peak < 1 << 30, "peak memory of the test process reached {peak} bytes");
}

#[test]
fn deep_recursion_is_refused() {
    let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let e = with_template(recursive, "<s>", "</s>").apply_chat_template(&[("user", "hi")], true).unwrap_err().to_string();
    assert!(e.contains("models/hostile/chat_template.jinja") && e.contains("recursion"), "{e}");
}

#[test]
fn a_template_that_renders_nothing_says_so() {
    for empty in ["", "{% if false %}x{% endif %}", "  \n  "] {
        let e = with_template(empty, "<s>", "</s>").apply_chat_template(&[("user", "a real prompt")], true).unwrap_err().to_string();
        assert!(e.contains("rendered nothing") && e.contains("models/hostile/chat_template.jinja") && !e.contains("prompt"), "{e}");
    }
}

#[test]
fn invalid_utf8_template_file_is_an_error_naming_it() {
    let e = quill::tokenizer::template_text(b"{{ bos_token }}\xff\xfe".to_vec(), "models/x/chat_template.jinja").unwrap_err().to_string();
    assert!(e.contains("models/x/chat_template.jinja") && e.contains("UTF-8") && e.contains("offset 15"), "{e}");
    assert_eq!(quill::tokenizer::template_text(b"ok".to_vec(), "f").unwrap(), "ok");
}
