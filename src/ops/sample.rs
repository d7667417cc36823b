//! Token sampling on the GPU: the whole chain of `sampling` (bias, penalties, DRY, the filters,
//! temperature or mirostat) and a seeded draw; the chosen id is written into the token buffer
//! on the GPU. Two passes (shaders/sample.wgsl says how): many workgroups find each chunk's
//! maximum, statistics and [`CAND`] largest logits, then one workgroup runs the chain over the
//! [`CAND`] largest of those, falling back to the whole vocabulary where they are not enough.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{OpInfo, Recorder, Shader, Tensor};
use crate::sampling::SamplingParams;

pub const SHADER: Shader = Shader { name: "sample", body: include_str!("../../shaders/sample.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    row: u32,
    hist_start: u32,
    hist_end: u32,
    out_index: u32,
    top_k: u32,
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    typical_p: f32,
    xtc_threshold: f32,
    xtc_probability: f32,
    top_n_sigma: f32,
    mirostat_tau: f32,
    dynatemp_range: f32,
    dynatemp_exponent: f32,
    mirostat_eta: f32,
    /// `logprobs`: 0 = before the filters, 1 = after the whole chain.
    mode: u32,
    /// `logprobs`: how many of the most likely ids to report.
    alternatives: u32,
    /// `spread_hist`: which 8 bits of the key (0 the top ones).
    round: u32,
    /// 1: the spread kernels run the chain (`spreads`).
    spread: u32,
}

/// Ids per workgroup of the candidates pass (shaders/sample.wgsl's CHUNK).
pub const CHUNK: usize = 4096;
/// Candidates per chunk, and survivors the chain runs over (CAND there). Top-k up to this is
/// exact over them; so is top-k off, when top-p/min-p keep at most this many.
pub const CAND: usize = 256;
/// Statistics per chunk (STATS there).
pub const STATS: usize = 10;
/// Largest vocabulary: candidate ids travel as f32, exact below 2^24.
pub const MAX_VOCAB: usize = 1 << 24;

/// Values of the sampler's `work` scratch for a vocabulary: the adjusted logits, then per
/// chunk its statistics and its candidates' (logit, id) pairs.
pub fn work_len(vocab: usize) -> usize {
    let chunks = vocab.div_ceil(CHUNK);
    vocab + chunks * (STATS + 2 * CAND) + SPREAD_STATE
}

/// Values after the chunks' areas where the spread kernels note the digits of top-p's
/// threshold picked so far: two alternating slots of three.
pub const SPREAD_STATE: usize = 6;

/// Does the chain run spread over the chunks (`candidates`, then with top-p 4 rounds of
/// `spread_hist`, `spread_mass`, `spread_draw`: shaders/sample.wgsl) rather than over the
/// survivors? Where top-k is off (or past the vocabulary) and only top-p, min-p and the
/// temperature follow the adjustments, over more ids than the survivors: what they keep may
/// be most of the vocabulary, which the survivors' chain could only fall back to in one
/// workgroup. (Typical, XTC, top-nσ, mirostat and the dynamic temperature keep that fallback.)
pub fn spreads(vocab: usize, s: &SamplingParams, draw: u32) -> bool {
    s.temperature > 0.0
        && vocab > CAND
        && (s.top_k == 0 || s.top_k >= vocab)
        && s.typical_p >= 1.0
        && !(s.xtc_applies(draw) && s.xtc_probability > 0.0)
        && s.top_n_sigma <= 0.0
        && s.mirostat_tau <= 0.0
        && s.dynatemp_range <= 0.0
}

/// How the last `sample` over this `work` chose, as it notes at work[path_slot(vocab)].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The chain over the whole vocabulary (the survivors did not hold all it weighs).
    Whole,
    /// The chain over the [`CAND`] survivors.
    Survivors,
    /// Greedy: the argmax of the chunks' maxima.
    Greedy,
    /// The chain spread over the chunks (`spreads`).
    Spread,
}

/// Where in `work` the sampler notes its [`Path`] (chunk 0's spare statistic).
pub fn path_slot(vocab: usize) -> usize {
    vocab + STATS - 1
}

/// The [`Path`] from the value at [`path_slot`].
pub fn path_taken(v: f32) -> Path {
    match v as u32 {
        1 => Path::Survivors,
        2 => Path::Greedy,
        3 => Path::Spread,
        _ => Path::Whole,
    }
}

/// Most (id, amount) adjustments the sampler takes at one step: the ids DRY penalizes (one
/// per distinct id that followed an earlier copy of the repeated run).
pub const MAX_ADJUST: usize = 4096;

/// Values (u32) of the adjustment buffer: the two counts, then (id, f32 bits) pairs, then
/// mirostat's μ (f32 bits) of the last draw and for the next, which the kernel keeps there so
/// a batch of decode steps updates it on the GPU.
pub const ADJUST_LEN: usize = 2 + 2 * (MAX_ADJUST + MAX_LOGIT_BIAS) + MIROSTAT_SLOTS;

/// The adjustment buffer's last values, mirostat's μ (shaders/sample.wgsl says the same).
pub const MIROSTAT_SLOTS: usize = 2;

