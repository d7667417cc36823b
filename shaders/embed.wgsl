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

// ---- backward ----
// embed_backward: dtable[id, :] += sum of dy[t, :] over the tokens t with ids[t] = id.
// Deterministic without float atomics: the host sorts the token positions by id into segments,
// and one thread per (segment, column) sums its tokens in order. plan (u32) holds
//   [0, n_seg)                     the segment's id
//   [n_seg, 2 n_seg + 1)           segment starts in `order`, then its end
//   [2 n_seg + 1, + n_tokens)      token positions sorted by id

@group(0) @binding(0) var<storage, read> eb_plan: array<u32>;
@group(0) @binding(1) var<storage, read> eb_dy: array<f32>;            // (n_tokens, dim)
@group(0) @binding(2) var<storage, read_write> eb_dtable: array<f32>;  // (vocab, dim)
@group(0) @binding(3) var<uniform> ebp: Params;                      // n_tokens, dim, id_offset = n_seg, vocab

@compute @workgroup_size(256)
fn embed_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let n_seg = ebp.id_offset;
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= n_seg * ebp.dim) {
        return;
    }
    let seg = i / ebp.dim;
    let d = i % ebp.dim;
    let id = min(eb_plan[seg], ebp.vocab - 1u);
    let order0 = 2u * n_seg + 1u;
    var acc = eb_dtable[id * ebp.dim + d];
    for (var j = eb_plan[n_seg + seg]; j < eb_plan[n_seg + seg + 1u]; j++) {
        acc += eb_dy[eb_plan[order0 + j] * ebp.dim + d];
    }
    eb_dtable[id * ebp.dim + d] = acc;
}
