//! Command-line options and the commands behind them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use quill::error::{Error, Result};
use quill::generate::Session;
use quill::gpu::Context;
use quill::models::load::{LoadOptions, WeightType};
use quill::models::{GenerationDefaults, LoadedModel};
use quill::ops::attention::KvFormat;
use quill::sampling::{SamplingFlags, SamplingParams};
use quill::tokenizer::StreamDecoder;

#[derive(Parser)]
#[command(name = "quill", version, about = "Write text with Transformer language models on any GPU (WGSL compute shaders through wgpu)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Storage of weight matrices on the GPU: native (as the file has them: GGUF stays
    /// quantized), f32, f16 or q8_0.
    #[arg(long, global = true, default_value = "native")]
    dtype: String,
    /// Storage of the KV cache: f32, or f16 (half the memory, packed two to a u32 word)
    /// [default: QUILL_KV_CACHE, else f32].
    #[arg(long, global = true)]
    kv_cache: Option<String>,
    /// A LoRA adapter (PEFT directory or GGUF LoRA file) merged into the model's weights at
    /// load (the matrices it touches become f32).
    #[arg(long, global = true)]
    lora: Option<PathBuf>,
    /// Multiplier of the adapter's alpha / rank scale.
    #[arg(long, global = true, default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
}

/// The `--lora` adapter and `--lora-scale` given, for every model loaded.
static LORA: std::sync::OnceLock<Option<(PathBuf, f32)>> = std::sync::OnceLock::new();

