//! Several sequences in one forward pass (`generate::Batch`): a mixed batch — decode tokens of
//! three slots at different positions and a prefill chunk of a fourth — gives every sequence
//! the logits it gets alone, greedy texts are identical, and a forked slot continues exactly
//! like its parent. On llama-tiny and on mistral-tiny, whose sliding window of 10 runs over a
//! ring cache per slot (the prompts here are longer than the ring, so it wraps).
//!
//! Tolerance: 1e-4 absolute + 1e-4 relative on logits of magnitude ~1-10: the batch runs the
//! matrix-matrix kernels over all its tokens where a sequence alone decodes with the mat-vec,
//! so f32 sums go in another order (differences seen: ~1e-6); the attention of each token is
//! the same kernel over the same keys.

mod common;
#[path = "common/golden.rs"]
#[allow(dead_code)]
mod golden;

use common::*;
use golden::check_close;
use quill::generate::{Batch, Session, Work};
use quill::gpu::context::test_context;
use quill::gpu::Context;
use quill::models::LoadedModel;
use quill::sampling::SamplingParams;

const ABS: f32 = 1e-4;
const REL: f32 = 1e-4;

fn load(ctx: &Context, name: &str) -> LoadedModel {
    let path = fixture(name);
    quill::files::load_model(ctx, &path, &mut no_progress).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Deterministic ids below 1000 (every fixture's vocabulary is larger).
fn ids(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 1000) as u32
        })
        .collect()
}

/// Logits of the last of `seq` run alone in a fresh one-sequence session.
fn alone(ctx: &Context, model: &LoadedModel, ctx_len: usize, seq: &[u32]) -> Vec<f32> {
    let mut s = Session::new(ctx, model, ctx_len).unwrap();
    s.push(seq).unwrap();
    s.logits_last().unwrap()
}

/// Slots 0-2 hold prompts of `lens[0..3]` ids and run to their ends; then one step takes the
/// decode token of each (positions lens[i]) and a prefill chunk of slot 3's `lens[3]` ids.
/// Each row's logits must equal the sequence's alone; then all four decode greedily together
/// for `steps` tokens, and must give the texts each gives alone.
fn mixed_batch_equals_alone(name: &str, ctx_len: usize, lens: [usize; 4], steps: usize) {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, name);
    let prompts: Vec<Vec<u32>> = lens.iter().enumerate().map(|(i, &n)| ids(n, 11 + i as u64)).collect();
    let mut b = Batch::new(ctx, &model, ctx_len, 4).unwrap();
    for (slot, p) in prompts.iter().enumerate().take(3) {
        b.push(slot, &p[..p.len() - 1]).unwrap();
        while b.pending(slot) > 0 {
            b.step(&[Work { slot, sample: None }], b.max_batch()).unwrap();
        }
        b.push(slot, &p[p.len() - 1..]).unwrap();
    }
    b.push(3, &prompts[3]).unwrap();
    let work: Vec<Work> = (0..4).map(|slot| Work { slot, sample: None }).collect();
    b.step(&work, b.max_batch()).unwrap();
    assert_eq!(b.pending(3), 0, "{name}: slot 3's prompt fits one chunk");
    for (slot, p) in prompts.iter().enumerate() {
        let want = alone(ctx, &model, ctx_len, p);
        check_close(&b.logits(slot).unwrap(), &want, ABS, REL, &format!("{name}: slot {slot} (position {}) in the mixed batch vs alone", p.len() - 1));
    }
    // Greedy together vs greedy alone. Each slot's last logits are computed: draw from them.
    let greedy = SamplingParams::greedy();
    let mut together: Vec<Vec<u32>> = vec![Vec::new(); 4];
    for (slot, p) in prompts.iter().enumerate() {
        b.restart(slot, p).unwrap();
    }
    let work: Vec<Work> = (0..4).map(|slot| Work { slot, sample: Some(&greedy) }).collect();
    for _ in 0..steps {
        let got = b.step(&work, b.max_batch()).unwrap();
        for (slot, id) in got.into_iter().enumerate() {
            together[slot].push(id.expect("every slot samples"));
        }
    }
    for (slot, p) in prompts.iter().enumerate() {
        let mut s = Session::new(ctx, &model, ctx_len).unwrap();
        let mut text = Vec::new();
        s.generate(p, &greedy, steps, true, |id| {
            text.push(id);
            true
        })
        .unwrap();
        assert_eq!(together[slot], text, "{name}: slot {slot}'s greedy text in the batch vs alone");
    }
}

