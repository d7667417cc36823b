#!/usr/bin/env bash
# The browser half of the test suite (scripts/test.sh runs it after `cargo test`), in headless
# Chromium through WebGPU (SwiftShader without a GPU):
#   1. the kernel tests and the llama-tiny golden test, compiled to WebAssembly and run by
#      wasm-bindgen-test-runner through chromedriver;
#   2. the page end to end (tests/web/e2e.mjs): the tiny model, then SmolLM2 for a few tokens,
#      each leaving a screenshot in target/web-screenshots/.
# scripts/setup.sh installs what it needs (chromium, chromium-driver, node, the wasm32 target,
# wasm-bindgen-cli, playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."

export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/tests/web/webdriver.json"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# SwiftShader runs a shader on the CPU: the golden test takes minutes, not seconds.
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
cargo test --release --target wasm32-unknown-unknown --no-default-features --lib --test web

bash scripts/web.sh --build
node tests/web/e2e.mjs llama-tiny
node tests/web/e2e.mjs smollm2
