//! Storage types end to end, beyond the kernels' own tests on random blocks (src/ops/matmul.rs):
//! real tensors as llama.cpp's quantizer wrote them, and a model whose weights stay bf16.

mod common;
#[allow(dead_code)] // golden_tiny is for the golden tests
#[path = "common/golden.rs"]
mod golden;

use common::*;
use quill::generate::Session;
use quill::gpu::context::test_context;
use quill::models::load::{LoadOptions, WeightType};
use quill::gpu::{Recorder, Tensor, Weight};
use quill::ops::matmul::{linear, reference, Store};
use quill::ops::{compare, embed, test_values};
use quill::weights::dtype::dequantize;
use quill::weights::gguf::Gguf;
use quill::weights::{repack, DType, TensorSource};

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// The first 2-D tensor of each type in Gemma 3 270M Q4_K_M (Q8_0, Q5_0, Q4_K, Q6_K), 67 of its
/// rows, through the GPU's mat-vec, mat-mat and embedding lookup (split into bindings of 32
/// rows) against the CPU's dequantization, which src/weights/dtype.rs checks bit for bit against
/// gguf-py. Skips when the file is absent (~/.cache/quill/models/gemma-3-270m-q4_k_m.gguf, or
/// under $QUILL_MODELS).
#[test]
fn gemma_tensors_of_each_type_match_their_dequantization() {
    let Some(ctx) = test_context() else { return };
    let path = quill::files::models_dir().join(GEMMA);
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("SKIPPING: {} is missing", path.display());
        return;
    };
    let g = Gguf::parse(GEMMA, &bytes).unwrap();
    let mut seen = Vec::new();
    for info in g.tensors.iter().filter(|t| t.shape.len() == 2) {
        if seen.contains(&info.dtype) {
            continue;
        }
        seen.push(info.dtype);
        let t = g.tensor(&info.name).unwrap().unwrap();
        let (n, k) = (info.shape[0].min(67), info.shape[1]);
        let row_bytes = t.dtype.bytes_for(k).unwrap();
        let data = &t.data[..n * row_bytes];
        let wf = dequantize(t.dtype, data, n * k).unwrap();
        let rows: Vec<&[u8]> = data.chunks(row_bytes).collect();
        let limit = 32 * repack::quant_bytes_per_row(t.dtype, k).max(repack::scale_bytes_per_row(t.dtype, k)) as u64;
        let w = Weight::from_rows(ctx, &info.name, t.dtype, k, &rows, limit).unwrap();
        assert_eq!(w.chunks.len(), 3, "{}: 67 rows in chunks of 32", info.name);
        let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
        for tokens in [1, 3, 12, 40] {
            let x = test_values(tokens * k, 7 + tokens as u64);
            let xt = Tensor::upload_f32(ctx, "x", &[tokens, k], &x).unwrap();
            let yt = Tensor::zeros(ctx, "y", &[tokens, n]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            linear(&mut rec, "test", None, &xt, &w, None, &yt, tokens, Store::Write).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32(&yt.buf, 0, tokens * n).unwrap();
            // f32 accumulation of k products bounded by wmax (x in [-1, 1]), as ops::matmul's tests.
            compare(&got, &reference(&x, &wf, None, None, tokens, k, n), 2e-6 * k as f32 * wmax.max(1.0), 1e-4)
                .unwrap_or_else(|e| panic!("{} ({:?}) t {tokens}: {e}", info.name, t.dtype));
        }
        let ids: Vec<u32> = vec![0, 66, 31, 32, 5];
        let id_buf = Tensor { buf: ctx.upload("ids", &ids).unwrap(), shape: vec![ids.len()] };
        let out = Tensor::zeros(ctx, "out", &[ids.len(), k]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        embed::embed(&mut rec, &w, &id_buf, 0, ids.len(), &out).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&out.buf, 0, ids.len() * k).unwrap();
        // The same f32 products of a scale and a small integer as the CPU's: within an ulp or two.
        compare(&got, &embed::reference(&wf, k, &ids), 1e-7, 1e-6).unwrap_or_else(|e| panic!("{} embedding: {e}", info.name));
        eprintln!("{} ({:?}, {n} of {} rows x {k}): mat-vec, mat-mat and embedding match", info.name, t.dtype, info.shape[0]);
    }
    for want in [DType::Q8_0, DType::Q5_0, DType::Q4_K, DType::Q6_K] {
        assert!(seen.contains(&want), "{GEMMA} has no 2-D {want:?} tensor: {seen:?}");
    }
}

/// f32 to bf16, rounding to nearest even (the test's weights hold no NaN).
fn bf16(x: f32) -> [u8; 2] {
    let b = x.to_bits();
    (((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16).to_le_bytes()
}

/// llama-tiny's safetensors rewritten as BF16: loaded as the file stores them, the weight
/// matrices stay bf16 on the GPU, and the logits at all 34 positions equal those of the same
/// bf16 values widened to f32 at load (`--dtype f32`) within 1e-4 (abs + rel): the weights are
/// the same numbers, only the kernels differ. Against the f32 reference they stay within
/// bf16's rounding (8 bits: measured 2.9e-3 against a largest logit of 0.67).
#[test]
fn bf16_weights_stay_bf16_on_the_gpu() {
    let Some(ctx) = test_context() else { return };
    let dir = std::env::temp_dir().join(format!("quill-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("llama-tiny/{f}")), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(fixture("llama-tiny/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.shape().to_vec(), t.data().chunks_exact(4).flat_map(|c| bf16(f32::from_le_bytes(c.try_into().unwrap()))).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        converted.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();

    let (ids, want) = golden::tiny_reference(&std::fs::read(fixture("llama-tiny/reference_logits.safetensors")).unwrap());
    let logits = |dtype: WeightType, types: &str| {
        let model = quill::files::load_model_with(ctx, &dir, &LoadOptions { dtype, ..Default::default() }, &mut no_progress).unwrap();
        assert!(model.model.weight_types().starts_with(types), "{:?}: {}", dtype, model.model.weight_types());
        let mut s = Session::new(ctx, &model, 64).unwrap();
        s.push(&ids).unwrap();
        s.logits_all().unwrap()
    };
    let native = logits(WeightType::Native, "BF16");
    let widened = logits(WeightType::F32, "F32");
    std::fs::remove_dir_all(&dir).ok();
    golden::check_close(&native, &widened, 1e-4, 1e-4, "llama-tiny as BF16 against the same weights as f32");
    let worst = native.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    let spread = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    eprintln!("llama-tiny as BF16: largest logit difference from the f32 reference {worst:.2e} (largest logit {spread:.2})");
    assert!(worst <= 1e-2 * spread, "llama-tiny as BF16: logits differ by up to {worst} from reference_logits.safetensors");
}
