// posenc.wgsl: absolute positional encodings added to the embedded tokens, in place on
// x (n_tokens, dim); token t sits at position pos = pos0 + t (pos0 includes any offset).
// The third member of the family, RoPE, rotates Q and K instead of touching x: rope.wgsl.
//   learned:    x[t, :] += table[pos, :]                                   (GPT-2's wpe)
//   sinusoidal: x[t, :] = x[t, :] * scale + PE(pos, :), computed here, no table uploaded.
//     pair i (0 <= i < dim/2) turns at inv_freq_i = 10000^(-i / freq_denom);
//     interleaved = 1: PE[2i] = sin, PE[2i+1] = cos, freq_denom = dim/2 (the original
//                      Transformer: sin(pos / 10000^(2i/dim)));
//     interleaved = 0: PE[i] = sin, PE[i + dim/2] = cos, freq_denom = dim/2 - 1
//                      (tensor2tensor / fairseq, as XGLM stores it).

struct Params {
    n_tokens: u32,
    dim: u32,
    pos0: u32,
    n_positions: u32,
    interleaved: u32,
    freq_denom: f32,
    scale: f32,
    per_token: u32, // 1: token t sits at pos0 + tok_meta[2t + 1] (a batch of several sequences)
}

@group(0) @binding(0) var<storage, read> table: array<f32>;       // (n_positions, dim)
@group(0) @binding(1) var<storage, read_write> x: array<f32>;     // (n_tokens, dim)
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;        // (n_tokens, 2) slot, position - pos0
@group(0) @binding(3) var<uniform> p: Params;

@group(0) @binding(0) var<storage, read_write> xs: array<f32>;    // (n_tokens, dim)
@group(0) @binding(1) var<storage, read> meta_s: array<u32>;      // as meta
@group(0) @binding(2) var<uniform> ps: Params;

const TWO_PI: f32 = 6.283185307179586;
const LN_10000: f32 = 9.210340371976184;

@compute @workgroup_size(256)
fn learned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.n_tokens * p.dim) {
        return;
    }
    // Positions past the table are refused on the host; clamp so none reads out of bounds.
    var pos = p.pos0 + i / p.dim;
    if (p.per_token != 0u) {
        pos = p.pos0 + tok_meta[2u * (i / p.dim) + 1u];
    }
    pos = min(pos, p.n_positions - 1u);
    x[i] += table[pos * p.dim + i % p.dim];
}

// One thread per (token, pair): writes the pair's sin and cos.
@compute @workgroup_size(256)
fn sinusoidal(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let half = ps.dim / 2u;
    let idx = linear_workgroup(wid, nwg) * 256u + lid;
    if (idx >= ps.n_tokens * half) {
        return;
    }
    let t = idx / half;
    let i = idx % half;
    // Computed in f32 in the same order as the reference implementations build their tables.
    let inv_freq = exp(f32(i) * -(LN_10000 / ps.freq_denom));
    var pos = ps.pos0 + t;
    if (ps.per_token != 0u) {
        pos = ps.pos0 + meta_s[2u * t + 1u];
    }
    var angle = f32(pos) * inv_freq;
    angle -= TWO_PI * floor(angle / TWO_PI); // keep sin/cos in their accurate range
    let base = t * ps.dim;
    var a = base + i;
    var b = base + i + half;
    if (ps.interleaved != 0u) {
        a = base + 2u * i;
        b = a + 1u;
    }
    xs[a] = xs[a] * ps.scale + sin(angle);
    xs[b] = xs[b] * ps.scale + cos(angle);
}
