#!/usr/bin/env python3
"""Writes fuzz/corpus/<target>/ seed inputs from the real fixtures in tests/fixtures (small:
AFL works best on inputs of a few KB). Run from the repository root; deterministic."""
import json, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")
SEP = b"\xff\x00"


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def garr_str(items):
    return struct.pack("<IQ", 8, len(items)) + b"".join(gstr(s) for s in items)


def gguf(kv, tensors):
    """kv: (key, type, payload); tensors: (name, dims innermost-first, ggml type, data)."""
    b = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, p in kv:
        b += gstr(k) + struct.pack("<I", t) + p
    off = 0
    for name, dims, ty, data in tensors:
        b += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        b += struct.pack("<IQ", ty, off)
        off += (len(data) + 31) // 32 * 32
    b += b"\0" * (-len(b) % 32)
    for *_, data in tensors:
        b += data + b"\0" * (-len(data) % 32)
    return b


def tiny_vocab(n):
    """The first n tokens of llama-tiny's byte-level BPE and the merges among them."""
    t = json.load(open(os.path.join(FIX, "llama-tiny", "tokenizer.json")))
    by_id = sorted((i, s) for s, i in t["model"]["vocab"].items())
    tokens = [s for _, s in by_id][:n]
    keep = set(tokens)
    merges = []
    for m in t["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append(a + " " + b)
    return tokens, merges


def gguf_seeds():
    u32 = lambda v: struct.pack("<I", v)
    tokens, merges = tiny_vocab(300)
    dim, ffn, vocab = 8, 16, len(tokens)
    f32 = lambda n: struct.pack("<%df" % n, *[0.01 * (i % 7) for i in range(n)])
    kv = [
        ("general.architecture", 8, gstr("llama")),
        ("llama.embedding_length", 4, u32(dim)),
        ("llama.block_count", 4, u32(1)),
        ("llama.attention.head_count", 4, u32(2)),
        ("llama.attention.head_count_kv", 4, u32(1)),
        ("llama.feed_forward_length", 4, u32(ffn)),
        ("llama.context_length", 4, u32(64)),
        ("llama.rope.dimension_count", 4, u32(4)),
        ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        ("tokenizer.ggml.model", 8, gstr("gpt2")),
        ("tokenizer.ggml.pre", 8, gstr("smollm")),
        ("tokenizer.ggml.tokens", 9, garr_str(tokens)),
        ("tokenizer.ggml.merges", 9, garr_str(merges)),
        ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, vocab) + struct.pack("<%di" % vocab, *([3] + [1] * (vocab - 1)))),
        ("tokenizer.ggml.eos_token_id", 4, u32(0)),
        ("tokenizer.ggml.bos_token_id", 4, u32(0)),
        ("tokenizer.chat_template", 8, gstr("{% for m in messages %}{{ m['content'] }}{% endfor %}")),
    ]
    t = [("token_embd.weight", [dim, vocab], 0, f32(dim * vocab)), ("output_norm.weight", [dim], 0, f32(dim))]
    for name, dims in [("attn_norm", [dim]), ("ffn_norm", [dim]), ("attn_q", [dim, dim]), ("attn_k", [dim, 4]), ("attn_v", [dim, 4]),
                       ("attn_output", [dim, dim]), ("ffn_gate", [dim, ffn]), ("ffn_up", [dim, ffn]), ("ffn_down", [ffn, dim])]:
        n = 1
        for d in dims:
            n *= d
        t.append(("blk.0.%s.weight" % name, dims, 0, f32(n)))
    put("gguf", "llama-300-tokens.gguf", gguf(kv, t))
    # One tensor of each block type quill reads (F16, Q8_0, Q4_0, Q4_1; 32 values each).
    blocks = [("f16", 1, 64), ("q8_0", 8, 34), ("q4_0", 2, 18), ("q4_1", 3, 20), ("bf16", 30, 64)]
    put("gguf", "block-types.gguf", gguf([("general.alignment", 4, u32(32))], [(n, [32], ty, bytes(range(size))) for n, ty, size in blocks]))
    put("gguf", "metadata-types.gguf", gguf([
        ("u8", 0, b"\x07"), ("i8", 1, b"\xff"), ("u16", 2, b"\x01\x02"), ("i16", 3, b"\xfe\xff"), ("i32", 5, b"\xff\xff\xff\xff"),
        ("bool", 7, b"\x01"), ("u64", 10, struct.pack("<Q", 2**40)), ("i64", 11, struct.pack("<q", -5)), ("f64", 12, struct.pack("<d", 2.5)),
        ("nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 2) + u32(1) + u32(2)),
    ], []))


def st_file(tensors):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    shard = st_file([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("b", "F16", [4], b"\x00\x3c" * 4), ("c", "BF16", [2], b"\x80\x3f" * 2)])
    shard2 = st_file([("d", "F32", [1, 2], struct.pack("<2f", 5, 6))])
    index = json.dumps({"metadata": {"total_size": 40}, "weight_map": {"a": "model-00001-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}}).encode()
    for arch in ["llama-tiny", "qwen2-tiny", "gpt2-tiny", "xglm-tiny"]:
        config = open(os.path.join(FIX, arch, "config.json"), "rb").read()
        put("safetensors", arch + ".bin", config + SEP + index + SEP + shard + SEP + shard2)


def tokenizer_seeds():
    tokens, merges = tiny_vocab(120)
    t = json.load(open(os.path.join(FIX, "llama-tiny", "tokenizer.json")))
    t["model"]["vocab"] = {s: i for i, s in enumerate(tokens)}
    t["model"]["merges"] = merges
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < len(tokens)]
    config = open(os.path.join(FIX, "llama-tiny", "tokenizer_config.json"), "rb").read()
    put("tokenizer_json", "bpe-120.json", json.dumps(t).encode() + SEP + config)
    put("tokenizer_json", "bpe-120-no-config.json", json.dumps(t).encode())


def stream_seeds():
    t = json.load(open(os.path.join(FIX, "llama-tiny", "tokenizer.json")))
    vocab = t["model"]["vocab"]
    ids = lambda toks: b"".join(struct.pack("<H", vocab[s]) for s in toks if s in vocab)
    # Byte-level pieces of "é" and "🐉" (split UTF-8), spaces and plain words.
    pieces = [s for s in vocab if len(s) == 1][:40]
    put("stream_decoder", "bytes.bin", ids(pieces))
    put("stream_decoder", "words.bin", ids(sorted(vocab, key=vocab.get)[200:260]))
    put("stream_decoder", "special.bin", struct.pack("<6H", 0, 1, 2, 0, 999, 5))


def request_seeds():
    """Bodies as real clients send them (the openai Python client, curl examples, tests/serve.rs)."""
    bodies = {
        "completion.json": {"model": "quill", "prompt": "The license grants", "max_tokens": 12, "temperature": 0, "ignore_eos": True},
        "completion-ids.json": {"prompt": [1, 415, 7319, 22], "max_tokens": 4, "logprobs": 3, "stop": ["\n\n", "END"], "seed": 7},
        "completion-sampling.json": {"prompt": ["Once upon"], "n": 2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                                     "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"5": -100, "17": 2.5}, "stream": True,
                                     "stream_options": {"include_usage": True}, "user": "u1"},
        "chat.json": {"model": "quill", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
                      "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 2, "stop": "\n"},
        "chat-parts.json": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}], "name": "me"},
                                         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "ünïcödé 🐉"}],
                            "temperature": 0.7, "stream": False, "logit_bias": {"3": 100}},
        "tokenize.json": {"content": "Hello, world!"},
        "detokenize.json": {"tokens": [1, 2, 3, 1099]},
    }
    for name, body in bodies.items():
        put("openai_request", name, json.dumps(body).encode())


def template_seeds():
    """Each real template of tests/fixtures/chat_templates, then a conversation."""
    conv = SEP.join(s.encode() for s in ["system", "Be brief.", "user", "Hi there", "assistant", "Hello!", "user", "What is 2+2?"])
    d = os.path.join(FIX, "chat_templates")
    for f in sorted(os.listdir(d)):
        if f.endswith(".jinja"):
            put("chat_template", f, open(os.path.join(d, f), "rb").read() + SEP + conv)


gguf_seeds()
safetensors_seeds()
tokenizer_seeds()
stream_seeds()
request_seeds()
template_seeds()