/// The `--dtype` given, for every model loaded.
static LOAD_OPTIONS: std::sync::OnceLock<LoadOptions> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter (backend, driver, features, limits) and, with --model, the model.
    Info {
        /// GGUF file or Hugging Face model directory.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Continue a prompt, streaming only the generated text to stdout.
    #[command(allow_negative_numbers = true)]
    Write(WriteArgs),
    /// Time every shader pass of a prefill and some decode steps; print a per-op table.
    Profile(ProfileArgs),
    /// Perplexity of a text: exp(mean over tokens i >= 1 of -log p(t_i | t_<i)).
    Perplexity(PerplexityArgs),
    /// Measure prefill and decode speed, time to first token, load time and GPU memory, in the
    /// manner of llama-bench (greedy, end of text ignored).
    Bench(BenchArgs),
    /// Measure this adapter's peak memory bandwidth and FLOP rate (cached for `profile`).
    BenchDevice {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve the model over HTTP with an OpenAI-compatible API.
    Serve(crate::serve::ServeArgs),
    /// Train a LoRA adapter on a text (base frozen); writes PEFT and GGUF adapters.
    Finetune(crate::train_cli::FinetuneArgs),
    /// Train a small Llama from scratch on a text; writes a Hugging Face directory.
    Train(crate::train_cli::TrainArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// GGUF file or Hugging Face model directory [default: the fetched SmolLM2].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt length (tokens of a fixed English text, repeated as needed).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Also decode N sequences together (2 to 8; forked from the prompt, one batched forward
    /// pass per token, as `write --drafts` and `serve --parallel` run them) and report their
    /// decode rate against the single sequence's.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// With --batch: rounds of a single sequence's decode then the batch's, back to back; the
    /// cost of a batched token against a single one is the median of the rounds' ratios (so a
    /// machine whose speed drifts between the two runs does not decide it).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    /// The text (or use --file).
    text: Option<String>,
    /// GGUF file or Hugging Face model directory [default: the fetched SmolLM2].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Read the text from a UTF-8 file.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// Window: positions of context per pass [default: the model's, or what fits the GPU memory budget (QUILL_GPU_MEMORY)].
    #[arg(long)]
    ctx: Option<usize>,
    /// Tokens between the starts of overlapping windows, for texts longer than --ctx [default: half the window].
    #[arg(long)]
    stride: Option<usize>,
    /// Print one JSON object {"n_tokens", "mean_nll", "perplexity"} on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ProfileArgs {
    /// GGUF file or Hugging Face model directory [default: the fetched SmolLM2].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt to prefill.
    #[arg(long, default_value = "Once upon a time, in a lighthouse at the edge of the world,")]
    prompt: String,
    /// Decode steps to time after the prefill.
    #[arg(long, default_value_t = 8)]
    tokens: usize,
    /// One row per op and layer instead of per op.
    #[arg(long)]
    by_layer: bool,
    /// Write a Chrome trace-event JSON file (open in Perfetto or chrome://tracing).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write an SVG chart of the GPU time per command buffer and op.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Print the static shape report of one decode step instead: each dispatch's workgroups,
    /// bytes, and workgroups and bytes per compute unit of --reference-gpu.
    #[arg(long)]
    shapes: bool,
    /// The GPU the shape report sizes against: rtx3090, rtx4060, h200 or m2.
    #[arg(long, default_value = "rtx3090")]
    reference_gpu: String,
    /// Time N sequences (2 to 8, forked from the prompt) decoding together instead: each
    /// decode step is one batched forward pass with N samplers, as `serve --parallel N` runs it.
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Args)]
struct WriteArgs {
    /// The prompt (or use --prompt-file).
    prompt: Option<String>,
    /// GGUF file or Hugging Face model directory [default: SmolLM2-135M-Instruct from scripts/fetch-model.sh].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Read the prompt from a UTF-8 file.
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    // The defaults in these help texts are `SamplingParams::default()`'s (tests/cli.rs checks).
    /// Softmax temperature; 0 = greedy [default: the model's generation_config.json (0 where it says do_sample: false), else 0.8].
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens; 0 = off [default: the model's generation_config.json, else 40].
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p; 1 = off [default: the model's generation_config.json, else 0.95].
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than min-p times the most likely; 0 = off [default: the model's generation_config.json, else 0.05].
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalise tokens among the last --repeat-last-n; 1 = off [default: the model's generation_config.json (repetition_penalty), else 1].
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// DRY: a token extending a repeat of length L >= --dry-allowed-length loses multiplier * base^(L - allowed length); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    dry_multiplier: f32,
    #[arg(long, default_value_t = 1.75)]
    dry_base: f32,
    #[arg(long, default_value_t = 2)]
    dry_allowed_length: usize,
    /// How many recent tokens DRY scans for repeats; 0 = all. Tokens with \n : " * end a repeat.
    #[arg(long, default_value_t = 0)]
    dry_penalty_last_n: usize,
    /// XTC: with this probability per token, drop all tokens with p >= --xtc-threshold but the least likely; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    xtc_probability: f32,
    #[arg(long, default_value_t = 0.1)]
    xtc_threshold: f32,
    /// ID=BIAS: add BIAS to token ID's logit before the other samplers (-inf bans it); repeatable.
    #[arg(long, value_name = "ID=BIAS")]
    logit_bias: Vec<String>,
    /// Dynamic temperature: between --temperature ± this, by the entropy of the distribution; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    dynatemp_range: f32,
    /// Exponent on the normalized entropy for --dynatemp-range.
    #[arg(long, default_value_t = 1.0)]
    dynatemp_exp: f32,
    /// Keep tokens whose logit is at least the largest minus n standard deviations; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    top_n_sigma: f32,
    /// Locally typical sampling: keep the tokens whose surprise is nearest the entropy until their probability exceeds P; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    typical_p: f32,
    /// Mirostat 2 with this target surprise τ (bits); replaces top-k … XTC [default: off].
    #[arg(long)]
    mirostat_tau: Option<f32>,
    /// Mirostat's learning rate η.
    #[arg(long, default_value_t = 0.1)]
    mirostat_eta: f32,
    /// Never end the text in PHRASE (case-insensitive): back up to its first token, ban that token there and draw again; repeatable.
    #[arg(long, value_name = "PHRASE")]
    ban: Vec<String>,
    /// Draws per position before a banned phrase there is let be (said on stderr).
    #[arg(long, default_value_t = quill::writer::DEFAULT_BAN_RETRIES)]
    ban_retries: usize,
    /// Each token's probability and its top alternatives after the sampler chain, as JSON lines to FILE (without FILE, or "-": stderr).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    probs: Option<PathBuf>,
    /// Alternatives per token for --probs (at most 20).
    #[arg(long, default_value_t = 5)]
    probs_top: usize,
    /// Continue the story in FILE (.txt/.md: its text; .json: quill's or KoboldAI's story) and append what is written, saved atomically before each token is printed (FILE~ keeps the version before the run).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "prompt_file", "chat"])]
    story: Option<PathBuf>,
    /// With --story: text always at the top of the context.
    #[arg(long, requires = "story")]
    memory: Option<String>,
    /// With --story: a note inserted --authors-note-depth tokens before the end of the context.
    #[arg(long, requires = "story")]
    authors_note: Option<String>,
    /// With --story: tokens of story after the Author's Note [default: the story's, else 3].
    #[arg(long, requires = "story")]
    authors_note_depth: Option<usize>,
    /// With --story: a JSON list of {"keys": [...], "content": "..."}; an entry joins the context when a key is in the story's last 256 tokens.
    #[arg(long, value_name = "FILE", requires = "story")]
    world_info: Option<PathBuf>,
    /// Random seed; the same seed, prompt and options give the same text [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Also print the prompt before the generated text.
    #[arg(long)]
    echo: bool,
    /// Context length (KV cache positions) [default: the model's, or what fits the GPU memory budget (QUILL_GPU_MEMORY)].
    #[arg(long)]
    ctx: Option<usize>,
    /// Time every shader pass and print the per-op table on stderr at the end.
    #[arg(long)]
    profile: bool,
    /// Write N continuations (at most 8) in one batched pass per token, after one prefill,
    /// each labelled with its seed (--seed, --seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    drafts: usize,
    /// With --drafts: stream the drafts as they grow, one JSON object per line:
    /// {"draft", "seed", "text"} per piece, then {"draft", "seed", "stop", "tokens"} per draft.
    #[arg(long)]
    drafts_jsonl: bool,
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let _ = LOAD_OPTIONS.set(LoadOptions { dtype: WeightType::parse(&cli.dtype)?, kv_cache: kv_cache_format(cli.kv_cache.as_deref())? });
    let _ = LORA.set(cli.lora.map(|p| (p, cli.lora_scale)));
    match cli.command {
        Command::Info { model } => info(model),
        Command::Write(args) => write(args),
        Command::Profile(args) => profile(args),
        Command::Perplexity(args) => perplexity(args),
        Command::Bench(args) => bench(args),
        Command::BenchDevice { json } => bench_device(json),
        Command::Serve(args) => crate::serve::run(args),
        Command::Finetune(args) => crate::train_cli::finetune(args),
        Command::Train(args) => crate::train_cli::train(args),
    }
}

/// The KV cache format: `--kv-cache`, else `QUILL_KV_CACHE`, else f32.
fn kv_cache_format(flag: Option<&str>) -> Result<KvFormat> {
    use quill::ops::attention::KV_CACHE_ENV;
    match (flag, std::env::var(KV_CACHE_ENV).ok().filter(|v| !v.is_empty())) {
        (Some(f), _) => KvFormat::parse(f, "--kv-cache"),
        (None, Some(v)) => KvFormat::parse(&v, KV_CACHE_ENV),
        (None, None) => Ok(KvFormat::F32),
    }
}

pub(crate) fn model_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        // `org/name` that is not a local path: a Hugging Face hub repository. It may as well be
        // a mistyped local path, so a failure says that no such path exists either.
        Some(p) if p.to_str().is_some_and(quill::hub::is_repo_id) => {
            let repo = p.to_str().unwrap_or_default();
            quill::hub::model_dir(repo).map_err(|e| {
                let why = match e {
                    Error::Arg { msg, .. } => msg,
                    other => other.to_string(),
                };
                Error::arg("--model", format!("'{repo}' is not a local path (no such file or directory), so it was tried as a Hugging Face hub repository: {why}"))
            })
        }
        Some(p) => Ok(p),
        None => quill::files::default_model(),
    }
}

/// Bytes of prompt text one token can take at most, for refusing a prompt file before reading
/// it whole: the longest token of the vocabularies quill reads is under 200 bytes, so a file
/// longer than this times the context cannot fit.
const MAX_BYTES_PER_TOKEN: u64 = 256;
/// Most bytes `perplexity --file` reads: it scores texts longer than one window, so the bound is
/// not the context's but one that keeps tokenization's memory well under a gigabyte.
const PERPLEXITY_MAX_BYTES: u64 = 4 << 20;

/// Loads a model, showing progress on stderr.
pub(crate) fn load(ctx: &Context, path: &std::path::Path) -> Result<LoadedModel> {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_pct = u64::MAX;
    let opts = LOAD_OPTIONS.get().copied().unwrap_or_default();
    let lora = LORA.get().and_then(|l| l.as_ref()).map(|(p, s)| (p.as_path(), *s));
    let model = quill::files::load_model_lora(ctx, path, &opts, lora, &mut |done, total| {
        let pct = done * 100 / total.max(1);
        // On a terminal every percent (redrawn in place); in a log, every quarter.
        let step = if tty { pct } else { pct / 25 * 25 };
        if step != last_pct {
            last_pct = step;
            let pct = step;
            let end = if tty { "\r" } else { "\n" };
            note!("loading {}: {pct:3}% ({} / {} MB){end}", path.display(), done >> 20, total >> 20);
        }
    })?;
    if tty {
        noteln!();
    }
    if let Some((p, s)) = lora {
        noteln!("merged the LoRA adapter {} (scale ×{s}) into the weights it touches, now f32", p.display());
    }
    let c = model.config();
    noteln!(
        "loaded {} in {:.1} s: {} layers, dim {}, vocab {}, weights {} ({:.1} MB on the GPU) on {} ({:?})",
        path.display(),
        start.elapsed().as_secs_f64(),
        c.n_layers,
        c.dim,
        c.vocab,
        model.model.weight_types(),
        model.model.weight_bytes() as f64 / 1e6,
        ctx.adapter_name(),
        ctx.info.backend
    );
    Ok(model)
}

fn info(model: Option<PathBuf>) -> Result<()> {
    let ctx = Context::new_blocking()?;
    out!("{}", ctx.describe())?;
    if let Some(path) = model {
        let path = model_path(Some(path))?;
        let m = load(&ctx, &path)?;
        let c = m.config();
        outln!("model:    {}", m.source)?;
        outln!("architecture: {}", c.arch.name())?;
        outln!("layers: {}  dim: {}  heads: {}  kv heads: {}  head dim: {}  ffn: {}", c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim)?;
        outln!("vocab: {}  context: {}  tied embeddings: {}", c.vocab, c.max_ctx, c.tied_embeddings)?;
        outln!("{}", c.describe_blocks())?;
        outln!("file dtypes: {}", m.file_dtypes)?;
        let ctx_len = quill::plan::plan_session(&ctx, &m, None, quill::generate::DEFAULT_MAX_BATCH).map_or(c.max_ctx, |p| p.ctx_len);
        outln!("weights on the GPU: {} (--dtype {})", m.model.weight_types(), LOAD_OPTIONS.get().copied().unwrap_or_default().dtype.name())?;
        outln!(
            "GPU memory: weights {:.1} MB ({:.1} MB as f32) + KV cache {:.1} MB for {ctx_len} positions ({})",
            m.model.weight_bytes() as f64 / 1e6,
            c.weight_bytes() as f64 / 1e6,
            quill::plan::SessionShape::new(c, quill::generate::DEFAULT_MAX_BATCH).kv_bytes(ctx_len) as f64 / 1e6,
            c.kv_format.name()
        )?;
    }
    Ok(())
}

/// The prompt, from the argument or `--prompt-file`. A file is read up to what a context of `ctx`
/// tokens can hold (never the whole of an unbounded file); the token count is checked exactly
/// once tokenized.
fn read_prompt(args: &WriteArgs, ctx: usize) -> Result<String> {
    if let Some(path) = &args.prompt_file {
        let limit = (ctx as u64).saturating_mul(MAX_BYTES_PER_TOKEN);
        let why = format!("a context of {ctx} tokens holds no more at {MAX_BYTES_PER_TOKEN} bytes per token; shorten the prompt or raise --ctx");
        return quill::files::read_text_bounded(path, limit, "--prompt-file", &why);
    }
    args.prompt.clone().ok_or_else(|| Error::arg("PROMPT", "give a prompt as an argument or with --prompt-file"))
}

fn perplexity(args: PerplexityArgs) -> Result<()> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) => quill::files::read_text_bounded(path, PERPLEXITY_MAX_BYTES, "--file", "score a longer text in parts")?,
        (None, Some(t)) => t.clone(),
        (None, None) => return Err(Error::arg("TEXT", "give the text as an argument or with --file")),
    };
    let path = model_path(args.model.clone())?;
    let ctx = Context::new_blocking()?;
    let model = load(&ctx, &path)?;
    let ids = model.tokenizer.encode(&text)?;
    let window = match args.ctx {
        Some(n) => n,
        None => quill::plan::plan_session(&ctx, &model, None, quill::generate::DEFAULT_MAX_BATCH)?.ctx_len,
    };
    let stride = args.stride.unwrap_or(window.div_ceil(2));
    let start = Instant::now();
    let p = quill::perplexity::perplexity(&ctx, &model, &ids, window, stride)?;
    let windows = if p.n_tokens <= window { "one window".to_string() } else { format!("windows of {window} tokens, stride {stride}") };
    noteln!("scored {} of {} tokens in {windows} in {:.1} s", p.n_scored, p.n_tokens, start.elapsed().as_secs_f64());
    if !p.mean_nll.is_finite() {
        // NaN or infinite logits: the weights (or a kernel) are broken; no number to report.
        return Err(Error::format(&model.source, format!("the mean NLL is {} (the model's logits are not finite numbers): its weights are broken", p.mean_nll)));
    }
    if args.json {
        outln!("{}", serde_json::json!({"n_tokens": p.n_tokens, "mean_nll": p.mean_nll, "perplexity": p.perplexity}))
    } else {
        outln!("perplexity {:.4} (mean NLL {:.6} nats over {} tokens)", p.perplexity, p.mean_nll, p.n_tokens)
    }
}

