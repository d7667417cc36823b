//! The GPU thread. It owns the Context, the model and one `Batch` of `--parallel` slots (one
//! KV cache holding every slot), takes jobs from a channel, and runs every busy slot in ONE
//! forward pass per step: the decode token of each running sequence plus at most one
//! `PREFILL_CHUNK` of a joining prompt, so every weight is read once per step for all of them
//! and new requests join between steps. A step thus costs at most (slots - 1) decode tokens
//! and one chunk of `PREFILL_CHUNK` prompt tokens: that bounds how long a long prompt delays
//! the running streams. Choices of one request (`n`) prefill once: the second waits for the
//! first's prompt and forks its slot on the GPU. When only decode tokens run and no request
//! waits, several decode steps go in one submit (`Batch::decode_steps`, as many as keep a
//! submit within `STREAM_INTERVAL`): a request arriving meanwhile waits at most that long.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use quill::error::Result;
use quill::generate::{common_prefix, Batch, Work};
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::sampling::SamplingParams;
use quill::tokenizer::StreamDecoder;

use super::api::StopScanner;
use super::metrics::Metrics;

/// How long the decode steps of one submit may take at most: several steps per command buffer
/// (`Batch::decode_steps`) as long as text still reaches the clients this often.
const STREAM_INTERVAL: Duration = Duration::from_millis(150);

/// Decode steps per submit, doubled while a submit stays within `STREAM_INTERVAL`.
struct Pace {
    steps: usize,
}

/// Most prompt tokens one step prefills (for one slot), so running streams keep flowing while
/// a long prompt is read: a step costs at most one such chunk beside the decode tokens.
pub const PREFILL_CHUNK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One alternative of a token, for `logprobs`.
#[derive(Clone, Debug)]
pub struct Alt {
    pub token: String,
    pub logprob: f64,
}

/// A generated token's log-probability and the top alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub top: Vec<Alt>,
}

/// What the GPU thread tells a request, per choice.
#[derive(Debug)]
pub enum Event {
    /// Text that is final (stop strings already taken out), with the logprobs of the tokens
    /// that produced it when asked.
    Text { text: String, logprobs: Vec<TokenLogprob> },
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize },
    Failed(String),
}

/// One sequence to generate (one choice of a request).
pub struct Job {
    pub index: usize,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Some(N): return each token's logprob and its top-N alternatives.
    pub logprobs: Option<usize>,
    /// Keep going past the end-of-sequence token.
    pub ignore_eos: bool,
    pub events: UnboundedSender<(usize, Event)>,
    pub received: Instant,
}

impl Job {
    fn send(&self, e: Event) -> bool {
        self.events.send((self.index, e)).is_ok()
    }
}

/// Counters shared with the HTTP side: admission control and gauges.
#[derive(Debug)]
pub struct Load {
    /// Jobs accepted and not finished (waiting or in a slot).
    pub outstanding: AtomicUsize,
    /// Slots with a job.
    pub busy: AtomicUsize,
    pub slots: usize,
    pub max_queue: usize,
}

impl Load {
    /// Reserves room for `n` jobs; false when the slots and the queue are full.
    pub fn admit(&self, n: usize) -> bool {
        let cap = self.slots + self.max_queue;
        self.outstanding.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| (o + n <= cap).then_some(o + n)).is_ok()
    }
    pub fn queued(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst).saturating_sub(self.busy.load(Ordering::SeqCst))
    }
    fn done(&self) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job in a slot.
struct Active {
    job: Job,
    decoder: StreamDecoder,
    stop: StopScanner,
    generated: usize,
    cached: usize,
    last_token: Option<Instant>,
    /// A stop string ended the text.
    hit_stop: bool,
}

