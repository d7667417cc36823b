#!/usr/bin/env python3
"""Reference RoPE frequency tables for src/ops/rope.rs's tests: transformers'
`_compute_llama3_parameters` and `_compute_dynamic_ntk_parameters`, replayed step by step in
numpy float32 in torch's order (`scalar / tensor` is `tensor.reciprocal() * scalar` in torch;
Python scalars become float32). Prints the values the tests hard-code."""
import math

import numpy as np

f32 = np.float32


def default(base, dim):
    return f32(1.0) / np.power(f32(base), np.arange(0, dim, 2).astype(f32) / f32(dim))


def llama3(base, dim, factor, low, high, old):
    inv = default(base, dim)
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = (f32(1) / inv) * f32(2 * math.pi)
    inv_l = np.where(wavelen > f32(low_wavelen), inv / f32(factor), inv)
    smooth = ((f32(1) / wavelen) * f32(old) - f32(low)) / f32(high - low)
    smoothed = (f32(1) - smooth) * inv_l / f32(factor) + smooth * inv_l
    medium = ~(wavelen < f32(high_wavelen)) & ~(wavelen > f32(low_wavelen))
    return np.where(medium, smoothed, inv_l).astype(f32)


def dynamic(base, dim, factor, max_pos, seq):
    seq = f32(max(seq, max_pos))
    grown = f32(base) * np.power(f32(factor) * seq / f32(max_pos) - f32(factor - 1), f32(dim / (dim - 2)))
    return default(grown, dim)


v = llama3(500000.0, 128, 8.0, 1.0, 4.0, 8192)  # Llama 3.1
print("llama3", [(i, float(v[i])) for i in [0, 20, 28, 29, 31, 34, 35, 63]])
d = dynamic(10000.0, 64, 2.0, 2048, 5000)
print("dynamic", [(i, float(d[i])) for i in [0, 1, 17, 31]])
