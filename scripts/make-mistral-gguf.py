#!/usr/bin/env python3
"""Writes tests/fixtures/mistral-tiny/model-f32.gguf with llama.cpp's own converter
(`convert_hf_to_gguf.py` of the llama-cpp-python 0.3.36 sdist: `pip download --no-deps
llama-cpp-python==0.3.36`, unpack, pass its vendor/llama.cpp folder), changed in two places:

- llama.cpp maps `MistralForCausalLM` to its llama converter, which writes no sliding window:
  llama.cpp runs every Mistral GGUF with full attention, which differs from transformers once a
  sequence is longer than the window (mistral-tiny's is 10). That is why the fixture had no GGUF.
  Here the llama converter also writes `llama.attention.sliding_window` (the key llama.cpp's
  writer uses for the architectures whose window it honours), which quill reads.
- The fixture tokenizer is a plain byte-level BPE whose pre-tokenizer hash llama.cpp does not
  know; it is written as `gpt-2`, as for the other tiny GGUFs (tests/fixtures/README.md).

Needs torch, numpy, safetensors, sentencepiece and the converter's `gguf-py`. Run from the
repository root: python3 scripts/make-mistral-gguf.py PATH/TO/vendor/llama.cpp
"""
import sys
from pathlib import Path

llama_cpp = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(llama_cpp))
sys.path.insert(1, str(llama_cpp / "gguf-py"))

import convert_hf_to_gguf  # noqa: E402
from conversion import base, llama  # noqa: E402

SRC = "tests/fixtures/mistral-tiny"

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
plain_parameters = llama.LlamaModel.set_gguf_parameters


def with_window(self):
    plain_parameters(self)
    if (window := self.hparams.get("sliding_window")) is not None:
        self.gguf_writer.add_sliding_window(window)


llama.LlamaModel.set_gguf_parameters = with_window
sys.argv = ["convert_hf_to_gguf.py", SRC, "--outtype", "f32", "--outfile", f"{SRC}/model-f32.gguf"]
convert_hf_to_gguf.main()