/// Most ids a logit bias may name.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Writes the lists that the next submitted `sample`/`logprobs` apply into `adjust` (an
/// [`ADJUST_LEN`] buffer): the logit bias (added first) and DRY's penalties (subtracted
/// after the penalties), which `sampling::dry_penalties` finds on the CPU from the ids. Only
/// these short lists go up; the logits never leave the GPU. They are written with the
/// queue, so every sampling call of one submission sees the same lists.
pub fn write_adjust(ctx: &crate::gpu::Context, adjust: &Tensor, bias: &[(u32, f32)], dry: &[(u32, f32)]) -> Result<()> {
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(Error::arg("--logit-bias", format!("{} ids, more than the {MAX_LOGIT_BIAS} the sampler takes", bias.len())));
    }
    if dry.len() > MAX_ADJUST {
        return Err(Error::arg("--dry-multiplier", format!("DRY penalizes {} ids at this step, more than the {MAX_ADJUST} the sampler takes; lower --dry-penalty-last-n or raise --dry-allowed-length", dry.len())));
    }
    adjust.holds("sample", "adjust", 2 + 2 * (bias.len() + dry.len()))?;
    let mut v = Vec::with_capacity(2 + 2 * (bias.len() + dry.len()));
    v.extend([bias.len() as u32, dry.len() as u32]);
    for &(id, amount) in bias.iter().chain(dry) {
        v.extend([id, amount.to_bits()]);
    }
    ctx.queue.write_buffer(&adjust.buf, 0, bytemuck::cast_slice(&v));
    Ok(())
}

/// FLOPs and bytes of one sampling pass over the vocabulary: the greedy path reads the
/// logits, writes and re-reads the scratch (12 bytes, ~4 FLOPs per id); top-k/top-p searches
/// read the scratch again per step, which this lower bound leaves out.
pub fn cost(vocab: usize) -> (u64, u64) {
    (4 * vocab as u64, 12 * vocab as u64)
}

/// The kernels' parameters for draw `draw` (`logprobs` sets its own mode and count after).
fn params(vocab: usize, row: usize, out_index: usize, history: &Range<usize>, s: &SamplingParams, draw: u32) -> Params {
    Params {
        vocab: vocab as u32,
        row: row as u32,
        hist_start: history.start as u32,
        hist_end: history.end as u32,
        out_index: out_index as u32,
        top_k: s.top_k.min(u32::MAX as usize) as u32,
        seed_lo: s.seed as u32,
        seed_hi: (s.seed >> 32) as u32,
        draw,
        temperature: s.temperature,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        typical_p: s.typical_p,
        xtc_threshold: s.xtc_threshold,
        xtc_probability: if s.xtc_applies(draw) { s.xtc_probability } else { 0.0 },
        top_n_sigma: s.top_n_sigma,
        mirostat_tau: s.mirostat_tau,
        dynatemp_range: s.dynatemp_range,
        dynatemp_exponent: s.dynatemp_exponent,
        mirostat_eta: s.mirostat_eta,
        mode: 0,
        alternatives: 0,
        round: 0,
        spread: spreads(vocab, s, draw) as u32,
    }
}

/// Environment variable choosing the sampler's threads per workgroup (32, 64, 128 or 256).
pub const SAMPLE_THREADS_ENV: &str = "QUILL_SAMPLE_THREADS";

/// Threads per workgroup of the sampler's chunk kernels by adapter class (`WG` in
/// shaders/sample.wgsl; `pipeline` says which), both values the tests run: 256 on GPUs; 64 on
/// CPU-type adapters, where a workgroup's invocations take turns on one core and every barrier
/// switches between all of them (the chain's two passes on lavapipe, `cargo bench --bench ops`:
/// 5.7 ms a pass on average with 256, 3.9 ms with 64).
pub const THREADS: [u32; 2] = [64, 256];

pub fn threads_for(device_type: wgpu::DeviceType) -> u32 {
    if device_type == wgpu::DeviceType::Cpu {
        64
    } else {
        256
    }
}

/// The threads for this adapter, or those `QUILL_SAMPLE_THREADS` names.
pub fn threads(ctx: &crate::gpu::Context) -> Result<u32> {
    match std::env::var(SAMPLE_THREADS_ENV) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(t @ (32 | 64 | 128 | 256)) => Ok(t),
            _ => Err(Error::arg(SAMPLE_THREADS_ENV, format!("'{text}' is not 32, 64, 128 or 256"))),
        },
        Err(_) => Ok(threads_for(ctx.info.device_type)),
    }
}

/// The pipeline of `entry` with `threads` per workgroup where its work is one chunk of the
/// vocabulary (`candidates`, `greedy_chunks`: at most CHUNK ids a workgroup). The kernels that
/// may walk the whole vocabulary in one workgroup (the chain's fallback in `sample`, and
/// `logprobs`) keep 256: with fewer, each invocation's loops over a large vocabulary pass
/// llvmpipe's limit of 65535 iterations and stop early (the test below found it at 152k ids).
fn pipeline(ctx: &crate::gpu::Context, entry: &str, threads: u32) -> Result<std::sync::Arc<crate::gpu::Pipeline>> {
    let threads = if matches!(entry, "candidates" | "greedy_chunks" | "spread_hist" | "spread_mass" | "spread_draw") { threads } else { 256 };
    ctx.pipeline(&SHADER, entry, &[("WG", threads as f64)])
}

/// Checks the buffers of a sampling kernel; returns the vocabulary size.
fn check(op: &'static str, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, out_index: usize, history: &Range<usize>) -> Result<usize> {
    let vocab = *logits.shape.last().ok_or(Error::Shape { op, msg: "logits have no shape".into() })?;
    logits.holds(op, "logits", (row + 1) * vocab)?;
    work.holds(op, "work", vocab)?;
    tokens.holds(op, "tokens", out_index.max(history.end) + 1)?;
    Ok(vocab)
}

/// Samples from row `row` of `logits` (rows, vocab) and writes the id to
/// `tokens[out_index]`. The penalty looks at `tokens[history]`. `work` is a (vocab,) scratch.
/// `adjust` holds the logit bias and DRY's penalties ([`write_adjust`]).
#[allow(clippy::too_many_arguments)]
pub fn sample(rec: &mut Recorder, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, adjust: &Tensor, out_index: usize, history: Range<usize>, s: &SamplingParams, draw: u32) -> Result<()> {
    let threads = threads(rec.ctx)?;
    sample_with(rec, logits, row, work, tokens, adjust, out_index, history, s, draw, threads)
}

