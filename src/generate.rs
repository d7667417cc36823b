//! A generation session: one sequence (a `Batch` of one slot, `batch.rs`), its KV cache and
//! token ids on the GPU. Prompts are prefilled in chunks of matrix-matrix passes; every decode
//! step is one command buffer (forward pass + sampling), and only the sampled id (4 bytes)
//! comes back. `Batch` runs several sequences in one forward pass.
//!
//! Reading from the GPU is async underneath (`*_async`), because a browser must not block;
//! the plain methods wait natively with `pollster::block_on`.

use web_time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::profiler::Profile;
use crate::gpu::{Context, Recorder};
use crate::models::{LoadedModel, LogitRows};
use crate::sampling::SamplingParams;

mod batch;
pub use batch::{common_prefix, Batch, DraftToken, Drafts, TokenLogprobs, Work, MIN_SHIFT};

/// Most tokens one prefill pass takes.
pub const DEFAULT_MAX_BATCH: usize = 128;
/// Most decode steps encoded into one command buffer (`Session::next_tokens`).
pub const MAX_DECODE_STEPS: usize = 16;
/// `generate` grows its decode batches while a batch takes less than this, so text streams
/// at least this often on any GPU.
const STREAM_INTERVAL: Duration = Duration::from_millis(150);

/// One sequence: a `Batch` of one slot, plus what a single sequence does beyond a batch step
/// (prefill with every position's logits, several decode steps per command buffer, profiling).
pub struct Session<'a> {
    pub ctx: &'a Context,
    pub model: &'a LoadedModel,
    /// Slot 0 holds the sequence: ids[..processed] are in the KV cache, and ids[processed..]
    /// are on the GPU waiting for a forward pass.
    pub batch: Batch<'a>,
    /// Timings of every command buffer, when profiling.
    profile: Option<Profile>,
}

