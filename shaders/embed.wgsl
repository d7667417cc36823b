// embed.wgsl: token embedding gather. out[t, :] = table[ids[id_offset + t], :] * scale
// The ids live on the GPU, so a sampled token can feed the next step without a round trip.

struct Params {
    n_tokens: u32,
    dim: u32,
    id_offset: u32,
    vocab: u32,
    scale: f32,  // multiplies every value (Gemma's sqrt(dim)); 1 otherwise
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> table: array<f32>;       // (vocab, dim)
@group(0) @binding(1) var<storage, read> ids: array<u32>;         // (>= id_offset + n_tokens,)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // (n_tokens, dim)
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.n_tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let d = i % p.dim;
    // Out-of-range ids are refused on the host; clamp so a bad id can never read out of bounds.
    let id = min(ids[p.id_offset + t], p.vocab - 1u);
    out[i] = table[id * p.dim + d] * p.scale;
}