/// `sample` with the threads per workgroup given (the tests run each adapter class's).
#[allow(clippy::too_many_arguments)]
pub fn sample_with(rec: &mut Recorder, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, adjust: &Tensor, out_index: usize, history: Range<usize>, s: &SamplingParams, draw: u32, threads: u32) -> Result<()> {
    let vocab = check("sample", logits, row, work, tokens, out_index, &history)?;
    if vocab > MAX_VOCAB {
        return Err(Error::Shape { op: "sample", msg: format!("a vocabulary of {vocab} ids is more than the {MAX_VOCAB} the sampler takes") });
    }
    work.holds("sample", "work", work_len(vocab))?;
    adjust.holds("sample", "adjust", 2 + MIROSTAT_SLOTS)?;
    // Greedy takes kernels of its own, which reach none of the chain's code.
    let greedy = s.temperature <= 0.0;
    let first = pipeline(rec.ctx, if greedy { "greedy_chunks" } else { "candidates" }, threads)?;
    let p = params(vocab, row, out_index, &history, s, draw);
    let buffers = [&logits.buf, &work.buf, &tokens.buf, &adjust.buf];
    let (flops, bytes) = cost(vocab);
    rec.dispatch(OpInfo::new("sample", flops, bytes), &first, &buffers, &p, [vocab.div_ceil(CHUNK) as u32, 1, 1]);
    if greedy {
        let pick = pipeline(rec.ctx, "greedy_pick", threads)?;
        rec.dispatch(OpInfo::new("sample", 0, 8 * vocab.div_ceil(CHUNK) as u64), &pick, &buffers, &p, [1, 1, 1]);
        return Ok(());
    }
    let chunks = vocab.div_ceil(CHUNK) as u64;
    if p.spread != 0 {
        if s.top_p < 1.0 {
            // Top-p's 4 rounds: each reads the ids and every chunk's 256 buckets, and writes its own.
            let hist = pipeline(rec.ctx, "spread_hist", threads)?;
            let bytes = 4 * (vocab as u64 + chunks * chunks * CAND as u64 + chunks * CAND as u64);
            for round in 0..4 {
                rec.dispatch(OpInfo::new("sample", 3 * vocab as u64, bytes), &hist, &buffers, &Params { round, ..p }, [chunks as u32, 1, 1]);
            }
        }
        let pipe = pipeline(rec.ctx, "spread_mass", threads)?;
        rec.dispatch(OpInfo::new("sample", 3 * vocab as u64, 4 * (vocab as u64 + chunks * chunks * CAND as u64)), &pipe, &buffers, &p, [chunks as u32, 1, 1]);
        let pipe = pipeline(rec.ctx, "spread_draw", threads)?;
        rec.dispatch(OpInfo::new("sample", 3 * CHUNK as u64, 4 * (CHUNK as u64 + chunks * CAND as u64)), &pipe, &buffers, &p, [1, 1, 1]);
        return Ok(());
    }
    // The survivors' chain reads a few values per chunk (a whole-vocabulary fallback reads
    // more, which this leaves out).
    let finish = pipeline(rec.ctx, "sample", threads)?;
    rec.dispatch(OpInfo::new("sample", 4 * chunks * CAND as u64, 4 * chunks * (STATS + 2 * CAND) as u64), &finish, &buffers, &p, [1, 1, 1]);
    Ok(())
}

/// Most alternatives `logprobs` returns per token (as OpenAI allows).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Log-probabilities of a sampled token, on the GPU: the log-softmax of row `row` over every
/// id after the penalty over `tokens[history]`, the list in `adjust` and the temperature the
/// chain weighs at (`sampling::log_softmax` is the CPU reference): the distribution before
/// the filters cut it down. For the id at `tokens[chosen_index]` and the `top` most likely
/// ids. The results replace the start of `work`: read `logprobs_len(top)` values and pass
/// them to [`parse_logprobs`]. Only those few values need to come back, not the logits.
#[allow(clippy::too_many_arguments)]
pub fn logprobs(rec: &mut Recorder, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, adjust: &Tensor, chosen_index: usize, history: Range<usize>, s: &SamplingParams, top: usize) -> Result<()> {
    let threads = threads(rec.ctx)?;
    log_probabilities(rec, [logits, work, tokens, adjust], row, chosen_index, history, s, top, 0, 0, threads)
}

