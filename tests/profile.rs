//! The profiler: `quill profile` on SmolLM2 (every op kind timed, pass times consistent with
//! the whole command buffers, a trace with one event per pass, an SVG that parses), the FLOP
//! and byte table against hand-computed values, and no cost when profiling is off.

mod common;

use std::process::Command;

use common::*;
use quill::ops::attention::{attention_cost, attention_cost_with, kv_write_cost, AttnOpts, AttnShape};
use quill::ops::matmul::{self, Store};
use quill::ops::{activation, embed, norm, rope, sample};

#[test]
fn op_costs_match_hand_counts() {
    // linear: t=3 tokens, k=4 in, n=5 out: 2*3*4*5 FLOPs; W (80 bytes as f32) + x 12 + y 15 floats.
    assert_eq!(matmul::cost(3, 4, 5, 80, Store::Write), (120, 80 + 4 * (12 + 15)));
    // Accumulating also reads y: 15 more floats.
    assert_eq!(matmul::cost(3, 4, 5, 80, Store::Accumulate), (120, 80 + 4 * (12 + 30)));
    // Q4_1 weights of k=64, n=5: 5 rows of 2 blocks of 20 bytes, as the GPU holds them.
    assert_eq!(matmul::cost(1, 64, 5, 200, Store::Write), (640, 200 + 4 * (64 + 5)));
    // rms_norm over 2 rows of 3: 4 FLOPs per element; x and out (6 + 6) + weight 3 floats.
    assert_eq!(norm::rms_norm_cost(2, 3), (24, 4 * 15));
    // swiglu over 10: 6 FLOPs each; gate read+write and up read: 3 floats each.
    assert_eq!(activation::swiglu_cost(10), (60, 120));
    // embed 2 tokens of dim 3 from an f32 table (12-byte rows): 2 ids + 2 rows read + 6 floats written.
    assert_eq!(embed::cost(2, 3, 12), (0, 8 + 24 + 24));
    // rope 1 token, 2 heads, dim 4: 8 elements, 3 FLOPs each, read + write.
    assert_eq!(rope::cost(1, 2, 4), (24, 64));
    // attention: 2 tokens at positions 1 and 2 (pos0 = 1) see 2 + 3 = 5 keys; 2 heads of dim 4:
    // 4 FLOPs per key per element: 4 * 5 * 8; q and out 16 floats each; the K and V rows of
    // positions 0..=2 once for both tokens and both query heads of the one KV head: 2 * 3 * 4.
    let s = AttnShape { n_tokens: 2, n_heads: 2, n_kv_heads: 1, head_dim: 4, ctx_len: 8, pos0: 1, slot: 0 };
    assert_eq!(attention_cost(&s), (160, 4 * (32 + 24)));
    // A window of 2: each token sees 2 keys (4 * 4 * 8 FLOPs) and positions 0..=2 are still read.
    let window = AttnOpts { window: Some(2), ..AttnOpts::default() };
    assert_eq!(attention_cost_with(&s, &window), (128, 4 * (32 + 24)));
    // Four query heads on two KV heads at position 9 alone: 10 keys of 2 KV rows of 4, K and V.
    let gqa = AttnShape { n_tokens: 1, n_heads: 4, n_kv_heads: 2, head_dim: 4, ctx_len: 16, pos0: 9, slot: 0 };
    assert_eq!(attention_cost(&gqa), (4 * 10 * 16, 4 * (2 * 16 + 2 * 10 * 8)));
    // kv_write: 2 tokens x 1 kv head x 4: K and V read and written.
    assert_eq!(kv_write_cost(&s), (0, 16 * 8));
    // sample over 7 ids.
    assert_eq!(sample::cost(7), (28, 84));
}

#[test]
fn profiling_off_creates_no_query_sets() {
    let Some(ctx) = quill::gpu::context::test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let before = ctx.query_sets_created();
    let mut s = quill::generate::Session::new(ctx, &model, 64).unwrap();
    s.generate(&[5, 6, 7], &quill::sampling::SamplingParams::greedy(), 3, true, |_| true).unwrap();
    assert!(s.profile().is_none());
    // Other tests of this binary may profile concurrently on the shared context, so compare
    // against a profiled run of this session's own.
    let after_plain = ctx.query_sets_created();
    let mut p = quill::generate::Session::new(ctx, &model, 64).unwrap();
    p.enable_profiling();
    p.generate(&[5, 6, 7], &quill::sampling::SamplingParams::greedy(), 3, true, |_| true).unwrap();
    let prof = p.profile().unwrap();
    assert_eq!(prof.steps.len(), 3, "one prefill + two decode command buffers");
    if ctx.gpu_timestamps() {
        assert!(ctx.query_sets_created() > after_plain);
    }
    assert_eq!(after_plain, before, "an unprofiled generation created query sets");
}

