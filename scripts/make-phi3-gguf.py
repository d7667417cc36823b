#!/usr/bin/env python3
"""Writes tests/fixtures/phi3-tiny/model-f32.gguf: phi3-tiny's safetensors weights under
llama.cpp's Phi-3 GGUF names (fused `attn_qkv`, `ffn_up` holding [gate | up], Q/K rows left in
rotate-half order as llama.cpp's converter leaves them for Phi-3) and the `phi3.*` keys, with
the tokenizer keys of llama-tiny's GGUF (the fixtures share one tokenizer). llama.cpp's own
converter cannot make this file (it cannot load the byte-level vocabulary for Phi-3; see
tests/fixtures/README.md), so this script is its stand-in. Needs the `gguf`, `numpy` and
`safetensors` packages. Run from the repository root: python3 scripts/make-phi3-gguf.py [FIXTURE]

FIXTURE (default phi3-tiny) names the folder whose config.json is written; the weights are
always phi3-tiny's. For `phi3-longrope` it also writes what llama.cpp's converter writes for
Phi-3's longrope (its `Phi3MiniModel`): `rope_factors_long.weight` and `rope_factors_short.weight`
(F32, one factor per rotated pair), `phi3.rope.scaling.attn_factor` and
`phi3.rope.scaling.original_context_length`.
"""
import json
import math
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

SRC = f"tests/fixtures/{sys.argv[1] if len(sys.argv) > 1 else 'phi3-tiny'}"
cfg = json.load(open(f"{SRC}/config.json"))
weights = load_file("tests/fixtures/phi3-tiny/model.safetensors")

w = gguf.GGUFWriter(f"{SRC}/model-f32.gguf", "phi3")
heads = cfg["num_attention_heads"]
head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_block_count(cfg["num_hidden_layers"])
w.add_head_count(heads)
w.add_head_count_kv(cfg["num_key_value_heads"])
w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
w.add_rope_dimension_count(int(head_dim * cfg.get("partial_rotary_factor", 1.0)))
w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
w.add_file_type(gguf.LlamaFileType.ALL_F32)
rope = cfg["rope_parameters"]
if rope.get("rope_type") in ("longrope", "su"):
    orig = cfg["original_max_position_embeddings"]
    scale = cfg["max_position_embeddings"] / orig
    w.add_rope_scaling_orig_ctx_len(orig)
    w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
    w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
    w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))

tok = gguf.GGUFReader("tests/fixtures/llama-tiny/model-f32.gguf")
for name, field in tok.fields.items():
    if name.startswith("tokenizer."):
        value = field.contents()
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, value, field.types[0], sub_type=sub)

names = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
layer = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
for hf, t in weights.items():
    if hf in names:
        out = names[hf]
    else:
        i, rest = hf.removeprefix("model.layers.").split(".", 1)
        out = f"blk.{i}.{layer[rest]}"
    w.add_tensor(out, np.ascontiguousarray(t.astype(np.float32)))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {SRC}/model-f32.gguf")
