//! The recorder wraps a command encoder. Every op encodes through `Recorder::dispatch`, which
//! names the op (and layer) and carries its FLOP and byte counts: the single point where a
//! profiler can add timestamps and where a roofline gets its numbers.
//!
//! Uniform parameters of all dispatches of one command buffer go into 256-byte slots of
//! pooled arena buffers and are uploaded with one `write_buffer` per arena when the command
//! buffer is finished, so a step allocates no buffers.

use super::context::{Context, Pipeline};
use crate::error::Result;

/// What a dispatch is, for profiles and rooflines.
#[derive(Clone, Copy, Debug)]
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

pub struct Recorder<'c> {
    pub ctx: &'c Context,
    encoder: wgpu::CommandEncoder,
    arenas: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Every dispatch recorded, in order.
    pub ops: Vec<OpInfo>,
}

impl<'c> Recorder<'c> {
    pub fn new(ctx: &'c Context, label: &str) -> Self {
        let encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        Recorder { ctx, encoder, arenas: Vec::new(), ops: Vec::new() }
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
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arenas[arena].0,
                offset,
                size: wgpu::BufferSize::new(std::mem::size_of::<P>() as u64),
            }),
        });
        let bind_group = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&pipeline.label),
            layout: &pipeline.layout,
            entries: &entries,
        });
        {
            let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op.op), timestamp_writes: None });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        self.ops.push(op);
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        self.encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
    }

    /// Uploads the staged parameters and submits the command buffer.
    pub fn submit(self) -> Result<wgpu::SubmissionIndex> {
        for (buffer, data) in &self.arenas {
            self.ctx.queue.write_buffer(buffer, 0, data);
        }
        let index = self.ctx.queue.submit([self.encoder.finish()]);
        self.ctx.give_back_arenas(self.arenas.into_iter().map(|(b, _)| b));
        self.ctx.check("submitting GPU work")?;
        Ok(index)
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
