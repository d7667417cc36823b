//! The recorder wraps a command encoder. Every op encodes through `Recorder::dispatch`, which
//! names the op (and layer) and carries its FLOP and byte counts: the single point where the
//! profiler adds timestamps and where a roofline gets its numbers.
//!
//! Uniform parameters of all dispatches of one command buffer go into 256-byte slots of
//! pooled arena buffers and are uploaded with one `write_buffer` per arena when the command
//! buffer is finished, so a step allocates no buffers. Without profiling, a recorder creates
//! no query sets and writes no timestamps.

use web_time::{Duration, Instant};

use super::context::{Context, Pipeline};
use super::profiler::{CpuTimes, StepProfile};
use crate::error::Result;

/// What a dispatch is, for profiles and rooflines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpInfo {
    pub op: &'static str,
    pub layer: Option<u32>,
    pub flops: u64,
    pub bytes: u64,
}

impl OpInfo {
    pub fn new(op: &'static str, flops: u64, bytes: u64) -> Self {
        OpInfo { op, layer: None, flops, bytes }
    }
    pub fn layer(mut self, layer: usize) -> Self {
        self.layer = Some(layer as u32);
        self
    }
}

/// Bytes per parameter slot: the largest `min_uniform_buffer_offset_alignment` allowed.
pub const PARAM_SLOT: u64 = 256;
const SLOTS_PER_ARENA: u64 = 1024;
/// Passes timed per query set (two timestamps each).
const PASSES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

/// Timestamp queries of a profiled recorder: two per pass, plus two around the whole
/// command buffer when the adapter allows timestamps outside passes.
struct Timing {
    pass_sets: Vec<wgpu::QuerySet>,
    encoder_set: Option<wgpu::QuerySet>,
}

/// Bind groups made by earlier command buffers, for reuse: a decode step binds the same
/// buffers at the same parameter slots as the step before, so after the first step no bind
/// group is created. Keyed by pipeline, buffers and parameter slot; a `Session` owns one, so
/// its buffers are released with it.
#[derive(Clone, Default)]
pub struct BindCache(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<BindKey, wgpu::BindGroup>>>);

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BindKey {
    pipeline: usize,
    buffers: [Option<wgpu::Buffer>; MAX_CACHED_BINDINGS],
    params: wgpu::Buffer,
    offset: u64,
}

const MAX_CACHED_BINDINGS: usize = 8;

impl BindCache {
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Recorder<'c> {
    pub ctx: &'c Context,
    bind_cache: Option<BindCache>,
    encoder: wgpu::CommandEncoder,
    arenas: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Every dispatch recorded, in order.
    pub ops: Vec<OpInfo>,
    /// Workgroups of each dispatch in `ops`, for the static report of a step's shape.
    pub grids: Vec<[u32; 3]>,
    /// The compute pass that consecutive dispatches share; a copy or the submit ends it.
    pass: Option<wgpu::ComputePass<'static>>,
    /// Some when profiling; its timing is None when the adapter has no timestamps.
    profiling: Option<Option<Timing>>,
    created: Instant,
}

impl<'c> Recorder<'c> {
    pub fn new(ctx: &'c Context, label: &str) -> Self {
        let encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        Recorder { ctx, encoder, bind_cache: None, arenas: Vec::new(), ops: Vec::new(), grids: Vec::new(), pass: None, profiling: None, created: Instant::now() }
    }

    /// Reuses bind groups from `cache` (and adds the new ones to it).
    pub fn with_bind_cache(mut self, cache: &BindCache) -> Self {
        self.bind_cache = Some(cache.clone());
        self
    }

