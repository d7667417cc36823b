#!/usr/bin/env python3
"""quill against llama.cpp on the same GGUF, prompt length and token count, in one run.

Runs `quill bench --json` (GPU, through wgpu) and llama.cpp through its Python binding
`llama_cpp` (CPU build), both greedy with the end of text ignored, and prints prefill and
decode tokens/s for each and quill's ratio to llama.cpp. Not part of CI.

llama.cpp's binding: `pip install llama-cpp-python`. On machines whose CPU lacks AMX, the
default native build dies with SIGILL; build it with
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python
(about 17 minutes on 2 cores). Run this script with the Python that has it, e.g.
  /path/to/venv/bin/python scripts/compare-llama-cpp.py --dtype native --dtype f32
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The same text `quill bench` repeats to make its prompt (src/cli.rs, BENCH_TEXT).
BENCH_TEXT = ("The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his father "
              "had taught him, and lit the great lamp so that the fishing boats could find their way home through the fog. ")


def default_model():
    base = os.environ.get("QUILL_MODELS") or os.path.join(os.path.expanduser("~"), ".cache", "quill", "models")
    return os.path.join(base, "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_quill(args, dtype):
    cmd = [args.quill, "bench", "--json", "--dtype", dtype, "--model", args.model,
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_llama_cpp(args):
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        sys.exit(f"llama_cpp is not importable from {sys.executable} ({e}); see this script's docstring")
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.prompt_tokens + args.gen_tokens + 8,
                          n_threads=args.threads, n_batch=512, verbose=False)
    load_s = time.perf_counter() - start
    n_vocab = llm.n_vocab()

    def greedy():
        # The last evaluated token's logits (the binding keeps them in `scores` only with
        # logits_all, which would copy every position's).
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))

    piece = llm.tokenize(BENCH_TEXT.encode(), add_bos=False)
    prompt = [piece[i % len(piece)] for i in range(args.prompt_tokens)]
    # Warm-up, as quill bench does.
    llm.reset()
    llm.eval(prompt[:8])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = greedy()
    t1 = time.perf_counter()
    text = [tok]
    for _ in range(args.gen_tokens - 1):
        llm.eval([tok])
        tok = greedy()
        text.append(tok)
    t2 = time.perf_counter()
    return {
        "adapter": f"llama.cpp {getattr(llama_cpp, '__version__', '?')} CPU, {args.threads} threads",
        "load_s": load_s,
        "prefill_tok_s": args.prompt_tokens / (t1 - t0),
        "decode_tok_s": (args.gen_tokens - 1) / (t2 - t1),
        "time_to_first_token_ms": (t1 - t0) * 1e3,
        "text": llm.detokenize(text).decode(errors="replace"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=default_model())
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtype", action="append", help="quill --dtype to run (repeatable; default native)")
    p.add_argument("--quill", default=os.path.join(ROOT, "target", "release", "quill"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if not os.path.isfile(args.quill):
        sys.exit(f"{args.quill} is missing: build it with `cargo build --release`")
    runs = [(f"quill --dtype {d}", run_quill(args, d)) for d in (args.dtype or ["native"])]
    base = run_llama_cpp(args)
    runs.append(("llama.cpp", base))
    if args.json:
        print(json.dumps({name: r for name, r in runs}))
        return
    print(f"{os.path.basename(args.model)}: prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, greedy")
    print(f"{'':22} {'prefill tok/s':>14} {'decode tok/s':>13} {'TTFT ms':>9} {'vs llama.cpp (prefill, decode)':>32}  adapter")
    for name, r in runs:
        ratio = f"{r['prefill_tok_s'] / base['prefill_tok_s']:.3f}x, {r['decode_tok_s'] / base['decode_tok_s']:.3f}x"
        print(f"{name:22} {r['prefill_tok_s']:14.2f} {r['decode_tok_s']:13.2f} {r['time_to_first_token_ms']:9.0f} {ratio:>32}  {r['adapter']}")


if __name__ == "__main__":
    main()