/// Runs the engine until every job sender is gone and the work is done; `ready` is called
/// once the slots' KV cache exists.
pub fn run(ctx: &Context, model: &LoadedModel, ctx_len: usize, rx: Receiver<Vec<Job>>, load: &Load, metrics: &Metrics, ready: impl FnOnce()) -> Result<()> {
    let mut batch = Batch::new(ctx, model, ctx_len, load.slots)?;
    let mut slots: Vec<Option<Active>> = (0..load.slots).map(|_| None).collect();
    ready();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut pace = Pace { steps: 1 };
    loop {
        let idle = slots.iter().all(|s| s.is_none());
        if idle && waiting.is_empty() {
            match rx.recv() {
                Ok(jobs) => waiting.extend(jobs),
                Err(_) => return Ok(()),
            }
        }
        while let Ok(jobs) = rx.try_recv() {
            waiting.extend(jobs);
        }
        // A client that left while queued frees its place.
        waiting.retain(|j| {
            let alive = !j.events.is_closed();
            if !alive {
                load.done();
            }
            alive
        });
        // A client that left frees its slot before the waiting jobs are placed, so one that
        // waits takes it in the very next step.
        free_abandoned(&mut slots, load);
        let busy = load.busy.load(Ordering::SeqCst);
        assign(&mut batch, &mut slots, &mut waiting, load, metrics);
        if load.busy.load(Ordering::SeqCst) > busy {
            // A new stream's first tokens come one submit each, then the submits grow again.
            pace.steps = 1;
        }
        step(&mut batch, &mut slots, model, load, metrics, waiting.is_empty(), &mut pace);
    }
}

/// Frees the slots whose client has gone (the job's event receiver was dropped: a closed
/// connection or a cancelled request).
fn free_abandoned(slots: &mut [Option<Active>], load: &Load) {
    for i in 0..slots.len() {
        if slots[i].as_ref().is_some_and(|a| a.job.events.is_closed()) {
            free(slots, i, load);
        }
    }
}

fn free(slots: &mut [Option<Active>], slot: usize, load: &Load) {
    if slots[slot].take().is_some() {
        load.busy.fetch_sub(1, Ordering::SeqCst);
        load.done();
    }
}

/// Puts waiting jobs (oldest first) into free slots. A job starts from the slot (busy or not)
/// whose ids share the longest prefix with its prompt: its own free slot's rows are reused in
/// place, another slot's are forked into it on the GPU. A job whose prompt another slot is
/// still prefilling waits for it (the choices of one request prefill once).
fn assign(batch: &mut Batch, slots: &mut [Option<Active>], waiting: &mut VecDeque<Job>, load: &Load, metrics: &Metrics) {
    let mut deferred = VecDeque::new();
    while let Some(job) = waiting.pop_front() {
        let Some(dst) = best_free(batch, slots, &job.prompt) else {
            waiting.push_front(job);
            break;
        };
        let prefilling = |s: &Option<Active>, i: usize| s.as_ref().is_some_and(|a| a.job.prompt == job.prompt && batch.pending(i) > 1);
        if slots.iter().enumerate().any(|(i, s)| prefilling(s, i)) {
            deferred.push_back(job);
            continue;
        }
        let own = common_prefix(batch.ids(dst), &job.prompt);
        let best = (0..slots.len()).filter(|&i| i != dst).map(|i| (common_prefix(&batch.ids(i)[..batch.ids(i).len() - batch.pending(i)], &job.prompt), i)).max();
        if let Some((len, src)) = best.filter(|&(len, _)| len > own) {
            // A failed fork only loses the reuse: the job then prefills from what dst holds.
            let _ = batch.fork(src, dst, len);
        }
        load.busy.fetch_add(1, Ordering::SeqCst);
        metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        match batch.restart(dst, &job.prompt) {
            Ok(cached) => {
                metrics.cached_tokens.inc_by(cached as u64);
                let stop = StopScanner::new(job.stop.clone());
                slots[dst] = Some(Active { job, decoder: StreamDecoder::new(), stop, generated: 0, cached, last_token: None, hit_stop: false });
            }
            Err(e) => {
                job.send(Event::Failed(e.to_string()));
                load.busy.fetch_sub(1, Ordering::SeqCst);
                load.done();
            }
        }
    }
    while let Some(job) = deferred.pop_back() {
        waiting.push_front(job);
    }
}

/// The free slot whose ids share the longest prefix with `prompt`; ties go to the first, so
/// sequential requests keep landing in slot 0.
fn best_free(batch: &Batch, slots: &[Option<Active>], prompt: &[u32]) -> Option<usize> {
    let free = slots.iter().enumerate().filter(|(_, s)| s.is_none());
    free.map(|(i, _)| (common_prefix(batch.ids(i), prompt), i)).fold(None, |b: Option<(usize, usize)>, c| if b.is_some_and(|b| b.0 >= c.0) { b } else { Some(c) }).map(|(_, i)| i)
}

