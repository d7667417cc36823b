//! A lost device (driver reset, GPU removed, here: destroyed on purpose) turns into an error
//! from the next GPU call, never a panic or a hang. Runs in its own binary with its own device.

mod common;

use common::*;
use quill::generate::Session;
use quill::gpu::Context;
use quill::sampling::SamplingParams;

#[test]
fn generation_after_device_loss_is_an_error() {
    let ctx = match Context::new_blocking() {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but no adapter: {e}"),
        Err(e) => return eprintln!("SKIPPING: {e}"),
    };
    let model = quill::files::load_model(&ctx, &fixture("llama-tiny"), &mut no_progress).unwrap();
    let mut s = Session::new(&ctx, &model, 64).unwrap();
    let ids = model.tokenizer.encode("Permission is hereby granted").unwrap();
    s.generate(&ids, &SamplingParams::greedy(), 2, true, |_| true).expect("works before the loss");

    ctx.device.destroy();
    let mut s2 = match Session::new(&ctx, &model, 64) {
        Ok(s2) => s2,
        Err(e) => {
            assert!(e.to_string().contains("GPU error"), "{e}");
            return;
        }
    };
    let err = s2.generate(&ids, &SamplingParams::greedy(), 2, true, |_| true).expect_err("a destroyed device cannot generate");
    let msg = err.to_string();
    assert!(msg.contains("GPU error") && msg.contains("lost"), "{msg}");
}