#[test]
fn llama_tiny_mixed_batch_equals_each_sequence_alone() {
    mixed_batch_equals_alone("llama-tiny", 64, [5, 17, 9, 12], 8);
}

/// Prompts of 150-170 ids wrap each slot's ring (window 10 + 128 - 1 = 137 rows).
#[test]
fn mistral_tiny_ring_caches_per_slot_in_a_mixed_batch() {
    mixed_batch_equals_alone("mistral-tiny", 200, [150, 163, 171, 40], 6);
}

/// A slot forked after its prompt continues exactly like its parent: the same seeded draws,
/// and the same logits as the parent's at every step; a fork of part of the prompt reuses
/// those rows and runs the rest itself.
fn fork_continues_like_parent(name: &str, ctx_len: usize, prompt_len: usize) {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, name);
    let prompt = ids(prompt_len, 5);
    let s = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.0, repeat_penalty: 1.2, repeat_last_n: 8, seed: 3, ..SamplingParams::greedy() };
    let mut b = Batch::new(ctx, &model, ctx_len, 3).unwrap();
    b.push(0, &prompt).unwrap();
    while b.pending(0) > 1 {
        b.step(&[Work { slot: 0, sample: None }], b.pending(0) - 1).unwrap();
    }
    let first = b.step(&[Work { slot: 0, sample: Some(&s) }], b.max_batch()).unwrap()[0].unwrap();
    b.fork(0, 1, prompt_len + 1).unwrap();
    // Slot 2 keeps only half of the prompt's rows and runs the rest with its own passes.
    b.fork(0, 2, prompt_len / 2).unwrap();
    b.push(2, &prompt[prompt_len / 2..]).unwrap();
    b.push(2, &[first]).unwrap();
    while b.pending(2) > 1 {
        b.step(&[Work { slot: 2, sample: None }], b.pending(2) - 1).unwrap();
    }
    let work: Vec<Work> = (0..3).map(|slot| Work { slot, sample: Some(&s) }).collect();
    for step in 0..6 {
        let got = b.step(&work, b.max_batch()).unwrap();
        let parent = b.logits(0).unwrap();
        check_close(&b.logits(1).unwrap(), &parent, ABS, REL, &format!("{name}: fork's logits at step {step}"));
        check_close(&b.logits(2).unwrap(), &parent, ABS, REL, &format!("{name}: half-prompt fork's logits at step {step}"));
        assert_eq!(got[1], got[0], "{name}: the fork's draw at step {step}");
        // The half fork draws with its own counter (it made no draw at the prompt's end).
        assert!(got[2].is_some());
    }
    assert_eq!(b.ids(1), b.ids(0), "{name}: the fork's ids");
}

#[test]
fn llama_tiny_fork_continues_like_its_parent() {
    fork_continues_like_parent("llama-tiny", 64, 13);
}

