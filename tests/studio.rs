//! What the studio page needs from the library beyond generation: a session parked between
//! two calls (the browser's `Quill` cannot hold a borrowing `Session`) keeps its KV cache, so
//! a branch from a token rereads only what changed.

mod common;

use common::*;
use quill::generate::Session;
use quill::sampling::SamplingParams;

#[test]
fn a_parked_session_resumes_with_its_cache_and_matches_a_fresh_one() {
    let Some(ctx) = quill::gpu::context::test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let prompt = ids(&json("llama-tiny/reference.json")["input_ids"]);
    let s = SamplingParams { temperature: 1.0, seed: 5, ..Default::default() };
    let mut first = Session::new(ctx, &model, 64).unwrap();
    first.push(&prompt[..17]).unwrap();
    let drawn: Vec<u32> = (0..4).map(|_| first.next_token(&s).unwrap()).collect();
    let parked = first.park();

    // A branch: the first 17 ids and 2 of the drawn tokens, then the rest of the prompt.
    let mut branch = prompt[..17].to_vec();
    branch.extend_from_slice(&drawn[..2]);
    branch.extend_from_slice(&prompt[17..]);
    let mut resumed = Session::resume(ctx, &model, parked);
    assert_eq!(resumed.ids().len(), 17 + 4, "the parked sequence comes back");
    assert_eq!(resumed.restart(&branch).unwrap(), 19, "the shared prefix is reused from the cache");
    let mut fresh = Session::new(ctx, &model, 64).unwrap();
    fresh.push(&branch).unwrap();
    let (a, b) = (resumed.logits_last().unwrap(), fresh.logits_last().unwrap());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1e-4 + 1e-4 * y.abs())).fold(0f32, f32::max);
    assert!(a.len() == b.len() && worst <= 1.0, "resumed logits differ from a fresh session's (worst error {worst} tolerances, atol 1e-4 + rtol 1e-4)");
    // Both ran every id: start the branch again (each reruns only its last id), then draw.
    assert_eq!(resumed.restart(&branch).unwrap(), branch.len() - 1);
    assert_eq!(fresh.restart(&branch).unwrap(), branch.len() - 1);
    let draws = |sess: &mut Session| (0..5).map(|_| sess.next_token(&s).unwrap()).collect::<Vec<_>>();
    assert_eq!(draws(&mut resumed), draws(&mut fresh), "the same seed draws the same tokens");
}