#[test]
fn quill_profile_on_smollm2() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let Some(model) = smollm2_path() else { return };
    let dir = std::env::temp_dir().join(format!("quill-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (trace, svg) = (dir.join("trace.json"), dir.join("profile.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(["profile", "--model", model.to_str().unwrap(), "--prompt", "Once upon a time", "--tokens", "2", "--json"])
        .args(["--trace", trace.to_str().unwrap(), "--svg", svg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json output: {e}"));
    assert_eq!(report["gpu_timestamps"], true, "lavapipe has timestamps: {report}");

    // Every op kind of the forward pass, with a positive time. On SmolLM2's quantized weights
    // Q/K/V and gate/up+SwiGLU are fused passes, and with a 4-token prompt every step takes the
    // mat-vecs, which fold in each norm, and RoPE and the cache write into the Q/K/V store.
    let ops = report["ops"].as_array().unwrap();
    for folded in ["rms_norm", "rope", "kv_write"] {
        assert!(ops.iter().all(|r| r["op"] != folded), "{folded} should be folded into a projection: {report}");
    }
    for kind in ["embed", "qkv_proj", "attention", "o_proj", "gate_up_proj", "down_proj", "lm_head", "sample"] {
        let row = ops.iter().find(|r| r["op"] == kind).unwrap_or_else(|| panic!("no row for {kind}: {report}"));
        assert!(row["total_ms"].as_f64().unwrap() > 0.0, "{kind} has no time: {row}");
        assert!(row["calls"].as_u64().unwrap() > 0);
    }
    // Passes cover 50–100% of the GPU time around the command buffers.
    let passes = report["pass_total_ms"].as_f64().unwrap();
    let whole = report["command_buffer_total_ms"].as_f64().unwrap();
    let cover = passes / whole;
    assert!((0.5..=1.0).contains(&cover), "passes {passes} ms of {whole} ms ({}): {cover:.3}", report["command_buffer_timing"]);

    // The trace is JSON with one GPU event per pass.
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let gpu_events = events.iter().filter(|e| e["ph"] == "X" && e["tid"] == 1).count();
    assert_eq!(gpu_events as u64, report["passes"].as_u64().unwrap());
    assert!(events.iter().any(|e| e["name"] == "qkv_proj L0"), "events are named by op and layer");
    assert!(events.iter().any(|e| e["tid"] == 2 && e["name"] == "wait"), "a CPU track");

    // The SVG parses as XML and has a bar segment per op kind of the first step.
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("SVG is not XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
    assert!(rects > 15, "only {rects} rects in the chart");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quill_profile_times_a_batched_step() {
    let Some(ctx) = quill::gpu::context::test_context() else { return };
    let Some(model) = smollm2_path() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(["profile", "--model", model.to_str().unwrap(), "--prompt", "Once upon a time", "--tokens", "2", "--batch", "8", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json output: {e}"));
    assert_eq!(report["sequences"], 8);
    assert_eq!(report["decode_steps"], 2);
    assert_eq!(report["command_buffers"], 2, "one command buffer per batched step: {report}");
    let ops = report["ops"].as_array().unwrap();
    // 8 sequences: the sampler runs 8 times a step (greedy: 2 kernels each), every mat-vec once.
    let calls = |op: &str| ops.iter().find(|r| r["op"] == op).and_then(|r| r["calls"].as_u64()).unwrap_or_else(|| panic!("no row for {op}: {report}"));
    assert_eq!(calls("lm_head"), 2);
    assert_eq!(calls("sample"), 2 * 8 * 2);
    // Where matvec_rows loads x per lane (subgroups of 8 or more: lavapipe), the norm of 8
    // tokens folds too (SmolLM2: 8 x 576 values, past what a workgroup stages otherwise), and
    // with it RoPE and the cache write: 5 dispatches a layer.
    if ctx.info.device_type == wgpu::DeviceType::Cpu && ctx.subgroups() && ctx.info.subgroup_min_size >= 8 {
        for folded in ["rms_norm", "rope", "kv_write"] {
            assert!(ops.iter().all(|r| r["op"] != folded), "{folded} should be folded into a projection: {report}");
        }
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_quill")).args(["profile", "--model", model.to_str().unwrap(), "--batch", "1"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--batch"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn without_timestamps_the_profile_says_so() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(["profile", "--model", fixture("llama-tiny").to_str().unwrap(), "--prompt", "Permission is", "--tokens", "2"])
        .env("QUILL_PROFILE_CPU", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("no GPU timestamps") && stdout.contains("GPU wait"), "{stdout}");
}

/// `quill profile --shapes`: one decode step's dispatches with their workgroups and bytes per
/// compute unit of a reference GPU; every layer's projections appear with the grids the
/// recorder launched, and an unknown reference GPU names the argument.
#[test]
fn the_shape_report_lists_every_dispatch_of_a_decode_step() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let run = |gpu: &str| {
        Command::new(env!("CARGO_BIN_EXE_quill"))
            .args(["profile", "--model", fixture("llama-tiny").to_str().unwrap(), "--prompt", "Permission is", "--tokens", "2", "--shapes", "--reference-gpu", gpu])
            .output()
            .unwrap()
    };
    let out = run("h200");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("one decode step") && stdout.contains("h200 (132 compute units"), "{stdout}");
    let head = stdout.lines().find(|l| l.starts_with("one decode step")).unwrap();
    let dispatches: usize = head.split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let rows: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("op ")).skip(1).take_while(|l| !l.starts_with("step:")).collect();
    assert_eq!(rows.len(), dispatches, "{stdout}");
    for layer in 0..2 {
        let row = rows.iter().find(|r| r.starts_with(&format!("o_proj L{layer} "))).unwrap_or_else(|| panic!("no o_proj L{layer}: {stdout}"));
        let wg: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(wg >= 1, "{row}");
    }
    // llama-tiny's 64-wide projections are far too small to fill an H200.
    assert!(stdout.contains("launch fewer than 4 workgroups per compute unit"), "{stdout}");
    let bad = run("nonesuch");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("--reference-gpu") && stderr.contains("rtx3090"), "{stderr}");
}