/// Timings of a generation, for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated: usize,
    pub prefill: Duration,
    pub time_to_first_token: Duration,
    pub decode: Duration,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill pass).
    pub fn decode_tok_s(&self) -> f64 {
        (self.generated.saturating_sub(1)) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// A parked session or batch (`Session::park`, `Batch::park`): its KV cache and ids without
/// the borrows of the context and the model, so a caller can keep it between calls.
pub struct Parked {
    state: crate::models::State,
    seqs: Vec<batch::Seq>,
    binds: crate::gpu::BindCache,
}

impl Parked {
    /// How many sequences it holds.
    pub fn slots(&self) -> usize {
        self.seqs.len()
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Eos,
    MaxTokens,
    ContextFull,
    Cancelled,
}

impl Stop {
    /// Why, in the words of `quill write`'s summary.
    pub fn reason(self) -> &'static str {
        match self {
            Stop::Eos => "end of sequence",
            Stop::MaxTokens => "--max-tokens reached",
            Stop::ContextFull => "context full (raise --ctx)",
            Stop::Cancelled => "output closed",
        }
    }
}

impl<'a> Session<'a> {
    /// A session whose KV cache holds `ctx_len` positions (at most the model's context, and
    /// what fits the GPU memory budget: `plan`).
    pub fn new(ctx: &'a Context, model: &'a LoadedModel, ctx_len: usize) -> Result<Self> {
        Self::planned(ctx, model, Some(ctx_len))
    }

    /// A session of `ctx_len` positions, or with None of the model's context or the largest
    /// that fits the GPU memory budget, whichever is smaller (`plan::plan_session`).
    pub fn planned(ctx: &'a Context, model: &'a LoadedModel, ctx_len: Option<usize>) -> Result<Self> {
        Ok(Session { ctx, model, batch: Batch::planned(ctx, model, ctx_len, 1)?, profile: None })
    }

    fn seq(&self) -> &batch::Seq {
        &self.batch.seqs[0]
    }
    fn seq_mut(&mut self) -> &mut batch::Seq {
        &mut self.batch.seqs[0]
    }
    /// Most tokens one forward pass takes.
    pub fn max_batch(&self) -> usize {
        self.batch.state.max_batch
    }

    /// Times every pass of every later command buffer (GPU timestamps where the adapter has
    /// them). Without this, no query sets are created and nothing is timed.
    pub fn enable_profiling(&mut self) {
        self.profile = Some(Profile::new(self.ctx.adapter_name(), self.ctx.gpu_timestamps()));
    }
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    fn recorder(&self, label: &str) -> Recorder<'a> {
        let rec = if self.profile.is_some() { Recorder::profiled(self.ctx, label) } else { Recorder::new(self.ctx, label) };
        rec.with_bind_cache(&self.batch.binds)
    }

    /// Bind groups kept for reuse so far.
    pub fn cached_bind_groups(&self) -> usize {
        self.batch.binds.len()
    }

    /// Submits; when profiling, waits for the GPU and keeps the command buffer's timings.
    async fn submit(&mut self, rec: Recorder<'a>, label: &'static str) -> Result<()> {
        let submitted = rec.submit()?;
        if self.profile.is_some() {
            if let Some(step) = submitted.profile_async(self.ctx, label).await? {
                if let Some(p) = &mut self.profile {
                    p.push(step);
                }
            }
        }
        Ok(())
    }

    pub fn ids(&self) -> &[u32] {
        self.batch.ids(0)
    }
    pub fn ctx_len(&self) -> usize {
        self.batch.ctx_len()
    }

    /// Appends ids to the sequence (uploaded now; run by the next forward pass).
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        self.batch.push(0, ids)
    }

    /// Records forward passes over the pending ids; all but the last chunk are submitted.
    /// Returns the recorder of the last chunk (its logits in row 0) and whether it is a
    /// prefill ("prefill") or a single decode step ("decode"). With `All`, every chunk is
    /// submitted and its logits appended to `all_logits`; the recorder returned is then empty.
    async fn run_pending(&mut self, rows: LogitRows, all_logits: &mut Vec<f32>) -> Result<(Recorder<'a>, &'static str)> {
        if self.seq().ids.len() == self.seq().processed {
            return Err(Error::Context("no token to run: push ids first".into()));
        }
        loop {
            let n = (self.seq().ids.len() - self.seq().processed).min(self.batch.state.max_batch);
            let label = if n == 1 && self.seq().processed > 0 { "decode" } else { "prefill" };
            let mut rec = self.recorder(label);
            self.model.model.forward(&mut rec, &self.batch.state, self.seq().processed, n, rows)?;
            self.seq_mut().processed += n;
            let last = self.seq().processed == self.seq().ids.len();
            if last && rows == LogitRows::Last {
                return Ok((rec, label));
            }
            self.submit(rec, label).await?;
            if rows == LogitRows::All {
                let vocab = self.model.config().vocab;
                all_logits.extend(self.ctx.read_f32_async(&self.batch.state.logits.buf, 0, n * vocab).await?);
            }
            if last {
                return Ok((Recorder::new(self.ctx, "empty"), label));
            }
        }
    }

    /// Records sampling from row 0 of the logits into the token buffer at position `out`, with
    /// the repetition penalty over the ids before it.
    fn sample_into(&self, rec: &mut Recorder<'a>, s: &SamplingParams, out: usize, draw: u32) -> Result<()> {
        // DRY's repeat search runs there over the ids (all known on the CPU: see next_tokens).
        self.batch.sample_at(rec, 0, 0, s, out, draw)
    }

    /// Runs the pending ids and samples the next token on the GPU; returns it.
    pub fn next_token(&mut self, s: &SamplingParams) -> Result<u32> {
        pollster::block_on(self.next_token_async(s))
    }

    pub async fn next_token_async(&mut self, s: &SamplingParams) -> Result<u32> {
        if self.seq().ids.len() >= self.batch.state.ctx_len {
            return Err(Error::Context(format!("the context of {} positions is full", self.batch.state.ctx_len)));
        }
        let (mut rec, label) = self.run_pending(LogitRows::Last, &mut Vec::new()).await?;
        let out = self.seq().ids.len();
        self.sample_into(&mut rec, s, out, self.seq().draws)?;
        rec.copy(&self.batch.state.tokens.buf, (out * 4) as u64, &self.batch.state.readback, 0, 4);
        self.submit(rec, label).await?;
        let bytes = self.ctx.map_read_async(&self.batch.state.readback, 4).await?;
        let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let draws = self.seq().draws.wrapping_add(1);
        self.seq_mut().draws = draws;
        // The id is already in the GPU's token buffer for the next step's embedding.
        self.seq_mut().ids.push(id);
        Ok(id)
    }

    /// Runs up to `n` decode steps in one command buffer: each step's sampled id stays on the
    /// GPU and is the next step's input, and the ids come back together at the end. Needs
    /// exactly one pending id (after `next_token`). Returns the ids (fewer than `n` when the
    /// context fills). Draws are the same as `n` calls of `next_token`.
    pub fn next_tokens(&mut self, s: &SamplingParams, n: usize) -> Result<Vec<u32>> {
        pollster::block_on(self.next_tokens_async(s, n))
    }

    pub async fn next_tokens_async(&mut self, s: &SamplingParams, n: usize) -> Result<Vec<u32>> {
        if self.seq().ids.len() != self.seq().processed + 1 {
            return Err(Error::Context("next_tokens continues a decode: run next_token first".into()));
        }
        // DRY needs each step's ids on the CPU, so with it on a batch is one step.
        let steps = if s.dry_multiplier > 0.0 { 1 } else { MAX_DECODE_STEPS };
        let n = n.min(steps).min(self.batch.state.ctx_len.saturating_sub(self.seq().ids.len()));
        if n == 0 {
            return Err(Error::Context(format!("the context of {} positions is full", self.batch.state.ctx_len)));
        }
        let first_out = self.seq().ids.len();
        let mut rec = self.recorder("decode");
        for i in 0..n {
            let out = first_out + i;
            self.model.model.forward(&mut rec, &self.batch.state, self.seq().processed + i, 1, LogitRows::Last)?;
            self.sample_into(&mut rec, s, out, self.seq().draws.wrapping_add(i as u32))?;
        }
        rec.copy(&self.batch.state.tokens.buf, (first_out * 4) as u64, &self.batch.state.readback, 0, (n * 4) as u64);
        self.submit(rec, "decode").await?;
        let bytes = self.ctx.map_read_async(&self.batch.state.readback, (n * 4) as u64).await?;
        let new: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let draws = self.seq().draws.wrapping_add(n as u32);
        self.seq_mut().draws = draws;
        self.seq_mut().processed += n;
        self.seq_mut().ids.extend_from_slice(&new);
        Ok(new)
    }

    /// Forgets every id after the first `len` (ids a decode batch produced past a stop). Their
    /// KV-cache rows are overwritten by whatever runs next.
    pub fn truncate(&mut self, len: usize) {
        self.batch.truncate(0, len)
    }

    /// Starts a new sequence `prompt` in this session, keeping the KV-cache rows of the
    /// longest common prefix of `prompt` and the current ids (a server's prompt cache). At
    /// least the last prompt id is run again, so its logits are fresh. The draw counter
    /// restarts, so a seed gives the same text as in a new session. Returns the ids reused.
    pub fn restart(&mut self, prompt: &[u32]) -> Result<usize> {
        self.batch.restart(0, prompt)
    }

    /// The session's KV cache and sequence without its borrows, for a caller that cannot hold
    /// a borrow from one call to the next (the browser page's `Quill`): `resume` it later with
    /// the same context and model, and `restart` reuses the cached prefix.
    pub fn park(self) -> Parked {
        self.batch.park()
    }

    /// A session from a parked one; `ctx` and `model` must be those it was parked from (the
    /// cache holds that model's keys and values). The draw counter restarts, as in `restart`.
    pub fn resume(ctx: &'a Context, model: &'a LoadedModel, p: Parked) -> Self {
        Session { ctx, model, batch: Batch::resume(ctx, model, p), profile: None }
    }

    /// Fails when the last logits computed hold a NaN: the model's weights or a kernel are broken,
    /// and whatever the sampler drew from them means nothing. Costs one read of `vocab` floats,
    /// done at the first token and at an end of sequence only.
    async fn check_logits_finite(&self) -> Result<()> {
        let vocab = self.model.config().vocab;
        let logits = self.ctx.read_f32_async(&self.batch.state.logits.buf, 0, vocab).await?;
        match logits.iter().position(|x| x.is_nan()) {
            Some(i) => Err(Error::format(
                &self.model.source,
                format!("the model computed NaN logits (token id {i} and others) at position {}: its weights hold NaN or infinite values, or overflow", self.seq().ids.len()),
            )),
            None => Ok(()),
        }
    }

    /// Logits of every pending position (teacher forcing, perplexity): (n, vocab) row-major.
    pub fn logits_all(&mut self) -> Result<Vec<f32>> {
        pollster::block_on(self.logits_all_async())
    }

    pub async fn logits_all_async(&mut self) -> Result<Vec<f32>> {
        let vocab = self.model.config().vocab;
        let mut out = Vec::with_capacity((self.seq().ids.len() - self.seq().processed) * vocab);
        self.run_pending(LogitRows::All, &mut out).await?;
        Ok(out)
    }

    /// Logits of the last pending position: (vocab,).
    pub fn logits_last(&mut self) -> Result<Vec<f32>> {
        pollster::block_on(self.logits_last_async())
    }

    pub async fn logits_last_async(&mut self) -> Result<Vec<f32>> {
        let (rec, label) = self.run_pending(LogitRows::Last, &mut Vec::new()).await?;
        self.submit(rec, label).await?;
        self.ctx.read_f32_async(&self.batch.state.logits.buf, 0, self.model.config().vocab).await
    }

    /// Prefills `prompt` and generates up to `max_tokens` tokens, calling `on_token` with
    /// each id as soon as it is known; `on_token` returns false to cancel.
    pub fn generate(&mut self, prompt: &[u32], s: &SamplingParams, max_tokens: usize, ignore_eos: bool, on_token: impl FnMut(u32) -> bool) -> Result<(Stop, Stats)> {
        pollster::block_on(self.generate_async(prompt, s, max_tokens, ignore_eos, on_token))
    }

    /// `generate` for callers that must not block (the browser). `on_token` runs between GPU
    /// steps, so whatever it does (stream text, check a cancel flag) shows at once.
    pub async fn generate_async(&mut self, prompt: &[u32], s: &SamplingParams, max_tokens: usize, ignore_eos: bool, mut on_token: impl FnMut(u32) -> bool) -> Result<(Stop, Stats)> {
        s.validate()?;
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "is empty: give some text to continue"));
        }
        if prompt.len() >= self.batch.state.ctx_len {
            return Err(Error::Context(format!(
                "the prompt has {} tokens but the context holds {} positions (one more is needed to generate); shorten the prompt or raise --ctx (the model allows {})",
                prompt.len(),
                self.batch.state.ctx_len,
                self.model.config().max_ctx
            )));
        }
        let mut stats = Stats { prompt_tokens: prompt.len(), ..Default::default() };
        let start = Instant::now();
        self.push(prompt)?;
        let mut stop = Stop::MaxTokens;
        if max_tokens == 0 {
            return Ok((stop, stats));
        }
        // The first token comes from the prefill's command buffer.
        let id = self.next_token_async(s).await?;
        self.check_logits_finite().await?;
        stats.generated = 1;
        stats.time_to_first_token = start.elapsed();
        stats.prefill = stats.time_to_first_token;
        let decode_start = Instant::now();
        let mut pending = vec![id];
        let mut batch = 1;
        'outer: loop {
            for (j, &id) in pending.iter().enumerate() {
                if !ignore_eos && self.model.is_eos(id) {
                    // Broken weights can make every logit NaN, and the sampler then picks some
                    // id, often the end of sequence: tell that apart from a real ending. (The
                    // logits read back are the batch's last step's, the stop's or later.)
                    self.check_logits_finite().await?;
                    stop = Stop::Eos;
                } else if !on_token(id) {
                    stop = Stop::Cancelled;
                }
                if stop != Stop::MaxTokens {
                    // Ids sampled after the stop are not part of the sequence.
                    let extra = pending.len() - 1 - j;
                    stats.generated -= extra;
                    self.truncate(self.seq().ids.len() - extra);
                    break 'outer;
                }
            }
            if stats.generated >= max_tokens {
                break;
            }
            if self.seq().ids.len() >= self.batch.state.ctx_len {
                stop = Stop::ContextFull;
                break;
            }
            // Several steps per submit, as many as keep text streaming every STREAM_INTERVAL.
            let t = Instant::now();
            pending = self.next_tokens_async(s, batch.min(max_tokens - stats.generated)).await?;
            stats.generated += pending.len();
            let per_step = t.elapsed() / pending.len() as u32;
            batch = if per_step * (2 * batch as u32) <= STREAM_INTERVAL { (2 * batch).min(MAX_DECODE_STEPS) } else { batch };
        }
        stats.decode = decode_start.elapsed();
        Ok((stop, stats))
    }
}

/// The probability of a sampled token and the most likely alternatives, as the sampler chain
/// left them (the distribution the draw chose from: `sampling::processed_probs`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenProbs {
    pub p: f32,
    /// (id, p), most likely first; ids the chain dropped are left out.
    pub top: Vec<(u32, f32)>,
}

impl Session<'_> {
    /// Probabilities of the token `next_token` just drew (with the same `s`) and of its `top`
    /// most likely alternatives after the whole sampler chain (`Batch::token_probs`).
    /// Call it before anything else runs on the session.
    pub fn token_probs(&mut self, s: &SamplingParams, top: usize) -> Result<TokenProbs> {
        let lp = self.batch.token_probs(0, 0, s, top)?;
        Ok(TokenProbs { p: lp.logprob.exp(), top: lp.top.into_iter().map(|(id, lp)| (id, lp.exp())).filter(|&(_, p)| p > 0.0).collect() })
    }
}