/// `--logit-bias ID=BIAS` values as (id, bias).
fn logit_bias(values: &[String]) -> Result<Vec<(u32, f32)>> {
    values
        .iter()
        .map(|v| {
            let parsed = v.split_once('=').and_then(|(id, b)| Some((id.trim().parse::<u32>().ok()?, b.trim().parse::<f32>().ok()?)));
            parsed.ok_or_else(|| Error::arg("--logit-bias", format!("{v:?} is not ID=BIAS (e.g. 13=-inf or 42=2.5)")))
        })
        .collect()
}

/// The DRY, XTC, top-nσ and logit-bias flags over `s` (breaker ids come from the tokenizer, later).
fn dry_xtc(args: &WriteArgs, s: SamplingParams) -> Result<SamplingParams> {
    Ok(SamplingParams {
        logit_bias: logit_bias(&args.logit_bias)?,
        dry_multiplier: args.dry_multiplier,
        dry_base: args.dry_base,
        dry_allowed_length: args.dry_allowed_length,
        dry_penalty_last_n: args.dry_penalty_last_n,
        xtc_probability: args.xtc_probability,
        xtc_threshold: args.xtc_threshold,
        top_n_sigma: args.top_n_sigma,
        dynatemp_range: args.dynatemp_range,
        dynatemp_exponent: args.dynatemp_exp,
        typical_p: args.typical_p,
        mirostat_tau: args.mirostat_tau.unwrap_or(0.0),
        mirostat_eta: args.mirostat_eta,
        ..s
    })
}