    /// A recorder that times every pass with GPU timestamps (when the adapter has them and
    /// `QUILL_PROFILE_CPU` is unset) and the submit with CPU clocks.
    pub fn profiled(ctx: &'c Context, label: &str) -> Self {
        let mut rec = Self::new(ctx, label);
        let timing = ctx.gpu_timestamps().then(|| {
            let encoder_set = ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS).then(|| ctx.query_set(2));
            if let Some(set) = &encoder_set {
                rec.encoder.write_timestamp(set, 0);
            }
            Timing { pass_sets: Vec::new(), encoder_set }
        });
        rec.profiling = Some(timing);
        rec
    }

    /// Stages `params` in a fresh slot; returns (arena buffer index, byte offset).
    fn stage_params(&mut self, params: &[u8]) -> (usize, u64) {
        assert!(params.len() as u64 <= PARAM_SLOT, "Params structs are at most 256 bytes");
        let full = self.arenas.last().is_none_or(|(_, data)| data.len() as u64 >= SLOTS_PER_ARENA * PARAM_SLOT);
        if full {
            let buffer = self.ctx.take_arena(SLOTS_PER_ARENA * PARAM_SLOT);
            self.arenas.push((buffer, Vec::with_capacity((SLOTS_PER_ARENA * PARAM_SLOT) as usize)));
        }
        let i = self.arenas.len() - 1;
        let data = &mut self.arenas[i].1;
        let offset = data.len() as u64;
        data.extend_from_slice(params);
        data.resize((offset + PARAM_SLOT) as usize, 0);
        (i, offset)
    }

    /// Records one compute dispatch: `buffers` bind to 0..n (inputs first, then outputs), the
    /// `params` uniform binds to n.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, op: OpInfo, pipeline: &Pipeline, buffers: &[&wgpu::Buffer], params: &P, workgroups: [u32; 3]) {
        let (arena, offset) = self.stage_params(bytemuck::bytes_of(params));
        let key = (buffers.len() <= MAX_CACHED_BINDINGS && self.bind_cache.is_some()).then(|| BindKey {
            pipeline: pipeline as *const Pipeline as usize,
            buffers: std::array::from_fn(|i| buffers.get(i).map(|b| (*b).clone())),
            params: self.arenas[arena].0.clone(),
            offset,
        });
        let cached = match (&self.bind_cache, &key) {
            (Some(cache), Some(key)) => cache.0.lock().ok().and_then(|m| m.get(key).cloned()),
            _ => None,
        };
        let bind_group = match cached {
            Some(bg) => bg,
            None => {
                let bg = self.bind_group(pipeline, buffers, arena, offset, std::mem::size_of::<P>() as u64);
                if let (Some(cache), Some(key)) = (&self.bind_cache, key) {
                    if let Ok(mut m) = cache.0.lock() {
                        m.insert(key, bg.clone());
                    }
                }
                bg
            }
        };
        let index = self.ops.len() as u32;
        // Timed dispatches write two timestamps each: inside the shared pass where the adapter
        // allows it, else as the begin and end of a pass of their own.
        let inside = self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        let timed = match &mut self.profiling {
            Some(Some(t)) => {
                if index % PASSES_PER_SET == 0 {
                    t.pass_sets.push(self.ctx.query_set(2 * PASSES_PER_SET));
                }
                Some((&t.pass_sets[(index / PASSES_PER_SET) as usize], 2 * (index % PASSES_PER_SET)))
            }
            _ => None,
        };
        match timed {
            Some((set, i)) if !inside => {
                self.pass = None;
                let timestamp_writes = Some(wgpu::ComputePassTimestampWrites { query_set: set, beginning_of_pass_write_index: Some(i), end_of_pass_write_index: Some(i + 1) });
                let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op.op), timestamp_writes });
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            }
            timed => {
                // One compute pass for every dispatch up to the next copy: WebGPU orders the
                // dispatches of a pass and makes each one's writes visible to the next, so the
                // passes a step used to open per dispatch only cost encoding and driver time.
                let encoder = &mut self.encoder;
                let pass = self.pass.get_or_insert_with(|| encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("step"), timestamp_writes: None }).forget_lifetime());
                if let Some((set, i)) = timed {
                    pass.write_timestamp(set, i);
                }
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
                if let Some((set, i)) = timed {
                    pass.write_timestamp(set, i + 1);
                }
            }
        }
        self.ops.push(op);
        self.grids.push(workgroups);
    }

    fn bind_group(&self, pipeline: &Pipeline, buffers: &[&wgpu::Buffer], arena: usize, offset: u64, size: u64) -> wgpu::BindGroup {
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.arenas[arena].0, offset, size: wgpu::BufferSize::new(size) }),
        });
        self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(&pipeline.label), layout: &pipeline.layout, entries: &entries })
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        self.pass = None;
        self.encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
    }

    /// Uploads the staged parameters and submits the command buffer. A profiled recorder
    /// also resolves its timestamps into a read-back buffer; `Submitted::profile` reads them.
    pub fn submit(mut self) -> Result<Submitted> {
        self.pass = None;
        let mut readback = None;
        if let Some(Some(t)) = &self.profiling {
            let n_pass = self.ops.len() as u64;
            let pass_bytes = (16 * n_pass).max(8);
            let resolve = self.ctx.query_buffer(pass_bytes.next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT), false);
            for (s, set) in t.pass_sets.iter().enumerate() {
                let first = s as u64 * PASSES_PER_SET as u64;
                let count = (n_pass - first).min(PASSES_PER_SET as u64) as u32;
                // first * 16 is a multiple of 2048 * 16, so aligned as resolving requires.
                self.encoder.resolve_query_set(set, 0..2 * count, &resolve, first * 16);
            }
            let read = self.ctx.query_buffer(pass_bytes, true);
            self.encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, pass_bytes);
            let total = t.encoder_set.as_ref().map(|set| {
                self.encoder.write_timestamp(set, 1);
                let resolve = self.ctx.query_buffer(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT, false);
                self.encoder.resolve_query_set(set, 0..2, &resolve, 0);
                let read = self.ctx.query_buffer(16, true);
                self.encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
                read
            });
            readback = Some((read, total));
        }
        for (buffer, data) in &self.arenas {
            self.ctx.queue.write_buffer(buffer, 0, data);
        }
        let encode = self.created.elapsed();
        let t0 = Instant::now();
        self.ctx.count_submit();
        self.ctx.queue.submit([self.encoder.finish()]);
        let submit = t0.elapsed();
        self.ctx.give_back_arenas(self.arenas.into_iter().map(|(b, _)| b));
        self.ctx.check("submitting GPU work")?;
        Ok(Submitted { ops: self.ops, grids: self.grids, profiled: self.profiling.is_some(), readback, encode, submit, submitted: Instant::now() })
    }
}

