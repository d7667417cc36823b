#!/usr/bin/env python3
"""Load benchmark for `quill serve` (not a test): starts a server on 127.0.0.1, measures one
streaming client alone, then C concurrent streaming clients (each sends R requests), and
prints aggregate decode tok/s, time to first token p50/p95, and whether /metrics counts
match what the clients received. Standard library only.

  scripts/serve-bench.py [--model M] [--parallel 4] [--clients 16] [--requests 2] [--tokens 32]
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--model", help="model for quill serve (default: quill's default model)")
ap.add_argument("--bin", default=os.environ.get("QUILL_BIN", "target/release/quill"))
ap.add_argument("--parallel", type=int, default=4)
ap.add_argument("--clients", type=int, default=16)
ap.add_argument("--requests", type=int, default=2, help="requests per client")
ap.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
ap.add_argument("--ctx", type=int, default=256)
ap.add_argument("--json", action="store_true", help="print one JSON object")
args = ap.parse_args()

cmd = [args.bin, "serve", "--port", "0", "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--max-queue", str(args.clients * 2)]
if args.model:
    cmd += ["--model", args.model]
server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
host, port = None, None
for line in server.stderr:
    m = re.match(r"listening on http://([\d.]+):(\d+)", line)
    if m:
        host, port = m.group(1), int(m.group(2))
        break
if port is None:
    sys.exit("quill serve did not start")
threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()


def request(method, path, body=None):
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read().decode()


while True:
    try:
        if request("GET", "/health")[0] == 200:
            break
    except OSError:
        pass
    time.sleep(0.2)

PROMPT = "Once upon a time, in a lighthouse at the edge of the world,"


def stream_one(results):
    """One streaming request; appends (ttft, seconds, completion tokens, t_first, t_end)."""
    body = {"prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0.8, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    c = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.time()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        results.append(("error", r.status, r.read().decode()))
        return
    first, tokens = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
            first = time.time()
    end = time.time()
    results.append(("ok", (first or end) - t0, end - t0, tokens, first or end, end))


def run(clients, per_client):
    results = []
    def client():
        for _ in range(per_client):
            stream_one(results)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.time() - t0


def metric(text, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))


def decode_rate(results, wall):
    ok = [r for r in results if r[0] == "ok"]
    # Tokens after each stream's first, over the time from the first token anywhere to the end.
    toks = sum(r[3] - 1 for r in ok)
    span = max(r[5] for r in ok) - min(r[4] for r in ok)
    return toks / max(span, 1e-9), ok


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


run(1, 1)  # warm-up: shaders compiled, caches touched
before = request("GET", "/metrics")[1]
alone, wall1 = run(1, args.requests)
rate1, _ = decode_rate(alone, wall1)
loaded, wall = run(args.clients, args.requests)
rate, ok = decode_rate(loaded, wall)
after = request("GET", "/metrics")[1]
errors = [r for r in loaded if r[0] != "ok"]
ttft = [r[1] for r in ok]
received = sum(r[3] for r in alone + ok)
counted = metric(after, "quill_generated_tokens_total") - metric(before, "quill_generated_tokens_total")
req_name = 'quill_requests_total{route="/v1/completions",status="200"}'
reqs = metric(after, req_name) - metric(before, req_name)
out = {
    "parallel": args.parallel, "clients": args.clients, "requests": len(loaded), "errors": len(errors),
    "decode_tok_s_alone": round(rate1, 2), "decode_tok_s_loaded": round(rate, 2), "speedup": round(rate / max(rate1, 1e-9), 2),
    "ttft_p50_s": round(pct(ttft, 50), 3) if ttft else None, "ttft_p95_s": round(pct(ttft, 95), 3) if ttft else None,
    "tokens_received": received, "tokens_in_metrics": int(counted), "requests_in_metrics": int(reqs),
    "metrics_match": int(counted) == received and int(reqs) == len(alone) + len(ok),
}
server.terminate()
server.wait(timeout=60)
if args.json:
    print(json.dumps(out))
else:
    for k, v in out.items():
        print(f"{k:>20}: {v}")
sys.exit(0 if not errors and out["metrics_match"] else 1)
