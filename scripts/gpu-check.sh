#!/usr/bin/env bash
# One prepared check for a machine with a real GPU (and, as its own smoke test, lavapipe):
# the adapter, its measured peak, quill's prefill/decode speed on SmolLM2 and on a synthetic
# 1B Q4_0 Llama, a per-pass profile, and llama.cpp's Vulkan backend on the same files where a
# build of it is at hand ($LLAMA_BENCH, or llama-bench on PATH). Ends with one summary table.
#
#   scripts/gpu-check.sh                 # everything, aiming at under 5 minutes on a GPU
#   QUICK=1 scripts/gpu-check.sh         # short runs (the smoke test on lavapipe)
#
# Writes its logs and JSON to ${OUT:-target/gpu-check}/. Needs the SmolLM2 model
# (scripts/fetch-model.sh) and, for the 1B model, python3 with gguf and numpy.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
quill=target/release/quill
models="${QUILL_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/models}"
smollm2="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
synthetic="${SYNTHETIC_1B:-$models/synthetic-llama-1b-q4_0.gguf}"
if [ -n "${QUICK:-}" ]; then pp=16; tg=8; else pp=512; tg=128; fi

step() { echo "== $*" >&2; }
[ -x "$quill" ] || { step "building quill"; cargo build --release --quiet || exit 1; }
[ -f "$smollm2" ] || bash scripts/fetch-model.sh || exit 1

step "quill info"
"$quill" info --model "$smollm2" >"$out/info.txt" 2>&1
sed -n '1,6p' "$out/info.txt" >&2

step "bench-device"
"$quill" bench-device --json >"$out/bench-device.json" 2>"$out/bench-device.log"

if [ ! -f "$synthetic" ] && [ -z "${QUICK:-}" ]; then
  step "writing the synthetic 1B Q4_0 model"
  python3 scripts/make-synthetic-gguf.py --shape 1b --type q4_0 --out "$synthetic" >&2 || synthetic=""
fi
[ -f "$synthetic" ] || synthetic=""

bench() { # name model
  step "quill bench $1 (prompt $pp, generate $tg)"
  "$quill" bench --model "$2" --prompt-tokens "$pp" --gen-tokens "$tg" --json >"$out/bench-$1.json" 2>"$out/bench-$1.log" ||
    echo "   failed: see $out/bench-$1.log" >&2
}
bench smollm2 "$smollm2"
[ -n "$synthetic" ] && bench synthetic-1b "$synthetic"

step "quill profile smollm2"
"$quill" profile --model "$smollm2" --tokens 8 >"$out/profile-smollm2.txt" 2>"$out/profile-smollm2.log" ||
  echo "   failed: see $out/profile-smollm2.log" >&2

llama_bench="${LLAMA_BENCH:-$(command -v llama-bench || true)}"
if [ -n "$llama_bench" ]; then
  for m in smollm2 synthetic-1b; do
    f="$smollm2"; [ "$m" = synthetic-1b ] && f="$synthetic"
    [ -n "$f" ] || continue
    step "llama-bench $m (Vulkan)"
    GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" "$llama_bench" -m "$f" -p "$pp" -n "$tg" -ngl 99 -o json \
      >"$out/llama-bench-$m.json" 2>"$out/llama-bench-$m.log" || echo "   failed: see $out/llama-bench-$m.log" >&2
  done
else
  step "llama-bench not found (set LLAMA_BENCH): no llama.cpp comparison"
fi

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception:
        return None
peak = load("bench-device.json") or {}
print(f"\n{peak.get('adapter', '?')}: {peak.get('bandwidth_gbs', '?')} GB/s read, {peak.get('gflops', '?')} GFLOP/s (quill bench-device)")
print(f"{'model':<14} {'engine':<22} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode GB/s':>12} {'% of peak':>10}")
for m in ("smollm2", "synthetic-1b"):
    q = load(f"bench-{m}.json")
    if q:
        frac = q.get("decode_fraction_of_peak")
        print(f"{m:<14} {'quill':<22} {q['prefill_tok_s']:>14.1f} {q['decode_tok_s']:>13.1f} {q.get('decode_weight_gbs', 0):>12.2f} {(frac or 0) * 100:>9.1f}%")
    l = load(f"llama-bench-{m}.json")
    if l:
        pp = next((r["avg_ts"] for r in l if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0), None)
        tg = next((r["avg_ts"] for r in l if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0), None)
        print(f"{m:<14} {'llama.cpp ' + str(l[0].get('backends', '')):<22} {pp or 0:>14.1f} {tg or 0:>13.1f}")
        if q and pp and tg:
            print(f"{m:<14} {'ratio quill/llama.cpp':<22} {q['prefill_tok_s'] / pp:>14.2f} {q['decode_tok_s'] / tg:>13.2f}")
PY
echo "logs and JSON in $out/" >&2
