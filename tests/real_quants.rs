//! Real tensors as llama.cpp's quantizer wrote them: the first 2-D tensor of each type in Gemma 3
//! 270M Q4_K_M (Q8_0, Q5_0, Q4_K, Q6_K), 67 of its rows, through the GPU's mat-vec, mat-mat and
//! embedding lookup (split into bindings of 32 rows) against the CPU's dequantization, which
//! src/weights/dtype.rs checks bit for bit against gguf-py. Random blocks test every bit
//! pattern; these test the scales and layouts real files have. Skips when the file is absent
//! (it is ~/.cache/quill/models/gemma-3-270m-q4_k_m.gguf, or under $QUILL_MODELS).

use quill::gpu::context::test_context;
use quill::gpu::{Recorder, Tensor, Weight};
use quill::ops::matmul::{linear, reference, Store};
use quill::ops::{compare, embed, test_values};
use quill::weights::dtype::dequantize;
use quill::weights::gguf::Gguf;
use quill::weights::{repack, DType};

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

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
        let t = g.tensor(&info.name).unwrap();
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
