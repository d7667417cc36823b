//! Prometheus metrics (the `prometheus` crate), served as text at GET /metrics.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::engine::Load;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub cached_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub abandoned_tokens: IntCounter,
    queue_depth: IntGauge,
    busy_slots: IntGauge,
    pub ttft: Histogram,
    pub itl: Histogram,
}

/// Latency buckets from 5 ms to about 80 s (lavapipe is slow, real GPUs fast).
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.005, 2.0, 15).unwrap_or_default()
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("quill_requests_total", "HTTP requests by route and status"), &["route", "status"])?;
        let prompt_tokens = IntCounter::new("quill_prompt_tokens_total", "Prompt tokens of the sequences started")?;
        let cached_tokens = IntCounter::new("quill_prompt_tokens_cached_total", "Prompt tokens reused from a slot's KV cache")?;
        let generated_tokens = IntCounter::new("quill_generated_tokens_total", "Tokens generated")?;
        let abandoned_tokens = IntCounter::new("quill_abandoned_tokens_total", "Tokens drawn for a sequence after its client had gone (not counted as generated)")?;
        let queue_depth = IntGauge::new("quill_queue_depth", "Sequences waiting for a slot")?;
        let busy_slots = IntGauge::new("quill_busy_slots", "Slots generating")?;
        let ttft = Histogram::with_opts(HistogramOpts::new("quill_time_to_first_token_seconds", "From the request to its first generated token").buckets(latency_buckets()))?;
        let itl = Histogram::with_opts(HistogramOpts::new("quill_inter_token_latency_seconds", "Between consecutive tokens of a sequence").buckets(latency_buckets()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(prompt_tokens.clone()))?;
        registry.register(Box::new(cached_tokens.clone()))?;
        registry.register(Box::new(generated_tokens.clone()))?;
        registry.register(Box::new(abandoned_tokens.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(busy_slots.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(itl.clone()))?;
        Ok(Metrics { registry, requests, prompt_tokens, cached_tokens, generated_tokens, abandoned_tokens, queue_depth, busy_slots, ttft, itl })
    }

    /// The text exposition format, with the gauges read from the engine's counters now.
    pub fn render(&self, load: &Load) -> String {
        self.queue_depth.set(load.queued() as i64);
        self.busy_slots.set(load.busy.load(std::sync::atomic::Ordering::SeqCst) as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
