//! The browser entry point (wasm-bindgen). The page's worker (assets/web/worker.js) drives
//! it: open WebGPU, load a model from bytes through the same loaders as the command line
//! (`models::load`), generate with a callback per text piece, cancel, read the profile.
//! Everything that waits on the GPU awaits, so the worker's event loop keeps running and a
//! cancel message is seen between two tokens.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::generate::{Batch, Parked, Session, Stop};
use crate::gpu::Context;
use crate::models::load::{gguf_needs, hf_needs, load_gguf, load_hf_source, load_parsed_gguf, HfFiles, LoadOptions, LoadProgress};
use crate::models::{LoadedModel, ModelConfig};
use crate::plan::{fit_before_load, Budget, Plan};
use crate::ops::sample::MAX_TOP_LOGPROBS;
use crate::sampling::{SamplingFlags, SamplingParams};
use crate::tokenizer::StreamDecoder;
use crate::train::adapter::{LoraFiles, LoraSpec};
use crate::weights::gguf::Gguf;
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::source::ByteSource;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

#[wasm_bindgen(start)]
fn start() {
    // A panic shows in the console with its message instead of "unreachable executed".
    std::panic::set_hook(Box::new(|info| console_error(&format!("quill panicked: {info}"))));
}

fn js_error(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

/// Most KV cache positions a page session asks for (as `quill write`'s default).
const MAX_CTX: usize = 2048;
/// Most drafts `write_drafts` writes at once (the studio shows them side by side).
const MAX_DRAFTS: usize = 4;

/// One model on one WebGPU device.
#[wasm_bindgen]
pub struct Quill {
    ctx: Rc<Context>,
    model: Option<Rc<LoadedModel>>,
    cancelled: Rc<Cell<bool>>,
    /// The per-op table of the last profiled generation.
    profile: Rc<RefCell<Option<String>>>,
    /// KV cache positions of the loaded model's sessions, as planned before its load.
    ctx_len: Rc<Cell<usize>>,
    /// The studio's session between `write_drafts` calls (its KV cache: a branch or a retry
    /// rereads only what changed); dropped when another model loads.
    parked: Rc<RefCell<Option<Parked>>>,
    /// Test hook (`destroy_device_during_load_for_test`): the next load destroys the device
    /// once this many tensors are uploaded.
    lose_at: Cell<Option<usize>>,
}

crate::with_writer_fields! {
    /// What the page asks `generate` for; absent sampling settings come from the model's
    /// generation_config.json, else quill's defaults (as on the command line).
    #[derive(Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct WriteOptions {
        prompt: String,
        chat: bool,
        system: Option<String>,
        max_tokens: Option<usize>,
        ignore_eos: bool,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repeat_penalty: Option<f32>,
        seed: Option<u64>,
        profile: bool,
        /// `write_drafts` only: how many continuations (1..=MAX_DRAFTS) and how many
        /// alternatives each token reports (0..=MAX_TOP_LOGPROBS).
        n: Option<usize>,
        probs: Option<usize>,
        /// `write_drafts` only: the page dropped the oldest story text to fit the context;
        /// move the KV rows of what it kept instead of reading it again
        /// (`Batch::restart_shifted`).
        context_shift: bool,
        // Then the writer's samplers (with_writer_fields; absent: off, as on the command line).
    }
}

#[wasm_bindgen]
impl Quill {
    /// Opens the browser's WebGPU adapter with the features and limits it offers.
    /// `max_binding` pretends one binding holds at most that many bytes, to see what a
    /// smaller GPU would say (the page's `?max_binding=` parameter).
    pub async fn create(max_binding: Option<u32>) -> Result<Quill, JsError> {
        let mut ctx = Context::new().await.map_err(js_error)?;
        if let Some(max) = max_binding {
            let l = &mut ctx.limits;
            l.max_storage_buffer_binding_size = l.max_storage_buffer_binding_size.min(max as u64);
        }
        Ok(Quill { ctx: Rc::new(ctx), model: None, cancelled: Rc::default(), profile: Rc::default(), ctx_len: Rc::new(Cell::new(MAX_CTX)), parked: Rc::default(), lose_at: Cell::new(None) })
    }

    /// The adapter and the limits that decide which models fit, as JSON.
    pub fn adapter(&self) -> String {
        let l = &self.ctx.limits;
        serde_json::json!({
            "name": self.ctx.adapter_name(),
            "description": self.ctx.describe(),
            "shader_f16": self.ctx.features.contains(wgpu::Features::SHADER_F16),
            "timestamps": self.ctx.gpu_timestamps(),
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_buffer_size": l.max_buffer_size,
        })
        .to_string()
    }

