//! Per-kernel throughput at SmolLM2-135M shapes: time per dispatch, GB/s and GFLOP/s from
//! each op's own byte and FLOP counts, and the share of the device's peak read bandwidth
//! (`quill bench-device`, measured here when not cached). Linear layers run for every weight
//! storage type the model can use (f32, f16, bf16 and the 32-weight block types; the 256-weight
//! K-quants and IQ4_XS where the width allows), with SmolLM2's fused shapes. Run: `cargo bench --bench ops`
//! (QUILL_BENCH_ITERS sets the repetitions, QUILL_BENCH_ONLY=TEXT keeps the labels containing TEXT).

use std::time::Instant;

use quill::gpu::{Context, Recorder, Tensor, Weight};
use quill::weights::DType;
use quill::ops::matmul::{linear, Store};
use quill::ops::{attention, norm, test_values};

fn time(ctx: &Context, name: &str, iters: usize, mut record: impl FnMut(&mut Recorder)) -> f64 {
    // QUILL_BENCH_ONLY=TEXT runs only the kernels whose label contains TEXT.
    if std::env::var("QUILL_BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return 0.0;
    }
    // Warm-up (pipeline creation, first-touch of buffers).
    let mut rec = Recorder::new(ctx, "warm-up");
    record(&mut rec);
    rec.submit().unwrap();
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();

    let mut rec = Recorder::new(ctx, name);
    for _ in 0..iters {
        record(&mut rec);
    }
    let (flops, bytes): (u64, u64) = rec.ops.iter().fold((0, 0), |(f, b), o| (f + o.flops, b + o.bytes));
    let n_dispatch = rec.ops.len();
    let start = Instant::now();
    rec.submit().unwrap();
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let gbs = bytes as f64 / secs / 1e9;
    let peak = PEAK.get().copied().unwrap_or(f64::NAN);
    println!(
        "{name:<48} {:>9.1} µs/dispatch {:>8.2} GB/s {:>5.0}% of peak {:>8.2} GFLOP/s",
        secs * 1e6 / n_dispatch as f64,
        gbs,
        100.0 * gbs / peak,
        flops as f64 / secs / 1e9
    );
    gbs
}