fn write(args: WriteArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    let flags = SamplingFlags {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
    };
    // Check everything the user typed before the slow parts (the rest are quill's defaults).
    dry_xtc(&args, SamplingParams::resolve(&flags, &GenerationDefaults::default()).0)?.validate()?;
    if args.max_tokens == 0 {
        return Err(Error::arg("--max-tokens", "must be at least 1"));
    }
    if args.mirostat_tau == Some(0.0) {
        return Err(Error::arg("--mirostat-tau", "must be > 0 (leave it out for no mirostat)"));
    }
    let banned = quill::writer::BannedPhrases::new(&args.ban)?;
    if args.probs_top > quill::ops::sample::MAX_TOP_LOGPROBS {
        return Err(Error::arg("--probs-top", format!("{} must be at most {}", args.probs_top, quill::ops::sample::MAX_TOP_LOGPROBS)));
    }
    // A story that cannot be read or saved shows before the slow parts.
    let mut story = match &args.story {
        Some(path) => Some(open_story(&args, path)?),
        None => None,
    };
    if !(1..=crate::drafts::MAX_DRAFTS).contains(&args.drafts) {
        return Err(Error::arg("--drafts", format!("{} must be 1 to {}", args.drafts, crate::drafts::MAX_DRAFTS)));
    }
    if (args.drafts > 1 || args.drafts_jsonl) && (args.story.is_some() || !args.ban.is_empty() || args.probs.is_some()) {
        return Err(Error::arg("--drafts", "cannot be combined with --story, --ban or --probs (yet): write one draft with them"));
    }
    // With --ctx given, a prompt that cannot fit shows before the slow parts; without it, the
    // bound is the context the session plans, known once the model is loaded.
    let early_prompt = match args.ctx {
        Some(n) if story.is_none() => Some(read_prompt(&args, n)?),
        _ => None,
    };
    let path = model_path(args.model.clone())?;
    let ctx = Context::new_blocking()?;
    let model = load(&ctx, &path)?;
    let mut session = Session::planned(&ctx, &model, args.ctx)?;
    let prompt = match (early_prompt, &story) {
        (Some(p), _) => p,
        (None, Some(st)) => st.text.clone(),
        (None, None) => read_prompt(&args, session.ctx_len())?,
    };
    let (sampling, from_model) = SamplingParams::resolve(&flags, &model.defaults);
    let mut sampling = SamplingParams { repeat_last_n: args.repeat_last_n, seed, ..dry_xtc(&args, sampling)? };
    let vocab = model.config().vocab;
    if let Some(&(id, _)) = sampling.logit_bias.iter().find(|e| e.0 as usize >= vocab) {
        return Err(Error::arg("--logit-bias", format!("id {id} is outside the vocabulary of {vocab}")));
    }
    if sampling.dry_multiplier > 0.0 {
        sampling.dry_breakers = quill::sampling::dry_breaker_ids(&model.tokenizer)?;
    }
    let from_model = if from_model.is_empty() { String::new() } else { format!(" ({} from generation_config.json)", from_model.join(", ")) };
    // The flags were checked above, so a refusal here is of the model's value.
    sampling.validate().map_err(|e| Error::format(format!("{}/generation_config.json", model.source), format!("{e}; give the option to override it")))?;
    noteln!("sampling: {}{from_model}", sampling.describe());
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(sys) = &args.system {
            messages.push(("system".to_string(), sys.clone()));
        }
        messages.push(("user".to_string(), prompt.clone()));
        if model.tokenizer.chat_template_is_default() {
            eprintln!("chat template: {}", model.tokenizer.chat_template_origin());
        }
        model.tokenizer.apply_chat_template(&messages, true)?
    } else {
        prompt.clone()
    };
    let ids = match &story {
        Some(st) => story_context(st, &model, session.ctx_len(), args.max_tokens)?,
        None => model.tokenizer.encode(&text)?,
    };
    if args.drafts > 1 || args.drafts_jsonl {
        let ctx_len = session.ctx_len();
        drop(session);
        return crate::drafts::write(&ctx, &model, ctx_len, &ids, &sampling, args.drafts, args.max_tokens, args.ignore_eos, args.drafts_jsonl);
    }
    if args.profile {
        session.enable_profiling();
    }

    // A closed pipe (`quill write ... | head`) ends generation quietly; any other write failure
    // (a full disk) is an error saying how much got out.
    let mut out = crate::stdio::TextOut::new();
    if args.echo {
        out.put(&prompt);
    }
    let (stop, stats) = match (&mut story, &args.story) {
        (Some(st), Some(path)) => {
            // Each token joins the file before it reaches stdout: an interruption at any point
            // leaves every printed token saved.
            let mut save = |piece: &str| -> Result<()> {
                st.text.push_str(piece);
                quill::files::atomic_write(path, &st.to_bytes(&path.to_string_lossy())?, false)
            };
            guarded(&mut session, &ids, &sampling, &args, banned, &mut out, Some(&mut save))?
        }
        _ if banned.is_empty() && args.probs.is_none() => stream(&mut session, &ids, &sampling, &args, &mut out)?,
        _ => guarded(&mut session, &ids, &sampling, &args, banned, &mut out, None)?,
    };
    let why = stop.reason();
    noteln!(
        "prompt tokens: {} | time to first token: {:.0} ms | prefill: {:.1} tok/s | decode: {:.1} tok/s over {} tokens | stopped: {why} | seed: {seed}",
        stats.prompt_tokens,
        stats.time_to_first_token.as_secs_f64() * 1e3,
        stats.prefill_tok_s(),
        stats.decode_tok_s(),
        stats.generated,
    );
    if let Some(p) = session.profile() {
        note!("{}", p.table(false, quill::files::cached_peak(&ctx)));
    }
    Ok(())
}

