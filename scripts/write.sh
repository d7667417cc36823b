#!/usr/bin/env bash
# Builds quill in release mode and runs `quill write` with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
exec target/release/quill write "$@"