#[test]
fn mistral_tiny_fork_of_a_wrapped_ring_continues_like_its_parent() {
    fork_continues_like_parent("mistral-tiny", 200, 150);
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// Runs slot `slot`'s pending ids (no draw) and returns the logits of its last one.
fn run_pending(b: &mut Batch, slot: usize) -> Vec<f32> {
    while b.pending(slot) > 0 {
        b.step(&[Work { slot, sample: None }], b.max_batch()).unwrap();
    }
    b.logits(0).unwrap()
}

/// A branch (the studio's, through the server's prompt cache): a prompt that is a prefix of
/// what a slot holds plus a different token reuses that prefix's rows, in place or forked into
/// another slot, and gets the logits of a fresh run. And a slot that samples after another
/// entry of the step that did not (a prompt chunk not yet done) gets its own id back: the ids
/// come back packed, one per draw, in the order of the work.
#[test]
fn a_branch_inside_a_slots_text_equals_a_fresh_run() {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, "llama-tiny");
    let ctx_len = 64;
    let greedy = SamplingParams::greedy();
    let mut b = Batch::new(ctx, &model, ctx_len, 3).unwrap();
    b.restart(0, &ids(20, 7)).unwrap();
    while b.pending(0) > 1 {
        b.step(&[Work { slot: 0, sample: None }], b.pending(0) - 1).unwrap();
    }
    for _ in 0..6 {
        b.step(&[Work { slot: 0, sample: Some(&greedy) }], 1).unwrap();
    }
    let text = b.ids(0).to_vec();
    let other = |id: u32| (id + 1) % 1000;

    // In place: the first 23 ids (prompt and 3 generated) and another token.
    let mut branch = text[..23].to_vec();
    branch.push(other(text[23]));
    assert_eq!(b.restart(0, &branch).unwrap(), 23, "the branch reuses the prefix it shares");
    check_close(&run_pending(&mut b, 0), &alone(ctx, &model, ctx_len, &branch), ABS, REL, "a branch in the slot's own rows vs a fresh run");

    // Forked into another slot, as the server's `assign` does, then branched there.
    let mut forked = b.ids(0)[..10].to_vec();
    forked.push(other(b.ids(0)[10]));
    b.fork(0, 1, 10).unwrap();
    assert_eq!(b.restart(1, &forked).unwrap(), 10);
    while b.pending(1) > 0 {
        b.step(&[Work { slot: 1, sample: None }], b.max_batch()).unwrap();
    }
    check_close(&b.logits(0).unwrap(), &alone(ctx, &model, ctx_len, &forked), ABS, REL, "a branch of a forked slot vs a fresh run");

    // Slot 2 reads a prompt chunk (no draw yet) before slot 1's decode in the same step.
    b.restart(2, &ids(30, 9)).unwrap();
    b.push(1, &[3]).unwrap();
    let mut seq = forked.clone();
    seq.push(3);
    let work = [Work { slot: 2, sample: Some(&greedy) }, Work { slot: 1, sample: Some(&greedy) }];
    let got = b.step(&work, 4).unwrap();
    assert_eq!(got[0], None, "slot 2 is still reading its prompt");
    assert_eq!(got[1], Some(argmax(&alone(ctx, &model, ctx_len, &seq))), "slot 1's draw after an entry without one");
}

/// Bad slots and batches are errors that say what is wrong, never a panic.
#[test]
fn bad_slots_are_errors() {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, "llama-tiny");
    let mut b = Batch::new(ctx, &model, 32, 2).unwrap();
    assert!(b.push(2, &[1]).unwrap_err().to_string().contains("slot"));
    assert!(b.step(&[Work { slot: 0, sample: None }], 8).unwrap_err().to_string().contains("no token to run"));
    b.push(0, &[1, 2]).unwrap();
    b.push(1, &[3]).unwrap();
    let twice = [Work { slot: 0, sample: None }, Work { slot: 0, sample: None }];
    assert!(b.step(&twice, 8).unwrap_err().to_string().contains("once each"));
    assert!(b.fork(0, 0, 1).unwrap_err().to_string().contains("fork"));
    assert!(b.fork(0, 1, 5).unwrap_err().to_string().contains("holds 2"));
    assert!(Batch::new(ctx, &model, 32, 0).is_err());
}

/// Prompts of `lens` ids in slots 0.. (prefilled, first token drawn), then `tokens` more
/// seeded draws per slot: one `step` per token, or `decode_steps` of `k` per submit. Returns
/// each slot's ids.
fn decode(ctx: &Context, model: &LoadedModel, lens: &[usize], s: &[SamplingParams], tokens: usize, k: Option<usize>) -> Vec<Vec<u32>> {
    let mut b = Batch::new(ctx, model, 64, lens.len()).unwrap();
    for (slot, &n) in lens.iter().enumerate() {
        b.push(slot, &ids(n, 31 + slot as u64)).unwrap();
        b.step(&[Work { slot, sample: Some(&s[slot]) }], b.max_batch()).unwrap();
    }
    let work: Vec<Work> = (0..lens.len()).map(|slot| Work { slot, sample: Some(&s[slot]) }).collect();
    let mut done = 0;
    while done < tokens {
        match k {
            None => {
                b.step(&work, 1).unwrap();
                done += 1;
            }
            Some(k) => done += b.decode_steps(&work, k.min(tokens - done)).unwrap()[0].len(),
        }
    }
    (0..lens.len()).map(|slot| b.ids(slot).to_vec()).collect()
}