/// Plain generation, several decode steps per submission, text streamed as it decodes.
fn stream(session: &mut Session, ids: &[u32], sampling: &SamplingParams, args: &WriteArgs, out: &mut crate::stdio::TextOut) -> Result<(quill::generate::Stop, quill::generate::Stats)> {
    let model = session.model;
    let mut decoder = StreamDecoder::new();
    let mut decode_error = None;
    let (stop, stats) = session.generate(ids, sampling, args.max_tokens, args.ignore_eos, |id| {
        match decoder.step(&model.tokenizer, id) {
            Ok(Some(piece)) => out.put(&piece),
            Ok(None) => {}
            Err(e) => decode_error = Some(e),
        }
        !out.stopped && decode_error.is_none()
    })?;
    if let Some(e) = decode_error.or(out.error.take()) {
        return Err(e);
    }
    if let Some(rest) = decoder.finish(&model.tokenizer)? {
        out.put(&rest);
    }
    finish_line(out)?;
    Ok((stop, stats))
}

fn finish_line(out: &mut crate::stdio::TextOut) -> Result<()> {
    out.put("\n");
    match out.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Generation one token per step for --ban and --probs (`quill::writer`): text reaches stdout
/// once no banned phrase can take it back; probabilities go out as JSON lines.
/// With `save`, each piece of text is handed to it before it is printed.
#[allow(clippy::type_complexity)]
fn guarded(
    session: &mut Session,
    ids: &[u32],
    sampling: &SamplingParams,
    args: &WriteArgs,
    banned: quill::writer::BannedPhrases,
    out: &mut crate::stdio::TextOut,
    mut save: Option<&mut dyn FnMut(&str) -> Result<()>>,
) -> Result<(quill::generate::Stop, quill::generate::Stats)> {
    use std::io::Write;
    let tokenizer = &session.model.tokenizer;
    let mut probs_out: Option<Box<dyn Write>> = match &args.probs {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stderr())),
        Some(p) => Some(Box::new(std::fs::File::create(p).map_err(|e| Error::io(p, e))?)),
    };
    let probs_path = args.probs.as_ref().filter(|p| p.as_os_str() != "-").map_or_else(|| PathBuf::from("stderr"), |p| p.clone());
    let opts = quill::writer::WriteOptions { banned, ban_retries: args.ban_retries, probs_top: args.probs.as_ref().map(|_| args.probs_top), max_tokens: args.max_tokens, ignore_eos: args.ignore_eos };
    let mut failure = None;
    let (stop, stats, backtracks) = quill::writer::write(session, ids, sampling, &opts, |event| match event {
        quill::writer::Event::Token { id, text, probs } => {
            if let (Some(w), Some(p)) = (probs_out.as_mut(), probs) {
                let line = probs_json(tokenizer, id, p);
                if let Err(e) = writeln!(w, "{line}").and_then(|_| w.flush()) {
                    failure = Some(Error::io(&probs_path, e));
                    return false;
                }
            }
            if let Some(save) = save.as_mut() {
                if let Err(e) = save(text) {
                    failure = Some(e);
                    return false;
                }
            }
            out.put(text);
            !out.stopped && out.error.is_none()
        }
        quill::writer::Event::GaveUp { phrase, position, retries } => {
            noteln!("banned phrase {phrase:?} kept at generated token {position}: still there after {retries} draws (--ban-retries)");
            true
        }
    })?;
    if let Some(e) = failure.or(out.error.take()) {
        return Err(e);
    }
    if backtracks > 0 {
        noteln!("banned phrases: backed up {backtracks} times");
    }
    finish_line(out)?;
    Ok((stop, stats))
}

