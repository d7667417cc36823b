//! The GPU thread. It owns the Context, the model and one `Session` per slot (each with its
//! own KV cache), takes jobs from a channel, and steps the busy slots round-robin: one
//! prefill chunk or one decode step per slot per round, so streams interleave and new
//! requests join between steps. Each step is one forward pass of one slot; the batched
//! many-slot forward pass replaces `Slot::step` later without changing this interface.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use quill::error::Result;
use quill::generate::Session;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::gpu::Recorder;
use quill::ops::sample::{logprobs, logprobs_len, parse_logprobs};
use quill::sampling::SamplingParams;
use quill::tokenizer::StreamDecoder;

use super::api::StopScanner;
use super::metrics::Metrics;

/// Most prompt tokens one round prefills for one slot, so running streams keep flowing
/// while a long prompt is read: a round costs at most one such chunk per slot.
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

struct Slot<'a> {
    session: Session<'a>,
    active: Option<Active>,
}

/// Runs the engine until every job sender is gone and the work is done; `ready` is called
/// once the slots' KV caches exist.
pub fn run(ctx: &Context, model: &LoadedModel, ctx_len: usize, rx: Receiver<Vec<Job>>, load: &Load, metrics: &Metrics, ready: impl FnOnce()) -> Result<()> {
    let mut slots = Vec::with_capacity(load.slots);
    for _ in 0..load.slots {
        slots.push(Slot { session: Session::new(ctx, model, ctx_len)?, active: None });
    }
    ready();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        let idle = slots.iter().all(|s| s.active.is_none());
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
        assign(&mut slots, &mut waiting, load, metrics);
        for slot in slots.iter_mut() {
            if slot.active.is_some() && !slot.step(model, metrics) {
                slot.active = None;
                load.busy.fetch_sub(1, Ordering::SeqCst);
                load.done();
            }
        }
    }
}

/// Puts waiting jobs (oldest first) into free slots, each into the free slot whose cache
/// shares the longest prefix with its prompt.
fn assign(slots: &mut [Slot], waiting: &mut VecDeque<Job>, load: &Load, metrics: &Metrics) {
    while !waiting.is_empty() {
        let Some(job) = waiting.front() else { break };
        // Ties go to the first such slot, so sequential requests keep landing in slot 0.
        let free = slots.iter().enumerate().filter(|(_, s)| s.active.is_none());
        let best = free.map(|(i, s)| (common_prefix(s.session.ids(), &job.prompt), i)).fold(None, |b: Option<(usize, usize)>, c| if b.is_some_and(|b| b.0 >= c.0) { b } else { Some(c) }).map(|(_, i)| i);
        let Some(i) = best else { break };
        let Some(job) = waiting.pop_front() else { break };
        let slot = &mut slots[i];
        load.busy.fetch_add(1, Ordering::SeqCst);
        metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        let reuse = common_prefix(slot.session.ids(), &job.prompt);
        let first = (reuse.max(1) + PREFILL_CHUNK).min(job.prompt.len());
        match slot.session.restart(&job.prompt[..first]) {
            Ok(cached) => {
                metrics.cached_tokens.inc_by(cached as u64);
                let stop = StopScanner::new(job.stop.clone());
                slot.active = Some(Active { job, decoder: StreamDecoder::new(), stop, generated: 0, cached, last_token: None, hit_stop: false });
            }
            Err(e) => {
                job.send(Event::Failed(e.to_string()));
                load.busy.fetch_sub(1, Ordering::SeqCst);
                load.done();
            }
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Slot<'_> {
    /// One forward pass for this slot's job. Returns false when the job is over (finished,
    /// failed, or its client gone), freeing the slot.
    fn step(&mut self, model: &LoadedModel, metrics: &Metrics) -> bool {
        let Some(a) = &mut self.active else { return false };
        if a.job.events.is_closed() {
            return false;
        }
        match advance(&mut self.session, a, model, metrics) {
            Ok(None) => true,
            Ok(Some(finish)) => {
                // Flush what the decoder and the stop scanner still hold (unless a stop
                // string ended the text: then nothing after it is sent).
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
                false
            }
            Err(e) => {
                a.job.send(Event::Failed(e.to_string()));
                false
            }
        }
    }
}

/// Runs one prefill chunk or one decode step; Some(finish) when the job has ended.
fn advance(session: &mut Session, a: &mut Active, model: &LoadedModel, metrics: &Metrics) -> Result<Option<Finish>> {
    let pushed = session.ids().len();
    if pushed < a.job.prompt.len() {
        // Run the pending chunk (its logits are not needed) and queue the next one.
        session.logits_last()?;
        let end = (pushed + PREFILL_CHUNK).min(a.job.prompt.len());
        session.push(&a.job.prompt[pushed..end])?;
        return Ok(None);
    }
    let id = session.next_token(&a.job.sampling)?;
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
        Some(top) => vec![token_logprob(session, model, &a.job.sampling, top)?],
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
    if a.generated >= a.job.max_tokens || session.ids().len() >= session.ctx_len() {
        return Ok(Some(Finish::Length));
    }
    Ok(None)
}

/// The log-probability of the token just sampled and the top-N alternatives, computed on
/// the GPU from the logits the step left in row 0 (only 2 + 2N numbers come back).
fn token_logprob(session: &Session, model: &LoadedModel, s: &SamplingParams, top: usize) -> Result<TokenLogprob> {
    let out = session.ids().len() - 1;
    let history = out.saturating_sub(s.repeat_last_n)..out;
    let st = &session.state;
    let mut rec = Recorder::new(session.ctx, "logprobs");
    logprobs(&mut rec, &st.logits, 0, &st.work, &st.tokens, &st.adjust[0], out, history, s, top)?;
    rec.submit()?;
    let (logprob, alts) = parse_logprobs(&session.ctx.read_f32(&st.work.buf, 0, logprobs_len(top))?);
    let name = |i: u32| model.tokenizer.decode(&[i]).unwrap_or_default();
    let top = alts.into_iter().map(|(i, lp)| Alt { token: name(i), logprob: lp as f64 }).collect();
    Ok(TokenLogprob { token: name(session.ids()[out]), logprob: logprob as f64, top })
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
