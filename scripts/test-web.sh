#!/usr/bin/env bash
# The browser half of the test suite (scripts/test.sh runs it after `cargo test`), in headless
# Chromium through WebGPU (SwiftShader without a GPU):
#   1. the kernel tests and the llama-tiny golden test, compiled to WebAssembly and run by
#      wasm-bindgen-test-runner through chromedriver;
#   2. the page end to end (tests/web/e2e.mjs): the tiny model, then SmolLM2 for a few tokens,
#      each leaving a screenshot in target/web-screenshots/;
#   3. the studio (tests/web/context.test.mjs, then tests/web/studio.mjs) against the in-browser
#      engine and against `quill serve` (target/release/quill, built by cargo test --release).
# scripts/setup-dev.sh installs what it needs (chromium, chromium-driver, node, the wasm32 target,
# wasm-bindgen-cli, playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."

# As with the GPU tests: without the tools, skip and say so, unless CI is set.
for tool in chromium chromedriver wasm-bindgen node; do
  if ! command -v "$tool" >/dev/null; then
    [ -n "${CI:-}" ] && { echo "test-web: CI is set but $tool is missing: run scripts/setup-dev.sh" >&2; exit 1; }
    echo "SKIPPING THE BROWSER TESTS: $tool is missing (scripts/setup-dev.sh installs it)" >&2
    exit 0
  fi
done

export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/tests/web/webdriver.json"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# SwiftShader runs shaders on the CPU: the kernel tests take minutes there, not seconds.
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
cargo test --release --target wasm32-unknown-unknown --no-default-features --lib --test web

bash scripts/web.sh --build
node tests/web/e2e.mjs llama-tiny
node --test tests/web/context.test.mjs
node tests/web/studio.mjs browser
source scripts/env.sh
cargo build --release --quiet --bin quill
node tests/web/studio.mjs server
smollm2="${QUILL_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$smollm2" ] || [ -n "${CI:-}" ]; then
  node tests/web/e2e.mjs smollm2
else
  echo "SKIPPING the SmolLM2 page test: $smollm2 is missing (run scripts/fetch-model.sh)" >&2
fi