    /// Loads a GGUF file; `progress(done, total)` is called with bytes uploaded. Returns
    /// the model's description as JSON.
    pub fn load_gguf(&mut self, name: &str, bytes: &[u8], progress: &js_sys::Function) -> Result<String, JsError> {
        self.model = None;
        self.parked.borrow_mut().take();
        let model = load_gguf(&self.ctx, name, bytes, &mut |done, total| report(progress, done, total)).map_err(js_error)?;
        self.loaded(model)
    }

    /// Loads the files of a Hugging Face model directory: `names[i]` is the file name of
    /// `files[i]` (a Uint8Array); config.json, tokenizer.json and the safetensors are needed.
    /// Planned as `load_hf_stream` plans, with the default budget and context.
    pub fn load_hf(&mut self, dir: &str, names: Vec<String>, files: js_sys::Array, progress: &js_sys::Function) -> Result<String, JsError> {
        self.model = None;
        self.parked.borrow_mut().take();
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| js_sys::Uint8Array::new(&f).to_vec()).collect();
        let safetensors: Vec<(String, &[u8])> =
            names.iter().zip(&bytes).filter(|(n, _)| n.ends_with(".safetensors")).map(|(n, b)| (format!("{dir}/{n}"), &b[..])).collect();
        if safetensors.is_empty() {
            return Err(JsError::new(&format!("{dir}: no .safetensors file among the files given")));
        }
        let src = SafetensorsSource::parse(&safetensors).map_err(js_error)?;
        self.load_hf_files(dir, &names, &bytes, &src, None, None, None, progress)
    }

    /// Loads a Hugging Face model directory a tensor at a time, as `load_gguf_stream` loads a
    /// GGUF: `names[i]` is the file name of `files[i]` (a Uint8Array: config.json,
    /// tokenizer.json and the other small files); `shards[i]` is a safetensors file of
    /// `sizes[i]` bytes that `reads[i](offset, length)` reads synchronously. Each shard's
    /// header is parsed from its first bytes, then each tensor's bytes are read as it is
    /// uploaded, so WebAssembly holds one tensor at a time. Before any weight is read, the
    /// folder's needs (config.json and the headers) are checked against the adapter as
    /// `load_gguf_stream` checks a GGUF's (`ctx`, `gpu_memory` as there). A PEFT adapter
    /// (`lora_config`: adapter_config.json, `lora_weights`: adapter_model.safetensors, both or
    /// neither; the page's fine-tune panel keeps them) is merged into the weights as they
    /// load, at the adapter's own scale (alpha / r), as `quill write --lora` does.
    /// `progress(bytes, total_bytes, tensors, total_tensors)` follows the upload.
    #[allow(clippy::too_many_arguments)]
    pub fn load_hf_stream(
        &mut self,
        dir: &str,
        names: Vec<String>,
        files: js_sys::Array,
        shards: Vec<String>,
        sizes: Vec<f64>,
        reads: js_sys::Array,
        ctx: Option<u32>,
        gpu_memory: Option<f64>,
        lora_config: Option<Vec<u8>>,
        lora_weights: Option<Vec<u8>>,
        progress: &js_sys::Function,
    ) -> Result<String, JsError> {
        self.model = None;
        self.parked.borrow_mut().take();
        let lora = match (&lora_config, &lora_weights) {
            (Some(config), Some(weights)) => Some(LoraSpec { files: LoraFiles::Peft { dir: "the adapter".into(), config, weights }, scale: 1.0 }),
            (None, None) => None,
            _ => return Err(JsError::new(&format!("{dir}: an adapter needs both adapter_config.json and adapter_model.safetensors; one was given"))),
        };
        let (bytes, src) = hf_stream_inputs(dir, &files, &shards, &sizes, &reads)?;
        self.load_hf_files(dir, &names, &bytes, &src, ctx, gpu_memory, lora.as_ref(), progress)
    }

    /// The checks of `load_hf_stream` (arguments as there), from config.json and the shards'
    /// headers alone: the page runs them before it downloads a folder's safetensors, so a
    /// folder that does not fit downloads nothing. Returns the context that will be used, as
    /// JSON, or the refusal in words with the numbers.
    #[allow(clippy::too_many_arguments)]
    pub fn check_hf_stream(&self, dir: &str, names: Vec<String>, files: js_sys::Array, shards: Vec<String>, sizes: Vec<f64>, reads: js_sys::Array, ctx: Option<u32>, gpu_memory: Option<f64>) -> Result<String, JsError> {
        let (bytes, src) = hf_stream_inputs(dir, &files, &shards, &sizes, &reads)?;
        let plan = with_hf_files(dir, &names, &bytes, |files| self.plan_for(dir, hf_needs(files, &src, &LoadOptions::default()).map_err(js_error)?, ctx, gpu_memory))?;
        Ok(serde_json::json!({ "ctx_len": plan.ctx_len, "kv_bytes": plan.kv_bytes }).to_string())
    }

    /// The shared end of `load_hf` and `load_hf_stream`: the small files by name, the
    /// weights from `src` (with `lora` merged in, when given), planned before the first
    /// upload (`plan_for`).
    #[allow(clippy::too_many_arguments)]
    fn load_hf_files(&mut self, dir: &str, names: &[String], bytes: &[Vec<u8>], src: &SafetensorsSource, ctx: Option<u32>, gpu_memory: Option<f64>, lora: Option<&LoraSpec>, progress: &js_sys::Function) -> Result<String, JsError> {
        let opts = LoadOptions::default();
        let (plan, model) = with_hf_files(dir, names, bytes, |files| {
            let plan = self.plan_for(dir, hf_needs(files, src, &opts).map_err(js_error)?, ctx, gpu_memory)?;
            let mut report = self.load_reporter(progress);
            Ok((plan, load_hf_source(&self.ctx, files, src, &opts, lora, &mut report).map_err(js_error)?))
        })?;
        self.ctx_len.set(plan.ctx_len);
        self.loaded(model)
    }

    /// Loads a GGUF file of `size` bytes a tensor at a time: `read(offset, length)` returns
    /// those bytes as a Uint8Array, synchronously (the worker reads a File slice with
    /// FileReaderSync, an OPFS file through its sync access handle, or a URL with a range
    /// request), so WebAssembly holds one tensor at a time, never the file. Before any weight
    /// is read the header's needs are checked against the adapter: the weights against the
    /// GPU memory budget (`gpu_memory` bytes when the page gives them, else the default for
    /// the adapter), the context (`ctx`, else the model's up to 2048, else the largest that
    /// fits) against what is left and the largest binding. `progress(bytes, total_bytes,
    /// tensors, total_tensors)` follows the upload.
    pub fn load_gguf_stream(&mut self, name: &str, size: f64, read: js_sys::Function, ctx: Option<u32>, gpu_memory: Option<f64>, progress: &js_sys::Function) -> Result<String, JsError> {
        self.model = None;
        self.parked.borrow_mut().take();
        let src = JsSource { name: name.to_string(), size: size as u64, read };
        let g = Gguf::open(name, &src).map_err(js_error)?;
        let opts = LoadOptions::default();
        let plan = self.plan_for(name, gguf_needs(&g, &opts).map_err(js_error)?, ctx, gpu_memory)?;
        let mut report = self.load_reporter(progress);
        let model = load_parsed_gguf(&self.ctx, &g, &opts, &mut report).map_err(js_error)?;
        self.ctx_len.set(plan.ctx_len);
        self.loaded(model)
    }

    /// The checks of `load_gguf_stream`, from the header alone (read through `read` as
    /// there): the page runs them before it stores or downloads a file. Returns the context
    /// that will be used, as JSON, or the refusal in words with the numbers.
    pub fn check_gguf_stream(&self, name: &str, size: f64, read: js_sys::Function, ctx: Option<u32>, gpu_memory: Option<f64>) -> Result<String, JsError> {
        let src = JsSource { name: name.to_string(), size: size as u64, read };
        let g = Gguf::open(name, &src).map_err(js_error)?;
        let plan = self.plan_for(name, gguf_needs(&g, &LoadOptions::default()).map_err(js_error)?, ctx, gpu_memory)?;
        Ok(serde_json::json!({ "ctx_len": plan.ctx_len, "kv_bytes": plan.kv_bytes }).to_string())
    }

    /// The session plan for model `name` of `needs` (its config and the GPU bytes of its
    /// weights, from the headers: `gguf_needs`, `hf_needs`): its weights against the GPU memory
    /// budget (`gpu_memory` bytes when the page gives less, else the default for the adapter),
    /// then the context (`ctx`, else the model's up to 2048) against what is left and the
    /// largest binding; a refusal names the numbers and the largest context that fits
    /// (`plan::fit_before_load`).
    fn plan_for(&self, name: &str, needs: (ModelConfig, u64), ctx: Option<u32>, gpu_memory: Option<f64>) -> Result<Plan, JsError> {
        let (cfg, weight_bytes) = needs;
        let mut budget = Budget::of(&self.ctx).map_err(js_error)?;
        if let Some(hint) = gpu_memory.map(|b| b as u64).filter(|&b| b < budget.bytes) {
            budget = Budget { bytes: hint, source: "the page's memory hint: ?gpu_memory=, else half of navigator.deviceMemory".into() };
        }
        let requested = ctx.map(|c| c as usize).unwrap_or(cfg.max_ctx.min(MAX_CTX));
        fit_before_load(name, &cfg, weight_bytes, requested, self.ctx.binding_limit(), self.ctx.limits.max_buffer_size, &budget).map_err(js_error)
    }

    /// A load's progress callback: the page's `progress`, and the test hook's device loss.
    fn load_reporter<'a>(&self, progress: &'a js_sys::Function) -> impl FnMut(&LoadProgress) + 'a {
        let (ctx, lose_at) = (self.ctx.clone(), self.lose_at.take());
        move |p| {
            if lose_at == Some(p.tensors) {
                ctx.device.destroy();
            }
            report_load(progress, p)
        }
    }

    /// Has the GPU device been lost (driver reset, tab in the background too long)? The page
    /// then creates a new `Quill` and loads again, without a reload.
    pub fn device_lost(&self) -> bool {
        self.ctx.is_lost()
    }

    /// Test hook: destroys the WebGPU device as a driver reset or a GPU taken away would
    /// (tests/web/e2e-stream.mjs, through the page's `?test_hooks`).
    pub fn destroy_device_for_test(&self) {
        self.ctx.device.destroy();
    }

    /// Test hook: the next load destroys the WebGPU device once `tensors` tensors are uploaded
    /// (a load is one synchronous call: no message reaches the worker in the middle of it).
    pub fn destroy_device_during_load_for_test(&self, tensors: u32) {
        self.lose_at.set(Some(tensors as usize));
    }

    fn loaded(&mut self, model: LoadedModel) -> Result<String, JsError> {
        let c = model.config();
        let info = serde_json::json!({
            "source": model.source,
            "architecture": c.arch.name(),
            "layers": c.n_layers,
            "dim": c.dim,
            "vocab": c.vocab,
            "context": c.max_ctx,
            "file_dtypes": model.file_dtypes,
            "weights": model.model.weight_types(),
            "weight_bytes": model.model.weight_bytes(),
            "has_chat_template": model.tokenizer.apply_chat_template(&[("user", "hi")], true).is_ok(),
            "ctx_len": self.ctx_len.get(),
        });
        self.model = Some(Rc::new(model));
        Ok(info.to_string())
    }

    /// Writes a continuation of `options.prompt` (JSON, see `WriteOptions`), calling
    /// `on_piece(text, tokens_so_far)` with each piece of text as soon as it is decoded.
    /// Resolves to a JSON summary (tokens, speeds, why it stopped, the profile table).
    pub fn generate(&self, options: &str, on_piece: js_sys::Function) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let model = self.model.clone();
        let cancelled = self.cancelled.clone();
        let profile = self.profile.clone();
        let ctx_len = self.ctx_len.get();
        let options: Result<WriteOptions, _> = serde_json::from_str(options);
        cancelled.set(false);
        wasm_bindgen_futures::future_to_promise(async move {
            let model = model.ok_or_else(|| JsError::new("no model loaded"))?;
            let options = options.map_err(|e| JsError::new(&format!("generate options: {e}")))?;
            write(&ctx, &model, ctx_len, options, &on_piece, &cancelled, &profile).await.map(JsValue::from).map_err(|e| js_error(e).into())
        })
    }

    /// Token ids of `text`, as the model reads it (BOS included when the model adds one: the
    /// ids of "" are that overhead). The studio counts Memory, notes and story with it.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsError> {
        let model = self.model.as_ref().ok_or_else(|| JsError::new("no model loaded"))?;
        model.tokenizer.encode(text).map_err(js_error)
    }

    /// The text of token ids (the studio cuts the story at a depth counted in tokens).
    pub fn detokenize(&self, ids: Vec<u32>) -> Result<String, JsError> {
        let model = self.model.as_ref().ok_or_else(|| JsError::new("no model loaded"))?;
        let vocab = model.config().vocab;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(JsError::new(&format!("detokenize: token {bad} is outside the vocabulary of {vocab}")));
        }
        model.tokenizer.decode(&ids).map_err(js_error)
    }

    /// Writes `options.n` continuations of the prompt together, one batched forward pass per
    /// token (`drafts`): the prompt prefills once, reusing the KV cache of what it shares with
    /// the last call's sequence (the cache is kept between calls), with seeds seed, seed + 1,
    /// …. Calls `on_token(draft, text, logprob, alternatives)` per token:
    /// `alternatives` is JSON `[[text, logprob], …]` of the `options.probs` most likely
    /// tokens after the whole sampler chain (empty when `probs` is 0);
    /// `text` is "" for a token that ends inside a UTF-8 character. Resolves to JSON.
    pub fn write_drafts(&self, options: &str, on_token: js_sys::Function) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let model = self.model.clone();
        let cancelled = self.cancelled.clone();
        let parked = self.parked.clone();
        let ctx_len = self.ctx_len.get();
        let options: Result<WriteOptions, _> = serde_json::from_str(options);
        cancelled.set(false);
        wasm_bindgen_futures::future_to_promise(async move {
            let model = model.ok_or_else(|| JsError::new("no model loaded"))?;
            let options = options.map_err(|e| JsError::new(&format!("write_drafts options: {e}")))?;
            drafts(&ctx, &model, ctx_len, options, &on_token, &cancelled, &parked).await.map(JsValue::from).map_err(|e| js_error(e).into())
        })
    }

    /// Fine-tunes a new LoRA adapter (all seven projections, A as PEFT starts it, B zero) on a
    /// Llama-family model given as Hugging Face bytes (config.json, model.safetensors), on
    /// sequences cut from the token ids `ids` (`options`: JSON, see `FinetuneOptions`), calling
    /// `on_step(step, loss)` after each AdamW step. Each step is one submit; `cancel` stops
    /// the run after the step in flight, keeping the steps done. Resolves to an object:
    /// `losses` (the JSON list of the steps' losses), `cancelled` (a boolean), and the adapter
    /// as PEFT writes it, `adapter_config` (adapter_config.json's text) and `adapter_model`
    /// (adapter_model.safetensors, a Uint8Array), which `load_hf_stream` takes back.
    pub fn finetune_lora(&self, config_json: Vec<u8>, safetensors: Vec<u8>, ids: Vec<u32>, options: &str, on_step: js_sys::Function) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let cancelled = self.cancelled.clone();
        let options: Result<FinetuneOptions, _> = serde_json::from_str(options);
        cancelled.set(false);
        wasm_bindgen_futures::future_to_promise(async move {
            let o = options.map_err(|e| JsError::new(&format!("finetune options: {e}")))?;
            let run = finetune_lora(&ctx, &config_json, &safetensors, &ids, &o, &on_step, &cancelled).await.map_err(js_error)?;
            let (config, weights) = run.adapter.to_peft(o.base.as_deref().unwrap_or("")).map_err(js_error)?;
            let out = js_sys::Object::new();
            let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v).map(|_| ());
            set("losses", serde_json::to_string(&run.losses).unwrap_or_default().into())?;
            set("cancelled", run.cancelled.into())?;
            set("adapter_config", String::from_utf8_lossy(&config).into_owned().into())?;
            set("adapter_model", js_sys::Uint8Array::from(&weights[..]).into())?;
            Ok(out.into())
        })
    }

    /// Stops the running generation after the token in flight (a fine-tuning run after the
    /// step in flight).
    pub fn cancel(&self) {
        self.cancelled.set(true);
    }

    /// The per-op GPU time table of the last generation run with `profile: true`.
    pub fn profile_table(&self) -> Option<String> {
        self.profile.borrow().clone()
    }
}

