//! From model files (as bytes) to a model on the GPU and its tokenizer. Native and web code
//! both come through here; only how the bytes are obtained differs (see `files.rs`).

use serde::Deserialize;

use super::builder::{with_builder, Naming};
use super::config::ModelConfig;
use super::consistency::VocabRule;
use super::{registry, Model};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::ops::attention::KvFormat;
use crate::tokenizer::Tokenizer;
use crate::train::adapter::LoraSpec;
use crate::weights::gguf::Gguf;
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::source::ByteSource;
use crate::weights::{DType, TensorSource};

/// Settings a model ships in `generation_config.json` (or GGUF metadata); `quill write` uses
/// the sampling ones where no flag is given (`SamplingParams::resolve`).
#[derive(Clone, Debug, Default)]
pub struct GenerationDefaults {
    pub eos_ids: Vec<u32>,
    /// false: greedy decoding, whatever the other sampling settings say.
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub defaults: GenerationDefaults,
    /// Where it came from, for messages.
    pub source: String,
    /// Storage types in the file, e.g. "Q4_1 ×182, Q8_0 ×1, F32 ×61".
    pub file_dtypes: String,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
    /// Is `id` an end-of-sequence token (tokenizer's or generation config's)?
    pub fn is_eos(&self, id: u32) -> bool {
        self.defaults.eos_ids.contains(&id) || self.tokenizer.eos_ids.contains(&id)
    }
}

/// Counts of each storage type among the tensors a model reads, for `quill info`.
fn dtype_summary<'a>(dtypes: impl Iterator<Item = &'a str>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for d in dtypes {
        match counts.iter_mut().find(|(n, _)| *n == d) {
            Some((_, c)) => *c += 1,
            None => counts.push((d, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1));
    counts.iter().map(|(n, c)| format!("{n} ×{c}")).collect::<Vec<_>>().join(", ")
}

/// Which storage type weight matrices get on the GPU (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightType {
    /// As the file stores them: GGUF stays quantized, BF16 stays bf16.
    #[default]
    Native,
    F32,
    F16,
    /// Quantized to Q8_0 at load.
    Q8_0,
}

impl WeightType {
    pub fn name(self) -> &'static str {
        match self {
            WeightType::Native => "native",
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Q8_0 => "q8_0",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "native" | "auto" => WeightType::Native,
            "f32" => WeightType::F32,
            "f16" => WeightType::F16,
            "q8_0" | "q8" => WeightType::Q8_0,
            _ => return Err(Error::arg("--dtype", format!("'{s}' is not one of native, f32, f16, q8_0"))),
        })
    }
}

/// How to load a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub dtype: WeightType,
    /// How sessions of the model store their KV cache (`--kv-cache`).
    pub kv_cache: KvFormat,
}

impl LoadOptions {
    /// The GPU storage type of a matrix the file stores as `file`, with rows of `cols`: f32
    /// where the wanted type's blocks (or the kernels' 32-weight units) do not divide a row.
    pub fn storage(&self, file: DType, cols: usize) -> DType {
        let want = match self.dtype {
            WeightType::Native => file,
            WeightType::F32 => DType::F32,
            WeightType::F16 => DType::F16,
            WeightType::Q8_0 => DType::Q8_0,
        };
        if want == DType::F32 || (cols % 32 == 0 && cols % want.block_len() == 0) {
            want
        } else {
            DType::F32
        }
    }
}

/// How far a load is: the file bytes of the tensors uploaded so far, and how many tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadProgress {
    pub bytes: u64,
    pub total_bytes: u64,
    pub tensors: usize,
    pub total_tensors: usize,
}

/// Uploads since the last `Context::settle_uploads` that make the loader settle again: wgpu
/// keeps a staging copy of every upload until a submit completes.
const SETTLE_EVERY: u64 = 8 << 20;

/// A progress counter over `total` (bytes, tensors) that also settles the GPU's uploads as
/// they add up; `f` gets each step.
fn counting<'p>(ctx: &'p Context, total: (u64, usize), f: &'p mut dyn FnMut(&LoadProgress)) -> impl FnMut(u64) + 'p {
    let mut p = LoadProgress { total_bytes: total.0, total_tensors: total.1, ..Default::default() };
    let mut unsettled = 0;
    move |b| {
        p.bytes += b;
        p.tensors += 1;
        unsettled += b;
        if unsettled >= SETTLE_EVERY {
            ctx.settle_uploads();
            unsettled = 0;
        }
        f(&p)
    }
}

