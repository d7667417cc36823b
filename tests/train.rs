//! Training you can use: adapters merged at load (PEFT's fixture against PEFT's loss, quill's
//! own saves round-tripping exactly, GGUF LoRA on a GGUF base), and the `finetune` / `train`
//! commands end to end on llama-tiny, with their bad-input errors.
//!
//! References: tests/fixtures/train (made by make_train_fixtures.py with PyTorch + PEFT):
//! lora/ is a PEFT adapter of llama-tiny; lora_grads.safetensors' metadata holds PEFT's loss of
//! batch.json's two sequences with that adapter. peft-logits/ (scripts/make-peft-fixture.py):
//! another PEFT adapter and PEFT's logits of a prompt with it.

mod common;
#[path = "common/golden.rs"]
#[allow(dead_code)]
mod golden;

use std::path::Path;
use std::process::Command;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::train::adapter::LoraAdapter;

fn load(ctx: &Context, model: &Path, lora: Option<&Path>) -> quill::Result<LoadedModel> {
    quill::files::load_model_lora(ctx, model, &Default::default(), lora.map(|p| (p, 1.0)), &mut no_progress)
}

/// Every position's logits of `ids`.
fn logits(ctx: &Context, model: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(ctx, model, 64).unwrap();
    s.push(ids).unwrap();
    s.logits_all().unwrap()
}

fn batch() -> Vec<Vec<u32>> {
    json("train/batch.json")["input_ids"].as_array().unwrap().iter().map(ids).collect()
}

/// Mean next-token NLL over the sequences' targets, from the model's logits.
fn mean_nll(ctx: &Context, model: &LoadedModel, seqs: &[Vec<u32>]) -> f64 {
    let vocab = model.config().vocab;
    let mut total = (0.0, 0);
    for s in seqs {
        let l = logits(ctx, model, &s[..s.len() - 1]);
        for (t, &target) in s[1..].iter().enumerate() {
            total.0 += quill::perplexity::nll(&l[t * vocab..(t + 1) * vocab], target);
            total.1 += 1;
        }
    }
    total.0 / total.1 as f64
}

