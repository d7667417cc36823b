#!/usr/bin/env bash
# Coverage-guided fuzzing of quill's parsers with AFL++ on stable Rust (cargo-afl), one core,
# at the lowest priority. Usage:
#   scripts/fuzz.sh [TARGET|all] [SECONDS_PER_TARGET]     (default: all, 600)
# Targets (fuzz/fuzz_targets/): gguf, safetensors, tokenizer_json, stream_decoder,
# openai_request, chat_template.
# Needs `cargo install cargo-afl` once (a few minutes: it builds AFL++). Findings stay in
# fuzz/out/<target>/default/{crashes,hangs}; copy each into fuzz/regressions/<target>/ once
# fixed, and tests/fuzz_corpus.rs replays it in every `cargo test`. Prints each target's
# executions, CPU time and edge coverage at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-all}"
seconds="${2:-600}"
targets=(gguf safetensors tokenizer_json stream_decoder openai_request chat_template)
[ "$target" = all ] || targets=("$target")
command -v cargo-afl >/dev/null || { echo "cargo-afl is not installed: cargo install cargo-afl" >&2; exit 1; }
[ -d fuzz/corpus/gguf ] || python3 fuzz/make-seeds.py
(cd fuzz && nice -n 19 cargo afl build --release -j1)
mkdir -p fuzz/out
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
for t in "${targets[@]}"; do
  out="fuzz/out/$t"
  # Resume a campaign where one exists ("-i -"), else start from the seeds.
  input="fuzz/corpus/$t"
  [ -f "$out/default/fuzzer_stats" ] && input=-
  # -m 1024: an input that makes the target map more than 1 GB is a crash (limits before
  # allocation); -t 2000: one that takes over 2 s is a hang.
  # CPU seconds (user + system, fuzzer and target) of each run are added up in $out.cpu.
  TIMEFORMAT='%U %S'
  # bash's `time` misses the target's own processes (the fork server is not reaped by afl-fuzz),
  # so where a cgroup v1 cpuacct hierarchy is writable the run goes in its own group and the
  # group's CPU time (every process in it) is added up in $out.cpuacct too.
  cg=""
  if [ -w /sys/fs/cgroup/cpuacct ] && mkdir -p "/sys/fs/cgroup/cpuacct/quill-fuzz-$t" 2>/dev/null; then
    cg="/sys/fs/cgroup/cpuacct/quill-fuzz-$t"
    echo 0 >"$cg/cpuacct.usage" 2>/dev/null || true
  fi
  { time (
      [ -n "$cg" ] && echo "$BASHPID" >"$cg/cgroup.procs"
      nice -n 19 cargo afl fuzz -i "$input" -o "$out" -m 1024 -t 2000 -V "$seconds" -- "fuzz/target/release/$t" >"$out.log" 2>&1
    ) || true; } 2>>"$out.cpu"
  if [ -n "$cg" ]; then
    awk '{ printf "%.1f\n", $1 / 1e9 }' "$cg/cpuacct.usage" >>"$out.cpuacct"
  fi
done
printf '%-16s %12s %10s %12s %10s %8s %6s\n' target executions cpu_s cgroup_cpu_s coverage crashes hangs
for t in "${targets[@]}"; do
  s="fuzz/out/$t/default/fuzzer_stats"
  [ -f "$s" ] || { echo "$t: no stats (see fuzz/out/$t.log)"; continue; }
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$s"; }
  cpu=$(awk '{ s += $1 + $2 } END { printf "%.0f", s }' "fuzz/out/$t.cpu" 2>/dev/null || echo 0)
  cgcpu=$(awk '{ s += $1 } END { printf "%.0f", s }' "fuzz/out/$t.cpuacct" 2>/dev/null || echo -)
  printf '%-16s %12s %10s %12s %10s %8s %6s\n' "$t" "$(get execs_done)" "$cpu" "${cgcpu:--}" "$(get bitmap_cvg)" "$(get saved_crashes)" "$(get saved_hangs)"
done