/// What the page asks `finetune_lora` for (as `quill finetune`'s flags; no held-out split).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinetuneOptions {
    steps: usize,
    seq_len: usize,
    batch: usize,
    rank: usize,
    alpha: Option<f32>,
    lr: f32,
    #[serde(default)]
    seed: u64,
    /// The base model's name, written into adapter_config.json.
    #[serde(default)]
    base: Option<String>,
}

/// What a browser fine-tuning run leaves: the losses of the steps done, the adapter, and
/// whether `cancel` stopped it early.
struct Finetuned {
    losses: Vec<f32>,
    adapter: crate::train::adapter::LoraAdapter,
    cancelled: bool,
}

async fn finetune_lora(ctx: &Context, config_json: &[u8], safetensors: &[u8], ids: &[u32], o: &FinetuneOptions, on_step: &js_sys::Function, cancelled: &Cell<bool>) -> crate::Result<Finetuned> {
    use crate::train::{llama, run};
    let cfg = crate::models::registry::from_hf_json(config_json, "config.json")?.1;
    let src = crate::weights::safetensors::SafetensorsSource::parse(&[("model.safetensors".into(), safetensors)])?;
    let mut model = llama::Llama::load_with(ctx, cfg, &src, crate::models::builder::Naming::HuggingFace, true)?;
    let all: Vec<usize> = (0..llama::PROJECTIONS.len()).collect();
    let adapter = model.new_adapter(o.rank, o.alpha.unwrap_or(2.0 * o.rank as f32), &all, o.seed);
    model.attach_adapter(ctx, &adapter)?;
    let mut opt = model.optimizer(ctx, Default::default())?;
    let data = run::split_sequences(ids, "the token ids", o.seq_len, 0.0, model.cfg.max_ctx)?;
    // The run's "checkpoint" after every step (there is no held-out split, so it costs
    // nothing) is where the page hears of the step and where a cancel stops the run.
    let opts = run::RunOptions { steps: o.steps, batch: o.batch, lr: o.lr, warmup: o.steps / 20, eval_every: 1 };
    let mut history = run::History::default();
    let stopped = Cell::new(false);
    let mut after_step = |_: &llama::Optimizer, h: &run::History| {
        if let Some(last) = h.train.last() {
            let _ = on_step.call2(&JsValue::NULL, &(last.step as f64).into(), &last.loss.into());
        }
        if cancelled.get() && h.step < opts.steps {
            stopped.set(true);
            return Err(Error::arg("training", "cancelled"));
        }
        Ok(())
    };
    let ran = run::train(ctx, &model, &mut opt, &data, &opts, &mut history, &mut |_| {}, &mut after_step).await;
    if !stopped.get() {
        ran?;
    }
    let adapter = model.adapter_weights(ctx).await?;
    Ok(Finetuned { losses: history.train.iter().map(|p| p.loss).collect(), adapter, cancelled: stopped.get() })
}