/// Earlier texts a story file keeps in its history.
const STORY_HISTORY: usize = 20;

/// Reads the story file with the --memory, --authors-note(-depth) and --world-info flags over
/// it, and saves it once unchanged (keeping the old file as FILE~), so a file that cannot be
/// written is an error before anything is generated.
fn open_story(args: &WriteArgs, path: &std::path::Path) -> Result<quill::story::Story> {
    let name = path.to_string_lossy();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut story = quill::story::Story::from_bytes(&name, &bytes)?;
    if std::fs::metadata(path).map_err(|e| Error::io(path, e))?.permissions().readonly() {
        return Err(Error::arg("--story", format!("{name} is read-only: quill appends to the story it continues (copy it, or make it writable)")));
    }
    if let Some(m) = &args.memory {
        story.memory = m.clone();
    }
    if let Some(n) = &args.authors_note {
        story.authors_note = n.clone();
    }
    if let Some(d) = args.authors_note_depth {
        story.authors_note_depth = d;
    }
    if let Some(wi) = &args.world_info {
        let text = quill::files::read_text_bounded(wi, 1 << 20, "--world-info", "World Info is at most 1 MiB")?;
        story.world_info = serde_json::from_str(&text).map_err(|e| Error::format(wi.to_string_lossy(), format!("not a JSON list of {{\"keys\": [...], \"content\": \"...\"}}: {e}")))?;
    }
    if story.text.trim().is_empty() {
        return Err(Error::arg("--story", format!("{name} holds no story text to continue")));
    }
    // The text before this run joins the history (undo), the latest few kept.
    story.history.push(story.text.clone());
    let excess = story.history.len().saturating_sub(STORY_HISTORY);
    story.history.drain(..excess);
    quill::files::atomic_write(path, &story.to_bytes(&name)?, true)?;
    Ok(story)
}

/// The ids of the story's context (Memory, World Info, story, Author's Note), leaving room for
/// `max_tokens` (or half the context, whichever is more); says on stderr what was dropped.
fn story_context(story: &quill::story::Story, model: &LoadedModel, ctx_len: usize, max_tokens: usize) -> Result<Vec<u32>> {
    let budget = ctx_len.saturating_sub(max_tokens).max(ctx_len / 2).min(ctx_len.saturating_sub(1));
    let a = story.assemble(&model.tokenizer, budget)?;
    let count = |part: &dyn Fn(&quill::story::Part) -> bool| a.parts.iter().filter(|(p, _)| part(p)).map(|(_, r)| r.len()).sum::<usize>();
    noteln!(
        "story context: {} tokens (memory {}, world info {}, author's note {}, story {}{})",
        a.ids.len(),
        count(&|p| *p == quill::story::Part::Memory),
        count(&|p| matches!(p, quill::story::Part::WorldInfo(_))),
        count(&|p| *p == quill::story::Part::AuthorsNote),
        count(&|p| *p == quill::story::Part::Story),
        if a.dropped > 0 { format!("; its first {} tokens left out to fit", a.dropped) } else { String::new() }
    );
    Ok(a.ids)
}

