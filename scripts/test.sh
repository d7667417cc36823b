#!/usr/bin/env bash
# Runs quill's whole test suite in release mode (the CPU references are slow in debug).
# GPU tests run on whatever adapter wgpu finds (lavapipe without a GPU); with CI set, a
# missing adapter or model fails the run instead of skipping. Then the browser tests
# (scripts/test-web.sh), unless arguments pick some cargo tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --release "$@"
if [ $# -eq 0 ]; then
  exec bash scripts/test-web.sh
fi
