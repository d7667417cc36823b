//! Per-kernel throughput at SmolLM2-135M shapes: time per dispatch, GB/s and GFLOP/s from
//! each op's own byte and FLOP counts. Run: `cargo bench --bench ops` (QUILL_BENCH_ITERS
//! sets the repetitions).

use std::time::Instant;

use quill::gpu::{Context, Recorder, Tensor};
use quill::ops::matmul::{linear, Store};
use quill::ops::{attention, norm, test_values};

fn time(ctx: &Context, name: &str, iters: usize, mut record: impl FnMut(&mut Recorder)) {
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
    println!(
        "{name:<44} {:>9.1} µs/dispatch {:>8.2} GB/s {:>8.2} GFLOP/s",
        secs * 1e6 / n_dispatch as f64,
        bytes as f64 / secs / 1e9,
        flops as f64 / secs / 1e9
    );
}

fn main() {
    let ctx = Context::new_blocking().expect("a GPU adapter");
    let iters: usize = std::env::var("QUILL_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("adapter: {} ({:?})", ctx.adapter_name(), ctx.info.backend);
    let (dim, ffn, vocab) = (576usize, 1536usize, 49152usize);
    let t = |shape: &[usize], seed| Tensor::upload_f32(&ctx, "t", shape, &test_values(shape.iter().product(), seed)).unwrap();

    for &(n, k, label) in &[(dim, dim, "q/o proj"), (192, dim, "k/v proj"), (ffn, dim, "gate/up"), (dim, ffn, "down"), (vocab, dim, "lm head")] {
        let w = t(&[n, k], 1);
        for &tokens in &[1usize, 128] {
            let x = t(&[tokens, k], 2);
            let y = t(&[tokens, n], 3);
            time(&ctx, &format!("linear {label} [{n}x{k}] t={tokens}"), if tokens > 1 { iters.div_ceil(4) } else { iters }, |rec| {
                linear(rec, "linear", None, &x, &w, None, &y, tokens, Store::Write).unwrap()
            });
        }
    }
    let x = t(&[128, dim], 4);
    let w = t(&[dim], 5);
    let out = t(&[128, dim], 6);
    time(&ctx, "rms_norm t=1", iters, |rec| norm::rms_norm(rec, &x, &w, &out, 1, 1e-5, None).unwrap());
    let (heads, kvh, hd, ctx_len) = (9usize, 3usize, 64usize, 1024usize);
    let q = t(&[128, heads * hd], 7);
    let kc = t(&[kvh * ctx_len * hd], 8);
    let vc = t(&[kvh * ctx_len * hd], 9);
    let o = t(&[128, heads * hd], 10);
    for &pos0 in &[0usize, 511] {
        let s = attention::AttnShape { n_tokens: 1, n_heads: heads, n_kv_heads: kvh, head_dim: hd, ctx_len, pos0, slot: 0 };
        time(&ctx, &format!("attention decode at position {pos0}"), iters, |rec| attention::attention(rec, &q, &kc, &vc, &o, s, 0).unwrap());
    }
}