/// A submitted command buffer, with what is needed to read its profile.
pub struct Submitted {
    pub ops: Vec<OpInfo>,
    pub grids: Vec<[u32; 3]>,
    profiled: bool,
    /// (pass timestamps, whole-buffer timestamps) read-back buffers.
    readback: Option<(wgpu::Buffer, Option<wgpu::Buffer>)>,
    encode: Duration,
    submit: Duration,
    submitted: Instant,
}

impl Submitted {
    /// Waits for the GPU and returns this command buffer's timings (None when not profiled).
    pub fn profile(self, ctx: &Context, label: &'static str) -> Result<Option<StepProfile>> {
        pollster::block_on(self.profile_async(ctx, label))
    }

    /// `profile` for callers that must not block (the browser).
    pub async fn profile_async(self, ctx: &Context, label: &'static str) -> Result<Option<StepProfile>> {
        if !self.profiled {
            return Ok(None);
        }
        ctx.finished().await?;
        let wait = self.submitted.elapsed();
        let t0 = Instant::now();
        let period = ctx.queue.get_timestamp_period() as f64;
        let ticks = |bytes: &[u8]| -> Vec<u64> { bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect() };
        let (pass_ns, gpu_total_ns) = match &self.readback {
            Some((passes, total)) => {
                let n = self.ops.len() as u64;
                let t = ticks(&ctx.map_read_async(passes, (16 * n).max(8)).await?);
                let pass_ns: Vec<f64> = (0..self.ops.len()).map(|i| t[2 * i + 1].wrapping_sub(t[2 * i]) as f64 * period).collect();
                let first = t.first().copied().unwrap_or(0);
                let starts: Vec<f64> = (0..self.ops.len()).map(|i| t[2 * i].wrapping_sub(first) as f64 * period).collect();
                let total = match total {
                    Some(b) => {
                        let e = ticks(&ctx.map_read_async(b, 16).await?);
                        Some(e[1].wrapping_sub(e[0]) as f64 * period)
                    }
                    None => None,
                };
                (Some((pass_ns, starts)), total)
            }
            None => (None, None),
        };
        let readback = t0.elapsed();
        let cpu = CpuTimes { encode: self.encode, submit: self.submit, wait, readback };
        Ok(Some(StepProfile::new(label, self.ops, pass_ns, gpu_total_ns, cpu).with_grids(self.grids)))
    }
}

/// Splits `n` workgroups into a grid whose dimensions stay within the per-dimension limit;
/// kernels recover the linear index with `linear_workgroup()` from common.wgsl.
pub fn grid(ctx: &Context, n: u32) -> [u32; 3] {
    let max = ctx.limits.max_compute_workgroups_per_dimension.max(1);
    if n <= max {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y), y, 1]
    }
}
