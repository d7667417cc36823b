//! Profiles of GPU work: per-pass GPU timestamps (or per-submit CPU times where the adapter
//! has no timestamps), aggregated into a per-op table with achieved GB/s and GFLOP/s against
//! the device's measured peak, a Chrome trace (Perfetto, chrome://tracing) and an SVG chart.
//! The FLOP and byte counts come from each op's `cost` function through `OpInfo`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use web_time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::recorder::OpInfo;

/// CPU-side phases of one command buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// From creating the recorder to submitting (recording the passes).
    pub encode: Duration,
    /// The `queue.submit` call.
    pub submit: Duration,
    /// From submitting until the GPU finished.
    pub wait: Duration,
    /// Mapping and reading the timestamps back.
    pub readback: Duration,
}

/// One command buffer's profile.
#[derive(Clone, Debug)]
pub struct StepProfile {
    /// "prefill" or "decode".
    pub label: &'static str,
    pub ops: Vec<OpInfo>,
    /// Workgroups each dispatch launched (x, y, z), in the order of `ops`.
    pub grids: Vec<[u32; 3]>,
    /// GPU time of each pass and its start relative to the first pass (ns); None without
    /// timestamps.
    pub pass_ns: Option<Vec<f64>>,
    pub pass_start_ns: Option<Vec<f64>>,
    /// GPU time between timestamps written at the start and end of the command buffer (ns),
    /// where the adapter allows timestamps outside passes.
    pub gpu_total_ns: Option<f64>,
    pub cpu: CpuTimes,
    /// When the step began, from the profile's start (set by `Profile::push`).
    pub start: Duration,
}

impl StepProfile {
    pub fn new(label: &'static str, ops: Vec<OpInfo>, passes: Option<(Vec<f64>, Vec<f64>)>, gpu_total_ns: Option<f64>, cpu: CpuTimes) -> Self {
        let (pass_ns, pass_start_ns) = match passes {
            Some((d, s)) => (Some(d), Some(s)),
            None => (None, None),
        };
        StepProfile { label, ops, grids: Vec::new(), pass_ns, pass_start_ns, gpu_total_ns, cpu, start: Duration::ZERO }
    }
    /// (dispatches inside layers / layers, layers): the per-layer count `quill profile` prints.
    pub fn dispatches_per_layer(&self) -> (f64, usize) {
        let layers = self.ops.iter().filter_map(|o| o.layer).max().map_or(0, |l| l as usize + 1);
        let in_layers = self.ops.iter().filter(|o| o.layer.is_some()).count();
        (in_layers as f64 / layers.max(1) as f64, layers)
    }
    pub fn with_grids(mut self, grids: Vec<[u32; 3]>) -> Self {
        self.grids = grids;
        self
    }
    /// Sum of the pass times (ns).
    pub fn pass_total_ns(&self) -> Option<f64> {
        self.pass_ns.as_ref().map(|p| p.iter().sum())
    }
}

/// The device's best measured memory bandwidth and arithmetic rate (`quill bench-device`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct DevicePeak {
    pub bandwidth_gbs: f64,
    pub gflops: f64,
}

/// One row of the per-op table.
#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub op: String,
    pub calls: usize,
    pub total_ms: f64,
    pub mean_us: f64,
    /// Of all pass time.
    pub share: f64,
    pub bytes: u64,
    pub flops: u64,
    pub gb_s: f64,
    pub gflop_s: f64,
    pub peak_bw_fraction: Option<f64>,
    pub peak_flop_fraction: Option<f64>,
}

pub struct Profile {
    pub adapter: String,
    /// False: the adapter has no timestamps and only per-submit CPU times exist.
    pub gpu_timestamps: bool,
    pub steps: Vec<StepProfile>,
    epoch: Instant,
}

/// Workgroups per compute unit a decode mat-vec needs to keep a GPU's memory system busy
/// (issue 12's target; several resident workgroups hide each one's load latency).
pub const MIN_WG_PER_CU: u32 = 4;

/// A GPU the static report sizes shapes against (public specifications).
#[derive(Clone, Copy, Debug)]
pub struct ReferenceGpu {
    pub name: &'static str,
    pub compute_units: u32,
    pub bandwidth_gbs: f64,
}