/// Loads a GGUF model (weights kept in the file's storage types) and the tokenizer it carries.
pub fn load_gguf(ctx: &Context, file: &str, bytes: &[u8], progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_gguf_with(ctx, file, bytes, &LoadOptions::default(), progress)
}

/// Loads a GGUF model held in memory with weights stored as `opts` says.
pub fn load_gguf_with(ctx: &Context, file: &str, bytes: &[u8], opts: &LoadOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_parsed_gguf(ctx, &Gguf::parse(file, bytes)?, opts, &mut |p| progress(p.bytes, p.total_bytes))
}

/// Loads a GGUF model from `src` a tensor at a time (natively a memory map, in a browser the
/// page's file reader): the header first, then each tensor read, converted and uploaded in
/// turn, so that only one tensor is ever held in memory.
pub fn load_gguf_from(ctx: &Context, file: &str, src: &dyn ByteSource, opts: &LoadOptions, progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    load_parsed_gguf(ctx, &Gguf::open(file, src)?, opts, progress)
}

/// A GGUF model's config and the bytes its weights take on the GPU, from its header alone:
/// what a page checks against the adapter's limits before reading any weights
/// (`plan::fit_before_load`).
pub fn gguf_needs(g: &Gguf, opts: &LoadOptions) -> Result<(ModelConfig, u64)> {
    let (_, cfg) = registry::from_gguf(g)?;
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    Ok(needs(cfg, g, &names, opts))
}

/// `gguf_needs` for a Hugging Face folder: its config.json and its shards' headers (`src`
/// reads nothing more: no tensor data).
pub fn hf_needs(files: &HfFiles, src: &SafetensorsSource, opts: &LoadOptions) -> Result<(ModelConfig, u64)> {
    let (_, cfg) = registry::from_hf_json(files.config_json, &format!("{}/config.json", files.dir))?;
    Ok(needs(cfg, src, &src.names(), opts))
}

/// The config as `opts` loads it and the GPU bytes of `names` in the types `opts` gives them.
fn needs(mut cfg: ModelConfig, src: &dyn TensorSource, names: &[&str], opts: &LoadOptions) -> (ModelConfig, u64) {
    cfg.kv_format = opts.kv_cache;
    let bytes = crate::plan::weight_bytes(src, names, &|d, c| opts.storage(d, c));
    (cfg, bytes)
}

/// Loads the model of a parsed GGUF header, reading its tensors from where the header says.
pub fn load_parsed_gguf(ctx: &Context, g: &Gguf, opts: &LoadOptions, progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    load_parsed_gguf_lora(ctx, g, opts, None, progress)
}

/// Loads a GGUF model from `src` a tensor at a time with a LoRA adapter merged into its
/// weights (`train::adapter`).
pub fn load_gguf_lora(ctx: &Context, file: &str, src: &dyn ByteSource, opts: &LoadOptions, lora: Option<&LoraSpec>, progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    load_parsed_gguf_lora(ctx, &Gguf::open(file, src)?, opts, lora, progress)
}

/// `load_parsed_gguf` with a LoRA adapter merged into the weights it touches.
pub fn load_parsed_gguf_lora(ctx: &Context, g: &Gguf, opts: &LoadOptions, lora: Option<&LoraSpec>, progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    let file = g.file.as_str();
    let (arch, mut cfg) = registry::from_gguf(g)?;
    cfg.kv_format = opts.kv_cache;
    let tokenizer = Tokenizer::from_gguf(g)?;
    super::consistency::check(file, &cfg, &tokenizer, &GenerationDefaults::default(), VocabRule::Exact, g, &g.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>())?;
    let total = (g.tensors.iter().map(|t| t.n_bytes as u64).sum(), g.tensors.len());
    crate::plan::check_source(ctx, g, &g.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), &|d, c| opts.storage(d, c))?;
    let mut count = counting(ctx, total, progress);
    let merged = lora.map(|l| l.merge(g, Naming::Gguf, &cfg)).transpose()?;
    let src: &dyn TensorSource = merged.as_ref().map_or(g, |m| m);
    let model = with_builder(ctx, src, Naming::Gguf, &|d, c| opts.storage(d, c), &mut count, |b| (arch.load)(&cfg, b))?;
    ctx.settle_uploads();
    let defaults = GenerationDefaults { eos_ids: tokenizer.eos_ids.clone(), ..Default::default() };
    Ok(LoadedModel {
        model,
        tokenizer,
        defaults,
        source: file.to_string(),
        file_dtypes: dtype_summary(g.tensors.iter().map(|t| t.dtype.name())),
    })
}

