//! The memory planner against what a session really allocates (its own test binary, so no
//! other test allocates on the shared GPU context meanwhile).

mod common;

use common::*;
use quill::generate::{Batch, Session, DEFAULT_MAX_BATCH};
use quill::gpu::context::test_context;
use quill::plan::{plan_session, plan_slots, SessionShape};

/// The tests here compare the context's allocation counter before and after: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_plan_covers_what_a_session_allocates() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    for ctx_len in [1usize, 100, 256] {
        let plan = plan_session(ctx, &model, Some(ctx_len), DEFAULT_MAX_BATCH).unwrap();
        let before = ctx.allocated_bytes();
        let session = Session::new(ctx, &model, ctx_len).unwrap();
        let allocated = ctx.allocated_bytes() - before;
        let planned = plan.kv_bytes + plan.activation_bytes;
        eprintln!("llama-tiny, {ctx_len} positions: planned {planned} bytes (KV {}), allocated {allocated}", plan.kv_bytes);
        // The KV cache is counted exactly; activations with some room for buffers architectures
        // add, but not more than twice what a session takes.
        assert_eq!(plan.kv_bytes, SessionShape::new(model.config(), DEFAULT_MAX_BATCH).kv_bytes(ctx_len));
        assert!(allocated <= planned, "{ctx_len} positions: a session allocated {allocated} bytes, the plan counted {planned}");
        assert!(planned <= 2 * allocated, "{ctx_len} positions: the plan counted {planned} bytes for {allocated} allocated");
        drop(session);
    }
}

/// With 4 slots (`quill serve --parallel 4`) the plan counts every slot's cache, token ids and
/// adjustment list: still at least what the batch allocates, at most twice.
#[test]
fn the_plan_covers_what_a_batch_of_slots_allocates() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    for (ctx_len, slots) in [(100usize, 4usize), (256, 3)] {
        let plan = plan_slots(ctx, &model, Some(ctx_len), DEFAULT_MAX_BATCH, slots).unwrap();
        let one = plan_session(ctx, &model, Some(ctx_len), DEFAULT_MAX_BATCH).unwrap();
        assert_eq!(plan.kv_bytes, slots as u64 * one.kv_bytes);
        let before = ctx.allocated_bytes();
        let batch = Batch::new(ctx, &model, ctx_len, slots).unwrap();
        let allocated = ctx.allocated_bytes() - before;
        let planned = plan.kv_bytes + plan.activation_bytes;
        eprintln!("llama-tiny, {slots} slots of {ctx_len} positions: planned {planned} bytes (KV {}), allocated {allocated}", plan.kv_bytes);
        assert!(allocated <= planned, "{slots} slots of {ctx_len}: a batch allocated {allocated} bytes, the plan counted {planned}");
        assert!(planned <= 2 * allocated, "{slots} slots of {ctx_len}: the plan counted {planned} bytes for {allocated} allocated");
        drop(batch);
    }
}

/// A safetensors shard whose bytes past `header` are not there: a read beyond it is an error,
/// so whatever passes over it has read the headers only. `len` is the size it claims.
struct HeaderOnly {
    header: Vec<u8>,
    len: u64,
}

impl quill::weights::source::ByteSource for HeaderOnly {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, len: usize) -> quill::Result<std::borrow::Cow<'_, [u8]>> {
        let end = offset + len as u64;
        if end > self.header.len() as u64 {
            return Err(quill::Error::format("header-only shard", format!("{len} bytes at {offset}: tensor data was read")));
        }
        Ok(std::borrow::Cow::Borrowed(&self.header[offset as usize..end as usize]))
    }
}

/// The first bytes of a safetensors file: its 8-byte length and its JSON header.
fn header_of(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    file[..8 + n].to_vec()
}

/// A safetensors header of one F32 tensor of `shape`, with no data behind it.
fn synthetic_header(name: &str, shape: &[u64]) -> HeaderOnly {
    let bytes = shape.iter().product::<u64>() * 4;
    let json = serde_json::json!({ name: { "dtype": "F32", "shape": shape, "data_offsets": [0, bytes] } }).to_string();
    let header = [(json.len() as u64).to_le_bytes().to_vec(), json.into_bytes()].concat();
    HeaderOnly { len: header.len() as u64 + bytes, header }
}