pub const REFERENCE_GPUS: [ReferenceGpu; 4] = [
    ReferenceGpu { name: "rtx3090", compute_units: 82, bandwidth_gbs: 936.0 },
    ReferenceGpu { name: "rtx4060", compute_units: 24, bandwidth_gbs: 272.0 },
    ReferenceGpu { name: "h200", compute_units: 132, bandwidth_gbs: 4800.0 },
    ReferenceGpu { name: "m2", compute_units: 10, bandwidth_gbs: 100.0 },
];

/// The projections and the output head: the dispatches `ops::matmul::linear` records.
fn is_matvec(op: &str) -> bool {
    op.ends_with("_proj") || op == "lm_head"
}

fn op_name(o: &OpInfo, by_layer: bool) -> String {
    match (by_layer, o.layer) {
        (true, Some(l)) => format!("{} L{l}", o.op),
        _ => o.op.to_string(),
    }
}

impl Profile {
    pub fn new(adapter: &str, gpu_timestamps: bool) -> Self {
        Profile { adapter: adapter.to_string(), gpu_timestamps, steps: Vec::new(), epoch: Instant::now() }
    }

    /// Adds a step; its start is placed where its recording began.
    pub fn push(&mut self, mut step: StepProfile) {
        let now = self.epoch.elapsed();
        let took = step.cpu.encode + step.cpu.submit + step.cpu.wait + step.cpu.readback;
        step.start = now.saturating_sub(took);
        self.steps.push(step);
    }