/// The files of a Hugging Face model directory, as bytes.
pub struct HfFiles<'a> {
    /// Directory name, for messages.
    pub dir: String,
    pub config_json: &'a [u8],
    /// (file name, bytes) of every safetensors shard.
    pub safetensors: Vec<(String, &'a [u8])>,
    pub tokenizer_json: Option<&'a [u8]>,
    pub tokenizer_config_json: Option<&'a [u8]>,
    pub chat_template: Option<&'a str>,
    pub generation_config_json: Option<&'a [u8]>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize, Default)]
struct HfGenerationConfig {
    eos_token_id: Option<OneOrMany>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

fn generation_defaults(bytes: Option<&[u8]>, file: &str) -> Result<GenerationDefaults> {
    let g: HfGenerationConfig = match bytes {
        Some(b) => serde_json::from_slice(b).map_err(|e| Error::format(file, format!("malformed generation_config.json: {e}")))?,
        None => HfGenerationConfig::default(),
    };
    let eos_ids = match g.eos_token_id {
        Some(OneOrMany::One(id)) => vec![id],
        Some(OneOrMany::Many(ids)) => ids,
        None => Vec::new(),
    };
    Ok(GenerationDefaults {
        eos_ids,
        do_sample: g.do_sample,
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        min_p: g.min_p,
        repetition_penalty: g.repetition_penalty,
    })
}

/// Loads a Hugging Face model directory's files.
pub fn load_hf(ctx: &Context, files: &HfFiles, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_hf_with(ctx, files, &LoadOptions::default(), progress)
}

/// Loads a Hugging Face model directory's files with weights stored as `opts` says (Llama and
/// Qwen2; GPT-2 and XGLM weights are f32).
pub fn load_hf_with(ctx: &Context, files: &HfFiles, opts: &LoadOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_hf_lora(ctx, files, opts, None, progress)
}

/// Loads a Hugging Face model directory's files with a LoRA adapter merged into its weights.
pub fn load_hf_lora(ctx: &Context, files: &HfFiles, opts: &LoadOptions, lora: Option<&LoraSpec>, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    let src = SafetensorsSource::parse(&files.safetensors)?;
    let mut report = |p: &LoadProgress| progress(p.bytes, p.total_bytes);
    load_hf_source(ctx, files, &src, opts, lora, &mut report)
}

/// Loads a Hugging Face model directory whose safetensors shards are read a tensor at a time
/// from `src` (`SafetensorsSource::open` over the page's file readers); `files.safetensors`
/// is not read. The same path as `load_hf`, whose shards are in memory.
pub fn load_hf_source(ctx: &Context, files: &HfFiles, src: &SafetensorsSource, opts: &LoadOptions, lora: Option<&LoraSpec>, progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    let dir = &files.dir;
    let (arch, mut cfg) = registry::from_hf_json(files.config_json, &format!("{dir}/config.json"))?;
    cfg.kv_format = opts.kv_cache;
    let tokenizer_json = files
        .tokenizer_json
        .ok_or_else(|| Error::format(format!("{dir}/tokenizer.json"), "missing: quill needs the model's tokenizer.json"))?;
    let tokenizer = Tokenizer::from_hf(tokenizer_json, files.tokenizer_config_json, files.chat_template, dir)?;
    let defaults = generation_defaults(files.generation_config_json, &format!("{dir}/generation_config.json"))?;
    super::consistency::check(dir, &cfg, &tokenizer, &defaults, VocabRule::Padded, src, &src.names())?;
    crate::plan::check_source(ctx, src, &src.names(), &|d, c| opts.storage(d, c))?;
    let total = (src.total_bytes(), src.names().len());
    let mut count = counting(ctx, total, progress);
    let merged = lora.map(|l| l.merge(src, Naming::HuggingFace, &cfg)).transpose()?;
    let model_src: &dyn TensorSource = merged.as_ref().map_or(src, |m| m);
    let model: Model = with_builder(ctx, model_src, Naming::HuggingFace, &|d, c| opts.storage(d, c), &mut count, |b| (arch.load)(&cfg, b))?;
    ctx.settle_uploads();
    let names = src.names().into_iter().filter_map(|n| src.meta(n).map(|t| t.dtype.name())).collect::<Vec<_>>();
    Ok(LoadedModel { model, tokenizer, defaults, source: dir.clone(), file_dtypes: dtype_summary(names.into_iter()) })
}
