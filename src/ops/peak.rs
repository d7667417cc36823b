//! Device peak micro-benchmarks (`quill bench-device`): the best memory bandwidth and
//! arithmetic rate this adapter reaches, against which the profiler reports each op.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::profiler::DevicePeak;
use crate::gpu::{grid, Context, OpInfo, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "peak", body: include_str!("../../shaders/peak.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_threads: u32,
    per_thread: u32,
    iters: u32,
    _pad: u32,
}

/// Records a read of `src` (n_threads * per_thread vec4s) into per-thread sums.
pub fn read_bw(rec: &mut Recorder, src: &Tensor, sums: &Tensor, n_threads: usize, per_thread: usize) -> Result<()> {
    src.holds("read_bw", "src", 4 * n_threads * per_thread)?;
    sums.holds("read_bw", "sums", n_threads)?;
    let pipe = rec.ctx.pipeline(&SHADER, "read_bw", &[])?;
    let p = Params { n_threads: n_threads as u32, per_thread: per_thread as u32, iters: 0, _pad: 0 };
    let info = OpInfo::new("read_bw", (4 * n_threads * per_thread) as u64, (16 * n_threads * per_thread + 4 * n_threads) as u64);
    rec.dispatch(info, &pipe, &[&src.buf, &sums.buf], &p, grid(rec.ctx, n_threads.div_ceil(256) as u32));
    Ok(())
}

/// Records `iters` rounds of 8 vec4 FMAs (64 FLOPs) per thread.
pub fn fma(rec: &mut Recorder, out: &Tensor, n_threads: usize, iters: usize) -> Result<()> {
    out.holds("fma", "out", n_threads)?;
    let pipe = rec.ctx.pipeline(&SHADER, "fma_rate", &[])?;
    let p = Params { n_threads: n_threads as u32, per_thread: 0, iters: iters as u32, _pad: 0 };
    let info = OpInfo::new("fma", (64 * n_threads * iters) as u64, 4 * n_threads as u64);
    rec.dispatch(info, &pipe, &[&out.buf], &p, grid(rec.ctx, n_threads.div_ceil(256) as u32));
    Ok(())
}

/// CPU reference of `read_bw`: sums[t] = sum of the 4 lanes of src[j * n + t] over j.
pub fn read_bw_reference(src: &[f32], n_threads: usize, per_thread: usize) -> Vec<f32> {
    (0..n_threads).map(|t| (0..per_thread).map(|j| src[4 * (j * n_threads + t)..][..4].iter().sum::<f32>()).sum()).collect()
}

/// CPU reference of `fma` for thread t.
pub fn fma_reference(t: usize, iters: usize) -> f32 {
    let b = [0.999f32, 0.998, 0.997, 0.996];
    let c = [0.001f32, 0.002, 0.003, 0.004];
    let mut total = 0.0f32;
    for chain in 0..8 {
        for lane in 0..4 {
            let mut a = (t % 7) as f32 + chain as f32;
            for _ in 0..iters {
                a = a.mul_add(b[lane], c[lane]);
            }
            total += a;
        }
    }
    total
}

/// Times `record` `reps` times; returns the best rate of `OpInfo` bytes and FLOPs per second.
fn best_rate(ctx: &Context, reps: usize, mut record: impl FnMut(&mut Recorder) -> Result<()>) -> Result<(f64, f64)> {
    let (mut best_bytes, mut best_flops) = (0.0f64, 0.0f64);
    for rep in 0..=reps {
        let mut rec = Recorder::profiled(ctx, "bench-device");
        record(&mut rec)?;
        let start = Instant::now();
        let sub = rec.submit()?;
        let ops = sub.ops.clone();
        let step = sub.profile(ctx, "bench")?.ok_or_else(|| Error::gpu("bench-device", "no profile"))?;
        let secs = match step.pass_total_ns() {
            Some(ns) if ns > 0.0 => ns / 1e9,
            _ => start.elapsed().as_secs_f64(),
        };
        if rep == 0 {
            continue; // warm-up: pipeline compilation, first touch
        }
        let bytes: u64 = ops.iter().map(|o| o.bytes).sum();
        let flops: u64 = ops.iter().map(|o| o.flops).sum();
        best_bytes = best_bytes.max(bytes as f64 / secs);
        best_flops = best_flops.max(flops as f64 / secs);
    }
    Ok((best_bytes, best_flops))
}

/// Measures the adapter's peak read bandwidth (a 64 MiB read, or what one binding allows)
/// and FMA rate.
pub fn measure(ctx: &Context) -> Result<DevicePeak> {
    let max = ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size) as usize;
    let bytes = (64usize << 20).min(max / 2);
    let n_threads = 1 << 16;
    let per_thread = bytes / 16 / n_threads;
    let src = Tensor::zeros(ctx, "peak src", &[4 * n_threads * per_thread])?;
    let sums = Tensor::zeros(ctx, "peak sums", &[n_threads])?;
    let (bw, _) = best_rate(ctx, 3, |rec| {
        for _ in 0..4 {
            read_bw(rec, &src, &sums, n_threads, per_thread)?;
        }
        Ok(())
    })?;
    let (_, flops) = best_rate(ctx, 3, |rec| fma(rec, &sums, n_threads, 256))?;
    Ok(DevicePeak { bandwidth_gbs: bw / 1e9, gflops: flops / 1e9 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::{compare, test_values};

    gpu_test!(fn peak_kernels_match_reference(ctx) {
        let (n, per) = (300usize, 5usize);
        let src = test_values(4 * n * per, 51);
        let st = Tensor::upload_f32(ctx, "src", &[4 * n * per], &src).unwrap();
        let sums = Tensor::zeros(ctx, "sums", &[n]).unwrap();
        let out = Tensor::zeros(ctx, "out", &[n]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        read_bw(&mut rec, &st, &sums, n, per).unwrap();
        fma(&mut rec, &out, n, 37).unwrap();
        rec.submit().unwrap();
        // Sums of 20 values in [-1, 1] in another order: a few ulp.
        compare(&ctx.read_f32_async(&sums.buf, 0, n).await.unwrap(), &read_bw_reference(&src, n, per), 1e-5, 1e-5).unwrap();
        let want: Vec<f32> = (0..n).map(|t| fma_reference(t, 37)).collect();
        // FMA is exact per step; only the final 32-term sum's order differs.
        compare(&ctx.read_f32_async(&out.buf, 0, n).await.unwrap(), &want, 1e-4, 1e-5).unwrap();
    });
}