/// Several decode steps per submit (`Batch::decode_steps`, the server's decode-only steps)
/// draw exactly what one step per submit draws: slots at different positions, each with its
/// own seed, temperature and repetition penalty over the ids the GPU drew in the same submit.
#[test]
fn decode_steps_in_one_submit_equal_one_step_each() {
    let Some(ctx) = test_context() else { return };
    for name in ["llama-tiny", "mistral-tiny"] {
        let model = load(ctx, name);
        let s: Vec<SamplingParams> = (0..3).map(|i| SamplingParams { temperature: 0.8 + 0.1 * i as f32, top_k: 40, repeat_penalty: 1.3, repeat_last_n: 6, seed: 7 + i, ..SamplingParams::greedy() }).collect();
        let lens = [5, 12, 9];
        let one = decode(ctx, &model, &lens, &s, 11, None);
        let many = decode(ctx, &model, &lens, &s, 11, Some(4));
        assert_eq!(many, one, "{name}: 4 decode steps per submit vs 1");
        assert!(one.iter().zip(lens).all(|(ids, n)| ids.len() == n + 12), "{name}: {one:?}");
    }
}

/// `Batch::token_probs` of a slot in a batched step reads that slot's logits row and gives the
/// distribution its draw chose from, after the chain (temperature 0.7, top-k 40): equal to the
/// CPU reference `sampling::processed_probs` of that row within 1e-5 (probabilities).
#[test]
fn token_probs_of_a_batched_slot_are_those_of_the_processed_distribution() {
    let Some(ctx) = test_context() else { return };
    let model = load(ctx, "llama-tiny");
    let s = SamplingParams { temperature: 0.7, top_k: 40, seed: 9, ..SamplingParams::greedy() };
    let mut b = Batch::new(ctx, &model, 64, 2).unwrap();
    let prompts = [ids(7, 1), ids(10, 2)];
    for (slot, p) in prompts.iter().enumerate() {
        b.push(slot, p).unwrap();
    }
    let work = [Work { slot: 0, sample: Some(&s) }, Work { slot: 1, sample: Some(&s) }];
    b.step(&work, b.max_batch()).unwrap();
    let logits = b.logits(1).unwrap();
    let got = b.token_probs(1, 1, &s, 5).unwrap();
    let want = quill::sampling::processed_probs(&logits, &prompts[1], &s, 0, 0.0);
    assert_eq!(got.id, b.ids(1)[10]);
    assert!((got.logprob.exp() as f64 - want[got.id as usize]).abs() < 1e-5, "{} vs {}", got.logprob.exp(), want[got.id as usize]);
    let mut sorted: Vec<f64> = want.iter().copied().filter(|&p| p > 0.0).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!((sorted.len(), got.top.len()), (40, 5));
    for ((id, lp), w) in got.top.iter().zip(&sorted) {
        assert!((lp.exp() as f64 - w).abs() < 1e-5 && (want[*id as usize] - w).abs() < 1e-5, "id {id}: {} vs {w}", lp.exp());
    }
}

/// Longrope (phi3-longrope's GGUF: original context 16) in a mixed batch picks each slot's
/// factors by its own sequence's length, as transformers does per sequence: slot 0's decode
/// token at position 9 and slot 2's prefill chunk of 8 stay on the short factors while slot 1's
/// decode token at position 19 takes the long ones; each row equals its sequence alone.
#[test]
fn longrope_picks_each_slots_factors_in_a_mixed_batch() {
    let Some(ctx) = test_context() else { return };
    let model = quill::files::load_model(ctx, &fixture("phi3-longrope/model-f32.gguf"), &mut no_progress).unwrap();
    let prompts = [ids(10, 41), ids(20, 42), ids(8, 43)];
    let mut b = Batch::new(ctx, &model, 64, 3).unwrap();
    for (slot, p) in prompts.iter().enumerate() {
        b.push(slot, p).unwrap();
        if slot < 2 {
            b.step(&[Work { slot, sample: None }], p.len() - 1).unwrap();
        }
    }
    let work: Vec<Work> = (0..3).map(|slot| Work { slot, sample: None }).collect();
    b.step(&work, b.max_batch()).unwrap();
    for (row, p) in prompts.iter().enumerate() {
        check_close(&b.logits(row).unwrap(), &alone(ctx, &model, 64, p), ABS, REL, &format!("phi3-longrope: slot {row} ({} positions) batched vs alone", p.len()));
    }
}

