//! The writer's `quill write`: greedy decoding with the default settings against transformers,
//! token probabilities after the sampler chain, and banned phrases with backtracking.

mod common;

use std::process::Command;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::models::load::LoadOptions;
use quill::sampling::{processed_probs, Mirostat, SamplingParams};
use quill::writer::{write, BannedPhrases, Event, WriteOptions};

fn quill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quill")).args(args).output().expect("run quill")
}

/// `quill write --temperature 0` with every other setting at its default is plain greedy
/// decoding (no repetition penalty, as in llama.cpp): transformers' greedy text from
/// reference.json, token for token up to the first step whose reference margin is below 0.1
/// (the native Q4_1 weights move logits by up to that much; tests/models.rs uses the same).
#[test]
fn greedy_with_the_defaults_is_transformers_greedy() {
    if test_context().is_none() {
        return;
    }
    let Some(model) = smollm2_path() else { return };
    let reference = json("smollm2/reference.json");
    let p = &reference["prompts"]["once_upon"];
    let margins: Vec<f64> = p["greedy_steps"].as_array().unwrap().iter().map(|s| s["margin"].as_f64().unwrap()).collect();
    let exact = margins.iter().position(|&m| m < 0.1).unwrap_or(margins.len());
    assert!(exact >= 20, "reference.json: only {exact} high-margin steps");
    let greedy = ids(&p["greedy_ids"]);
    let json_bytes = std::fs::read(fixture("smollm2/tokenizer.json")).unwrap();
    let tok = quill::tokenizer::Tokenizer::from_hf(&json_bytes, None, None, "smollm2").unwrap();
    let want = tok.decode(&greedy[..exact]).unwrap();
    let o = quill(&["write", "--model", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", &exact.to_string(), "--ignore-eos", p["text"].as_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("sampling: greedy (temperature 0), no repeat penalty"), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'), want, "greedy text of the first {exact} tokens");
}

/// --probs: one JSON line per generated token; the tokens' texts make up stdout, each token's
/// p is that of its place among the alternatives, which are sorted and never more than asked.
#[test]
fn probs_are_json_lines_of_every_token() {
    if test_context().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("quill-probs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("probs.jsonl");
    let tiny = fixture("llama-tiny").display().to_string();
    let o = quill(&["write", "--model", &tiny, "--max-tokens", "9", "--ignore-eos", "--seed", "4", "--probs", file.to_str().unwrap(), "--probs-top", "3", "Permission is"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9);
    let mut text = String::new();
    for l in &lines {
        let p = l["p"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0 + 1e-6, "{l}");
        let top = l["top"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{l}");
        let ps: Vec<f64> = top.iter().map(|t| t["p"].as_f64().unwrap()).collect();
        assert!(ps.windows(2).all(|w| w[0] >= w[1]), "{l}");
        if let Some(same) = top.iter().find(|t| t["token"] == l["token"]) {
            assert_eq!(same["p"], l["p"], "{l}");
        } else {
            assert!(p <= ps[ps.len() - 1], "{l}: not among the top, yet likelier than them");
        }
        text += l["text"].as_str().unwrap();
    }
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'), text);
    // More than 20 alternatives is refused before anything loads.
    let o = quill(&["write", "--model", &tiny, "--probs", "--probs-top", "21", "hi"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--probs-top"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The probabilities the session reports for each token equal the CPU reference's softmax of
/// the processed logits (the chain applied to the logits of that step) within 1e-4.
#[test]
fn token_probs_equal_the_reference_of_the_processed_logits() {
    let Some(ctx) = test_context() else { return };
    let model = quill::files::load_model_with(ctx, &fixture("llama-tiny"), &LoadOptions::default(), &mut no_progress).unwrap();
    let prompt = model.tokenizer.encode("Permission is hereby granted").unwrap();
    let settings = [
        SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.9, seed: 3, ..SamplingParams::greedy() },
        SamplingParams { temperature: 1.2, typical_p: 0.8, min_p: 0.02, seed: 8, ..SamplingParams::greedy() },
        SamplingParams { temperature: 1.0, mirostat_tau: 3.0, seed: 5, ..SamplingParams::greedy() },
        SamplingParams::greedy(),
    ];
    for s in settings {
        let mut session = Session::new(ctx, &model, 32).unwrap();
        let mut reference = Session::new(ctx, &model, 32).unwrap();
        session.push(&prompt).unwrap();
        let id = session.next_token(&s).unwrap();
        let got = session.token_probs(&s, 5).unwrap();
        reference.push(&prompt).unwrap();
        let logits = reference.logits_last().unwrap();
        let want = processed_probs(&logits, &prompt, &SamplingParams { repeat_last_n: 0, ..s.clone() }, 0, Mirostat::new(&s).mu);
        assert!((got.p as f64 - want[id as usize]).abs() <= 1e-4, "{s:?}: p({id}) {} vs {}", got.p, want[id as usize]);
        for &(alt, p) in &got.top {
            assert!((p as f64 - want[alt as usize]).abs() <= 1e-4, "{s:?}: p({alt}) {p} vs {}", want[alt as usize]);
        }
        let kept = want.iter().filter(|&&p| p > 0.0).count();
        assert_eq!(got.top.len(), kept.min(5), "{s:?}");
    }
}

/// Texts of 20 seeded runs of `prompt`, each up to `tokens` tokens, with `banned`; and the
/// number of times the writer backed up.
fn runs(session: &mut Session, prompt: &[u32], banned: &[&str], tokens: usize) -> (Vec<String>, usize) {
    let banned = BannedPhrases::new(&banned.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let opts = WriteOptions { banned, ban_retries: 8, probs_top: None, max_tokens: tokens, ignore_eos: true };
    let mut backtracks = 0;
    let texts = (1..=20u64)
        .map(|seed| {
            let s = SamplingParams { seed, ..SamplingParams::default() };
            let mut text = String::new();
            let (_, _, b) = write(session, prompt, &s, &opts, |e| {
                match e {
                    Event::Token { text: t, .. } => text.push_str(t),
                    Event::GaveUp { phrase, .. } => panic!("seed {seed}: gave up on {phrase:?}"),
                }
                true
            })
            .unwrap();
            backtracks += b;
            text
        })
        .collect();
    (texts, backtracks)
}

/// A phrase seeded SmolLM2 writes in at least 5 of 20 runs (default sampling) appears in none
/// of 20 runs with `--ban`, and those texts go on (words, no broken characters). Runs are
/// short (6 tokens), in one session.
#[test]
fn a_banned_phrase_never_appears_and_the_text_goes_on() {
    if test_context().is_none() {
        return;
    }
    let Some(path) = smollm2_path() else { return };
    let ctx = test_context().unwrap();
    let model = quill::files::load_model_with(ctx, &path, &LoadOptions::default(), &mut no_progress).unwrap();
    let mut session = Session::new(ctx, &model, 48).unwrap();
    let prompt = model.tokenizer.encode("She leaned closer, her voice barely above a").unwrap();
    let phrase = "whisper";
    let has = |t: &String| t.to_lowercase().contains(phrase);
    let (free, _) = runs(&mut session, &prompt, &[], 6);
    let (banned, backtracks) = runs(&mut session, &prompt, &[phrase], 6);
    let n_free = free.iter().filter(|t| has(t)).count();
    let n_banned = banned.iter().filter(|t| has(t)).count();
    eprintln!("'{phrase}' in {n_free} of 20 runs without the ban, {n_banned} of 20 with it ({backtracks} backtracks)");
    for (a, b) in free.iter().zip(&banned) {
        eprintln!("  {a:?}\n  -> {b:?}");
    }
    assert!(n_free >= 5, "the phrase should be common without the ban: {free:?}");
    assert_eq!(n_banned, 0, "{banned:?}");
    assert!(backtracks >= n_free, "each run that wrote the phrase must have backed up");
    // Every text goes on (a word, no broken character), and nearly all with two words or
    // more in their 6 tokens (a 135M model sometimes makes one up where the phrase would be).
    let words = |t: &String| t.split_whitespace().filter(|w| w.chars().any(|c| c.is_alphabetic())).count();
    for t in &banned {
        assert!(words(t) >= 1 && !t.contains('\u{FFFD}'), "not a continuation: {t:?}");
    }
    let fluent = banned.iter().filter(|t| words(t) >= 2).count();
    assert!(fluent >= 15, "only {fluent} of 20 texts go on for two words: {banned:?}");
}