    pub fn passes(&self) -> usize {
        self.steps.iter().map(|s| s.ops.len()).sum()
    }
    /// Total GPU time inside passes (ns), when timestamps exist.
    pub fn pass_total_ns(&self) -> Option<f64> {
        self.steps.iter().map(|s| s.pass_total_ns()).sum()
    }
    /// Total GPU time around whole command buffers (ns): encoder timestamps where the adapter
    /// has them, else the CPU's submit-to-done time.
    pub fn command_buffer_total_ns(&self) -> f64 {
        self.steps.iter().map(|s| s.gpu_total_ns.unwrap_or(s.cpu.wait.as_nanos() as f64)).sum()
    }
    pub fn command_buffer_timing_source(&self) -> &'static str {
        if self.steps.iter().all(|s| s.gpu_total_ns.is_some()) {
            "GPU timestamps around each command buffer"
        } else {
            "CPU time from submit to completion"
        }
    }

    /// The per-op rows, largest total first (by count of bytes where there are no times).
    pub fn rows(&self, by_layer: bool, peak: Option<DevicePeak>) -> Vec<OpRow> {
        let mut acc: BTreeMap<String, (usize, f64, u64, u64)> = BTreeMap::new();
        for s in &self.steps {
            for (i, o) in s.ops.iter().enumerate() {
                let e = acc.entry(op_name(o, by_layer)).or_default();
                e.0 += 1;
                e.1 += s.pass_ns.as_ref().map_or(0.0, |p| p[i]);
                e.2 += o.bytes;
                e.3 += o.flops;
            }
        }
        let total: f64 = acc.values().map(|v| v.1).sum();
        let mut rows: Vec<OpRow> = acc
            .into_iter()
            .map(|(op, (calls, ns, bytes, flops))| {
                let secs = ns / 1e9;
                let gb_s = if secs > 0.0 { bytes as f64 / secs / 1e9 } else { 0.0 };
                let gflop_s = if secs > 0.0 { flops as f64 / secs / 1e9 } else { 0.0 };
                OpRow {
                    op,
                    calls,
                    total_ms: ns / 1e6,
                    mean_us: ns / 1e3 / calls as f64,
                    share: if total > 0.0 { ns / total } else { 0.0 },
                    bytes,
                    flops,
                    gb_s,
                    gflop_s,
                    peak_bw_fraction: peak.filter(|_| secs > 0.0).map(|p| gb_s / p.bandwidth_gbs),
                    peak_flop_fraction: peak.filter(|_| secs > 0.0).map(|p| gflop_s / p.gflops),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then(b.bytes.cmp(&a.bytes)));
        rows
    }

    /// The report printed by `quill profile` and `quill write --profile`.
    pub fn table(&self, by_layer: bool, peak: Option<DevicePeak>) -> String {
        let mut s = String::new();
        let prefill = self.steps.iter().filter(|st| st.label == "prefill").count();
        let decode = self.steps.iter().filter(|st| st.label == "decode").count();
        let _ = writeln!(s, "profile on {}: {} command buffers ({prefill} prefill, {decode} decode), {} dispatches", self.adapter, self.steps.len(), self.passes());
        if let Some(st) = self.steps.iter().find(|st| st.label == "decode") {
            let (per_layer, layers) = st.dispatches_per_layer();
            let _ = writeln!(s, "a decode step: {} dispatches, {per_layer:.1} per layer over {layers} layers", st.ops.len());
        }
        if !self.gpu_timestamps {
            let _ = writeln!(s, "note: no GPU timestamps on this adapter: per-pass times are unknown; below, per-submit CPU times only.");
            for (i, st) in self.steps.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  #{i:<3} {:<8} {:>4} passes  encode {:>8.3} ms  submit {:>8.3} ms  GPU wait {:>9.3} ms",
                    st.label,
                    st.ops.len(),
                    st.cpu.encode.as_secs_f64() * 1e3,
                    st.cpu.submit.as_secs_f64() * 1e3,
                    st.cpu.wait.as_secs_f64() * 1e3
                );
            }
            return s;
        }
        let _ = writeln!(
            s,
            "{:<18} {:>6} {:>10} {:>10} {:>6} {:>10} {:>9} {:>8} {:>8} {:>7} {:>7}",
            "op", "calls", "total ms", "mean µs", "share", "MB moved", "GFLOP", "GB/s", "GFLOP/s", "%BW", "%FLOP"
        );
        let pct = |f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.1}", 100.0 * f));
        for r in self.rows(by_layer, peak) {
            let _ = writeln!(
                s,
                "{:<18} {:>6} {:>10.3} {:>10.1} {:>5.1}% {:>10.2} {:>9.3} {:>8.2} {:>8.2} {:>7} {:>7}",
                r.op,
                r.calls,
                r.total_ms,
                r.mean_us,
                100.0 * r.share,
                r.bytes as f64 / 1e6,
                r.flops as f64 / 1e9,
                r.gb_s,
                r.gflop_s,
                pct(r.peak_bw_fraction),
                pct(r.peak_flop_fraction)
            );
        }
        let passes = self.pass_total_ns().unwrap_or(0.0);
        let whole = self.command_buffer_total_ns();
        let _ = writeln!(
            s,
            "GPU time in passes {:.3} ms; around the command buffers {:.3} ms ({}); passes cover {:.1}%",
            passes / 1e6,
            whole / 1e6,
            self.command_buffer_timing_source(),
            100.0 * passes / whole.max(1.0)
        );
        match peak {
            Some(p) => {
                let _ = writeln!(s, "device peak (quill bench-device): {:.2} GB/s, {:.2} GFLOP/s", p.bandwidth_gbs, p.gflops);
            }
            None => {
                let _ = writeln!(s, "device peak unknown: run `quill bench-device` to fill the %BW and %FLOP columns");
            }
        }
        s
    }

    /// The static report of one decode step's shape (`quill profile --shapes`): per dispatch,
    /// the workgroups launched, the bytes it reads and writes, and what that gives each compute
    /// unit of `gpu`. Needs no timing, so it checks the shapes the kernels would take on a GPU
    /// (with `QUILL_ADAPTER_CLASS` forcing that GPU's variants) on any adapter.
    pub fn shapes(&self, gpu: &ReferenceGpu) -> String {
        let mut s = String::new();
        let Some(step) = self.steps.iter().find(|st| st.label == "decode").or(self.steps.last()) else {
            return "no command buffer was recorded\n".into();
        };
        let (per_layer, layers) = step.dispatches_per_layer();
        let _ = writeln!(s, "one {} step on {}: {} dispatches, {per_layer:.1} per layer over {layers} layers", step.label, self.adapter, step.ops.len());
        let _ = writeln!(s, "reference GPU: {} ({} compute units, {:.0} GB/s); mat-vecs should launch at least {MIN_WG_PER_CU} workgroups per compute unit", gpu.name, gpu.compute_units, gpu.bandwidth_gbs);
        let _ = writeln!(s, "{:<18} {:>11} {:>10} {:>9} {:>12} {:>10}", "op", "workgroups", "MB moved", "wg / CU", "KB per CU", "µs at peak");
        let cus = gpu.compute_units as f64;
        let mut thin = Vec::new();
        for (o, g) in step.ops.iter().zip(&step.grids) {
            let wg = g.iter().map(|&d| d as u64).product::<u64>();
            let per_cu = wg as f64 / cus;
            let busy = (wg as f64).min(cus).max(1.0);
            let _ = writeln!(
                s,
                "{:<18} {:>11} {:>10.3} {:>9.2} {:>12.1} {:>10.2}",
                op_name(o, true),
                wg,
                o.bytes as f64 / 1e6,
                per_cu,
                o.bytes as f64 / busy / 1e3,
                o.bytes as f64 / (gpu.bandwidth_gbs * 1e3)
            );
            if is_matvec(o.op) && per_cu < MIN_WG_PER_CU as f64 {
                match thin.iter_mut().find(|(op, _, _)| *op == o.op) {
                    Some((_, n, least)) => {
                        *n += 1;
                        *least = f64::min(*least, per_cu);
                    }
                    None => thin.push((o.op, 1usize, per_cu)),
                }
            }
        }
        let bytes: u64 = step.ops.iter().map(|o| o.bytes).sum();
        let _ = writeln!(s, "step: {:.2} MB, {:.1} µs at the reference's peak bandwidth", bytes as f64 / 1e6, bytes as f64 / (gpu.bandwidth_gbs * 1e3));
        if thin.is_empty() {
            let _ = writeln!(s, "every mat-vec launches at least {MIN_WG_PER_CU} workgroups per compute unit");
        } else {
            let n: usize = thin.iter().map(|t| t.1).sum();
            let list: Vec<String> = thin.iter().map(|(op, n, least)| format!("{op} x{n} (from {least:.2})")).collect();
            let _ = writeln!(s, "{n} mat-vecs launch fewer than {MIN_WG_PER_CU} workgroups per compute unit: {}", list.join(", "));
        }
        s
    }

    /// The same as one JSON object.
    pub fn json(&self, by_layer: bool, peak: Option<DevicePeak>) -> serde_json::Value {
        serde_json::json!({
            "adapter": self.adapter,
            "gpu_timestamps": self.gpu_timestamps,
            "command_buffers": self.steps.len(),
            "passes": self.passes(),
            "pass_total_ms": self.pass_total_ns().map(|n| n / 1e6),
            "command_buffer_total_ms": self.command_buffer_total_ns() / 1e6,
            "command_buffer_timing": self.command_buffer_timing_source(),
            "peak": peak,
            "ops": self.rows(by_layer, peak),
        })
    }

    /// Chrome trace-event JSON: a GPU track with one event per pass (named by op and layer)
    /// and a CPU track with encode, submit, wait and read-back per command buffer.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let mut events = vec![
            serde_json::json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": format!("quill on {}", self.adapter)}}),
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "GPU passes"}}),
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "CPU"}}),
        ];
        for (i, st) in self.steps.iter().enumerate() {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let mut t = us(st.start);
            for (name, d) in [("encode", st.cpu.encode), ("submit", st.cpu.submit), ("wait", st.cpu.wait), ("read-back", st.cpu.readback)] {
                events.push(serde_json::json!({"name": name, "cat": st.label, "ph": "X", "pid": 1, "tid": 2, "ts": t, "dur": us(d), "args": {"step": i}}));
                t += us(d);
            }
            if let (Some(d), Some(starts)) = (&st.pass_ns, &st.pass_start_ns) {
                // GPU clocks are placed from the submit on; passes keep their own spacing.
                let gpu0 = us(st.start) + us(st.cpu.encode) + us(st.cpu.submit);
                for (j, o) in st.ops.iter().enumerate() {
                    events.push(serde_json::json!({
                        "name": op_name(o, true), "cat": st.label, "ph": "X", "pid": 1, "tid": 1,
                        "ts": gpu0 + starts[j] / 1e3, "dur": d[j] / 1e3,
                        "args": {"step": i, "op": o.op, "layer": o.layer, "flops": o.flops, "bytes": o.bytes},
                    }));
                }
            }
        }
        serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }

    /// An SVG chart: one stacked bar per command buffer (prefill chunks, then decode steps),
    /// each segment an op kind's GPU time; legend and axis in milliseconds.
    pub fn svg(&self) -> String {
        let rows = self.rows(false, None);
        let kinds: Vec<String> = rows.iter().map(|r| r.op.clone()).collect();
        let palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"];
        let color = |k: &str| palette[kinds.iter().position(|x| x == k).unwrap_or(0) % palette.len()];
        let step_ms: Vec<f64> = self.steps.iter().map(|s| s.pass_total_ns().unwrap_or(s.cpu.wait.as_nanos() as f64) / 1e6).collect();
        let max_ms = step_ms.iter().cloned().fold(0.0, f64::max).max(1e-6);
        let (left, top, plot_h) = (90.0, 50.0, 360.0);
        let n = self.steps.len().max(1) as f64;
        let bar_w = (640.0 / n).clamp(2.0, 40.0);
        let plot_w = bar_w * n;
        let width = (left + plot_w + 240.0).max(820.0);
        let height = top + plot_h + 70.0;
        let mut s = String::new();
        let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#);
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let title = format!("GPU time per command buffer by op: {} ({})", xml_escape(&self.adapter), if self.gpu_timestamps { "GPU timestamps" } else { "CPU times, no timestamps" });
        let _ = writeln!(s, r#"<text x="10" y="24" font-size="14">{title}</text>"#);
        for i in 0..=4 {
            let v = max_ms * i as f64 / 4.0;
            let y = top + plot_h - plot_h * i as f64 / 4.0;
            let label = if max_ms >= 1000.0 { format!("{:.2} s", v / 1e3) } else { format!("{v:.2} ms") };
            let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##, left + plot_w, left - 6.0, y + 4.0);
        }
        for (i, st) in self.steps.iter().enumerate() {
            let x = left + i as f64 * bar_w;
            let mut y = top + plot_h;
            match &st.pass_ns {
                Some(p) => {
                    let mut per: BTreeMap<&str, f64> = BTreeMap::new();
                    for (o, ns) in st.ops.iter().zip(p) {
                        *per.entry(o.op).or_default() += ns / 1e6;
                    }
                    for k in &kinds {
                        if let Some(ms) = per.get(k.as_str()) {
                            let h = plot_h * ms / max_ms;
                            y -= h;
                            let _ = writeln!(s, r#"<rect x="{x:.1}" y="{y:.2}" width="{:.1}" height="{h:.2}" fill="{}"><title>{} #{i} {k}: {ms:.3} ms</title></rect>"#, bar_w * 0.85, color(k), st.label);
                        }
                    }
                }
                None => {
                    let h = plot_h * step_ms[i] / max_ms;
                    let _ = writeln!(s, r##"<rect x="{x:.1}" y="{:.2}" width="{:.1}" height="{h:.2}" fill="#888"><title>{} #{i}: {:.3} ms (CPU)</title></rect>"##, y - h, bar_w * 0.85, st.label, step_ms[i]);
                }
            }
        }
        let _ = writeln!(s, r#"<text x="{left}" y="{:.1}">command buffers in order: prefill chunks, then one per decoded token</text>"#, top + plot_h + 30.0);
        let lx = left + plot_w + 20.0;
        for (j, r) in rows.iter().enumerate() {
            let y = top + 16.0 * j as f64;
            let _ = writeln!(s, r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{} {:.1}%</text>"#, y, color(&r.op), lx + 18.0, y + 10.0, xml_escape(&r.op), 100.0 * r.share);
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