/// One --probs line: {"token", "text", "p", "top": [{"token", "text", "p"}, …]}.
fn probs_json(tokenizer: &quill::tokenizer::Tokenizer, id: u32, p: &quill::generate::TokenProbs) -> serde_json::Value {
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    let top: Vec<serde_json::Value> = p.top.iter().map(|&(t, pt)| serde_json::json!({"token": t, "text": text(t), "p": pt})).collect();
    serde_json::json!({"token": id, "text": text(id), "p": p.p, "top": top})
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn profile(args: ProfileArgs) -> Result<()> {
    if args.tokens == 0 {
        return Err(Error::arg("--tokens", "must be at least 1"));
    }
    let reference = quill::gpu::profiler::REFERENCE_GPUS.iter().find(|g| g.name == args.reference_gpu).copied().ok_or_else(|| {
        let known: Vec<&str> = quill::gpu::profiler::REFERENCE_GPUS.iter().map(|g| g.name).collect();
        Error::arg("--reference-gpu", format!("'{}' is not one of {}", args.reference_gpu, known.join(", ")))
    })?;
    if let Some(n) = args.batch {
        check_batch(n)?;
    }
    let path = model_path(args.model.clone())?;
    let ctx = Context::new_blocking()?;
    let model = load(&ctx, &path)?;
    let ids = model.tokenizer.encode(&args.prompt)?;
    let max_ctx = model.config().max_ctx;
    // Saturating: a huge --tokens must be refused, not wrap around to a small context.
    let need = ids.len().saturating_add(args.tokens).saturating_add(1);
    if need > max_ctx {
        return Err(Error::arg("--tokens", format!("{} decode steps after a prompt of {} tokens exceed the model's context of {max_ctx}", args.tokens, ids.len())));
    }
    let ctx_len = need;
    let (mut session, profiled);
    let (p, prompt_tokens, decode_steps) = match args.batch {
        None => {
            session = Session::new(&ctx, &model, ctx_len)?;
            session.enable_profiling();
            let (_, stats) = session.generate(&ids, &SamplingParams::greedy(), args.tokens, true, |_| true)?;
            let Some(p) = session.profile() else { return Err(Error::gpu("profile", "profiling was not enabled")) };
            (p, stats.prompt_tokens, stats.generated)
        }
        Some(n) => {
            profiled = profile_batch(&ctx, &model, &ids, n, args.tokens, ctx_len)?;
            (&profiled, ids.len(), args.tokens)
        }
    };
    let peak = quill::files::cached_peak(&ctx);
    if args.shapes {
        out!("{}", p.shapes(&reference))?;
    } else if args.json {
        let mut v = p.json(args.by_layer, peak);
        v["prompt_tokens"] = prompt_tokens.into();
        v["decode_steps"] = decode_steps.into();
        if let Some(n) = args.batch {
            v["sequences"] = n.into();
        }
        outln!("{v}")?;
    } else {
        out!("{}", p.table(args.by_layer, peak))?;
    }
    if let Some(t) = &args.trace {
        write_file(t, &p.chrome_trace().to_string())?;
        noteln!("trace: {} (open in https://ui.perfetto.dev or chrome://tracing)", t.display());
    }
    if let Some(s) = &args.svg {
        write_file(s, &p.svg())?;
        noteln!("chart: {}", s.display());
    }
    Ok(())
}

/// `--batch N` of `bench` and `profile`: 2 to `MAX_DRAFTS` sequences.
fn check_batch(n: usize) -> Result<()> {
    if !(2..=crate::drafts::MAX_DRAFTS).contains(&n) {
        return Err(Error::arg("--batch", format!("{n} sequences: 2 to {}", crate::drafts::MAX_DRAFTS)));
    }
    Ok(())
}

/// `n` sequences forked from `prompt` (prefilled once, not timed), then `steps` batched decode
/// steps, each its own profiled command buffer ("decode").
fn profile_batch(ctx: &Context, model: &LoadedModel, prompt: &[u32], n: usize, steps: usize, ctx_len: usize) -> Result<quill::gpu::profiler::Profile> {
    use quill::generate::{Batch, Work};
    let greedy = SamplingParams::greedy();
    let seeds: Vec<u64> = (0..n as u64).collect();
    // A forward pass takes at most ctx_len tokens: room for the n slots' tokens of one step.
    let mut batch = Batch::new(ctx, model, ctx_len.max(16).min(model.config().max_ctx), n)?;
    pollster::block_on(batch.drafts_start_async(prompt, &greedy, &seeds, steps, true))?;
    let work: Vec<Work> = (0..n).map(|slot| Work { slot, sample: Some(&greedy) }).collect();
    let mut profile = quill::gpu::profiler::Profile::new(ctx.adapter_name(), ctx.gpu_timestamps());
    for _ in 0..steps {
        batch.decode_steps_profiled(&work, 1, &mut profile)?;
    }
    Ok(profile)
}

/// The largest context `bench` considers before loading the model (the model's own is checked
/// after): 2^24 positions, beyond every model quill reads.
const MAX_BENCH_CTX: usize = 1 << 24;

const BENCH_TEXT: &str = "The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his father had taught him, and lit the great lamp so that the fishing boats could find their way home through the fog. ";

fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        return Err(Error::arg(if args.prompt_tokens == 0 { "--prompt-tokens" } else { "--gen-tokens" }, "must be at least 1"));
    }
    // No model has a context anywhere near this: refuse before loading one (checked, no wrap).
    let ctx_len = args.prompt_tokens.checked_add(args.gen_tokens).filter(|&n| n <= MAX_BENCH_CTX).ok_or_else(|| {
        Error::arg("--prompt-tokens", format!("{} + --gen-tokens {} is more than any model's context (at most {MAX_BENCH_CTX} tokens)", args.prompt_tokens, args.gen_tokens))
    })?;
    if let Some(n) = args.batch {
        check_batch(n)?;
        if !(1..=20).contains(&args.rounds) {
            return Err(Error::arg("--rounds", format!("{}: 1 to 20", args.rounds)));
        }
    }
    let path = model_path(args.model.clone())?;
    let ctx = Context::new_blocking()?;
    let start = Instant::now();
    let model = load(&ctx, &path)?;
    let load_s = start.elapsed().as_secs_f64();
    if ctx_len > model.config().max_ctx {
        return Err(Error::arg("--prompt-tokens", format!("{} + --gen-tokens {} exceed the model's context of {}", args.prompt_tokens, args.gen_tokens, model.config().max_ctx)));
    }
    let piece = model.tokenizer.encode(BENCH_TEXT)?;
    let prompt: Vec<u32> = piece.iter().copied().cycle().take(args.prompt_tokens).collect();
    let greedy = SamplingParams::greedy();
    // Warm-up: compiles every pipeline (prefill and decode) outside the timings.
    let mut warm = Session::new(&ctx, &model, 16.min(model.config().max_ctx))?;
    warm.generate(&prompt[..prompt.len().min(8)], &greedy, 3, true, |_| true)?;
    drop(warm);
    let mut session = Session::new(&ctx, &model, ctx_len)?;
    let (_, stats) = session.generate(&prompt, &greedy, args.gen_tokens, true, |_| true)?;
    drop(session);
    let decode = stats.decode_tok_s();
    // Allocated until now: the warm-up's session, then the timed one (the batches' come after).
    let gpu_bytes = ctx.allocated_bytes();
    // Rounds of (single, batched) decode rates; the first single one is the run above.
    let mut rounds: Vec<(f64, f64)> = Vec::new();
    if let Some(n) = args.batch {
        for r in 0..args.rounds {
            let single = if r == 0 {
                decode
            } else {
                let mut session = Session::new(&ctx, &model, ctx_len)?;
                session.generate(&prompt, &greedy, args.gen_tokens, true, |_| true)?.1.decode_tok_s()
            };
            rounds.push((single, bench_batch(&ctx, &model, &prompt, n, args.gen_tokens, ctx_len, r == 0)?));
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let batched = args.batch.filter(|_| !rounds.is_empty()).map(|n| {
        let cost = median(rounds.iter().map(|(s, b)| s / b).collect());
        (n, median(rounds.iter().map(|r| r.1).collect()), cost)
    });
    let weights = model.model.weight_bytes();
    let peak = quill::files::cached_peak(&ctx);
    let weight_gbs = weights as f64 * decode / 1e9;
    let result = serde_json::json!({
        "model": model.source,
        "adapter": ctx.adapter_name(),
        "backend": format!("{:?}", ctx.info.backend),
        "weights": model.model.weight_types(),
        "weight_bytes": weights,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": stats.generated,
        "load_s": load_s,
        "prefill_tok_s": stats.prefill_tok_s(),
        "decode_tok_s": decode,
        "time_to_first_token_ms": stats.time_to_first_token.as_secs_f64() * 1e3,
        "peak_gpu_bytes": gpu_bytes,
        "decode_weight_gbs": weight_gbs,
        "device_peak_gbs": peak.map(|p| p.bandwidth_gbs),
        "decode_fraction_of_peak": peak.map(|p| weight_gbs / p.bandwidth_gbs),
        "batch": batched.map(|(n, tok_s, cost)| serde_json::json!({
            "sequences": n,
            "decode_tok_s": tok_s,
            "cost_per_token_vs_single": cost,
            "rounds": rounds.iter().map(|(s, b)| serde_json::json!({"single_tok_s": s, "batched_tok_s": b, "cost": s / b})).collect::<Vec<_>>(),
        })),
    });
    if args.json {
        return outln!("{result}");
    }
    outln!("model:   {} ({}; {:.1} MB of weights)", model.source, model.model.weight_types(), weights as f64 / 1e6)?;
    outln!("adapter: {} ({:?})", ctx.adapter_name(), ctx.info.backend)?;
    outln!("load:    {load_s:.2} s")?;
    outln!("prefill: {:8.2} tok/s  ({} tokens; time to first token {:.0} ms)", stats.prefill_tok_s(), args.prompt_tokens, stats.time_to_first_token.as_secs_f64() * 1e3)?;
    outln!("decode:  {decode:8.2} tok/s  ({} tokens; weights read at {weight_gbs:.2} GB/s)", stats.generated)?;
    match peak {
        Some(p) => outln!("         {:.0}% of the device's measured read bandwidth ({:.2} GB/s)", 100.0 * weight_gbs / p.bandwidth_gbs, p.bandwidth_gbs)?,
        None => outln!("         (run `quill bench-device` to compare with the device's peak bandwidth)")?,
    }
    outln!("GPU memory: {:.1} MB (weights, KV cache for {ctx_len} positions, activations)", gpu_bytes as f64 / 1e6)?;
    if let Some((n, tok_s, cost)) = batched {
        let each: Vec<String> = rounds.iter().map(|(s, b)| format!("{:.2}", s / b)).collect();
        outln!("batched: {tok_s:8.2} tok/s  ({n} sequences together; a token costs {cost:.2}x a single sequence's: the median of {} rounds, {})", rounds.len(), each.join(", "))?;
    }
    Ok(())
}

/// Decode rate of `n` sequences forked from `prompt`, each drawing `gen_tokens` greedily, in
/// batched passes of up to `MAX_DECODE_STEPS` steps per command buffer (the server's decode
/// steps), the batched pipelines compiled first with `warm_up`. Returns tokens per second over
/// all sequences.
fn bench_batch(ctx: &Context, model: &LoadedModel, prompt: &[u32], n: usize, gen_tokens: usize, ctx_len: usize, warm_up: bool) -> Result<f64> {
    use quill::generate::{Batch, Work, MAX_DECODE_STEPS};
    let greedy = SamplingParams::greedy();
    let seeds: Vec<u64> = (0..n as u64).collect();
    let run = |ctx_len: usize, prompt: &[u32], tokens: usize| -> Result<f64> {
        let mut batch = Batch::new(ctx, model, ctx_len, n)?;
        pollster::block_on(batch.drafts_start_async(prompt, &greedy, &seeds, tokens, true))?;
        let work: Vec<Work> = (0..n).map(|slot| Work { slot, sample: Some(&greedy) }).collect();
        let start = Instant::now();
        let mut done = 0;
        while done < tokens {
            done += batch.decode_steps(&work, (tokens - done).min(MAX_DECODE_STEPS))?[0].len();
        }
        Ok((n * done) as f64 / start.elapsed().as_secs_f64())
    };
    // Warm-up: compiles the batched pipelines outside the timing.
    if warm_up {
        run(16.min(ctx_len), &prompt[..prompt.len().min(8)], 2)?;
    }
    run(ctx_len, prompt, gen_tokens)
}

fn bench_device(json: bool) -> Result<()> {
    let ctx = Context::new_blocking()?;
    let peak = quill::ops::peak::measure(&ctx)?;
    if json {
        outln!("{}", serde_json::json!({"adapter": ctx.adapter_name(), "bandwidth_gbs": peak.bandwidth_gbs, "gflops": peak.gflops}))?;
    } else {
        outln!("adapter: {} ({:?})", ctx.adapter_name(), ctx.info.backend)?;
        outln!("peak read bandwidth: {:.2} GB/s", peak.bandwidth_gbs)?;
        outln!("peak FMA rate:       {:.2} GFLOP/s", peak.gflops)?;
    }
    // The measurement is printed either way; a cache that cannot be written costs only the
    // comparison in later `profile` and `bench` runs.
    match quill::files::store_peak(&ctx, peak) {
        Ok(path) => noteln!("cached in {}", path.display()),
        Err(e) => noteln!("warning: not cached ({e}); `profile` and `bench` will not compare with this peak"),
    }
    Ok(())
}