/// A slot's K and V caches of layer `layer` (n_slots = 1): (n_kv_heads, ctx_len, head_dim).
fn caches(ctx: &Context, b: &Batch, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let st = &b.state;
    let n = st.k_cache[layer].numel();
    (ctx.read_f32(&st.k_cache[layer].buf, 0, n).unwrap(), ctx.read_f32(&st.v_cache[layer].buf, 0, n).unwrap())
}

/// Runs every pending id of slot 0 but the last.
fn prefill(b: &mut Batch) {
    while b.pending(0) > 1 {
        let chunk = (b.pending(0) - 1).min(b.max_batch());
        b.step(&[Work { slot: 0, sample: None }], chunk).unwrap();
    }
}

/// A context shift (`Batch::restart_shifted`): a prompt that keeps the first `keep` ids of what
/// the slot ran, drops `drop` of them, then goes on with the rest and new ids. The kept run's
/// rows move down: every layer's V rows exactly, its K rows turned back by `drop` positions
/// (CPU reference: `rope::reference_shift`), rows before `keep` untouched; layer 0's keys, which
/// depend only on each id and its position, equal those of a fresh run of the new prompt (the
/// deeper layers' rows were computed with the dropped ids before them: the shift's
/// approximation). Then generation goes on from the shifted cache. On llama-tiny from its folder
/// (rotate-half pairs) and from its GGUF (adjacent pairs), with an f32 and an f16 cache.
#[test]
fn a_context_shift_moves_the_kept_rows_and_turns_their_keys() {
    use quill::ops::rope::{reference_shift, RopeFreqs, RopeScaling};
    let Some(ctx) = test_context() else { return };
    let ctx_len = 64;
    for name in ["llama-tiny", "llama-tiny/model-f32.gguf"] {
        for f16 in [false, true] {
            let format = if f16 { quill::ops::attention::KvFormat::F16 } else { quill::ops::attention::KvFormat::F32 };
            let opts = quill::models::load::LoadOptions { kv_cache: format, ..Default::default() };
            let model = quill::files::load_model_with(ctx, &fixture(name), &opts, &mut no_progress).unwrap();
            let c = model.config().clone();
            let old = ids(50, 21);
            let (keep, drop) = (3usize, 11usize);
            let mut b = Batch::new(ctx, &model, ctx_len, 1).unwrap();
            b.restart(0, &old).unwrap();
            prefill(&mut b);
            let ran = old.len() - 1;
            let before: Vec<_> = (0..c.n_layers).map(|l| caches(ctx, &b, l)).collect();
            let mut new = old[..keep].to_vec();
            new.extend_from_slice(&old[keep + drop..]);
            new.extend(ids(5, 22));
            let (reused, moved) = b.restart_shifted(0, &new).unwrap();
            let count = ran - (keep + drop);
            assert_eq!((reused, moved), (keep + count, count), "{name} f16 {f16}: the run after the dropped ids is reused");
            let r = c.attention(0).rope.expect("llama-tiny has RoPE");
            let inv = RopeFreqs { theta: r.theta, rot_dim: r.n_rot, scaling: RopeScaling::None }.inv_freq(1).unwrap();
            let (hd, heads) = (c.head_dim, c.n_kv_heads);
            let unpack = |v: &[f32]| -> Vec<f32> {
                if !f16 {
                    return v.to_vec();
                }
                v.iter().flat_map(|w| { let w = w.to_bits(); [quill::weights::dtype::f16_to_f32(w as u16), quill::weights::dtype::f16_to_f32((w >> 16) as u16)] }).collect()
            };
            for (layer, (k0, v0)) in before.iter().enumerate() {
                let (k1, v1) = caches(ctx, &b, layer);
                let (k0, v0, k1, v1) = (unpack(k0), unpack(v0), unpack(&k1), unpack(&v1));
                for h in 0..heads {
                    let row = |r: usize| (h * ctx_len + r) * hd;
                    let what = format!("{name} f16 {f16} layer {layer} head {h}");
                    assert_eq!(&k1[row(0)..row(keep)], &k0[row(0)..row(keep)], "{what}: rows before the shift moved");
                    assert_eq!(&v1[row(keep)..row(keep + count)], &v0[row(keep + drop)..row(keep + drop + count)], "{what}: V rows");
                    let want = reference_shift(&k0[row(keep + drop)..row(keep + drop + count)], hd, drop, &inv, r.style);
                    let want: Vec<f32> = if f16 { want.iter().map(|&x| quill::weights::dtype::f16_to_f32(quill::weights::dtype::f32_to_f16(x))).collect() } else { want };
                    // Turning back by `drop` positions: f32 rounding and, in f16, one ulp of the
                    // stored value (2^-10 relative).
                    check_close(&k1[row(keep)..row(keep + count)], &want, 1e-5, if f16 { 2e-3 } else { 1e-5 }, &format!("{what}: K rows turned back by {drop}"));
                }
            }
            // Layer 0 against a fresh run of the new prompt.
            let mut fresh = Batch::new(ctx, &model, ctx_len, 1).unwrap();
            fresh.restart(0, &new).unwrap();
            prefill(&mut fresh);
            let (kf, _) = caches(ctx, &fresh, 0);
            let (ks, _) = caches(ctx, &b, 0);
            let (kf, ks) = (unpack(&kf), unpack(&ks));
            let big = kf.iter().fold(0f32, |m, x| m.max(x.abs()));
            for h in 0..heads {
                let row = |r: usize| (h * ctx_len + r) * hd;
                // RoPE at position p + drop, then turned back by drop, against RoPE at p: the f32
                // angles round differently (~1e-7 rad at these positions). In f16 the key was
                // rounded when written and again when turned, and a turn mixes each value with
                // its partner, so the error is two f16 roundings (2^-11 each) of the largest key.
                let abs = if f16 { 2.0 * big / 2048.0 } else { 1e-5 };
                check_close(&ks[row(0)..row(keep + count)], &kf[row(0)..row(keep + count)], abs, 1e-4, &format!("{name} f16 {f16}: layer 0 keys after the shift vs a fresh run, head {h}"));
            }
            // Generation goes on from the shifted cache: the new ids run, greedy draws come.
            prefill(&mut b);
            let greedy = SamplingParams::greedy();
            for _ in 0..3 {
                let id = b.step(&[Work { slot: 0, sample: Some(&greedy) }], 1).unwrap()[0].expect("a draw");
                assert!((id as usize) < c.vocab);
            }
            assert!(b.logits(0).unwrap().iter().all(|x| x.is_finite()), "{name} f16 {f16}: logits after the shift");
        }
    }
}

