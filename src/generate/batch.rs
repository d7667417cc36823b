//! Several sequences (slots) sharing one forward pass: `Batch` holds one `State` with `S`
//! slots, each with its ids, its progress through them and its draw counter. A `step` runs
//! one forward pass over what several slots have pending (decode tokens of running sequences
//! and a chunk of a new prompt together), so every weight is read once for all of them, then
//! samples each slot that asked on its own logits row with its own parameters, seed and
//! penalty window; the sampled ids stay on the GPU for the next step and come back together.

use crate::error::{Error, Result};
use crate::gpu::{BindCache, Context, Recorder};
use crate::models::state::Segment;
use crate::models::{LoadedModel, LogitRows, State};
use crate::ops::sample::{logprobs_len, parse_logprobs, sample, token_probs, write_adjust};
use crate::sampling::{dry_penalties, SamplingParams};

/// The log-probability of a drawn token and of the most likely alternatives, as the sampler
/// chain left them (`Batch::token_probs`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    /// (id, log-probability), most likely first; ids the chain dropped are left out.
    pub top: Vec<(u32, f32)>,
}

/// One slot's part of a step.
#[derive(Clone, Copy, Debug)]
pub struct Work<'p> {
    pub slot: usize,
    /// Sample the next token once the slot's pending ids have all run (None: only run them,
    /// e.g. a prompt's chunk).
    pub sample: Option<&'p SamplingParams>,
}

/// A slot's sequence: ids[..processed] are in its KV cache rows, ids[processed..] wait on the
/// GPU for a forward pass.
#[derive(Clone, Debug, Default)]
pub(super) struct Seq {
    pub(super) ids: Vec<u32>,
    pub(super) processed: usize,
    /// Draws so far, mixed into the sampler's random numbers.
    pub(super) draws: u32,
}

/// Drafts being written (`Batch::drafts_start_async`): draft i runs in slot i.
pub struct Drafts {
    params: Vec<SamplingParams>,
    /// Each draft's ids so far and why it stopped (MaxTokens while it runs).
    pub out: Vec<(Vec<u32>, super::Stop)>,
    running: Vec<usize>,
    max_tokens: usize,
    ignore_eos: bool,
    /// Prompt ids whose KV rows slot 0 already held.
    pub reused: usize,
}

impl Drafts {
    pub fn done(&self) -> bool {
        self.running.is_empty()
    }
    /// The sampling parameters draft `draft` draws with (its own seed).
    pub fn params(&self, draft: usize) -> &SamplingParams {
        &self.params[draft]
    }
    /// Stops draft `draft` (its last token stays).
    pub fn cancel(&mut self, draft: usize) {
        if let Some(at) = self.running.iter().position(|&d| d == draft) {
            self.running.remove(at);
            self.out[draft].1 = super::Stop::Cancelled;
        }
    }
}

/// A token `drafts_step_async` drew: draft `draft` (its slot) from logits row `row`.
#[derive(Clone, Copy, Debug)]
pub struct DraftToken {
    pub draft: usize,
    pub row: usize,
    pub id: u32,
}

pub struct Batch<'a> {
    pub ctx: &'a Context,
    pub model: &'a LoadedModel,
    pub state: State,
    pub(super) seqs: Vec<Seq>,
    /// Bind groups of earlier steps, reused: decode creates none after its first step.
    pub(super) binds: BindCache,
}

/// Checks that `ids` can be appended to a sequence of `len` ids in a context of `ctx_len`.
pub(crate) fn check_push(model: &LoadedModel, ids: &[u32], len: usize, ctx_len: usize) -> Result<()> {
    let vocab = model.config().vocab;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::arg("token id", format!("{bad} is outside the vocabulary of {vocab}")));
    }
    if len + ids.len() > ctx_len {
        return Err(Error::Context(format!(
            "{} tokens do not fit the context of {ctx_len} positions (already {len} in use); shorten the prompt or raise --ctx (the model allows {})",
            ids.len(),
            model.config().max_ctx
        )));
    }
    Ok(())
}

