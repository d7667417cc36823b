#!/usr/bin/env python3
"""quill against llama.cpp (its Vulkan and CPU backends) on the same GGUF, in one run.

Runs `quill bench --json` (wgpu on the default adapter), then llama.cpp's `llama-bench` with its
Vulkan backend on the same Vulkan driver (all layers offloaded) and with its CPU backend, on the
same GGUF, prompt length and token count, and prints prefill and decode tokens/s of each and
quill's ratio to each. Not part of CI.

Build llama.cpp once with scripts/build-llama-cpp.sh (CPU + Vulkan, about 25 minutes on 2
cores) and pass the directory it prints as --llama-bin (or set LLAMA_CPP_BIN).

llama-bench times prefill (`pp`) from an empty context and decode (`tg`) from an empty context
too; `quill bench` decodes after its prompt, so its decode reads a longer KV cache (a small
disadvantage to quill at these lengths). On a CPU-type Vulkan device (lavapipe) llama.cpp only
uses it when told: GGML_VK_VISIBLE_DEVICES=0 (set here).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_model():
    base = os.environ.get("QUILL_MODELS") or os.path.join(os.path.expanduser("~"), ".cache", "quill", "models")
    return os.path.join(base, "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_quill(args, dtype):
    cmd = [args.quill, "bench", "--json", "--dtype", dtype, "--model", args.model,
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["what"] = r.get("adapter", "wgpu")
    return r


def run_llama_bench(args, backend):
    exe = os.path.join(args.llama_bin, "llama-bench")
    cmd = [exe, "-m", args.model, "-p", str(args.prompt_tokens), "-n", str(args.gen_tokens),
           "-r", str(args.reps), "-o", "json", "-t", str(args.threads)]
    env = dict(os.environ)
    if backend == "vulkan":
        cmd += ["-ngl", "99", "-dev", os.environ.get("LLAMA_VK_DEVICE", "Vulkan0")]
        env.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    else:
        cmd += ["-ngl", "0", "-dev", "none"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"llama-bench ({backend}) failed with status {out.returncode}: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    pp = next(r for r in rows if r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_prompt"] == 0)
    # `backends` lists what the build has, not what ran: name the one asked for.
    what = f"llama.cpp {pp.get('build_commit', '?')}"
    if backend == "vulkan":
        what += f" Vulkan on {pp.get('gpu_info', '?')}"
    else:
        what += f" CPU, {pp.get('n_threads', args.threads)} threads"
    return {"prefill_tok_s": pp["avg_ts"], "decode_tok_s": tg["avg_ts"], "what": what}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=default_model())
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3, help="llama-bench repetitions (it reports the mean)")
    p.add_argument("--dtype", action="append", help="quill --dtype to run (repeatable; default native)")
    p.add_argument("--backend", action="append", choices=["vulkan", "cpu"], help="llama.cpp backends (default both)")
    p.add_argument("--quill", default=os.path.join(ROOT, "target", "release", "quill"))
    p.add_argument("--llama-bin", default=os.environ.get("LLAMA_CPP_BIN", ""))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if not os.path.isfile(args.quill):
        sys.exit(f"{args.quill} is missing: build it with `cargo build --release`")
    if not os.path.isfile(os.path.join(args.llama_bin, "llama-bench")):
        sys.exit(f"llama-bench is not in --llama-bin '{args.llama_bin}': build it with scripts/build-llama-cpp.sh")
    runs = [(f"quill --dtype {d}", run_quill(args, d)) for d in (args.dtype or ["native"])]
    bases = [(f"llama.cpp {b}", run_llama_bench(args, b)) for b in (args.backend or ["vulkan", "cpu"])]
    if args.json:
        print(json.dumps({name: r for name, r in runs + bases}))
        return
    print(f"{os.path.basename(args.model)}: prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated")
    print(f"{'':20} {'prefill tok/s':>14} {'decode tok/s':>13}  what")
    for name, r in runs + bases:
        print(f"{name:20} {r['prefill_tok_s']:14.2f} {r['decode_tok_s']:13.2f}  {r['what']}")
    for qname, q in runs:
        for bname, b in bases:
            print(f"{qname} / {bname}: prefill {q['prefill_tok_s'] / b['prefill_tok_s']:.2f}x, "
                  f"decode {q['decode_tok_s'] / b['decode_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
