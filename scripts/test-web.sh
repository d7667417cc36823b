#!/usr/bin/env bash
# The browser half of the test suite (scripts/test.sh runs it after `cargo test`), in headless
# Chromium through WebGPU (SwiftShader without a GPU):
#   0. every shader compiled by Chromium's WGSL compiler (tests/web/wgsl.mjs);
#   1. the kernel tests, the llama-tiny golden test and 20 LoRA steps (tests/web_train.rs),
#      compiled to WebAssembly and run by wasm-bindgen-test-runner through chromedriver;
#   2. the page end to end (tests/web/e2e.mjs): the tiny model, then SmolLM2 for a few tokens,
#      each leaving a screenshot in target/web-screenshots/;
#      then the streamed loaders and a lost device (tests/web/e2e-stream.mjs);
#   3. loading at scale (tests/web/e2e-big.mjs) on the synthetic SmolLM2-shaped Q4_0 model: file
#      picker, storage refused and allowed, a reload from storage, WebGPU's default binding
#      limit, a context that does not fit (scripts/test-web-big.sh runs the same on the 1B model,
#      which takes too long on SwiftShader for every run); then SmolLM2 itself from the picker
#      under the default binding limit.
#   4. the studio (tests/web/context.test.mjs, then tests/web/studio.mjs) against the in-browser
#      engine and against `quill serve` (target/release/quill, built by cargo test --release);
#      the page's fine-tune panel on llama-tiny (tests/web/finetune.mjs: 10 LoRA steps, the
#      adapter kept across a reload).
# scripts/setup-dev.sh installs what it needs (chromium, chromium-driver, node, the wasm32 target,
# wasm-bindgen-cli, playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

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
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-2100}"
# Seconds: every shader through Chromium's WGSL compiler first (naga accepts some that Tint refuses).
node tests/web/wgsl.mjs
cargo test --release --target wasm32-unknown-unknown --no-default-features --lib --test web --test web_train

bash scripts/web.sh --build
node tests/web/e2e.mjs llama-tiny
node tests/web/e2e-stream.mjs
node --test tests/web/context.test.mjs
node tests/web/studio.mjs browser
node tests/web/finetune.mjs
cargo build --release --quiet --bin quill
node tests/web/studio.mjs server
smollm2="${QUILL_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$smollm2" ] || [ -n "${CI:-}" ]; then
  node tests/web/e2e.mjs smollm2
else
  echo "SKIPPING the SmolLM2 page test: $smollm2 is missing (run scripts/fetch-model.sh)" >&2
fi
# The synthetic model needs gguf-py (pip install gguf numpy) and the fetched SmolLM2's tokenizer.
small=target/synthetic/llama-smollm2-q4_0.gguf
[ -f "$small" ] || python3 scripts/make-synthetic-gguf.py --shape smollm2 --type q4_0 --out "$small" || true
if [ -f "$small" ]; then
  node tests/web/e2e-big.mjs "$small"
  if [ -f "$smollm2" ]; then node tests/web/e2e-big.mjs "$smollm2" file; fi
elif [ -n "${CI:-}" ]; then
  echo "test-web: CI is set but $small could not be made (pip install gguf numpy; scripts/fetch-model.sh)" >&2
  exit 1
else
  echo "SKIPPING the page's loading test: $small could not be made (pip install gguf numpy; scripts/fetch-model.sh)" >&2
fi