fn peft_loss() -> f64 {
    let bytes = std::fs::read(fixture("train/lora_grads.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()["loss"].parse().unwrap()
}

#[test]
fn peft_fixture_merged_at_load_gives_pefts_loss() {
    let Some(ctx) = test_context() else { return };
    let base = fixture("llama-tiny");
    let model = load(ctx, &base, Some(&fixture("train/lora"))).unwrap();
    let (got, want) = (mean_nll(ctx, &model, &batch()), peft_loss());
    // The loss is the mean of the logits' log-softmax: f32 logits within 1e-4 keep it within 1e-5.
    assert!((got - want).abs() <= 1e-5 * want, "merged PEFT adapter: loss {got}, PEFT's {want}");
    let plain = mean_nll(ctx, &load(ctx, &base, None).unwrap(), &batch());
    assert!((plain - want).abs() > 1e-3, "the adapter must change the loss ({plain} vs {want})");
}

#[test]
fn peft_made_adapter_gives_pefts_logits() {
    // scripts/make-peft-fixture.py: rank 3, alpha 7, q/v/o/down only, B random; PEFT's logits of
    // every position of a 23-token prompt. quill merges W += (7/3)·B·A at load: the logits agree
    // within 1e-4 (abs + rel; natively the worst is ~1e-6, f32 sums in another order).
    let Some(ctx) = test_context() else { return };
    let dir = fixture("train/peft-logits");
    let prompt = ids(&json("train/peft-logits/prompt.json")["input_ids"]);
    let bytes = std::fs::read(dir.join("logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data()) };
    let (want, base) = (tensor("logits"), tensor("base_logits"));
    let got = logits(ctx, &load(ctx, &fixture("llama-tiny"), Some(&dir.join("adapter"))).unwrap(), &prompt);
    golden::check_close(&got, &want, 1e-4, 1e-4, "llama-tiny + PEFT's adapter");
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    let moved = want.iter().zip(&base).map(|(w, b)| (w - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.1, "the adapter must move the logits (max change {moved})");
    eprintln!("PEFT-made adapter: worst |quill - PEFT| logit {worst:.2e} (the adapter moves them by up to {moved:.3})");
}

#[test]
fn saved_adapters_load_back_to_identical_logits() {
    let Some(ctx) = test_context() else { return };
    let dir = tempdir("roundtrip");
    let cfg_bytes = std::fs::read(fixture("llama-tiny/config.json")).unwrap();
    let cfg = quill::models::registry::from_hf_json(&cfg_bytes, "config.json").unwrap().1;
    let ad = LoraAdapter::from_peft(&std::fs::read(fixture("train/lora/adapter_config.json")).unwrap(), &std::fs::read(fixture("train/lora/adapter_model.safetensors")).unwrap(), "lora").unwrap();
    let (config, weights) = ad.to_peft("llama-tiny").unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("adapter.gguf"), ad.to_gguf(&cfg)).unwrap();
    let ids = &batch()[0][..20];
    let want = logits(ctx, &load(ctx, &fixture("llama-tiny"), Some(&fixture("train/lora"))).unwrap(), ids);
    let peft = logits(ctx, &load(ctx, &fixture("llama-tiny"), Some(&dir)).unwrap(), ids);
    assert_eq!(peft, want, "quill's PEFT save, loaded again");
    let gguf = logits(ctx, &load(ctx, &fixture("llama-tiny"), Some(&dir.join("adapter.gguf"))).unwrap(), ids);
    assert_eq!(gguf, want, "quill's GGUF LoRA save, loaded again");
    // On llama-tiny's GGUF (Q/K rows permuted for llama.cpp's RoPE) the adapter's lora_b rows
    // are permuted likewise: the same logits within f32 rounding of the different RoPE order.
    let on_gguf = logits(ctx, &load(ctx, &fixture("llama-tiny/model-f32.gguf"), Some(&dir.join("adapter.gguf"))).unwrap(), ids);
    golden::check_close(&on_gguf, &want, 1e-4, 1e-4, "GGUF LoRA on the GGUF base");
}

#[test]
fn an_adapter_for_another_model_names_the_tensor_and_shapes() {
    let Some(ctx) = test_context() else { return };
    let dir = tempdir("mismatch");
    let mut ad = LoraAdapter::from_peft(&std::fs::read(fixture("train/lora/adapter_config.json")).unwrap(), &std::fs::read(fixture("train/lora/adapter_model.safetensors")).unwrap(), "lora").unwrap();
    // As if made for a model 32 wide: v_proj of layer 1 reads 32 inputs.
    let v = ad.layers[1][2].as_mut().unwrap();
    v.inp = 32;
    v.a.truncate(ad.rank * 32);
    let (config, weights) = ad.to_peft("other").unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
    let e = load(ctx, &fixture("llama-tiny"), Some(&dir)).err().unwrap().to_string();
    assert!(e.contains("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight") && e.contains("[32, 32]") || e.contains("[32, 64]"), "{e}");
    assert!(e.contains("model.layers.1.self_attn.v_proj.weight") && e.contains("another model"), "{e}");
    // The CLI says the same and fails.
    let o = quill(&["perplexity", "--model", fixture("llama-tiny").to_str().unwrap(), "--lora", dir.to_str().unwrap(), "some text"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("v_proj.lora_B.weight"), "{}", String::from_utf8_lossy(&o.stderr));
}

fn quill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quill")).args(args).output().unwrap()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("quill-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A text of about `n` bytes (sentences cycling through a few words) for the CLI runs.
fn text(n: usize) -> String {
    let words = ["the", "keeper", "lit", "a", "lamp", "and", "watched", "ships", "pass", "by", "night"];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s += words[i % words.len()];
        s += if i % 7 == 6 { ".\n" } else { " " };
        i += 1;
    }
    s
}

#[test]
fn finetune_writes_adapters_that_write_and_resume() {
    if test_context().is_none() {
        return;
    }
    let dir = tempdir("finetune");
    let data = dir.join("text.txt");
    std::fs::write(&data, text(3000)).unwrap();
    let out = dir.join("adapter");
    let base = fixture("llama-tiny");
    let run = |extra: &[&str]| {
        let mut args = vec!["finetune", "--model", base.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--seq-len", "32", "--batch", "2", "--lora-rank", "4", "--eval-every", "3"];
        args.extend_from_slice(extra);
        quill(&args)
    };
    let o = run(&["--steps", "6", "--lr", "1e-2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("trained 6 steps") && err.contains("held-out"), "{err}");
    for f in ["adapter_config.json", "adapter_model.safetensors", "adapter.gguf", "loss.svg", "checkpoint.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    // The adapter changes what the model writes, and the PEFT and GGUF saves agree.
    let write = |lora: &Path| {
        let o = quill(&["write", "--model", base.to_str().unwrap(), "--lora", lora.to_str().unwrap(), "--temperature", "0", "--max-tokens", "8", "--ignore-eos", "the keeper"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(write(&out), write(&out.join("adapter.gguf")));
    // --resume continues from step 6 to 9 (the checkpoint's history), not from 0.
    let o = run(&["--steps", "9", "--lr", "1e-2", "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("resuming at step 6") && err.contains("trained 9 steps"), "{err}");
    // Resuming with other adapter settings is refused.
    let o = run(&["--steps", "12", "--resume", "--lora-alpha", "3"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("alpha"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn finetune_refuses_bad_data_and_lengths() {
    if test_context().is_none() {
        return;
    }
    let dir = tempdir("bad");
    let base = fixture("llama-tiny");
    let run = |data: &str, extra: &[&str]| {
        let path = dir.join("data.txt");
        std::fs::write(&path, data).unwrap();
        let mut args = vec!["finetune", "--model", base.to_str().unwrap(), "--data", path.to_str().unwrap(), "--out", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = quill(&args);
        // An empty string for a run that succeeds, its error otherwise.
        match o.status.success() {
            true => String::new(),
            false => String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let e = run("", &["--steps", "2"]);
    assert!(e.contains("has 0 tokens"), "{e}");
    let e = run("a few words", &["--seq-len", "32"]);
    assert!(e.contains("needs at least 65"), "{e}");
    let e = run(&text(2000), &["--seq-len", "100000"]);
    assert!(e.contains("--seq-len") && e.contains("context of 256"), "{e}");
    let e = run(&text(2000), &["--targets", "q,zz"]);
    assert!(e.contains("'zz'"), "{e}");
    // A learning rate that blows the weights up on resuming a good run: the loss turns NaN and
    // the run stops, naming the step; the good run's checkpoint (step 4) stays as it was.
    let e = run(&text(4000), &["--seq-len", "16", "--steps", "4", "--eval-every", "2", "--lora-rank", "2"]);
    assert!(e.is_empty(), "{e}");
    let e = run(&text(4000), &["--seq-len", "16", "--steps", "40", "--eval-every", "2", "--lora-rank", "2", "--lr", "1e30", "--resume"]);
    assert!(e.contains("the loss is NaN") || e.contains("the loss is inf"), "{e}");
    assert!(e.contains("the last good checkpoint (step 4) is kept"), "{e}");
    let ckpt = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    let meta = quill::train::run::checkpoint_meta(&ckpt, "checkpoint").unwrap();
    let h: quill::train::run::History = serde_json::from_str(&meta["history"]).unwrap();
    assert_eq!(h.step, 4);
    assert!(h.train.iter().all(|p| p.loss.is_finite()), "the checkpoint holds only good steps");
}

#[test]
fn train_from_scratch_saves_a_model_quill_writes_with() {
    if test_context().is_none() {
        return;
    }
    let dir = tempdir("scratch");
    let data = dir.join("text.txt");
    std::fs::write(&data, text(6000)).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64, "vocab_size": 256, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"}"#).unwrap();
    let out = dir.join("model");
    let o = quill(&["train", "--config", config.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--seq-len", "64", "--batch", "2", "--steps", "30", "--eval-every", "10", "--lr", "1e-2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let h = quill::train::run::checkpoint_meta(&std::fs::read(out.join("checkpoint.safetensors")).unwrap(), "c").unwrap();
    let h: quill::train::run::History = serde_json::from_str(&h["history"]).unwrap();
    // Bytes start at ln 256 ≈ 5.5 nats; this repetitive text is learned fast.
    let (first, last) = (h.val.first().unwrap().loss, h.val.last().unwrap().loss);
    assert!(last < 0.7 * first, "held-out loss {first} -> {last}: {err}");
    let o = quill(&["write", "--model", out.to_str().unwrap(), "--temperature", "0", "--max-tokens", "12", "the keeper"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // After 30 steps a byte-level model writes the training text's characters (a random one
    // would write any of the 256 bytes, mostly not even UTF-8).
    let written = String::from_utf8(o.stdout).unwrap();
    let alphabet = std::fs::read_to_string(&data).unwrap();
    assert!(!written.is_empty() && written.chars().all(|c| alphabet.contains(c)), "greedy text {written:?}");
}

#[test]
fn a_failing_checkpoint_write_keeps_the_previous_checkpoint() {
    use quill::train::run::{self, History, RunOptions};
    let Some(ctx) = test_context() else { return };
    let dir = tempdir("ckpt");
    let cfg_bytes = std::fs::read(fixture("llama-tiny/config.json")).unwrap();
    let cfg = quill::models::registry::from_hf_json(&cfg_bytes, "config.json").unwrap().1;
    let weights = std::fs::read(fixture("llama-tiny/model.safetensors")).unwrap();
    let src = quill::weights::safetensors::SafetensorsSource::parse(&[("model.safetensors".into(), &weights[..])]).unwrap();
    let mut llama = quill::train::llama::Llama::load_with(ctx, cfg, &src, quill::models::builder::Naming::HuggingFace, true).unwrap();
    let ad = llama.new_adapter(2, 4.0, &[0, 2], 1);
    llama.attach_adapter(ctx, &ad).unwrap();
    let mut opt = llama.optimizer(ctx, Default::default()).unwrap();
    let ids: Vec<u32> = (0..200).map(|i| (i * 7 % 1000) as u32).collect();
    let data = run::split_sequences(&ids, "ids", 16, 0.1, 256).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    // The write after the first fails the way a full disk does: the temporary file cannot be
    // made (a directory stands where atomic_write puts it).
    let blocker = dir.join(format!(".checkpoint.safetensors.{}.tmp", std::process::id()));
    let mut writes = 0;
    let mut checkpoint = |opt: &quill::train::llama::Optimizer, h: &History| -> quill::Result<()> {
        if writes == 1 {
            std::fs::create_dir_all(&blocker).unwrap();
        }
        writes += 1;
        let bytes = pollster::block_on(run::checkpoint_bytes(ctx, &llama, opt, h, &Default::default()))?;
        quill::files::atomic_write(&ckpt, &bytes, false)
    };
    let opts = RunOptions { steps: 4, batch: 1, lr: 1e-3, warmup: 0, eval_every: 2 };
    let mut history = History::default();
    let r = pollster::block_on(run::train(ctx, &llama, &mut opt, &data, &opts, &mut history, &mut |_| {}, &mut checkpoint));
    let e = r.err().expect("the second checkpoint write fails").to_string();
    assert!(e.contains(".checkpoint.safetensors"), "{e}");
    let meta = run::checkpoint_meta(&std::fs::read(&ckpt).unwrap(), "checkpoint").unwrap();
    let h: History = serde_json::from_str(&meta["history"]).unwrap();
    assert_eq!(h.step, 2, "the checkpoint of step 2 is whole and unchanged");
}

/// llama.cpp's `llama-completion` in `LLAMA_CPP_BIN` (a directory; scripts/build-llama-cpp.sh
/// builds it), or None after saying on stderr why the check is skipped. The check is opt-in:
/// CI has no llama.cpp build, so there too it is skipped, loudly.
fn llama_cpp_completion() -> Option<std::path::PathBuf> {
    let Some(dir) = std::env::var_os("LLAMA_CPP_BIN") else {
        let ci = if std::env::var_os("CI").is_some() { " (CI is set: this check is opt-in, see README's Training section)" } else { "" };
        eprintln!("SKIPPING the llama.cpp --lora check: LLAMA_CPP_BIN is unset{ci}; run LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin cargo test --release --test train llama_cpp");
        return None;
    };
    let bin = Path::new(&dir).join("llama-completion");
    assert!(bin.exists(), "LLAMA_CPP_BIN is set but {} is missing (scripts/build-llama-cpp.sh builds it)", bin.display());
    Some(bin)
}

#[test]
fn llama_cpp_writes_quills_greedy_text_with_quills_gguf_adapter() {
    let Some(bin) = llama_cpp_completion() else { return };
    if test_context().is_none() {
        return;
    }
    // quill writes the PEFT fixture as a GGUF LoRA (Q/K lora_b rows permuted for llama.cpp);
    // on llama-tiny's f32 GGUF both engines write the same greedy text with it, and it is not
    // the base's text.
    let dir = tempdir("llama-cpp");
    let cfg_bytes = std::fs::read(fixture("llama-tiny/config.json")).unwrap();
    let cfg = quill::models::registry::from_hf_json(&cfg_bytes, "config.json").unwrap().1;
    let mut ad = LoraAdapter::from_peft(&std::fs::read(fixture("train/lora/adapter_config.json")).unwrap(), &std::fs::read(fixture("train/lora/adapter_model.safetensors")).unwrap(), "lora").unwrap();
    // llama-tiny's weights are random and its next-token logits nearly flat (loss ≈ ln 1000), so
    // f32 rounding decides its greedy near-ties (with the fixture's small B the engines part at
    // the second token, in a tie). B × 30 makes the adapter decide: margins far over rounding.
    for pair in ad.layers.iter_mut().flatten().flatten() {
        pair.b.iter_mut().for_each(|b| *b *= 30.0);
    }
    let adapter = dir.join("adapter.gguf");
    std::fs::write(&adapter, ad.to_gguf(&cfg)).unwrap();
    let (base, prompt, n) = (fixture("llama-tiny/model-f32.gguf"), "the keeper lit a lamp", "12");
    let quill_text = |lora: Option<&Path>| {
        let mut args = vec!["write", "--model", base.to_str().unwrap(), "--temperature", "0", "--max-tokens", n, "--ignore-eos"];
        if let Some(l) = lora {
            args.extend(["--lora", l.to_str().unwrap()]);
        }
        args.push(prompt);
        let o = quill(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (with, without) = (quill_text(Some(&adapter)), quill_text(None));
    assert_ne!(with.trim(), without.trim(), "the adapter must change the greedy text");
    // CPU only (-dev none), greedy (--temp 0), the continuation alone on stdout, control tokens
    // printed (-sp: without it llama.cpp drops the whole rest of the text after one).
    let o = Command::new(&bin)
        .args(["-m", base.to_str().unwrap(), "--lora", adapter.to_str().unwrap(), "-p", prompt, "-n", n, "--temp", "0", "--ignore-eos", "-no-cnv", "--no-display-prompt", "--no-warmup", "-dev", "none", "-ngl", "0", "-c", "256", "-sp"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "llama-completion failed: {}", String::from_utf8_lossy(&o.stderr));
    let theirs = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("quill with the adapter: {with:?}\nllama.cpp --lora: {theirs:?}\nquill without: {without:?}");
    assert_eq!(theirs.trim(), with.trim(), "llama.cpp's greedy text with quill's GGUF adapter");
}
