#!/usr/bin/env bash
# Two `quill serve` replicas behind nginx (deploy/nginx.conf), all on 127.0.0.1.
#   scripts/replicas.sh [--model M] [--port P] [-- extra quill serve options]
# nginx listens on P (default 8080), the replicas on P+1 and P+2. State (pid files, logs,
# the nginx config) goes to $QUILL_REPLICAS_DIR (default: a new temporary directory).
# Prints "ready on http://127.0.0.1:P" once both replicas answer /health; stops
# everything on SIGINT/SIGTERM or when a replica exits on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

model=""
port=8080
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "replicas.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
bin="${QUILL_BIN:-target/release/quill}"
[ -x "$bin" ] || { echo "replicas.sh: $bin is missing: cargo build --release" >&2; exit 1; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx_bin" ] || { echo "replicas.sh: nginx is missing: apt-get install nginx (scripts/setup.sh)" >&2; exit 1; }
dir="${QUILL_REPLICAS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/quill-replicas.XXXXXX")}"
mkdir -p "$dir/tmp"

pids=()
stop() {
  trap - EXIT INT TERM
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

model_args=()
[ -n "$model" ] && model_args=(--model "$model")
for i in 1 2; do
  "$bin" serve "${model_args[@]}" --host 127.0.0.1 --port $((port + i)) "$@" >"$dir/replica$i.log" 2>&1 &
  pids+=($!)
  echo $! >"$dir/replica$i.pid"
done

sed -e "s/127.0.0.1:8081/127.0.0.1:$((port + 1))/" -e "s/127.0.0.1:8082/127.0.0.1:$((port + 2))/" \
    -e "s/listen 127.0.0.1:8080/listen 127.0.0.1:$port/" deploy/nginx.conf >"$dir/nginx.conf"
"$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" 2>>"$dir/error.log" &
pids+=($!)

for i in 1 2; do
  for _ in $(seq 600); do
    if curl -fsS "http://127.0.0.1:$((port + i))/health" >/dev/null 2>&1; then break; fi
    kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { echo "replicas.sh: replica $i exited:" >&2; cat "$dir/replica$i.log" >&2; exit 1; }
    sleep 0.2
  done
done
echo "ready on http://127.0.0.1:$port (state in $dir)"
# Run until told to stop (the trap cleans up); a replica killed from outside is left dead,
# so nginx's failover can be watched.
while kill -0 "${pids[2]}" 2>/dev/null; do sleep 0.5; done
