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
