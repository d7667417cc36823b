//! `quill finetune` (a LoRA adapter on a frozen base) and `quill train` (a small Llama from
//! scratch): options, the progress bar, checkpoints on disk, and the files written at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use quill::error::{Error, Result};
use quill::files::atomic_write;
use quill::gpu::Context;
use quill::ops::optim::AdamW;
use quill::train::adapter::{parse_targets, LoraAdapter, TARGET_NAMES};
use quill::train::llama::Llama;
use quill::train::run::{self, Data, History, RunOptions};
use quill::train::{scratch, svg};

/// Options both commands share: the data, the schedule, the output.
#[derive(Args)]
pub struct RunArgs {
    /// UTF-8 text to train on.
    #[arg(long)]
    data: PathBuf,
    /// Optimizer steps [default: 1 epoch unless --epochs].
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    /// Passes over the training sequences (steps = epochs · sequences / batch, rounded up).
    #[arg(long)]
    epochs: Option<f32>,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sequences per optimizer step (accumulated one at a time).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Peak learning rate (warmup over the first 5% of steps, cosine to a tenth) [default: 2e-3
    /// for finetune, 3e-3 for train].
    #[arg(long)]
    lr: Option<f32>,
    /// Fraction of the sequences (the end of the text) held out for the held-out loss.
    #[arg(long, default_value_t = 0.1)]
    val_split: f32,
    /// Held-out loss and a checkpoint every K steps (and after the last).
    #[arg(long, default_value_t = 20)]
    eval_every: usize,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// Base model: GGUF file or Hugging Face directory [default: the fetched SmolLM2].
    #[arg(long)]
    model: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f32,
    /// Projections to adapt.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A Hugging Face `LlamaConfig` config.json for the new model.
    #[arg(long)]
    config: PathBuf,
    /// A tokenizer.json to use [default: byte-level, 256 tokens].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// Most bytes of training text read (tokenizing more takes long on a small machine anyway).
const MAX_DATA_BYTES: u64 = 64 << 20;
const CHECKPOINT: &str = "checkpoint.safetensors";

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    atomic_write(&dir.join(name), bytes, false)
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let targets = parse_targets(&args.targets)?;
    if args.lora_rank == 0 || !(args.lora_alpha.is_finite() && args.lora_alpha > 0.0) {
        return Err(Error::arg("--lora-rank/--lora-alpha", "the rank must be at least 1 and alpha a positive number"));
    }
    let path = crate::cli::model_path(args.model.clone())?;
    let ctx = Context::new_blocking()?;
    quill::files::with_model_source(&path, |cfg, tokenizer, src, naming| {
        let data = tokenize(&args.run, cfg.max_ctx, |t| tokenizer.encode(t))?;
        noteln!("base {} ({} layers, dim {}), frozen as f32; LoRA rank {} alpha {} on {}", path.display(), cfg.n_layers, cfg.dim, args.lora_rank, args.lora_alpha, targets.iter().map(|&i| TARGET_NAMES[i]).collect::<Vec<_>>().join(","));
        let mut llama = Llama::load_with(&ctx, cfg.clone(), src, naming, true)?;
        let meta = HashMap::from([
            ("kind".to_string(), "lora".to_string()),
            ("rank".to_string(), args.lora_rank.to_string()),
            ("alpha".to_string(), args.lora_alpha.to_string()),
            ("targets".to_string(), args.targets.clone()),
        ]);
        check_resume(&args.run, &meta)?;
        let adapter = llama.new_adapter(args.lora_rank, args.lora_alpha, &targets, args.run.seed);
        llama.attach_adapter(&ctx, &adapter)?;
        let lr = args.run.lr.unwrap_or(2e-3);
        let history = run_training(&ctx, &llama, &data, &args.run, lr, AdamW { weight_decay: 0.0, ..Default::default() }, &meta)?;
        let trained = pollster::block_on(llama.adapter_weights(&ctx))?;
        save_adapter(&trained, &args.run.out, &path.display().to_string(), &cfg)?;
        finish(&args.run.out, &history, &format!("LoRA on {}", path.display()))
    })
}

pub fn train(args: TrainArgs) -> Result<()> {
    let config_file = args.config.display().to_string();
    let config_json = read(&args.config)?;
    let (_, cfg) = quill::models::registry::from_hf_json(&config_json, &config_file)?;
    let tokenizer_json = match &args.tokenizer {
        Some(p) => read(p)?,
        None => scratch::byte_level_tokenizer_json(),
    };
    let tokenizer = quill::tokenizer::Tokenizer::from_hf(&tokenizer_json, None, None, "tokenizer")?;
    if tokenizer.vocab_size() > cfg.vocab {
        return Err(Error::arg("--tokenizer", format!("{} tokens, more than the config's vocab_size {}", tokenizer.vocab_size(), cfg.vocab)));
    }
    let data = tokenize(&args.run, cfg.max_ctx, |t| tokenizer.encode(t))?;
    let ctx = Context::new_blocking()?;
    let init = scratch::init_safetensors(&cfg, args.run.seed)?;
    let src = quill::weights::safetensors::SafetensorsSource::parse(&[("initial weights".into(), &init)])?;
    let llama = Llama::load(&ctx, cfg.clone(), &src)?;
    let n_params: usize = llama.named_params().iter().map(|(_, p)| p.value.numel()).sum();
    noteln!("new {} model: {} layers, dim {}, vocab {}, {:.2} M parameters", cfg.arch.name(), cfg.n_layers, cfg.dim, cfg.vocab, n_params as f64 / 1e6);
    let meta = HashMap::from([("kind".to_string(), "scratch".to_string()), ("config".to_string(), String::from_utf8_lossy(&config_json).into_owned())]);
    check_resume(&args.run, &meta)?;
    let history = run_training(&ctx, &llama, &data, &args.run, args.run.lr.unwrap_or(3e-3), AdamW::default(), &meta)?;
    let out = &args.run.out;
    write(out, "model.safetensors", &pollster::block_on(scratch::model_safetensors(&ctx, &llama))?)?;
    write(out, "config.json", &scratch::output_config(&config_json, &config_file)?)?;
    write(out, "tokenizer.json", &tokenizer_json)?;
    finish(out, &history, &format!("{} from scratch", cfg.arch.name()))
}

/// The training text's ids, cut into sequences.
fn tokenize(run: &RunArgs, max_ctx: usize, encode: impl Fn(&str) -> Result<Vec<u32>>) -> Result<Data> {
    let text = quill::files::read_text_bounded(&run.data, MAX_DATA_BYTES, "--data", "train on a shorter text")?;
    let ids = encode(&text)?;
    run::split_sequences(&ids, &run.data.display().to_string(), run.seq_len, run.val_split, max_ctx)
}

/// A resumed run must be the same kind of run (same adapter settings or model config).
fn check_resume(run: &RunArgs, meta: &HashMap<String, String>) -> Result<()> {
    let file = run.out.join(CHECKPOINT);
    if !run.resume {
        return Ok(());
    }
    let bytes = read(&file)?;
    let saved = run::checkpoint_meta(&bytes, &file.display().to_string())?;
    for (k, v) in meta {
        if saved.get(k) != Some(v) {
            return Err(Error::arg("--resume", format!("{} was written with {k} = {:?}, this run has {v:?}", file.display(), saved.get(k))));
        }
    }
    Ok(())
}

/// Trains with a progress bar, checkpointing into `run.out`; resumes from it with --resume.
fn run_training(ctx: &Context, llama: &Llama, data: &Data, run: &RunArgs, lr: f32, adamw: AdamW, meta: &HashMap<String, String>) -> Result<History> {
    std::fs::create_dir_all(&run.out).map_err(|e| Error::io(&run.out, e))?;
    let steps = match (run.steps, run.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) if e.is_finite() && e > 0.0 => ((e as f64 * data.train.len() as f64) / run.batch.max(1) as f64).ceil() as usize,
        (None, Some(e)) => return Err(Error::arg("--epochs", format!("{e} is not a positive number"))),
        (None, None) => data.train.len().div_ceil(run.batch.max(1)),
    };
    let opts = RunOptions { steps, batch: run.batch, lr, warmup: steps / 20, eval_every: run.eval_every };
    let mut opt = llama.optimizer(ctx, adamw)?;
    let ckpt = run.out.join(CHECKPOINT);
    let mut history = match run.resume {
        true => run::restore(ctx, llama, &mut opt, &read(&ckpt)?, &ckpt.display().to_string())?,
        false => History::default(),
    };
    noteln!("{} training sequences of {} tokens, {} held out; {steps} steps of {} sequences, lr {lr:e}{}", data.train.len(), run.seq_len, data.val.len(), run.batch, if run.resume { format!(", resuming at step {}", history.step) } else { String::new() });
    let bar = ProgressBar::new(steps as u64).with_position(history.step as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let mut progress = |p: &run::Progress| {
        let h = p.history;
        let val = h.val.last().map_or("-".to_string(), |v| format!("{:.4}", v.loss));
        bar.set_position(h.step as u64);
        bar.set_message(format!("loss {:.4} held-out {val} {:.1} tok/s", h.train.last().map_or(f32::NAN, |t| t.loss), p.tokens_per_s));
        if !bar.is_hidden() {
            return;
        }
        // Not a terminal: a line per evaluation instead of a bar.
        if h.val.last().is_some_and(|v| v.step == h.step) {
            noteln!("step {}/{}: loss {:.4} held-out {val} ({:.1} tok/s)", h.step, p.total_steps, h.train.last().map_or(f32::NAN, |t| t.loss), p.tokens_per_s);
        }
    };
    let mut checkpoint = |opt: &quill::train::llama::Optimizer, h: &History| -> Result<()> {
        let bytes = pollster::block_on(run::checkpoint_bytes(ctx, llama, opt, h, meta))?;
        atomic_write(&ckpt, &bytes, false)
    };
    let result = pollster::block_on(run::train(ctx, llama, &mut opt, data, &opts, &mut history, &mut progress, &mut checkpoint));
    bar.finish_and_clear();
    if result.is_err() && !history.train.is_empty() {
        // The curve so far helps to see what went wrong.
        let _ = write(&run.out, "loss.svg", svg::loss_curve(&history, "stopped run").as_bytes());
    }
    result.map(|()| history)
}

/// The adapter as PEFT's two files and as llama.cpp's GGUF LoRA.
fn save_adapter(ad: &LoraAdapter, out: &Path, base: &str, cfg: &quill::models::ModelConfig) -> Result<()> {
    let (config, weights) = ad.to_peft(base)?;
    write(out, "adapter_model.safetensors", &weights)?;
    write(out, "adapter_config.json", &config)?;
    write(out, "adapter.gguf", &ad.to_gguf(cfg))
}

/// The loss curve and the summary line.
fn finish(out: &Path, h: &History, title: &str) -> Result<()> {
    write(out, "loss.svg", svg::loss_curve(h, title).as_bytes())?;
    let first = h.train.first().map_or(f32::NAN, |p| p.loss);
    let last = h.train.last().map_or(f32::NAN, |p| p.loss);
    let val = match (h.val.first(), h.val.last()) {
        (Some(a), Some(b)) => format!(", held-out {:.4} (step {}) -> {:.4} (step {})", a.loss, a.step, b.loss, b.step),
        _ => String::new(),
    };
    noteln!("trained {} steps, {} tokens in {:.1} s ({:.1} tok/s): loss {first:.4} -> {last:.4}{val}; wrote {}", h.step, h.tokens, h.seconds, h.tokens as f64 / h.seconds.max(1e-9), out.display());
    Ok(())
}