/// One forward pass over every busy slot: the decode token of each running sequence and one
/// prefill chunk of the first slot still reading its prompt. Frees the slots whose job ended.
/// With only decode tokens to run and no request waiting (`quiet`), several decode steps go
/// in one submit (`decode_steps`).
fn step(batch: &mut Batch, slots: &mut [Option<Active>], model: &LoadedModel, load: &Load, metrics: &Metrics, quiet: bool, pace: &mut Pace) {
    let mut work: Vec<Work> = Vec::new();
    for (slot, a) in slots.iter().enumerate() {
        if let Some(a) = a.as_ref().filter(|_| batch.pending(slot) == 1) {
            work.push(Work { slot, sample: Some(&a.job.sampling) });
        }
    }
    let room = batch.max_batch().saturating_sub(work.len());
    let chunk = PREFILL_CHUNK.min(room);
    let prefill = slots.iter().enumerate().find(|(slot, a)| a.is_some() && batch.pending(*slot) > 1);
    let decode_only = prefill.is_none();
    if let (Some((slot, Some(a))), true) = (prefill, chunk > 0) {
        work.push(Work { slot, sample: Some(&a.job.sampling) });
    }
    if work.is_empty() {
        return;
    }
    // Logprobs read each step's logits: those jobs take one step per submit.
    let per_step = work.iter().any(|w| slots[w.slot].as_ref().is_some_and(|a| a.job.logprobs.is_some()));
    if decode_only && quiet && !per_step && pace.steps > 1 {
        // No more steps than the job closest to its max_tokens still needs.
        let left = work.iter().filter_map(|w| slots[w.slot].as_ref()).map(|a| a.job.max_tokens.saturating_sub(a.generated)).min().unwrap_or(1);
        let k = pace.steps.min(left.max(1));
        let rows: Vec<usize> = work.iter().map(|w| w.slot).collect();
        let t = Instant::now();
        let result = batch.decode_steps(&work, k);
        drop(work);
        match result {
            Ok(ids) => {
                pace.update(t.elapsed(), ids.first().map_or(1, Vec::len));
                for (row, (&slot, ids)) in rows.iter().zip(ids).enumerate() {
                    take_ids(batch, slots, slot, row, &ids, model, load, metrics);
                }
            }
            Err(e) => fail_all(slots, &rows, &e.to_string(), load),
        }
        return;
    }
    let rows: Vec<usize> = work.iter().map(|w| w.slot).collect();
    let t = Instant::now();
    let result = batch.step(&work, chunk.max(1));
    drop(work);
    let sampled = match result {
        Ok(ids) => ids,
        Err(e) => return fail_all(slots, &rows, &e.to_string(), load),
    };
    if decode_only {
        pace.update(t.elapsed(), 1);
    }
    for (row, (&slot, id)) in rows.iter().zip(sampled).enumerate() {
        if let Some(id) = id {
            take_ids(batch, slots, slot, row, &[id], model, load, metrics);
        }
    }
}

impl Pace {
    /// After a submit of `steps` decode steps that took `took`: twice as many next time if
    /// that still fits `STREAM_INTERVAL`, half as many if it did not.
    fn update(&mut self, took: Duration, steps: usize) {
        let per_step = took / steps.max(1) as u32;
        self.steps = if per_step * (2 * self.steps as u32) <= STREAM_INTERVAL {
            (2 * self.steps).min(quill::generate::MAX_DECODE_STEPS)
        } else if per_step * self.steps as u32 > STREAM_INTERVAL {
            (self.steps / 2).max(1)
        } else {
            self.steps
        };
    }
}

/// A failed pass fails every job in it: tell each and free the slots.
fn fail_all(slots: &mut [Option<Active>], rows: &[usize], msg: &str, load: &Load) {
    for &slot in rows {
        if let Some(a) = &slots[slot] {
            a.job.send(Event::Failed(msg.to_string()));
        }
        free(slots, slot, load);
    }
}