static PEAK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// A weight of `dtype` with random blocks (as `ops::matmul`'s tests make them).
fn weight(ctx: &Context, dtype: DType, n: usize, k: usize) -> Weight {
    let vals = test_values(n * k, 1);
    let bytes: Vec<u8> = match dtype {
        DType::F32 => bytemuck::cast_slice(&vals).to_vec(),
        DType::F16 => vals.iter().flat_map(|&v| quill::weights::dtype::f32_to_f16(v).to_le_bytes()).collect(),
        DType::BF16 => vals.iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        DType::Q8_0 => quill::weights::dtype::quantize_q8_0(&vals),
        // Speed does not depend on the values: any bytes of the right size will do.
        other => (0..other.bytes_for(n * k).unwrap()).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let row = dtype.bytes_for(k).unwrap();
    let rows: Vec<&[u8]> = bytes.chunks(row).collect();
    Weight::from_rows(ctx, "w", dtype, k, &rows, ctx.binding_limit()).unwrap()
}

fn main() {
    let ctx = Context::new_blocking().expect("a GPU adapter");
    let iters: usize = std::env::var("QUILL_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("adapter: {} ({:?})", ctx.adapter_name(), ctx.info.backend);
    let peak = quill::files::cached_peak(&ctx).map(|p| p.bandwidth_gbs).unwrap_or_else(|| quill::ops::peak::measure(&ctx).unwrap().bandwidth_gbs);
    let _ = PEAK.set(peak);
    println!("device peak read bandwidth: {peak:.2} GB/s");
    let (dim, ffn, vocab) = (576usize, 1536usize, 49152usize);
    let t = |shape: &[usize], seed| Tensor::upload_f32(&ctx, "t", shape, &test_values(shape.iter().product(), seed)).unwrap();
    let mut best: f64 = 0.0;
    // SmolLM2's decode shapes: fused Q/K/V (576 + 2 x 192 rows), o_proj, fused gate/up, down, lm head.
    let shapes = [(dim + 2 * 192, dim, "qkv"), (dim, dim, "o proj"), (2 * ffn, dim, "gate/up"), (dim, ffn, "down"), (vocab, dim, "lm head")];
    for dtype in DType::ALL.into_iter().filter(|d| d.block_len() < 256) {
        for &(n, k, label) in &shapes {
            let w = weight(&ctx, dtype, n, k);
            for &tokens in &[1usize, 2, 4, 8, 128] {
                let x = t(&[tokens, k], 2);
                let y = t(&[tokens, n], 3);
                let its = if tokens > 1 { iters.div_ceil(4) } else { iters };
                let gbs = time(&ctx, &format!("linear {} {label} [{n}x{k}] t={tokens}", dtype.name()), its, |rec| {
                    linear(rec, "linear", None, &x, &w, None, &y, tokens, Store::Write).unwrap()
                });
                if tokens == 1 {
                    best = best.max(gbs);
                }
            }
        }
    }
    // K-quants and IQ4_XS need rows of whole 256-weight super-blocks: SmolLM2's ffn width (1536).
    for dtype in DType::ALL.into_iter().filter(|d| d.block_len() == 256) {
        let w = weight(&ctx, dtype, dim, ffn);
        let x = t(&[1, ffn], 2);
        let y = t(&[1, dim], 3);
        let gbs = time(&ctx, &format!("linear {} down [{dim}x{ffn}] t=1", dtype.name()), iters, |rec| linear(rec, "linear", None, &x, &w, None, &y, 1, Store::Write).unwrap());
        best = best.max(gbs);
    }
    println!("best mat-vec rate: {best:.2} GB/s ({:.0}% of the device's peak read bandwidth)", 100.0 * best / peak);
    let x = t(&[128, dim], 4);
    let w = t(&[dim], 5);
    let out = t(&[128, dim], 6);
    time(&ctx, "rms_norm t=1", iters, |rec| norm::rms_norm(rec, &x, &w, &out, 1, 1e-5, None).unwrap());
    let (heads, kvh, hd, ctx_len) = (9usize, 3usize, 64usize, 2048usize);
    let q = t(&[128, heads * hd], 7);
    let kc = t(&[kvh * ctx_len * hd], 8);
    let vc = t(&[kvh * ctx_len * hd], 9);
    let o = t(&[128, heads * hd], 10);
    let part = t(&[attention::partials_len(heads, kvh, hd, 128, ctx_len)], 11);
    // The sampler over SmolLM2's vocabulary: greedy, and a chain a writer uses.
    let logits = t(&[1, vocab], 12);
    let work = Tensor::zeros(&ctx, "work", &[quill::ops::sample::work_len(vocab)]).unwrap();
    let tokens = Tensor::zeros(&ctx, "tokens", &[64]).unwrap();
    let adjust = Tensor::zeros(&ctx, "adjust", &[quill::ops::sample::ADJUST_LEN]).unwrap();
    let chain = quill::sampling::SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, ..Default::default() };
    // With top-k off, what top-p or min-p keep can lie past the 256 survivors of the candidates
    // pass; plain temperature sampling keeps the whole vocabulary.
    let top_p = quill::sampling::SamplingParams { top_k: 0, min_p: 0.0, ..chain.clone() };
    let min_p = quill::sampling::SamplingParams { top_k: 0, top_p: 1.0, ..chain.clone() };
    let plain = quill::sampling::SamplingParams { top_k: 0, top_p: 1.0, min_p: 0.0, ..chain.clone() };
    for (label, s) in [("greedy", quill::sampling::SamplingParams::greedy()), ("top-k 40, top-p 0.95, min-p 0.05, T 0.8", chain), ("top-k off, top-p 0.95, T 0.8", top_p), ("top-k off, min-p 0.05, T 0.8", min_p), ("top-k off, T 0.8 alone", plain)] {
        time(&ctx, &format!("sample {label} [{vocab}]"), iters, |rec| quill::ops::sample::sample(rec, &logits, 0, &work, &tokens, &adjust, 32, 0..32, &s, 0).unwrap());
    }
    for (n_tokens, pos0) in [(1usize, 0usize), (1, 64), (8, 64), (1, 511), (8, 511), (1, 1500), (8, 1500)] {
        let s = attention::AttnShape { n_tokens, n_heads: heads, n_kv_heads: kvh, head_dim: hd, ctx_len, pos0, slot: 0 };
        time(&ctx, &format!("attention decode of {n_tokens} at position {pos0}"), iters, |rec| attention::attention(rec, &q, &kc, &vc, &o, &part, s, 0).unwrap());
    }
}