/// Where the keys cannot move, `restart_shifted` rereads as `restart` does: a sliding-window
/// ring (mistral-tiny) does not hold the whole context; and a run shorter than MIN_SHIFT is
/// read again.
#[test]
fn no_context_shift_where_keys_cannot_move_or_the_run_is_short() {
    let Some(ctx) = test_context() else { return };
    // mistral-tiny's window of 10 in a context of 200 is a ring shorter than the context (in
    // a context of 64 the ring would hold all of it, and the keys could move).
    let cases: [(&str, usize, usize, usize); 2] = [("mistral-tiny", 200, 40, 3), ("llama-tiny", 64, quill::generate::MIN_SHIFT + 4, 5)];
    for (name, ctx_len, len, drop) in cases {
        let model = load(ctx, name);
        let old = ids(len, 23);
        let mut b = Batch::new(ctx, &model, ctx_len, 1).unwrap();
        assert_eq!(b.state.cache_len.iter().any(|&l| l < ctx_len), name == "mistral-tiny", "{name}: which caches are rings");
        b.restart(0, &old).unwrap();
        prefill(&mut b);
        let mut new = old[..2].to_vec();
        new.extend_from_slice(&old[2 + drop..]);
        let (reused, moved) = b.restart_shifted(0, &new).unwrap();
        assert!(moved == 0 && reused <= 2, "{name}: {len} ids, {drop} dropped: {reused} reused, {moved} moved");
    }
}
