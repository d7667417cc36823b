//! The `quill` binary end to end: streaming output, reproducibility, and bad input (each a
//! message naming the problem, a non-zero exit, no panic). Uses the llama-tiny fixture so it
//! runs in seconds on lavapipe.

mod common;

use std::process::{Command, Output};

use common::*;

fn quill(args: &[&str]) -> Output {
    quill_env(args, &[])
}

fn quill_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quill"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run quill")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with the output shown when quill panicked or succeeded where it should not.
fn expect_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}; stderr:\n{err}", o.status);
    assert!(!err.contains("panicked"), "quill panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}:\n{err}");
    }
}

fn has_gpu() -> bool {
    quill::gpu::context::test_context().is_some()
}

fn tiny() -> String {
    fixture("llama-tiny").display().to_string()
}

#[test]
fn writes_only_generated_text_to_stdout_and_a_summary_to_stderr() {
    if !has_gpu() {
        return;
    }
    let o = quill(&["write", "--model", &tiny(), "--temperature", "0", "--max-tokens", "12", "--ignore-eos", "The license grants"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(!out.trim().is_empty(), "no text generated");
    assert!(!out.contains("loading") && !out.contains("tok/s"), "stdout has more than the text:\n{out}");
    for field in ["prompt tokens:", "time to first token:", "prefill:", "decode:"] {
        assert!(err.contains(field), "summary lacks {field}:\n{err}");
    }

    // The same text as the library produces for the same prompt.
    let ctx = quill::gpu::context::test_context().unwrap();
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let ids = model.tokenizer.encode("The license grants").unwrap();
    let mut s = quill::generate::Session::new(ctx, &model, 256).unwrap();
    let mut gen = Vec::new();
    s.generate(&ids, &quill::sampling::SamplingParams::greedy(), 12, true, |id| {
        gen.push(id);
        true
    })
    .unwrap();
    assert_eq!(out.strip_suffix('\n').unwrap(), model.tokenizer.decode(&gen).unwrap());

    let echoed = quill(&["write", "--model", &tiny(), "--temperature", "0", "--max-tokens", "12", "--ignore-eos", "--echo", "The license grants"]);
    assert_eq!(stdout(&echoed), format!("The license grants{out}"));
}

#[test]
fn same_seed_same_text() {
    if !has_gpu() {
        return;
    }
    let run = |seed: &str| {
        let o = quill(&["write", "--model", &tiny(), "--seed", seed, "--temperature", "1.0", "--max-tokens", "24", "--ignore-eos", "Permission is hereby"]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = run("42");
    assert_eq!(a, run("42"), "same seed, different text");
    assert_ne!(a, run("43"), "another seed gave the same 24 tokens");
}

#[test]
fn dry_and_xtc_change_the_text_and_stay_seeded() {
    if !has_gpu() {
        return;
    }
    let model = tiny();
    let run = |extra: &[&str]| {
        let mut a = vec!["write", "--model", &model, "--max-tokens", "32", "--ignore-eos", "--seed", "5"];
        a.extend_from_slice(extra);
        a.push("The license grants");
        let o = quill(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let plain = run(&["--temperature", "0"]);
    // Greedy text from a tiny model repeats itself; a strong DRY penalty breaks the loop.
    let dry = run(&["--temperature", "0", "--dry-multiplier", "8", "--dry-allowed-length", "1"]);
    assert_ne!(plain, dry, "DRY did not change greedy text");
    // A huge bias on one id makes greedy text that id over and over.
    let biased = run(&["--temperature", "0", "--logit-bias", "100=1000"]);
    let once = stdout(&quill(&["write", "--model", &model, "--temperature", "0", "--logit-bias", "100=1000", "--max-tokens", "1", "--ignore-eos", "The license grants"]));
    let (biased, once) = (biased.trim_end(), once.trim_end());
    assert!(!once.is_empty() && biased == once.repeat(32), "{biased:?} is not 32 times {once:?}");
    expect_error(&quill(&["write", "--model", &model, "--logit-bias", "99999999=1", "hi"]), &["--logit-bias", "99999999"]);
    let xtc = ["--temperature", "1", "--xtc-probability", "1", "--xtc-threshold", "0.05"];
    assert_eq!(run(&xtc), run(&xtc), "XTC with one seed gave two texts");
}

/// llama-tiny in a temporary directory, with `generation_config` as its generation_config.json.
fn tiny_with_generation_config(name: &str, generation_config: &str) -> std::path::PathBuf {
    tiny_with(&format!("genconfig-{name}"), "generation_config.json", generation_config.as_bytes())
}

/// llama-tiny in a temporary directory, with one more file `file` holding `contents`.
fn tiny_with(name: &str, file: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("quill-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("llama-tiny").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join(file), contents).unwrap();
    dir
}

#[test]
fn sampling_defaults_come_from_generation_config() {
    if !has_gpu() {
        return;
    }
    let write = |model: &str, extra: &[&str]| {
        let mut a = vec!["write", "--model", model, "--max-tokens", "8", "--ignore-eos"];
        a.extend_from_slice(extra);
        a.push("Permission is");
        let o = quill(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let greedy = write(&tiny(), &["--temperature", "0"]);
    assert!(stderr(&greedy).contains("sampling: greedy"), "{}", stderr(&greedy));

    // do_sample: false is greedy without --temperature (whatever the seed).
    let dir = tiny_with_generation_config("greedy", r#"{"do_sample": false, "eos_token_id": 0}"#);
    let model = dir.display().to_string();
    for seed in ["1", "2"] {
        let o = write(&model, &["--seed", seed]);
        assert_eq!(stdout(&o), stdout(&greedy), "do_sample: false should decode greedily");
        assert!(stderr(&o).contains("sampling: greedy (temperature 0), no repeat penalty (do_sample from generation_config.json)"), "{}", stderr(&o));
    }
    // An explicit --temperature wins over the model's do_sample: false.
    let o = write(&model, &["--temperature", "1.0", "--seed", "3"]);
    let err = stderr(&o);
    assert!(err.contains("sampling: temperature 1, top-k 40,") && !err.contains("from generation_config.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();

    // Sampling settings the model gives apply where no flag is given.
    let dir = tiny_with_generation_config("sampled", r#"{"do_sample": true, "temperature": 0.5, "top_k": 7, "repetition_penalty": 1.0}"#);
    let o = write(&dir.display().to_string(), &["--seed", "3", "--top-k", "9"]);
    let err = stderr(&o);
    assert!(
        err.contains("sampling: temperature 0.5, top-k 9, top-p 0.95, min-p 0.05, no repeat penalty (temperature, repetition_penalty from generation_config.json)"),
        "{err}"
    );
    // A value quill cannot use names the file and the way out.
    std::fs::write(dir.join("generation_config.json"), r#"{"top_p": 0.0}"#).unwrap();
    let o = quill(&["write", "--model", &dir.display().to_string(), "--max-tokens", "2", "hi"]);
    expect_error(&o, &["generation_config.json", "--top-p"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_states_the_sampling_defaults() {
    let o = quill(&["write", "--help"]);
    let help = stdout(&o);
    let d = quill::sampling::SamplingParams::default();
    for (flag, default) in [
        ("--temperature", d.temperature.to_string()),
        ("--top-k", d.top_k.to_string()),
        ("--top-p", d.top_p.to_string()),
        ("--min-p", d.min_p.to_string()),
        ("--repeat-penalty", d.repeat_penalty.to_string()),
    ] {
        let text = help.split(&format!("{flag} <")).nth(1).unwrap_or_else(|| panic!("{flag} missing from help:\n{help}"));
        let text = &text[..text.find("\n      --").unwrap_or(text.len())];
        assert!(text.contains("generation_config.json") && text.contains(&format!("else {default}]")), "{flag}: {text}");
    }
}

#[test]
fn info_prints_adapter_and_limits() {
    if !has_gpu() {
        return;
    }
    let o = quill(&["info", "--model", &tiny()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for field in ["adapter:", "backend:", "driver:", "features used:", "max_storage_buffer_binding_size", "architecture: llama", "layers: 2"] {
        assert!(out.contains(field), "info lacks {field}:\n{out}");
    }
}

#[test]
fn bad_model_files() {
    let dir = std::env::temp_dir().join(format!("quill-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |n: &str| dir.join(n).display().to_string();

    expect_error(&quill(&["write", "--model", &path("missing.gguf"), "hi"]), &["missing.gguf"]);

    std::fs::write(dir.join("empty.gguf"), b"").unwrap();
    expect_error(&quill(&["write", "--model", &path("empty.gguf"), "hi"]), &["empty.gguf", "empty"]);

    std::fs::write(dir.join("garbage.gguf"), b"\x89PNG\r\n\x1a\n this is not a model at all").unwrap();
    expect_error(&quill(&["write", "--model", &path("garbage.gguf"), "hi"]), &["garbage.gguf", "not a GGUF"]);

    // A real GGUF cut short: the header parses, the tensor data is gone.
    if let Some(real) = smollm2_path() {
        use std::io::Read;
        let mut head = vec![0u8; 3 << 20];
        std::fs::File::open(real).unwrap().read_exact(&mut head).unwrap();
        std::fs::write(dir.join("truncated.gguf"), &head).unwrap();
        expect_error(&quill(&["write", "--model", &path("truncated.gguf"), "hi"]), &["truncated.gguf", "truncated"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_prompts() {
    let dir = std::env::temp_dir().join(format!("quill-prompt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"Once upon a \xff\xfe time").unwrap();
    expect_error(&quill(&["write", "--model", &tiny(), "--prompt-file", bad.to_str().unwrap()]), &["--prompt-file", "bad.txt", "UTF-8", "offset 12"]);
    expect_error(&quill(&["write", "--model", &tiny(), "--prompt-file", dir.join("nope.txt").to_str().unwrap()]), &["nope.txt"]);
    expect_error(&quill(&["write", "--model", &tiny()]), &["PROMPT"]);
    std::fs::remove_dir_all(&dir).ok();

    if has_gpu() {
        // 40 words do not fit a context of 16 positions: an error, not a silent truncation.
        let long = "the quick brown fox jumps over the lazy dog ".repeat(5);
        expect_error(&quill(&["write", "--model", &tiny(), "--ctx", "16", &long]), &["context", "--ctx"]);
        expect_error(&quill(&["write", "--model", &tiny(), "--ctx", "100000", "hi"]), &["--ctx", "256"]);
    }
}

#[test]
fn nonsensical_sampling_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["--temperature", "-1"], "--temperature"),
        (&["--temperature", "NaN"], "--temperature"),
        (&["--top-p", "0"], "--top-p"),
        (&["--top-p", "1.5"], "--top-p"),
        (&["--min-p", "1"], "--min-p"),
        (&["--repeat-penalty", "0"], "--repeat-penalty"),
        (&["--max-tokens", "0"], "--max-tokens"),
        (&["--dry-multiplier", "-1"], "--dry-multiplier"),
        (&["--dry-base", "0.5"], "--dry-base"),
        (&["--xtc-probability", "2"], "--xtc-probability"),
        (&["--top-n-sigma", "-1"], "--top-n-sigma"),
        (&["--dynatemp-range", "-1"], "--dynatemp-range"),
        (&["--dynatemp-exp", "0"], "--dynatemp-exp"),
        (&["--logit-bias", "abc"], "--logit-bias"),
        (&["--logit-bias", "3=nan"], "--logit-bias"),
    ];
    for (args, name) in cases {
        let mut a = vec!["write", "--model", "does-not-matter.gguf"];
        a.extend_from_slice(args);
        a.push("hi");
        expect_error(&quill(&a), &[name]);
    }
    expect_error(&quill(&["write", "--dtype", "q3_k", "--model", "x.gguf", "hi"]), &["--dtype", "q3_k", "native, f32, f16, q8_0"]);
    expect_error(&quill(&["bench", "--gen-tokens", "0", "--model", "x.gguf"]), &["--gen-tokens"]);
    // Not a number at all: clap's own message and exit code 2.
    let o = quill(&["write", "--top-k", "many", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--top-k"));
}

/// `quill bench` on llama-tiny: one JSON object with llama-bench's figures, and every weight
/// storage type (`--dtype`) writes the same greedy text on this tiny f32 model within rounding.
#[test]
fn bench_prints_one_json_object() {
    if !has_gpu() {
        return;
    }
    let o = quill(&["bench", "--model", &tiny(), "--prompt-tokens", "20", "--gen-tokens", "6", "--json", "--dtype", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    for key in ["prefill_tok_s", "decode_tok_s", "time_to_first_token_ms", "load_s", "peak_gpu_bytes", "weight_bytes"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    assert_eq!(v["gen_tokens"], 6);
    assert!(v["weights"].as_str().unwrap().contains("Q8_0"), "{v}");

    // --batch: rounds of single and batched decode, the cost the median of their ratios.
    let o = quill(&["bench", "--model", &tiny(), "--prompt-tokens", "5", "--gen-tokens", "4", "--batch", "3", "--rounds", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    let b = &v["batch"];
    assert_eq!(b["sequences"], 3);
    let mut costs: Vec<f64> = b["rounds"].as_array().unwrap().iter().map(|r| r["cost"].as_f64().unwrap()).collect();
    assert_eq!(costs.len(), 3, "{v}");
    costs.sort_by(f64::total_cmp);
    assert_eq!(b["cost_per_token_vs_single"].as_f64(), Some(costs[1]), "{v}");
    expect_error(&quill(&["bench", "--model", &tiny(), "--batch", "2", "--rounds", "0"]), &["--rounds"]);
}

#[test]
fn no_adapter_says_how_to_get_one() {
    // Asking for adapters by a name none has is the portable way to find none.
    let o = quill_env(&["info"], &[("WGPU_ADAPTER_NAME", "no-such-gpu-anywhere")]);
    expect_error(&o, &["no GPU", "no-such-gpu-anywhere"]);
    if cfg!(target_os = "linux") {
        // Linux builds have no DX12 backend: no adapter at all, and the lavapipe hint.
        let o = quill_env(&["info"], &[("WGPU_BACKEND", "dx12")]);
        expect_error(&o, &["no GPU", "mesa-vulkan-drivers"]);
    }
}

#[test]
fn missing_default_model_names_the_fetch_command() {
    let o = quill_env(&["write", "hi"], &[("QUILL_MODELS", "/nonexistent/quill-models")]);
    expect_error(&o, &["scripts/fetch-model.sh", "--model"]);
}

#[test]
fn a_ctx_beyond_the_memory_budget_names_the_bytes_and_what_fits() {
    if !has_gpu() {
        return;
    }
    // A 1 MiB budget holds llama-tiny's weights and a short context, not 256 positions.
    let o = quill_env(&["write", "--model", &tiny(), "--ctx", "256", "hi"], &[("QUILL_GPU_MEMORY", "1M")]);
    expect_error(&o, &["--ctx", "256 positions need", "bytes", "largest --ctx that fits is", "QUILL_GPU_MEMORY"]);
    let o = quill_env(&["write", "--model", &tiny(), "hi"], &[("QUILL_GPU_MEMORY", "lots")]);
    expect_error(&o, &["QUILL_GPU_MEMORY", "'lots'"]);
    // Without --ctx, the largest context that fits is used rather than the model's 256.
    let o = quill_env(&["write", "--model", &tiny(), "--max-tokens", "2", "--seed", "1", "hi"], &[("QUILL_GPU_MEMORY", "1M")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn chat_without_a_template_uses_the_architecture_default_and_says_so() {
    if !has_gpu() {
        return;
    }
    // qwen2-tiny's GGUF has no tokenizer.chat_template; Qwen's default is ChatML.
    let gguf = fixture("qwen2-tiny/model-f32.gguf").display().to_string();
    let o = quill(&["write", "--model", &gguf, "--chat", "--max-tokens", "1", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("chat template: quill's default chat template for qwen2"), "{}", stderr(&o));
}

#[test]
fn hostile_chat_templates_fail_fast_naming_the_file() {
    if !has_gpu() {
        return;
    }
    let endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x";
    let cases: [(&str, &[u8], &[&str]); 3] = [
        ("endless", endless.as_bytes(), &["chat_template.jinja", "budget"]),
        ("utf8", b"{{ bos_token }}\xff user", &["chat_template.jinja", "not UTF-8"]),
        ("empty", b"{% if false %}x{% endif %}", &["chat_template.jinja", "rendered nothing"]),
    ];
    for (name, template, needles) in cases {
        let dir = tiny_with(&format!("template-{name}"), "chat_template.jinja", template);
        let started = std::time::Instant::now();
        let o = quill(&["write", "--model", dir.to_str().unwrap(), "--chat", "--max-tokens", "1", "a fine prompt"]);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{name}: took {:?}", started.elapsed());
        expect_error(&o, needles);
        assert!(!stderr(&o).contains("is empty"), "{name}: blames the prompt: {}", stderr(&o));
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// `--drafts 3`: three continuations from one prefill and forked slots, under headers naming
/// seeds 42, 43, 44; draft i is the text a single `--seed 42 + i` run writes. Out of range: an
/// error naming the flag.
#[test]
fn drafts_are_labelled_with_their_seeds_and_match_single_runs() {
    if !has_gpu() {
        return;
    }
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["write", "--model", &tiny(), "--temperature", "1.0", "--max-tokens", "12", "--ignore-eos"].iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("Permission is hereby".into());
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let o = quill(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let drafts = run(&["--seed", "42", "--drafts", "3"]);
    for (i, seed) in ["42", "43", "44"].iter().enumerate() {
        let header = format!("--- draft {} (seed {seed}) ---\n", i + 1);
        let start = drafts.find(&header).unwrap_or_else(|| panic!("no header {header:?} in {drafts:?}")) + header.len();
        let text = drafts[start..].split("--- draft ").next().unwrap_or("");
        assert_eq!(text, run(&["--seed", seed]), "draft {} vs a single run with seed {seed}", i + 1);
    }
    // --drafts-jsonl streams the same drafts, interleaved as the batched steps make them.
    let lines: Vec<serde_json::Value> = run(&["--seed", "42", "--drafts", "3", "--drafts-jsonl"]).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    for (i, seed) in [42u64, 43, 44].iter().enumerate() {
        let mine: Vec<(usize, &serde_json::Value)> = lines.iter().enumerate().filter(|(_, l)| l["draft"] == i + 1).collect();
        assert!(mine.iter().all(|(_, l)| l["seed"] == *seed), "{mine:?}");
        let text: String = mine.iter().filter_map(|(_, l)| l["text"].as_str()).collect();
        let header = format!("--- draft {} (seed {seed}) ---\n", i + 1);
        let start = drafts.find(&header).unwrap() + header.len();
        assert_eq!(format!("{text}\n"), drafts[start..].split("--- draft ").next().unwrap_or(""), "draft {}", i + 1);
        let end = mine.last().expect("a stop line").1;
        assert_eq!((&end["stop"], &end["tokens"]), (&serde_json::json!("--max-tokens reached"), &serde_json::json!(12)), "{end}");
    }
    // Streamed: draft 2's first piece comes before draft 1's last.
    let pieces = |d: usize| lines.iter().enumerate().filter(move |(_, l)| l["draft"] == d && l["text"].is_string()).map(|(i, _)| i);
    assert!(pieces(2).next() < pieces(1).last(), "not interleaved: {lines:?}");
    let a = args(&["--drafts", "9"]);
    expect_error(&quill(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>()), &["--drafts", "9"]);
}