/// llama-tiny's config.json with `shard` as its only safetensors file: the folder's needs from
/// the headers (`hf_needs`), nothing else read.
fn folder_needs(shard: HeaderOnly) -> (quill::models::ModelConfig, u64) {
    use quill::models::load::{hf_needs, HfFiles, LoadOptions};
    use quill::weights::safetensors::SafetensorsSource;
    let config = std::fs::read(fixture("llama-tiny").join("config.json")).unwrap();
    let files = HfFiles { dir: "llama-tiny".into(), config_json: &config, safetensors: Vec::new(), tokenizer_json: None, tokenizer_config_json: None, chat_template: None, generation_config_json: None };
    let src = SafetensorsSource::open(vec![("llama-tiny/model.safetensors".into(), Box::new(shard) as Box<dyn quill::weights::source::ByteSource>)]).unwrap();
    hf_needs(&files, &src, &LoadOptions::default()).unwrap()
}

#[test]
fn a_folder_is_planned_from_its_headers_before_any_upload() {
    use quill::plan::{fit_before_load, Budget};
    let file = std::fs::read(fixture("llama-tiny").join("model.safetensors")).unwrap();
    let header = header_of(&file);
    let (cfg, weights) = folder_needs(HeaderOnly { len: file.len() as u64, header: header.clone() });
    // All of llama-tiny's tensors are f32 and stay f32: the GPU holds the file's data bytes.
    assert_eq!(weights, (file.len() - header.len()) as u64);
    let shape = SessionShape::new(&cfg, DEFAULT_MAX_BATCH);

    // A 1 MiB budget holds the 0.8 MB of weights, not a context of 256 beside them: refused
    // with the bytes 256 positions need and the context that fits, which then plans.
    let mib = Budget { bytes: 1 << 20, source: "test".into() };
    let err = fit_before_load("llama-tiny", &cfg, weights, 256, 1 << 30, 1 << 30, &mib).unwrap_err().to_string();
    let need = shape.kv_bytes(256) + shape.activation_bytes(256);
    assert!(err.starts_with("llama-tiny: does not fit this GPU with a context of 256") && err.contains(&format!("256 positions need {need} bytes")), "{err}");
    // The page's sentence, not the command line's "invalid argument --ctx".
    assert!(!err.contains("invalid argument"), "{err}");
    let fits: usize = err.split("a context of ").nth(2).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no context that fits in: {err}"));
    assert!(fits > 0 && fits < 256, "{err}");
    assert!(shape.kv_bytes(fits) + shape.activation_bytes(fits) <= (1 << 20) - weights, "{err}");
    assert_eq!(fit_before_load("llama-tiny", &cfg, weights, fits, 1 << 30, 1 << 30, &mib).unwrap().ctx_len, fits);

    // A 128 KiB binding holds the logits of 32 positions (4000 bytes each), not of 128.
    let roomy = Budget { bytes: 1 << 30, source: "test".into() };
    let err = fit_before_load("llama-tiny", &cfg, weights, 256, 128 << 10, 1 << 30, &roomy).unwrap_err().to_string();
    assert!(err.contains("above the adapter's limit of 131072 bytes per buffer") && err.contains("a context of 32 positions fits"), "{err}");

    // A header claiming 2.1 GB of weights (an embedding of 128256 x 4096) is refused against a
    // 1 GiB budget with both figures, and no byte of its data is read.
    let (cfg, weights) = folder_needs(synthetic_header("model.embed_tokens.weight", &[128256, 4096]));
    assert_eq!(weights, 128256 * 4096 * 4);
    let gib = Budget { bytes: 1 << 30, source: "test".into() };
    let err = fit_before_load("big", &cfg, weights, 256, 1 << 30, 1 << 30, &gib).unwrap_err().to_string();
    assert!(err.contains(&format!("its weights need {weights} bytes (2101.3 MB)")) && err.contains("budget is 1073.7 MB"), "{err}");
}

#[test]
fn the_weights_planned_before_a_load_are_what_it_uploads() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = test_context() else { return };
    let file = std::fs::read(fixture("llama-tiny").join("model.safetensors")).unwrap();
    let (cfg, weights) = folder_needs(HeaderOnly { len: file.len() as u64, header: header_of(&file) });
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    // `weight_bytes` counts the matrices; the plan also counts the norm vectors (two per layer
    // and the final one, f32), which the GPU holds too.
    let norms = (2 * cfg.n_layers as u64 + 1) * cfg.dim as u64 * 4;
    assert_eq!(weights, model.model.weight_bytes() + norms);
}