/// Fewest ids a context shift moves (`Batch::restart_shifted`): a shorter run is read again.
pub const MIN_SHIFT: usize = 16;

/// How many ids `a` and `b` share from their start (the cache a prompt can reuse).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The longest run `held[from .. from + count]` (from > keep) equal to `wanted[keep .. keep +
/// count]`, as (from, count), when it has at least `MIN_SHIFT` ids.
fn shift_match(held: &[u32], wanted: &[u32], keep: usize) -> Option<(usize, usize)> {
    let first = *wanted.get(keep)?;
    let mut best: Option<(usize, usize)> = None;
    for from in keep + 1..held.len() {
        if held[from] != first {
            continue;
        }
        let count = common_prefix(&held[from..], &wanted[keep..]);
        if count >= MIN_SHIFT && best.is_none_or(|(_, c)| count > c) {
            best = Some((from, count));
        }
    }
    best
}

impl<'a> Batch<'a> {
    /// `n_slots` sequences of `ctx_len` positions each, forward passes of up to
    /// `DEFAULT_MAX_BATCH` tokens.
    pub fn new(ctx: &'a Context, model: &'a LoadedModel, ctx_len: usize, n_slots: usize) -> Result<Self> {
        Self::planned(ctx, model, Some(ctx_len), n_slots)
    }

    /// `new` with None: the model's context or the largest that fits the GPU memory budget,
    /// whichever is smaller (`plan::plan_session`).
    pub fn planned(ctx: &'a Context, model: &'a LoadedModel, ctx_len: Option<usize>, n_slots: usize) -> Result<Self> {
        let plan = crate::plan::plan_slots(ctx, model, ctx_len, super::DEFAULT_MAX_BATCH, n_slots)?;
        let state = State::with_slots(ctx, model.config(), plan.ctx_len, super::DEFAULT_MAX_BATCH.min(plan.ctx_len), n_slots)?;
        Ok(Batch { ctx, model, state, seqs: vec![Seq::default(); n_slots], binds: BindCache::default() })
    }

    /// The batch without its borrows (`Session::park` for several slots).
    pub fn park(self) -> super::Parked {
        let Batch { state, seqs, binds, .. } = self;
        super::Parked { state, seqs, binds }
    }

    /// A batch from a parked one; `ctx` and `model` must be those it was parked from. Each
    /// slot's draw counter restarts, as in `restart`.
    pub fn resume(ctx: &'a Context, model: &'a LoadedModel, p: super::Parked) -> Self {
        let mut seqs = p.seqs;
        for s in &mut seqs {
            s.draws = 0;
        }
        Batch { ctx, model, state: p.state, seqs, binds: p.binds }
    }

    pub fn n_slots(&self) -> usize {
        self.seqs.len()
    }
    pub fn ctx_len(&self) -> usize {
        self.state.ctx_len
    }
    /// Most tokens one step takes.
    pub fn max_batch(&self) -> usize {
        self.state.max_batch
    }
    fn seq(&self, slot: usize) -> Result<&Seq> {
        self.seqs.get(slot).ok_or_else(|| Error::arg("slot", format!("{slot} is not one of the {} slots", self.seqs.len())))
    }
    /// Every id of slot `slot`'s sequence (empty for a slot out of range).
    pub fn ids(&self, slot: usize) -> &[u32] {
        self.seqs.get(slot).map_or(&[], |s| &s.ids)
    }
    /// Ids of slot `slot` waiting for a forward pass.
    pub fn pending(&self, slot: usize) -> usize {
        self.seqs.get(slot).map_or(0, |s| s.ids.len() - s.processed)
    }

    /// Appends ids to slot `slot`'s sequence (uploaded now; run by a later step).
    pub fn push(&mut self, slot: usize, ids: &[u32]) -> Result<()> {
        let len = self.seq(slot)?.ids.len();
        check_push(self.model, ids, len, self.state.ctx_len)?;
        let at = (self.state.token_index(slot, len) * 4) as u64;
        self.ctx.queue.write_buffer(&self.state.tokens.buf, at, bytemuck::cast_slice(ids));
        self.seqs[slot].ids.extend_from_slice(ids);
        Ok(())
    }