/// Hands the ids slot `slot` drew (logits row `row` for the last) to its job in order; when
/// the job ends at one of them, the ids after it leave the sequence and the slot is freed.
#[allow(clippy::too_many_arguments)]
fn take_ids(batch: &mut Batch, slots: &mut [Option<Active>], slot: usize, row: usize, ids: &[u32], model: &LoadedModel, load: &Load, metrics: &Metrics) {
    let Some(a) = slots[slot].as_mut() else { return };
    let total = batch.ids(slot).len();
    for (j, &id) in ids.iter().enumerate() {
        let len = total - (ids.len() - 1 - j);
        if a.job.events.is_closed() {
            // The client left: the ids drawn from here on were computed for no one. The slot
            // is freed now, whatever the submit still held for it.
            metrics.abandoned_tokens.inc_by((ids.len() - j) as u64);
            batch.truncate(slot, len - 1);
            free(slots, slot, load);
            return;
        }
        let keep = match advance(batch, slot, row, a, id, len, model, metrics) {
            Ok(None) => true,
            Ok(Some(finish)) => {
                finish_job(a, finish, model);
                false
            }
            Err(e) => {
                a.job.send(Event::Failed(e.to_string()));
                false
            }
        };
        if !keep {
            // Ids drawn after the stop are not part of the sequence (a later prompt may reuse
            // the rest as its prefix).
            batch.truncate(slot, len);
            free(slots, slot, load);
            return;
        }
    }
}

/// Flushes what the decoder and the stop scanner still hold (unless a stop string ended the
/// text: then nothing after it is sent) and sends Done.
fn finish_job(a: &mut Active, finish: Finish, model: &LoadedModel) {
    let mut text = String::new();
    if !a.hit_stop {
        let tail = a.decoder.finish(&model.tokenizer).ok().flatten().unwrap_or_default();
        let (t, hit) = a.stop.push(&tail);
        text = t;
        a.hit_stop = hit;
        if !hit {
            text.push_str(&a.stop.finish());
        }
    }
    if !text.is_empty() {
        a.job.send(Event::Text { text, logprobs: Vec::new() });
    }
    let finish = if a.hit_stop { Finish::Stop } else { finish };
    a.job.send(Event::Done { finish, prompt_tokens: a.job.prompt.len(), completion_tokens: a.generated, cached_tokens: a.cached });
}

/// Handles the id slot `slot` sampled from logits row `row`, its sequence then `len` ids long;
/// Some(finish) when the job has ended.
#[allow(clippy::too_many_arguments)]
fn advance(batch: &Batch, slot: usize, row: usize, a: &mut Active, id: u32, len: usize, model: &LoadedModel, metrics: &Metrics) -> Result<Option<Finish>> {
    let now = Instant::now();
    match a.last_token {
        None => metrics.ttft.observe(now.duration_since(a.job.received).as_secs_f64()),
        Some(t) => metrics.itl.observe(now.duration_since(t).as_secs_f64()),
    }
    a.last_token = Some(now);
    a.generated += 1;
    metrics.generated_tokens.inc();
    if !a.job.ignore_eos && model.is_eos(id) {
        return Ok(Some(Finish::Stop));
    }
    let logprobs = match a.job.logprobs {
        Some(top) => vec![token_logprob(batch, slot, row, model, &a.job.sampling, top)?],
        None => Vec::new(),
    };
    let piece = a.decoder.step(&model.tokenizer, id)?.unwrap_or_default();
    let (text, hit) = a.stop.push(&piece);
    if !text.is_empty() || !logprobs.is_empty() {
        a.job.send(Event::Text { text, logprobs });
    }
    if hit {
        a.hit_stop = true;
        return Ok(Some(Finish::Stop));
    }
    if a.generated >= a.job.max_tokens || len >= batch.ctx_len() {
        return Ok(Some(Finish::Length));
    }
    Ok(None)
}

/// The log-probability of the token slot `slot` just sampled and the top-N alternatives,
/// after the sampler chain, from the step's logits row `row` (`Batch::token_probs`).
fn token_logprob(batch: &Batch, slot: usize, row: usize, model: &LoadedModel, s: &SamplingParams, top: usize) -> Result<TokenLogprob> {
    let lp = batch.token_probs(slot, row, s, top)?;
    let name = |i: u32| model.tokenizer.decode(&[i]).unwrap_or_default();
    let top = lp.top.into_iter().map(|(i, p)| Alt { token: name(i), logprob: p as f64 }).collect();
    Ok(TokenLogprob { token: name(lp.id), logprob: lp.logprob as f64, top })
}

/// What the HTTP side holds: the job channel and the shared counters.
#[derive(Clone)]
pub struct Handle {
    pub tx: std::sync::mpsc::Sender<Vec<Job>>,
    pub load: Arc<Load>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_slots_and_queue() {
        let load = Load { outstanding: AtomicUsize::new(0), busy: AtomicUsize::new(0), slots: 2, max_queue: 1 };
        assert!(load.admit(2) && load.admit(1) && !load.admit(1));
        load.done();
        assert!(load.admit(1));
    }
}
