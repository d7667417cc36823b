#!/usr/bin/env bash
# Builds quill's browser page into target/web/ (quill as WebAssembly, wasm-bindgen's JS
# glue, assets/web/) and serves it on http://127.0.0.1:${PORT:-8080}/.
#
#   scripts/web.sh           build, then serve until Ctrl-C
#   scripts/web.sh --build   build only
#
# Beside the page, models/ holds the default model (when scripts/fetch-model.sh fetched it)
# and the tiny test model, listed in models.json for the page's picker. Needs the
# wasm32-unknown-unknown target and wasm-bindgen-cli (scripts/setup-dev.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/web
port="${PORT:-8080}"

nice -n 10 cargo rustc --quiet --lib --release --target wasm32-unknown-unknown --crate-type cdylib
rm -rf "$out"
mkdir -p "$out/models"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" --out-name quill target/wasm32-unknown-unknown/release/quill.wasm
cp assets/web/* "$out/"

models_dir="${QUILL_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/models}"
smollm2="SmolLM2-135M-Instruct.Q4_1.gguf"
ln -s "$PWD/tests/fixtures/llama-tiny" "$out/models/llama-tiny"
list='[{"name": "llama-tiny (test model: 2 layers, random weights)", "url": "models/llama-tiny/",
  "files": ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"]}'
if [ -f "$models_dir/$smollm2" ]; then
  ln -s "$models_dir/$smollm2" "$out/models/$smollm2"
  list='[{"name": "SmolLM2-135M-Instruct (Q4_1 GGUF)", "url": "models/'"$smollm2"'"}, '"${list#[}"
fi
echo "$list]" > "$out/models.json"
echo "built $out (quill.wasm: $(stat -c %s "$out/pkg/quill_bg.wasm") bytes)" >&2

[ "${1:-}" = "--build" ] && exit 0
echo "serving http://127.0.0.1:$port/ (Ctrl-C stops)" >&2
exec python3 -m http.server --bind 127.0.0.1 --directory "$out" "$port"
