#!/usr/bin/env bash
# quill's page with a model at a real size, in headless Chromium (tests/web/e2e-big.mjs): the
# synthetic 1B Llama in Q4_0 (663 MB, random weights, SmolLM2's tokenizer) from the file
# picker and from a URL, with storage refused and allowed, after a reload from storage, with
# WebGPU's default binding limit, and a context that does not fit. On SwiftShader (2 CPU
# cores) this takes tens of minutes, so scripts/test-web.sh runs the same steps on the small
# synthetic SmolLM2-shaped model instead; run this once by hand. Prints each load's time and
# peak WebAssembly memory.
#
#   scripts/test-web-big.sh [1b|3b|smollm2] [steps]     (default: 1b, every step)
set -euo pipefail
cd "$(dirname "$0")/.."
shape="${1:-1b}"
model="target/synthetic/llama-$shape-q4_0.gguf"
[ -f "$model" ] || python3 scripts/make-synthetic-gguf.py --shape "$shape" --type q4_0 --out "$model"
bash scripts/web.sh --build
time node tests/web/e2e-big.mjs "$model" "${2:-refuse,file,stored,nocache,url}"