    /// Forgets every id of slot `slot` after the first `len`.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        if let Some(s) = self.seqs.get_mut(slot) {
            if len < s.ids.len() {
                s.ids.truncate(len);
                s.processed = s.processed.min(len.saturating_sub(1));
            }
        }
    }

    /// Starts sequence `prompt` in slot `slot`, keeping the KV-cache rows of the longest common
    /// prefix with what the slot holds (a server's prompt cache); at least the last prompt id
    /// runs again, so its logits are fresh. The draw counter restarts. Returns the ids reused.
    pub fn restart(&mut self, slot: usize, prompt: &[u32]) -> Result<usize> {
        let s = self.seq(slot)?;
        let common = common_prefix(&s.ids, prompt);
        let mut reused = common.min(s.processed).min(prompt.len().saturating_sub(1));
        if !self.rings_keep(s.processed, reused) {
            reused = 0;
        }
        let s = &mut self.seqs[slot];
        s.ids.truncate(reused);
        s.processed = reused;
        s.draws = 0;
        self.push(slot, &prompt[reused..])
            .inspect_err(|_| self.truncate(slot, reused))?;
        Ok(reused)
    }

    /// `restart` with a context shift, as KoboldCpp's ContextShift and llama.cpp's cache reuse
    /// do it: when `prompt` keeps the start of what slot `slot` holds, then drops a stretch
    /// and goes on with a later run of the slot's ids (a story that outgrew the context: Memory
    /// kept, the oldest text dropped), that run's KV rows move down to their new positions on
    /// the GPU, their keys turned back by the positions dropped (`State::shift`), instead of
    /// being computed again. Only a run of at least `MIN_SHIFT` ids counts; models whose keys
    /// cannot move (absolute positions, sliding-window rings, dynamic NTK, longrope) restart
    /// as `restart` does. The moved rows were computed with the dropped text before them, so
    /// what follows is close to, not equal to, a fresh run of `prompt`: an approximation a
    /// writer's page trades for not rereading the context; a server does not make it.
    /// Returns the ids reused, as `restart`, and how many of them the shift moved.
    pub fn restart_shifted(&mut self, slot: usize, prompt: &[u32]) -> Result<(usize, usize)> {
        let s = self.seq(slot)?;
        let keep = common_prefix(&s.ids, prompt).min(s.processed);
        let found = shift_match(&s.ids[..s.processed], prompt.get(..prompt.len().saturating_sub(1)).unwrap_or(&[]), keep);
        let mut moved = 0;
        if let (Some((from, count)), Some(turn)) = (found, self.model.model.shift_turns(&self.state)) {
            let mut rec = Recorder::new(self.ctx, "context shift");
            self.state.shift(self.ctx, &mut rec, slot, from, keep, count, &turn, self.model.config())?;
            rec.submit()?;
            let at = (self.state.token_index(slot, keep) * 4) as u64;
            self.ctx.queue.write_buffer(&self.state.tokens.buf, at, bytemuck::cast_slice(&prompt[keep..keep + count]));
            let s = &mut self.seqs[slot];
            s.ids.truncate(keep);
            s.ids.extend_from_slice(&prompt[keep..keep + count]);
            s.processed = keep + count;
            moved = count;
        }
        Ok((self.restart(slot, prompt)?, moved))
    }

    /// Makes slot `dst` a copy of the first `len` ids of slot `src`, KV rows included, on the
    /// GPU (one command buffer of copies): it then continues exactly as `src` would, draws
    /// included. N drafts of one prompt prefill once.
    pub fn fork(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        let s = self.seq(src)?.clone();
        self.seq(dst)?;
        if len > s.ids.len() {
            return Err(Error::arg("fork", format!("{len} positions of slot {src}, which holds {}", s.ids.len())));
        }
        if !self.rings_keep(s.processed, len) {
            return Err(Error::arg("fork", format!("{len} positions of slot {src}: its sliding-window ring has moved past them ({} positions run)", s.processed)));
        }
        let mut rec = Recorder::new(self.ctx, "fork");
        self.state.fork(&mut rec, src, dst, len)?;
        rec.submit()?;
        self.seqs[dst] = Seq { ids: s.ids[..len].to_vec(), processed: s.processed.min(len), draws: s.draws };
        Ok(())
    }

    /// Whether every sliding-window ring of a slot that has run `processed` positions still
    /// holds the rows the positions after the first `len` read (the last window before `len`).
    fn rings_keep(&self, processed: usize, len: usize) -> bool {
        let c = self.model.config();
        self.state.cache_len.iter().enumerate().all(|(i, &rows)| match c.attention(i).window {
            Some(w) if rows < self.state.ctx_len && len < processed => len.saturating_sub(w) + rows >= processed,
            _ => true,
        })
    }

    /// One forward pass over the pending ids of the slots in `work` (each slot at most once;
    /// a slot's run is cut at `chunk` ids and at what the pass still holds), then a draw for
    /// each slot whose pending ids have all run and that asked for one. Returns, per entry of
    /// `work`, the id sampled (None: not asked, not done with its prompt, or its context full).
    pub fn step(&mut self, work: &[Work], chunk: usize) -> Result<Vec<Option<u32>>> {
        pollster::block_on(self.step_async(work, chunk))
    }

    pub async fn step_async(&mut self, work: &[Work<'_>], chunk: usize) -> Result<Vec<Option<u32>>> {
        let mut segs = Vec::with_capacity(work.len());
        let mut room = self.state.max_batch;
        for w in work {
            let s = self.seq(w.slot)?;
            let n = (s.ids.len() - s.processed).min(chunk.max(1)).min(room);
            if n == 0 {
                return Err(Error::Context(format!("slot {} has no token to run (or the pass is full): push ids first", w.slot)));
            }
            room -= n;
            segs.push(Segment { slot: w.slot, pos0: s.processed, n });
        }
        if segs.len() > 1 {
            self.state.set_table(self.ctx, &segs)?;
        }
        let mut rec = Recorder::new(self.ctx, "step").with_bind_cache(&self.binds);
        self.model.model.forward_batch(&mut rec, &self.state, &segs, 0, LogitRows::Last)?;
        let mut sampled = Vec::with_capacity(work.len());
        for (row, (w, seg)) in work.iter().zip(&segs).enumerate() {
            let s = &self.seqs[w.slot];
            let done = seg.pos0 + seg.n == s.ids.len();
            match w.sample {
                Some(p) if done && s.ids.len() < self.state.ctx_len => {
                    self.sample_into(&mut rec, w.slot, row, p)?;
                    let at = (self.state.token_index(w.slot, s.ids.len()) * 4) as u64;
                    // Packed, one per draw: the read-back below takes the first n_sampled.
                    let packed = sampled.iter().flatten().count();
                    rec.copy(&self.state.tokens.buf, at, &self.state.readback, (packed * 4) as u64, 4);
                    sampled.push(Some(w.slot));
                }
                _ => sampled.push(None),
            }
        }
        rec.submit()?;
        for seg in &segs {
            self.seqs[seg.slot].processed += seg.n;
        }
        let n_sampled = sampled.iter().flatten().count();
        if n_sampled == 0 {
            return Ok(vec![None; work.len()]);
        }
        let bytes = self.ctx.map_read_async(&self.state.readback, (n_sampled * 4) as u64).await?;
        let mut ids = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut out = Vec::with_capacity(work.len());
        for slot in sampled {
            // Only a draw takes an id (an entry without one has none in the read-back).
            out.push(match slot.map(|slot| (slot, ids.next())) {
                Some((slot, Some(id))) => {
                    let s = &mut self.seqs[slot];
                    s.ids.push(id);
                    s.draws = s.draws.wrapping_add(1);
                    Some(id)
                }
                _ => None,
            });
        }
        Ok(out)
    }

    /// Up to `k` decode steps of every slot in `work` in ONE command buffer (the server's
    /// decode-only steps): each slot must have exactly one pending id and ask for a draw; each
    /// step's sampled ids stay on the GPU as the next step's input, and all come back together
    /// at the end. Fewer steps when a slot's context would fill, one when a slot uses DRY (its
    /// penalties are computed on the CPU from the ids). Draws are those of as many `step`s.
    /// Returns, per entry of `work`, its ids in order; the caller checks stops afterwards and
    /// `truncate`s what a slot drew past its stop.
    pub fn decode_steps(&mut self, work: &[Work], k: usize) -> Result<Vec<Vec<u32>>> {
        pollster::block_on(self.decode_steps_async(work, k))
    }

    pub async fn decode_steps_async(&mut self, work: &[Work<'_>], k: usize) -> Result<Vec<Vec<u32>>> {
        self.decode_steps_timed(work, k, None).await
    }

    /// `decode_steps` with every pass timed into `profile` (`quill profile --batch`).
    pub fn decode_steps_profiled(&mut self, work: &[Work], k: usize, profile: &mut crate::gpu::profiler::Profile) -> Result<Vec<Vec<u32>>> {
        pollster::block_on(self.decode_steps_timed(work, k, Some(profile)))
    }

    async fn decode_steps_timed(&mut self, work: &[Work<'_>], k: usize, profile: Option<&mut crate::gpu::profiler::Profile>) -> Result<Vec<Vec<u32>>> {
        let mut segs = Vec::with_capacity(work.len());
        let mut k = k.clamp(1, super::MAX_DECODE_STEPS);
        for w in work {
            let s = self.seq(w.slot)?;
            let Some(p) = w.sample.filter(|_| s.ids.len() == s.processed + 1) else {
                return Err(Error::Context(format!("decode_steps: slot {} needs exactly one pending id and a draw", w.slot)));
            };
            if p.dry_multiplier > 0.0 {
                k = 1;
            }
            k = k.min(self.state.ctx_len.saturating_sub(s.ids.len()));
            segs.push(Segment { slot: w.slot, pos0: s.processed, n: 1 });
        }
        if k == 0 || segs.is_empty() {
            return Err(Error::Context("decode_steps: no slot has room for a token".into()));
        }
        if segs.len() > 1 {
            // Positions are stored relative to the step, so one table serves every step.
            self.state.set_table(self.ctx, &segs)?;
        }
        let rec = if profile.is_some() { Recorder::profiled(self.ctx, "decode steps") } else { Recorder::new(self.ctx, "decode steps") };
        let mut rec = rec.with_bind_cache(&self.binds);
        for i in 0..k {
            self.model.model.forward_batch(&mut rec, &self.state, &segs, i, LogitRows::Last)?;
            for (row, w) in work.iter().enumerate() {
                let s = &self.seqs[w.slot];
                let p = w.sample.ok_or_else(|| Error::Context("decode_steps: a slot without sampling".into()))?;
                self.sample_at(&mut rec, w.slot, row, p, s.ids.len() + i, s.draws.wrapping_add(i as u32))?;
            }
        }
        for (j, w) in work.iter().enumerate() {
            let at = (self.state.token_index(w.slot, self.seqs[w.slot].ids.len()) * 4) as u64;
            rec.copy(&self.state.tokens.buf, at, &self.state.readback, (j * k * 4) as u64, (k * 4) as u64);
        }
        let submitted = rec.submit()?;
        if let Some(p) = profile {
            if let Some(step) = submitted.profile_async(self.ctx, "decode").await? {
                p.push(step);
            }
        }
        let bytes = self.ctx.map_read_async(&self.state.readback, (work.len() * k * 4) as u64).await?;
        let ids: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut out = Vec::with_capacity(work.len());
        for (w, new) in work.iter().zip(ids.chunks_exact(k)) {
            let s = &mut self.seqs[w.slot];
            s.processed += k;
            s.draws = s.draws.wrapping_add(k as u32);
            s.ids.extend_from_slice(new);
            out.push(new.to_vec());
        }
        Ok(out)
    }

    /// Records sampling slot `slot`'s next id from logits row `row` into its token row, with
    /// its penalty window over its own ids.
    fn sample_into(&self, rec: &mut Recorder, slot: usize, row: usize, s: &SamplingParams) -> Result<()> {
        let seq = &self.seqs[slot];
        self.sample_at(rec, slot, row, s, seq.ids.len(), seq.draws)
    }

    /// Records sampling into slot `slot`'s position `out` from logits row `row` with draw
    /// number `draw`, penalties over the ids before `out` (DRY over those on the CPU).
    pub(super) fn sample_at(&self, rec: &mut Recorder, slot: usize, row: usize, s: &SamplingParams, out: usize, draw: u32) -> Result<()> {
        let ids = &self.seqs[slot].ids;
        let base = self.state.token_index(slot, 0);
        let history = base + out.saturating_sub(s.repeat_last_n)..base + out;
        let st = &self.state;
        write_adjust(self.ctx, &st.adjust[slot], &s.logit_bias, &dry_penalties(&ids[..out.min(ids.len())], s))?;
        sample(rec, &st.logits, row, &st.work, &st.tokens, &st.adjust[slot], base + out, history, s, draw)
    }

    /// Writes `seeds.len()` continuations of `prompt` (at most the slots) in one batched pass
    /// per token: the prompt prefills once in slot 0, which is forked into the others, and
    /// draft i draws with `s` and seed `seeds[i]`. `on_token(draft, id)` sees each id as it
    /// comes (false stops that draft). Returns each draft's ids and why it stopped.
    pub fn drafts(&mut self, prompt: &[u32], s: &SamplingParams, seeds: &[u64], max_tokens: usize, ignore_eos: bool, mut on_token: impl FnMut(usize, u32) -> bool) -> Result<Vec<(Vec<u32>, super::Stop)>> {
        pollster::block_on(async {
            let mut d = self.drafts_start_async(prompt, s, seeds, max_tokens, ignore_eos).await?;
            while !d.done() {
                for t in self.drafts_step_async(&mut d).await? {
                    if !on_token(t.draft, t.id) {
                        d.cancel(t.draft);
                    }
                }
            }
            Ok(d.out)
        })
    }

    /// `drafts` a step at a time (the browser awaits each, and reads each token's alternatives
    /// from its logits row in between): prefills `prompt` in slot 0, keeping the rows of what
    /// it shares with the slot's last sequence, and forks it into slots 1.. .
    pub async fn drafts_start_async(&mut self, prompt: &[u32], s: &SamplingParams, seeds: &[u64], max_tokens: usize, ignore_eos: bool) -> Result<Drafts> {
        s.validate()?;
        if seeds.is_empty() || seeds.len() > self.n_slots() {
            return Err(Error::arg("--drafts", format!("{} drafts: 1 to {} (the slots)", seeds.len(), self.n_slots())));
        }
        if prompt.is_empty() || prompt.len() >= self.ctx_len() {
            return Err(Error::Context(format!("the prompt has {} tokens; the context holds {} positions (one more is needed to generate)", prompt.len(), self.ctx_len())));
        }
        let reused = self.restart(0, prompt)?;
        while self.pending(0) > 1 {
            let chunk = (self.pending(0) - 1).min(self.max_batch());
            self.step_async(&[Work { slot: 0, sample: None }], chunk).await?;
        }
        for d in 1..seeds.len() {
            self.fork(0, d, prompt.len())?;
        }
        Ok(Drafts {
            params: seeds.iter().map(|&seed| SamplingParams { seed, ..s.clone() }).collect(),
            out: vec![(Vec::new(), super::Stop::MaxTokens); seeds.len()],
            running: (0..seeds.len()).collect(),
            max_tokens,
            ignore_eos,
            reused,
        })
    }

    /// One batched pass over every running draft. Returns the tokens that continue a draft
    /// (an end of sequence or a full context ends its draft instead), each with the logits row
    /// it was drawn from, valid until the next step.
    pub async fn drafts_step_async(&mut self, d: &mut Drafts) -> Result<Vec<DraftToken>> {
        let work: Vec<Work> = d.running.iter().map(|&i| Work { slot: i, sample: Some(&d.params[i]) }).collect();
        let ids = self.step_async(&work, 1).await?;
        drop(work);
        let mut still = Vec::with_capacity(d.running.len());
        let mut tokens = Vec::with_capacity(d.running.len());
        for (row, (&draft, id)) in d.running.iter().zip(ids).enumerate() {
            let stop = match id {
                None => Some(super::Stop::ContextFull),
                Some(id) if !d.ignore_eos && self.model.is_eos(id) => Some(super::Stop::Eos),
                Some(id) => {
                    d.out[draft].0.push(id);
                    tokens.push(DraftToken { draft, row, id });
                    if d.out[draft].0.len() >= d.max_tokens {
                        Some(super::Stop::MaxTokens)
                    } else if self.ids(draft).len() >= self.ctx_len() {
                        Some(super::Stop::ContextFull)
                    } else {
                        None
                    }
                }
            };
            match stop {
                Some(stop) => d.out[draft].1 = stop,
                None => still.push(draft),
            }
        }
        d.running = still;
        Ok(tokens)
    }

    /// Log-probabilities of the token slot `slot` drew last (in the step just run, from its
    /// logits row `row`, with the same `s`) and of its `top` (at most
    /// `ops::sample::MAX_TOP_LOGPROBS`) most likely alternatives, of the distribution that draw
    /// chose from: after the whole sampler chain (`sampling::processed_probs`; at temperature
    /// 0 the chain at temperature 1). Computed on the GPU from that step's logits; only 2 + 2·top
    /// numbers come back. Call it before anything else runs on the batch.
    pub fn token_probs(&self, slot: usize, row: usize, s: &SamplingParams, top: usize) -> Result<TokenLogprobs> {
        pollster::block_on(self.token_probs_async(slot, row, s, top))
    }

    pub async fn token_probs_async(&self, slot: usize, row: usize, s: &SamplingParams, top: usize) -> Result<TokenLogprobs> {
        let seq = self.seq(slot)?;
        let out = seq.ids.len().checked_sub(1).ok_or_else(|| Error::Context(format!("token_probs: slot {slot} has drawn no token yet")))?;
        if row >= self.state.n_slots {
            return Err(Error::arg("row", format!("{row}: a step has at most {} logits rows", self.state.n_slots)));
        }
        let base = self.state.token_index(slot, 0);
        let history = base + out.saturating_sub(s.repeat_last_n)..base + out;
        let st = &self.state;
        let mut rec = Recorder::new(self.ctx, "token probs");
        token_probs(&mut rec, &st.logits, row, &st.work, &st.tokens, &st.adjust[slot], base + out, history, s, top, seq.draws.wrapping_sub(1))?;
        rec.submit()?;
        let (logprob, alts) = parse_logprobs(&self.ctx.read_f32_async(&st.work.buf, 0, logprobs_len(top)).await?);
        // The kernel marks the ids the chain dropped with -f32::MAX: they are no alternatives.
        let top = alts.into_iter().filter(|&(_, lp)| lp > f32::MIN).collect();
        Ok(TokenLogprobs { id: seq.ids[out], logprob, top })
    }

    /// Logits row `row` of the last step (row i: its work entry i's last token): (vocab,).
    pub fn logits(&self, row: usize) -> Result<Vec<f32>> {
        let vocab = self.model.config().vocab;
        if row >= self.state.n_slots {
            return Err(Error::arg("row", format!("{row}: a step has at most {} logits rows", self.state.n_slots)));
        }
        self.ctx.read_f32(&self.state.logits.buf, row * vocab, vocab)
    }
}
