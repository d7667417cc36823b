#!/usr/bin/env python3
"""Writes a Llama-architecture GGUF with random weights and a real tokenizer, for memory-bound
benchmarks and browser load tests that must not depend on downloads.

    scripts/make-synthetic-gguf.py --shape 1b --type q4_0 --out target/synthetic/llama-1b-q4_0.gguf

Shapes (Llama blocks: RMSNorm, RoPE, GQA, SwiGLU; untied output head except smollm2):
    smollm2  SmolLM2-135M's: 30 layers, dim 576, 9 heads / 3 KV, FFN 1536, tied head   (~135 M weights)
    1b       16 layers, dim 2048, 32 heads / 8 KV, FFN 8192                             (~1.07 G weights)
    3b       28 layers, dim 3072, 24 heads / 8 KV, FFN 8192                             (~3.0 G weights)
Types: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (what gguf-py can quantize). Norm and the
embedding stay as llama.cpp's presets keep them (norms f32; the embedding in the same type).

The tokenizer (all `tokenizer.*` keys) is copied from a real GGUF, by default the SmolLM2 file
`scripts/fetch-model.sh` stores, so prompts tokenize as they would for a real model. Weights are
N(0, 0.02²) (norm weights 1), seeded: the same arguments write the same file. Needs `pip install
gguf numpy`. The text such a model writes is noise; its speed and memory are those of a real one.
"""

import argparse
import os
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
except ImportError:
    sys.exit("make-synthetic-gguf: needs the gguf and numpy packages (pip install gguf numpy)")

SHAPES = {
    "smollm2": dict(layers=30, dim=576, heads=9, kv_heads=3, ffn=1536, tied=True, theta=100000.0),
    "1b": dict(layers=16, dim=2048, heads=32, kv_heads=8, ffn=8192, tied=False, theta=500000.0),
    "3b": dict(layers=28, dim=3072, heads=24, kv_heads=8, ffn=8192, tied=False, theta=500000.0),
}
TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
# general.file_type as llama.cpp numbers it (LLAMA_FTYPE_*).
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}


def default_tokenizer_source():
    home = os.environ.get("HOME", "")
    base = os.environ.get("QUILL_MODELS") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "quill", "models")
    return os.path.join(base, "SmolLM2-135M-Instruct.Q4_1.gguf")


def copy_tokenizer(reader, writer):
    """Copies every tokenizer.* key of `reader` into `writer`, with its value type."""
    vt = gguf.GGUFValueType
    n_tokens = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == vt.ARRAY:
            inner = field.types[1]
            if inner == vt.STRING:
                values = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(values)
            writer.add_key_value(key, values, vt.ARRAY, sub_type=inner)
        elif kind == vt.STRING:
            writer.add_key_value(key, bytes(field.parts[field.data[0]]).decode("utf-8"), kind)
        else:
            writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], kind)
    if n_tokens == 0:
        sys.exit(f"make-synthetic-gguf: {reader.path} has no tokenizer.ggml.tokens")
    return n_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--type", choices=sorted(TYPES), default="q4_0")
    ap.add_argument("--tokenizer-from", default=None, help="a GGUF whose tokenizer.* keys are copied (default: the fetched SmolLM2)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ctx", type=int, default=8192, help="context length written to the metadata")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    s = SHAPES[args.shape]
    qtype = TYPES[args.type]
    tok_path = args.tokenizer_from or default_tokenizer_source()
    if not os.path.isfile(tok_path):
        sys.exit(f"make-synthetic-gguf: no tokenizer source at {tok_path} (run scripts/fetch-model.sh, or pass --tokenizer-from)")
    reader = gguf.GGUFReader(tok_path)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".part"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"synthetic-llama-{args.shape}-{args.type}")
    w.add_file_type(FILE_TYPES[args.type])
    vocab = copy_tokenizer(reader, w)
    head_dim = s["dim"] // s["heads"]
    w.add_block_count(s["layers"])
    w.add_context_length(args.ctx)
    w.add_embedding_length(s["dim"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)

    rng = np.random.default_rng(args.seed)
    n_weights = 0

    def matrix(name, rows, cols):
        nonlocal n_weights
        data = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        n_weights += data.size
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            # A uint8 array is taken as the byte shape of `qtype` rows: (rows, cols) comes back from it.
            w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name, n):
        nonlocal n_weights
        n_weights += n
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    d, kv = s["dim"], s["kv_heads"] * head_dim
    matrix("token_embd.weight", vocab, d)
    for i in range(s["layers"]):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", d)
        matrix(p + "attn_q.weight", d, d)
        matrix(p + "attn_k.weight", kv, d)
        matrix(p + "attn_v.weight", kv, d)
        matrix(p + "attn_output.weight", d, d)
        norm(p + "ffn_norm.weight", d)
        matrix(p + "ffn_gate.weight", s["ffn"], d)
        matrix(p + "ffn_up.weight", s["ffn"], d)
        matrix(p + "ffn_down.weight", d, s["ffn"])
    norm("output_norm.weight", d)
    if not s["tied"]:
        matrix("output.weight", vocab, d)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, args.out)
    size = os.path.getsize(args.out)
    print(f"{args.out}: {n_weights / 1e9:.3f} G weights, {args.type}, {size / 1e6:.1f} MB, vocab {vocab}", file=sys.stderr)


if __name__ == "__main__":
    main()