/// Like [`logprobs`], but of the distribution draw `draw` chose from: after the whole chain
/// (filters, XTC as decided for that draw, temperature; mirostat at the μ that draw used;
/// at temperature 0, the chain at temperature 1), ids it dropped at -f32::MAX. Run it after
/// that draw's `sample`, before the next. `sampling::processed_probs` is the CPU reference.
#[allow(clippy::too_many_arguments)]
pub fn token_probs(rec: &mut Recorder, logits: &Tensor, row: usize, work: &Tensor, tokens: &Tensor, adjust: &Tensor, chosen_index: usize, history: Range<usize>, s: &SamplingParams, top: usize, draw: u32) -> Result<()> {
    let threads = threads(rec.ctx)?;
    log_probabilities(rec, [logits, work, tokens, adjust], row, chosen_index, history, s, top, draw, 1, threads)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn log_probabilities(rec: &mut Recorder, [logits, work, tokens, adjust]: [&Tensor; 4], row: usize, chosen_index: usize, history: Range<usize>, s: &SamplingParams, top: usize, draw: u32, mode: u32, threads: u32) -> Result<()> {
    let vocab = check("logprobs", logits, row, work, tokens, chosen_index, &history)?;
    if top > MAX_TOP_LOGPROBS || logprobs_len(top) > vocab {
        return Err(Error::arg("top_logprobs", format!("{top} must be at most {MAX_TOP_LOGPROBS} (and fit a vocabulary of {vocab})")));
    }
    adjust.holds("logprobs", "adjust", 2 + MIROSTAT_SLOTS)?;
    let pipe = pipeline(rec.ctx, "logprobs", threads)?;
    let p = Params { mode, alternatives: top as u32, ..params(vocab, row, chosen_index, &history, s, draw) };
    // The chain's passes (as `sample`), one for the sum, then one argmax pass per alternative.
    let (flops, bytes) = cost(vocab);
    let info = OpInfo::new("logprobs", flops * (2 + top as u64), bytes * (2 + top as u64));
    rec.dispatch(info, &pipe, &[&logits.buf, &work.buf, &tokens.buf, &adjust.buf], &p, [1, 1, 1]);
    Ok(())
}

/// Values `logprobs` writes for `top` alternatives.
pub fn logprobs_len(top: usize) -> usize {
    2 + 2 * top
}

/// (chosen id's log-probability, [(id, log-probability)] of the top alternatives, most likely first).
pub fn parse_logprobs(values: &[f32]) -> (f32, Vec<(u32, f32)>) {
    let chosen = values.get(1).copied().unwrap_or(f32::NEG_INFINITY);
    let top = values.chunks_exact(2).skip(1).map(|c| (c[0] as u32, c[1])).collect();
    (chosen, top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::gpu::Context;
    use crate::ops::test_values;
    use crate::sampling::{distribution, distribution_at, dry_penalties, log_softmax, processed_probs, sample_reference, sample_reference_at, uniform01, Mirostat};

    fn adjust_buffer(ctx: &Context, s: &SamplingParams, history: &[u32]) -> Tensor {
        let t = Tensor::zeros(ctx, "adjust", &[ADJUST_LEN]).unwrap();
        write_adjust(ctx, &t, &s.logit_bias, &dry_penalties(history, s)).unwrap();
        t
    }

    /// Runs `draws` samples of one logits row in one command buffer; returns the ids.
    async fn draw_many(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize) -> Vec<u32> {
        draw_path(ctx, logits, history, s, draws).await.0
    }

    /// `draw_many`, and the path the last draw took.
    async fn draw_path(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize) -> (Vec<u32>, Path) {
        draw_path_with(ctx, logits, history, s, draws, threads(ctx).unwrap()).await
    }

    /// `draw_path` with the sampler's threads per workgroup given.
    async fn draw_path_with(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize, threads: u32) -> (Vec<u32>, Path) {
        let vocab = logits.len();
        let lt = Tensor::upload_f32(ctx, "logits", &[1, vocab], logits).unwrap();
        let work = Tensor::zeros(ctx, "work", &[work_len(vocab)]).unwrap();
        let mut ids = history.to_vec();
        ids.resize(history.len() + draws, 0);
        let tokens = Tensor { buf: ctx.upload("tokens", &ids).unwrap(), shape: vec![ids.len()] };
        let adjust = adjust_buffer(ctx, s, history);
        // A submission per 256 draws: thousands of passes in one command buffer cost lavapipe
        // gigabytes. The buffers (and mirostat's μ in `adjust`) carry over between them.
        for batch in (0..draws).collect::<Vec<_>>().chunks(256) {
            let mut rec = Recorder::new(ctx, "test");
            for &i in batch {
                sample_with(&mut rec, &lt, 0, &work, &tokens, &adjust, history.len() + i, 0..history.len(), s, i as u32, threads).unwrap();
            }
            rec.submit().unwrap();
            // Wait for each submission: wgpu frees a command buffer's memory only once the
            // device is polled after it finished, so unwaited submissions pile up (gigabytes
            // on lavapipe over a test's 50,000 draws).
            ctx.finished().await.unwrap();
        }
        let ids = ctx.read_u32_async(&tokens.buf, history.len(), draws).await.unwrap();
        (ids, path_taken(ctx.read_f32_async(&work.buf, path_slot(vocab), 1).await.unwrap()[0]))
    }

    /// Chi-square bound at p = 0.001 (Wilson–Hilferty).
    fn chi2_bound(df: usize) -> f64 {
        let k = df.max(1) as f64;
        let z = 3.09;
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }

    async fn check_frequencies(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize) {
        let got = draw_many(ctx, logits, history, s, draws).await;
        let p = distribution(logits, history, s);
        let mut counts = vec![0usize; p.len()];
        for &id in &got {
            counts[id as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            assert!(p[i] > 0.0 || c == 0, "{s:?}: id {i} has probability 0 but was drawn {c} times");
        }
        // Pool bins with expected count < 5 into one.
        let (mut chi2, mut df, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
        for (i, &pi) in p.iter().enumerate() {
            let e = pi * draws as f64;
            if pi == 0.0 {
                continue;
            }
            if e < 5.0 {
                pool_o += counts[i] as f64;
                pool_e += e;
            } else {
                chi2 += (counts[i] as f64 - e).powi(2) / e;
                df += 1;
            }
        }
        if pool_e > 0.0 {
            chi2 += (pool_o - pool_e).powi(2) / pool_e.max(1e-9);
            df += 1;
        }
        let bound = chi2_bound(df.saturating_sub(1));
        assert!(chi2 <= bound, "{s:?}: chi-square {chi2:.1} over {df} bins exceeds the p=0.001 bound {bound:.1}");
    }

    fn base() -> SamplingParams {
        SamplingParams { temperature: 1.0, seed: 7, ..SamplingParams::greedy() }
    }

    gpu_test!(fn logprobs_match_the_cpu_log_softmax(ctx) {
        let vocab = 1001;
        let logits: Vec<f32> = test_values(vocab, 23).iter().map(|v| v * 6.0).collect();
        let history = [7u32, 7, 300, 999];
        let chosen = 300u32;
        let mut ids = history.to_vec();
        ids.push(chosen);
        let lt = Tensor::upload_f32(ctx, "logits", &[1, vocab], &logits).unwrap();
        let work = Tensor::zeros(ctx, "work", &[work_len(vocab)]).unwrap();
        let tokens = Tensor { buf: ctx.upload("tokens", &ids).unwrap(), shape: vec![ids.len()] };
        let adjust = adjust_buffer(ctx, &SamplingParams::greedy(), &[]);
        let cases = [
            (SamplingParams { temperature: 0.7, repeat_penalty: 1.3, ..base() }, 5),
            (SamplingParams::greedy(), 20),
            (SamplingParams { temperature: 1.9, ..base() }, 0),
            (SamplingParams { presence_penalty: 1.5, frequency_penalty: -0.7, repeat_penalty: 1.2, ..base() }, 3),
            (SamplingParams { temperature: 0.9, dynatemp_range: 0.5, dynatemp_exponent: 0.7, ..base() }, 2),
        ];
        for (s, top) in cases {
            let mut rec = Recorder::new(ctx, "test");
            logprobs(&mut rec, &lt, 0, &work, &tokens, &adjust, history.len(), 0..history.len(), &s, top).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&work.buf, 0, logprobs_len(top)).await.unwrap();
            let (lp, alts) = parse_logprobs(&got);
            let want = log_softmax(&logits, &history, &s);
            let close = |g: f32, w: f64| (g as f64 - w).abs() <= 1e-4 + 1e-5 * w.abs();
            assert!(close(lp, want[chosen as usize]), "{s:?}: chosen {lp} vs {}", want[chosen as usize]);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
            assert_eq!(alts.len(), top);
            for (k, &(id, v)) in alts.iter().enumerate() {
                assert_eq!(id as usize, order[k], "{s:?}: alternative {k}");
                assert!(close(v, want[order[k]]), "{s:?}: alternative {k}: {v} vs {}", want[order[k]]);
            }
        }
        let mut rec = Recorder::new(ctx, "test");
        assert!(logprobs(&mut rec, &lt, 0, &work, &tokens, &adjust, 4, 0..4, &base(), MAX_TOP_LOGPROBS + 1).is_err());
    });

    /// Logits with `peak` ids well above the rest (top-p and min-p then keep few), or flat
    /// random ones (`peak` 0: they keep thousands, past the survivors).
    fn odd_logits(vocab: usize, peak: usize, seed: u64) -> Vec<f32> {
        let mut l: Vec<f32> = test_values(vocab, seed).iter().map(|v| v * 2.0).collect();
        for k in 0..peak.min(vocab) {
            let id = (k * 7919 + 13) % vocab;
            l[id] = 14.0 + l[id];
        }
        l
    }

    /// `draws` draws on the GPU against the CPU reference: how many are the reference's id, and
    /// the path the last one took. A draw that differs must lie within float rounding of its
    /// random number: u within 1e-4 of the reference's cumulative mass (in id order) around
    /// the GPU's id (f32 sums over 152k near-equal probabilities drift by about that).
    async fn agreement(ctx: &Context, logits: &[f32], history: &[u32], s: &SamplingParams, draws: usize, threads: u32) -> (usize, Path) {
        let (got, path) = draw_path_with(ctx, logits, history, s, draws, threads).await;
        let mut agree = 0;
        for (i, &id) in got.iter().enumerate() {
            if sample_reference(logits, history, s, i as u32) == id {
                agree += 1;
                continue;
            }
            let p = distribution_at(logits, history, s, s.xtc_applies(i as u32), Mirostat::new(s).mu);
            let below: f64 = p[..id as usize].iter().sum();
            let u = uniform01(s.seed, i as u32) as f64;
            assert!(p[id as usize] > 0.0 && u >= below - 1e-4 && u <= below + p[id as usize] + 1e-4, "{s:?}: draw {i} took id {id} (mass {below} .. {}) for u {u}", below + p[id as usize]);
        }
        (agree, path)
    }

    // The two-pass sampler against the CPU reference on odd vocabularies (one chunk and less
    // than the survivors, ..., Qwen's 152064 in 38 chunks), each variant with the path it must
    // take: the survivors where they hold every set the chain weighs, the whole vocabulary
    // where they cannot (top-k off with top-p/min-p keeping thousands, mirostat with a dynamic
    // temperature, top-k above CAND).
    gpu_test!(fn two_pass_sampler_matches_the_reference_on_odd_vocabularies(ctx) {
        let browser = ctx.info.backend == wgpu::Backend::BrowserWebGpu;
        let sizes: &[usize] = if browser { &[1, 7, 1000, 49153] } else { &[1, 7, 1000, 49153, 152064] };
        // The adapter's own threads per workgroup on every size; the other class's on a
        // vocabulary below and one above the survivors' count.
        let own = threads(ctx).unwrap();
        for t in THREADS {
            two_pass_cases(ctx, if t == own { sizes } else { &[7, 1000] }, t, t == own).await;
        }
    });

    /// The cases of the test above at `threads` per workgroup; without `all`, one per path and
    /// the chunk kernel's inputs (penalties, DRY), to keep the browser's run short.
    async fn two_pass_cases(ctx: &Context, sizes: &[usize], threads: u32, all: bool) {
        let draws = 30;
        for &vocab in sizes {
            let peaked = odd_logits(vocab, 60, vocab as u64);
            let flat = odd_logits(vocab, 0, vocab as u64 + 1);
            let hist: Vec<u32> = (0..12u32).map(|k| (k * 31 % 5 + k / 4) % vocab as u32).collect();
            let t = |temperature: f32| SamplingParams { temperature, seed: 3 + vocab as u64, ..SamplingParams::greedy() };
            let big = vocab > CAND; // more ids than survivors: the cases where the path matters
            // Top-k off with top-p, min-p or neither runs spread over the chunks (`spreads`).
            let spread = if big { Path::Spread } else { Path::Survivors };
            let cases: Vec<(&str, &[f32], SamplingParams, Path)> = vec![
                ("defaults", &flat, SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, ..t(0.8) }, Path::Survivors),
                ("top-p alone, peaked", &peaked, SamplingParams { top_p: 0.9, ..t(1.0) }, spread),
                ("min-p alone, peaked", &peaked, SamplingParams { min_p: 0.1, ..t(1.2) }, spread),
                ("top-p alone, flat", &flat, SamplingParams { top_p: 0.9, ..t(1.0) }, spread),
                ("min-p alone, flat", &flat, SamplingParams { min_p: 0.3, ..t(0.8) }, spread),
                ("top-p, min-p, penalties, DRY, top-k past the vocabulary, flat", &flat, SamplingParams { top_p: 0.6, min_p: 0.2, top_k: vocab + 5, repeat_penalty: 1.3, dry_multiplier: 2.0, ..t(0.7) }, spread),
                ("nothing cut", &flat, t(1.0), spread),
                ("top-k above CAND", &flat, SamplingParams { top_k: 300, ..t(1.0) }, if vocab > 300 { Path::Whole } else { Path::Survivors }),
                ("penalties, DRY, top-k", &flat, SamplingParams { repeat_penalty: 1.3, presence_penalty: 0.5, dry_multiplier: 2.0, top_k: 20, ..t(0.9) }, Path::Survivors),
                ("typical after top-k", &flat, SamplingParams { typical_p: 0.7, top_k: 50, ..t(1.0) }, Path::Survivors),
                ("top-n-sigma, peaked", &peaked, SamplingParams { top_n_sigma: 1.5, ..t(1.0) }, Path::Survivors),
                ("XTC and dynatemp after top-k", &flat, SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.02, dynatemp_range: 0.5, top_k: 30, ..t(1.0) }, Path::Survivors),
                ("mirostat, peaked", &peaked, SamplingParams { mirostat_tau: 2.0, mirostat_eta: 0.0, ..t(1.0) }, Path::Survivors),
                ("mirostat with dynatemp", &peaked, SamplingParams { mirostat_tau: 2.0, mirostat_eta: 0.0, dynatemp_range: 0.3, ..t(1.0) }, Path::Whole),
            ];
            let few = ["defaults", "top-p alone, flat", "top-p, min-p, penalties, DRY, top-k past the vocabulary, flat", "penalties, DRY, top-k", "mirostat with dynatemp"];
            for (name, logits, s, path) in cases.into_iter().filter(|c| all || few.contains(&c.0)) {
                let (agree, took) = agreement(ctx, logits, &hist, &s, draws, threads).await;
                assert!(agree >= draws * 3 / 4, "vocab {vocab}, {name}, {threads} threads: GPU and CPU reference agree on {agree} of {draws} draws");
                assert_eq!(took, path, "vocab {vocab}, {name}, {threads} threads");
            }
            // Greedy: exactly the reference's argmax (after the penalties), ties to the lowest id.
            let mut tied = flat.clone();
            let top = tied.iter().copied().fold(f32::MIN, f32::max) + 1.0;
            tied[vocab - 1] = top;
            tied[vocab / 2] = top;
            for logits in [&flat, &peaked, &tied] {
                let s = SamplingParams { repeat_penalty: 1.5, ..SamplingParams::greedy() };
                let (got, path) = draw_path_with(ctx, logits, &hist, &s, 1, threads).await;
                assert_eq!(got[0], sample_reference(logits, &hist, &s, 0), "vocab {vocab}, {threads} threads: greedy");
                assert_eq!(path, Path::Greedy);
            }
        }
    }

    gpu_test!(fn greedy_is_argmax_with_lowest_id_on_ties(ctx) {
        let mut logits = test_values(1003, 9);
        logits[500] = 5.0;
        logits[777] = 5.0;
        for t in THREADS {
            let got = draw_path_with(ctx, &logits, &[], &SamplingParams::greedy(), 3, t).await.0;
            assert_eq!(got, vec![500, 500, 500], "{t} threads");
            // With a penalty on 500 the runner-up wins.
            let s = SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() };
            assert_eq!(draw_path_with(ctx, &logits, &[500, 500, 3], &s, 1, t).await.0, vec![777], "{t} threads");
        }
    });

    gpu_test!(fn sampler_frequencies_match_the_intended_distribution(ctx) {
        let logits: Vec<f32> = test_values(61, 3).iter().map(|v| v * 3.0).collect();
        // 1500 draws a setting hold each one to its distribution (chi-square at p = 0.001) and
        // keep the run near a minute on software adapters (lavapipe, SwiftShader: ~8 ms a draw
        // for the two-pass sampler).
        let n = 1500;
        check_frequencies(ctx, &logits, &[], &base(), n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { temperature: 0.5, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { temperature: 1.7, top_k: 10, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_p: 0.7, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { min_p: 0.1, seed: 99, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_k: 20, top_p: 0.9, min_p: 0.02, temperature: 0.8, ..base() }, n).await;
        let hist = [3u32, 10, 10, 40];
        check_frequencies(ctx, &logits, &hist, &SamplingParams { repeat_penalty: 1.5, ..base() }, n).await;
        check_frequencies(ctx, &logits, &hist, &SamplingParams { presence_penalty: 0.8, frequency_penalty: 0.6, ..base() }, n).await;
        // Logit bias (before the penalty), a ban, and top-nσ over what the ban leaves.
        let bias = vec![(10, 1.5), (3, -2.0), (0, f32::NEG_INFINITY)];
        check_frequencies(ctx, &logits, &hist, &SamplingParams { logit_bias: bias.clone(), repeat_penalty: 1.3, top_n_sigma: 1.2, ..base() }, n).await;
        // Spread over three chunks (top-k off, more ids than the survivors hold; `spreads`).
        let wide: Vec<f32> = test_values(9000, 4).iter().map(|v| v * 10.0).collect();
        for s in [SamplingParams { top_p: 0.6, ..base() }, SamplingParams { min_p: 0.2, temperature: 0.7, ..base() }] {
            assert!(spreads(wide.len(), &s, 0));
            check_frequencies(ctx, &wide, &[], &s, n).await;
        }
    });

    gpu_test!(fn dry_xtc_and_top_n_sigma_frequencies_match_the_reference(ctx) {
        // DRY: "5 6 7" repeats, so 8 (after L = 3) and 9 (after L = 2) are penalized; 11 breaks.
        let logits: Vec<f32> = test_values(37, 5).iter().map(|v| v * 2.0).collect();
        let hist = [5u32, 6, 7, 8, 1, 6, 7, 9, 2, 11, 5, 6, 7];
        let dry = SamplingParams { dry_multiplier: 0.9, dry_breakers: vec![11], ..base() };
        assert_eq!(dry_penalties(&hist, &dry).len(), 2);
        let n = 1500;
        check_frequencies(ctx, &logits, &hist, &dry, n).await;
        // Greedy sees DRY too: make 8 the argmax, then a strong DRY moves off it.
        let mut peaked = logits.clone();
        peaked[8] = 10.0;
        let strong = SamplingParams { dry_multiplier: 20.0, ..SamplingParams::greedy() };
        let want = sample_reference(&peaked, &hist, &strong, 0);
        assert_ne!(want, 8);
        assert_eq!(draw_many(ctx, &peaked, &hist, &strong, 1).await, vec![want]);
        // XTC always applied: p(0.3) keeps ids 1 .. 3 of the top, drops the likelier ones.
        let mut top = vec![0.0f32; 29];
        top[..4].copy_from_slice(&[3.4, 3.3, 3.2, 3.1]);
        let xtc = SamplingParams { xtc_threshold: 0.1, xtc_probability: 1.0, ..base() };
        let p = distribution(&top, &[], &xtc);
        assert!(p[0] == 0.0 && p[1] == 0.0 && p[2] == 0.0 && p[3] > 0.0);
        check_frequencies(ctx, &top, &[], &xtc, n).await;
        // Dynamic temperature, with top-k.
        check_frequencies(ctx, &logits, &[], &SamplingParams { dynatemp_range: 0.6, dynatemp_exponent: 1.5, top_k: 12, ..base() }, n).await;
        // Top-nσ, alone and under top-k and top-p.
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_n_sigma: 1.0, ..base() }, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { top_n_sigma: 1.5, top_k: 8, top_p: 0.9, temperature: 0.7, ..base() }, n).await;
        // XTC on half the draws: the GPU decides per draw as the CPU reference does.
        let half = SamplingParams { xtc_probability: 0.5, seed: 11, ..xtc.clone() };
        let got = draw_many(ctx, &top, &[], &half, 200).await;
        let agree = (0..200).filter(|&i| sample_reference(&top, &[], &half, i as u32) == got[i]).count();
        assert!(agree >= 198, "GPU and CPU reference agree on only {agree} of 200 draws");
        assert!(got.iter().any(|&id| id < 3) && got.iter().any(|&id| id >= 3));
    });

    gpu_test!(fn typical_and_mirostat_frequencies_match_the_reference(ctx) {
        let logits: Vec<f32> = test_values(53, 8).iter().map(|v| v * 3.0).collect();
        let n = 1500;
        // Typical alone, then after top-k and before top-p, min-p and a temperature.
        let typical = SamplingParams { typical_p: 0.6, ..base() };
        let p = distribution(&logits, &[], &typical);
        assert!(p.iter().filter(|&&x| x > 0.0).count() < 53, "typical 0.6 should drop some ids");
        check_frequencies(ctx, &logits, &[], &typical, n).await;
        check_frequencies(ctx, &logits, &[], &SamplingParams { typical_p: 0.8, top_k: 30, top_p: 0.9, min_p: 0.02, temperature: 0.7, ..base() }, n).await;
        // Mirostat with eta 0: mu stays at 2 tau, so every draw is from one distribution.
        let still = SamplingParams { mirostat_tau: 2.0, mirostat_eta: 0.0, temperature: 0.9, ..base() };
        check_frequencies(ctx, &logits, &[], &still, n).await;
    });

    gpu_test!(fn mirostat_updates_mu_on_the_gpu_as_the_reference_does(ctx) {
        // 200 draws in one command buffer: mu moves on the GPU between them. Each id the GPU
        // drew must be the CPU reference's at the mu the reference tracks along those ids.
        let logits: Vec<f32> = test_values(97, 4).iter().map(|v| v * 4.0).collect();
        let s = SamplingParams { mirostat_tau: 3.0, mirostat_eta: 0.3, temperature: 1.0, seed: 5, ..base() };
        let draws = 200;
        let vocab = logits.len();
        let lt = Tensor::upload_f32(ctx, "logits", &[1, vocab], &logits).unwrap();
        let work = Tensor::zeros(ctx, "work", &[work_len(vocab)]).unwrap();
        let tokens = Tensor { buf: ctx.upload("tokens", &vec![0u32; draws]).unwrap(), shape: vec![draws] };
        let adjust = adjust_buffer(ctx, &s, &[]);
        let mut rec = Recorder::new(ctx, "test");
        for i in 0..draws {
            sample(&mut rec, &lt, 0, &work, &tokens, &adjust, i, 0..0, &s, i as u32).unwrap();
        }
        rec.submit().unwrap();
        let got = ctx.read_u32_async(&tokens.buf, 0, draws).await.unwrap();
        let mut m = Mirostat::new(&s);
        let mut agree = 0;
        let mut mus = Vec::new();
        for (i, &id) in got.iter().enumerate() {
            let (want, _) = sample_reference_at(&logits, &[], &s, i as u32, m.mu);
            agree += usize::from(want == id);
            let p = distribution_at(&logits, &[], &s, false, m.mu)[id as usize];
            assert!(p > 0.0, "draw {i}: id {id} is outside mirostat's set at mu {}", m.mu);
            m.update(&s, p);
            mus.push(m.mu);
        }
        assert!(agree >= 196, "GPU and CPU reference agree on only {agree} of {draws} draws");
        // mu moved (it is not stuck at 2 tau) and the GPU holds the same value.
        assert!(mus.iter().any(|&mu| (mu - 6.0).abs() > 0.5), "{mus:?}");
        let slots = ctx.read_u32_async(&adjust.buf, ADJUST_LEN - MIROSTAT_SLOTS, MIROSTAT_SLOTS).await.unwrap();
        let (used, next) = (f32::from_bits(slots[0]), f32::from_bits(slots[1]));
        assert!((next - m.mu).abs() <= 1e-3 + 1e-4 * m.mu.abs(), "GPU mu {next}, reference {}", m.mu);
        assert!((used - mus[draws - 2]).abs() <= 1e-3 + 1e-4 * used.abs(), "GPU mu of the last draw {used}, reference {}", mus[draws - 2]);
    });

    gpu_test!(fn token_probs_match_the_processed_distribution(ctx) {
        let vocab = 211;
        let logits: Vec<f32> = test_values(vocab, 31).iter().map(|v| v * 5.0).collect();
        let history = [7u32, 7, 100, 150];
        let mut ids = history.to_vec();
        ids.push(0);
        let lt = Tensor::upload_f32(ctx, "logits", &[1, vocab], &logits).unwrap();
        let work = Tensor::zeros(ctx, "work", &[work_len(vocab)]).unwrap();
        let tokens = Tensor { buf: ctx.upload("tokens", &ids).unwrap(), shape: vec![ids.len()] };
        let cases = [
            (SamplingParams { temperature: 0.8, ..base() }, 5),
            (SamplingParams { top_k: 12, top_p: 0.9, min_p: 0.05, temperature: 0.6, repeat_penalty: 1.3, ..base() }, 20),
            (SamplingParams { typical_p: 0.7, temperature: 1.3, ..base() }, 8),
            (SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.05, ..base() }, 4),
            (SamplingParams { dynatemp_range: 0.5, top_k: 30, ..base() }, 3),
            (SamplingParams { top_k: 6, ..SamplingParams::greedy() }, 6),
            (SamplingParams { mirostat_tau: 2.5, temperature: 0.9, ..base() }, 10),
        ];
        for ((s, top), threads) in cases.iter().flat_map(|c| THREADS.map(|t| (c.clone(), t))) {
            let adjust = adjust_buffer(ctx, &s, &history);
            let mut rec = Recorder::new(ctx, "test");
            let out = history.len();
            sample_with(&mut rec, &lt, 0, &work, &tokens, &adjust, out, 0..out, &s, 0, threads).unwrap();
            log_probabilities(&mut rec, [&lt, &work, &tokens, &adjust], 0, out, 0..out, &s, top, 0, 1, threads).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&work.buf, 0, logprobs_len(top)).await.unwrap();
            let chosen = ctx.read_u32_async(&tokens.buf, out, 1).await.unwrap()[0];
            let (lp, alts) = parse_logprobs(&got);
            let want = processed_probs(&logits, &history, &s, 0, Mirostat::new(&s).mu);
            let close = |g: f32, w: f64| ((g as f64).exp() - w).abs() <= 1e-4;
            assert!(want[chosen as usize] > 0.0, "{s:?}: drew {chosen}, outside the processed set");
            assert!(close(lp, want[chosen as usize]), "{s:?}: chosen {chosen}: p {} vs {}", lp.exp(), want[chosen as usize]);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
            assert_eq!(alts.len(), top);
            for (k, &(id, v)) in alts.iter().enumerate() {
                assert!(close(v, want[id as usize]), "{s:?}: alternative {k} (id {id}): p {} vs {}", v.exp(), want[id as usize]);
                // The order is the reference's where the probabilities are apart.
                if want[order[k]] > 1e-4 && (k + 1 == vocab || want[order[k]] - want[order[k + 1]] > 1e-5) {
                    assert_eq!(id as usize, order[k], "{s:?}: alternative {k}");
                }
            }
        }
    });

    gpu_test!(fn ties_at_the_top_k_boundary_are_kept(ctx) {
        let mut logits = vec![0.0f32; 40];
        logits[5] = 2.0;
        logits[9] = 1.0;
        logits[20] = 1.0;
        let s = SamplingParams { top_k: 2, ..base() };
        assert!(distribution(&logits, &[], &s)[20] > 0.0);
        check_frequencies(ctx, &logits, &[], &s, 3000).await;
    });

    gpu_test!(fn same_seed_same_draws_and_agreement_with_cpu_reference(ctx) {
        let logits: Vec<f32> = test_values(997, 17).iter().map(|v| v * 4.0).collect();
        let s = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.01, seed: 1234, ..base() };
        let a = draw_many(ctx, &logits, &[], &s, 300).await;
        let b = draw_many(ctx, &logits, &[], &s, 300).await;
        assert_eq!(a, b, "same seed must give the same ids");
        let c = draw_many(ctx, &logits, &[], &SamplingParams { seed: 4321, ..s.clone() }, 300).await;
        assert_ne!(a, c, "another seed should give other ids");
        // The CPU reference uses the same random numbers; only draws landing within float
        // rounding of a boundary may differ.
        let agree = (0..300).filter(|&i| sample_reference(&logits, &[], &s, i as u32) == a[i]).count();
        assert!(agree >= 297, "GPU and CPU reference agree on only {agree} of 300 draws");
    });
}