/// A file the worker reads for us a range at a time (see `load_gguf_stream`).
struct JsSource {
    name: String,
    size: u64,
    read: js_sys::Function,
}

impl ByteSource for JsSource {
    fn len(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: usize) -> crate::Result<std::borrow::Cow<'_, [u8]>> {
        let failed = |why: String| Error::format(&self.name, format!("reading {len} bytes at {offset}: {why}"));
        let v = self.read.call2(&JsValue::NULL, &(offset as f64).into(), &(len as f64).into()).map_err(|e| failed(js_text(&e)))?;
        let bytes = js_sys::Uint8Array::new(&v);
        if bytes.length() as usize != len {
            return Err(failed(format!("got {} bytes", bytes.length())));
        }
        Ok(std::borrow::Cow::Owned(bytes.to_vec()))
    }
}

/// `load_hf_stream`'s inputs: the small files' bytes (`files`, Uint8Arrays) and the shards
/// (`shards[i]` of `sizes[i]` bytes, read by the function `reads[i]`) with their headers parsed.
fn hf_stream_inputs(dir: &str, files: &js_sys::Array, shards: &[String], sizes: &[f64], reads: &js_sys::Array) -> Result<(Vec<Vec<u8>>, SafetensorsSource<'static>), JsError> {
    if shards.is_empty() || shards.len() != sizes.len() || shards.len() != reads.length() as usize {
        return Err(JsError::new(&format!("{dir}: {} safetensors files, {} sizes and {} readers given (one of each per file, at least one)", shards.len(), sizes.len(), reads.length())));
    }
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| js_sys::Uint8Array::new(&f).to_vec()).collect();
    let sources = shards
        .iter()
        .zip(sizes)
        .zip(reads.iter())
        .map(|((n, &size), read)| {
            let name = format!("{dir}/{n}");
            let read = read.dyn_into::<js_sys::Function>().map_err(|_| JsError::new(&format!("{name}: its reader is not a function")))?;
            Ok((name.clone(), Box::new(JsSource { name, size: size as u64, read }) as Box<dyn ByteSource>))
        })
        .collect::<Result<Vec<_>, JsError>>()?;
    Ok((bytes, SafetensorsSource::open(sources).map_err(js_error)?))
}

