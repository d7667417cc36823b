#!/usr/bin/env bash
# The 6000-token check on a real model (too slow for CI on lavapipe: about half an hour): Gemma 3
# 270M Q4_K_M prefills a 6000-token prompt and decodes; its last-position logits and greedy tokens
# must equal transformers' on the same weights (tests/fixtures/long-context/reference.json), and its
# sliding-window layers keep only their window. Needs the model: scripts/fetch-model.sh gemma3-270m.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
QUILL_LONG_CONTEXT=1 nice -n 10 cargo test --release --test long_context gemma3_270m_6000_tokens -- --nocapture