/// Runs `f` on the folder's small files by name (`names[i]` is the file of `bytes[i]`):
/// config.json is needed, the tokenizer's files and the chat template are taken when there.
fn with_hf_files<R>(dir: &str, names: &[String], bytes: &[Vec<u8>], f: impl FnOnce(&HfFiles) -> Result<R, JsError>) -> Result<R, JsError> {
    let file = |name: &str| names.iter().position(|n| n == name).map(|i| &bytes[i][..]);
    let config_json = file("config.json").ok_or_else(|| JsError::new(&format!("{dir}: no config.json among the files given")))?;
    let template = file("chat_template.jinja")
        .map(|b| crate::tokenizer::template_text(b.to_vec(), &format!("{dir}/chat_template.jinja")))
        .transpose()
        .map_err(js_error)?;
    f(&HfFiles {
        dir: dir.to_string(),
        config_json,
        safetensors: Vec::new(),
        tokenizer_json: file("tokenizer.json"),
        tokenizer_config_json: file("tokenizer_config.json"),
        chat_template: template.as_deref(),
        generation_config_json: file("generation_config.json"),
    })
}

/// A thrown JavaScript value's message.
fn js_text(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// `progress(bytes, total_bytes, tensors, total_tensors)` of a load.
fn report_load(progress: &js_sys::Function, p: &LoadProgress) {
    let args = js_sys::Array::of4(&(p.bytes as f64).into(), &(p.total_bytes as f64).into(), &(p.tensors as f64).into(), &(p.total_tensors as f64).into());
    let _ = progress.apply(&JsValue::NULL, &args);
}

fn report(progress: &js_sys::Function, done: u64, total: u64) {
    let _ = progress.call2(&JsValue::NULL, &(done as f64).into(), &(total as f64).into());
}

/// The sampler settings of `o`: the user's, else the model's generation config, else quill's
/// defaults; the writer's samplers (llama-server's fields) off unless asked for.
fn sampling(model: &LoadedModel, o: &WriteOptions) -> crate::Result<SamplingParams> {
    let flags = SamplingFlags { temperature: o.temperature, top_k: o.top_k, top_p: o.top_p, min_p: o.min_p, repeat_penalty: o.repeat_penalty };
    let seed = o.seed.unwrap_or_else(|| js_sys::Date::now() as u64);
    let (resolved, _) = SamplingParams::resolve(&flags, &model.defaults);
    let fields = o.writer_fields();
    let s = fields.apply(SamplingParams { seed, ..resolved }, &model.tokenizer)?;
    Ok(s)
}

fn max_tokens(o: &WriteOptions) -> crate::Result<usize> {
    match o.max_tokens.unwrap_or(256) {
        0 => Err(Error::arg("max tokens", "must be at least 1")),
        n => Ok(n),
    }
}

/// The prompt's ids: the text itself, or in chat mode the system and user turns through the
/// model's chat template.
fn prompt_ids(model: &LoadedModel, o: &WriteOptions) -> crate::Result<Vec<u32>> {
    let text = if o.chat {
        let mut messages = Vec::new();
        if let Some(system) = o.system.clone().filter(|s| !s.trim().is_empty()) {
            messages.push(("system".to_string(), system));
        }
        messages.push(("user".to_string(), o.prompt.clone()));
        model.tokenizer.apply_chat_template(&messages, true)?
    } else {
        o.prompt.clone()
    };
    model.tokenizer.encode(&text)
}

async fn write(ctx: &Context, model: &LoadedModel, ctx_len: usize, o: WriteOptions, on_piece: &js_sys::Function, cancelled: &Cell<bool>, profile: &RefCell<Option<String>>) -> crate::Result<String> {
    if o.n.is_some() || o.probs.is_some() || o.context_shift {
        return Err(Error::arg("generate options", "n, probs and context_shift are write_drafts options"));
    }
    let sampling = sampling(model, &o)?;
    let seed = sampling.seed;
    let max_tokens = max_tokens(&o)?;
    let ids = prompt_ids(model, &o)?;
    let mut session = Session::new(ctx, model, model.config().max_ctx.min(ctx_len))?;
    if o.profile {
        session.enable_profiling();
    }
    let mut decoder = StreamDecoder::new();
    let mut generated = 0u32;
    let mut failed = None;
    let (stop, stats) = session
        .generate_async(&ids, &sampling, max_tokens, o.ignore_eos, |id| {
            generated += 1;
            match decoder.step(&model.tokenizer, id) {
                Ok(Some(piece)) => {
                    let _ = on_piece.call2(&JsValue::NULL, &piece.into(), &generated.into());
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
            failed.is_none() && !cancelled.get()
        })
        .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(rest) = decoder.finish(&model.tokenizer)? {
        let _ = on_piece.call2(&JsValue::NULL, &rest.into(), &generated.into());
    }
    let table = session.profile().map(|p| p.table(false, None));
    *profile.borrow_mut() = table.clone();
    let stop = stop_name(stop);
    Ok(serde_json::json!({
        "prompt_tokens": stats.prompt_tokens,
        "generated": stats.generated,
        "time_to_first_token_ms": stats.time_to_first_token.as_secs_f64() * 1e3,
        "prefill_tok_s": stats.prefill_tok_s(),
        "decode_tok_s": stats.decode_tok_s(),
        "stop": stop,
        "seed": seed,
        "sampling": sampling.describe(),
        "profile": table,
        "gpu_timestamps": ctx.gpu_timestamps(),
    })
    .to_string())
}

const fn stop_name(stop: Stop) -> &'static str {
    match stop {
        Stop::Eos => "end of sequence",
        Stop::MaxTokens => "max tokens reached",
        Stop::ContextFull => "context full",
        Stop::Cancelled => "cancelled",
    }
}

/// `n` continuations of the prompt written together, as `quill write --drafts` writes them
/// (`Batch::drafts_start_async`): the prompt prefills once in slot 0 (keeping the rows it shares
/// with the last call's sequence), is forked into the other slots on the GPU, and every step is
/// ONE forward pass over all running drafts; draft i draws with the seed + i. Each token goes
/// to `on_token(draft, text, logprob, alternatives)` as it comes. The batch is parked for the
/// next call; one with too few slots is replaced by one with `n` (planned for the memory).
async fn drafts(ctx: &Context, model: &LoadedModel, ctx_len: usize, o: WriteOptions, on_token: &js_sys::Function, cancelled: &Cell<bool>, parked: &RefCell<Option<Parked>>) -> crate::Result<String> {
    let sampling = sampling(model, &o)?;
    let max_tokens = max_tokens(&o)?;
    let n = o.n.unwrap_or(1);
    if n == 0 || n > MAX_DRAFTS {
        return Err(Error::arg("n", format!("{n} drafts: must be from 1 to {MAX_DRAFTS}")));
    }
    let top = o.probs.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(Error::arg("probs", format!("{top} alternatives: must be at most {MAX_TOP_LOGPROBS}")));
    }
    let ids = prompt_ids(model, &o)?;
    // The batch of the last call when it has the slots (taken: a failed call leaves none
    // behind); else its memory goes before a batch of `n` slots is made.
    let last = parked.borrow_mut().take();
    let mut batch = match last {
        Some(p) if p.slots() >= n => Batch::resume(ctx, model, p),
        last => {
            drop(last);
            Batch::new(ctx, model, model.config().max_ctx.min(ctx_len), n)?
        }
    };
    let (_, shifted) = if o.context_shift { batch.restart_shifted(0, &ids)? } else { (0, 0) };
    let seeds: Vec<u64> = (0..n as u64).map(|i| sampling.seed.wrapping_add(i)).collect();
    let mut d = batch.drafts_start_async(&ids, &sampling, &seeds, max_tokens, o.ignore_eos).await?;
    let mut decoders = vec![StreamDecoder::new(); n];
    let mut steps = 0;
    while !d.done() {
        let tokens = batch.drafts_step_async(&mut d).await?;
        steps += 1;
        for t in tokens {
            let (logprob, alts) = if top > 0 { token_probs(&batch, t.draft, t.row, d.params(t.draft), top).await? } else { (f32::NAN, String::from("[]")) };
            let piece = decoders[t.draft].step(&model.tokenizer, t.id)?.unwrap_or_default();
            call_token(on_token, t.draft, &piece, logprob, &alts);
        }
        if cancelled.get() {
            for draft in 0..n {
                d.cancel(draft);
            }
        }
    }
    for (draft, decoder) in decoders.iter_mut().enumerate() {
        if let Some(rest) = decoder.finish(&model.tokenizer)? {
            call_token(on_token, draft, &rest, f32::NAN, "[]");
        }
    }
    let out: Vec<serde_json::Value> = d.out.iter().enumerate().map(|(draft, (tokens, stop))| serde_json::json!({"draft": draft, "seed": seeds[draft], "generated": tokens.len(), "stop": stop_name(*stop)})).collect();
    let reused = d.reused;
    *parked.borrow_mut() = Some(batch.park());
    Ok(serde_json::json!({"prompt_tokens": ids.len(), "reused_tokens": reused, "shifted_tokens": shifted, "steps": steps, "seed": sampling.seed, "sampling": sampling.describe(), "drafts": out}).to_string())
}

fn call_token(f: &js_sys::Function, draft: usize, text: &str, logprob: f32, alts: &str) {
    let args = js_sys::Array::of4(&(draft as u32).into(), &text.into(), &(logprob as f64).into(), &alts.into());
    let _ = f.apply(&JsValue::NULL, &args);
}

/// The log-probability of the token just sampled and the `top` most likely ids with theirs,
/// after the sampler chain (`Batch::token_probs`). Returns (logprob, JSON `[[text, logprob], …]`).
/// The probability of the token slot `slot` drew from logits row `row` and its `top`
/// alternatives, as the page shows them: (logprob, JSON list of [text, logprob]).
async fn token_probs(batch: &Batch<'_>, slot: usize, row: usize, s: &SamplingParams, top: usize) -> crate::Result<(f32, String)> {
    let lp = batch.token_probs_async(slot, row, s, top).await?;
    let tok = &batch.model.tokenizer;
    let mut list = Vec::with_capacity(lp.top.len());
    for (id, p) in lp.top {
        list.push(serde_json::json!([tok.decode(&[id])?, p]));
    }
    Ok((lp.logprob, serde_json::Value::Array(list).to_string()))
}

// The library's tests (every kernel's `gpu_test!`s) run in a browser.
#[cfg(test)]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
