// sample.wgsl: choose the next token on the GPU and write its id into the token buffer (where
// the next step's embedding reads it) so only 4 bytes ever come back. Two passes:
//   candidates: one workgroup per CHUNK ids applies the adjustments below (into work[]), and
//     writes the chunk's statistics (max and its lowest id, softmax mass, mean and spread) and
//     its CAND largest logits (the chunk's candidates);
//   sample: one workgroup keeps the CAND largest of all candidates (the survivors, sorted by
//     id) and runs the chain over them alone; the whole-vocabulary figures the chain needs
//     (the softmax mass for top-p with nothing cut before it and for mirostat, top-nσ's σ)
//     come from the chunk statistics. The result is exact when every id the chain keeps (and
//     every set a filter weighs: typical's, top-p's, XTC's, dynamic temperature's) lies
//     above `bound`, the largest logit left out; otherwise (top-k above CAND with top-p/min-p
//     keeping more than the survivors, typical/XTC/top-nσ/mirostat over more, mirostat with
//     dynamic temperature, many ties) the same workgroup runs the chain over the whole
//     vocabulary, as it once always did.
//   With top-k off and only top-p, min-p and the temperature after the adjustments, the host
//   runs the spread kernels instead of `sample` (below: many workgroups, no single pass over
//   the whole vocabulary).
//   Greedy is the argmax from the chunk statistics (lowest id on ties), with no chain at all,
//   in kernels of its own (greedy_chunks, greedy_pick).
//
// Order (llama.cpp's, documented in README): logit bias -> penalties -> DRY -> top-nσ ->
// top-k -> typical -> top-p -> min-p -> XTC -> temperature (fixed, or dynamic from the
// entropy of what the filters kept) -> seeded draw. The filters see the raw logits; each keeps
// an interval [lo, hi] of the sorted logits of what the ones before kept. With mirostat v2
// (tau > 0) the temperature comes right after DRY and mirostat's truncation replaces the
// filters. temperature = 0 means greedy (argmax, lowest id on ties; the filters never act).
//   bias:     l[id] += bias for the first adjust[0] pairs of adjust[] (-inf bans an id)
//   penalty:  for each distinct id in tokens[hist_start .. hist_end): l > 0 ? l / r : l * r
//   DRY:      l[id] -= amount for the next adjust[1] pairs (found on the CPU from the ids)
//   top-nσ:   keep ids whose logit >= max - n·σ (σ over the finite logits)
//   top-k:    keep ids whose logit >= the k-th largest (ties at the boundary are kept)
//   typical:  c = Σ p·l (p the softmax of the kept; -ln p - H = c - l): keep the ids nearest
//             c until their mass exceeds typical_p (ties at that distance kept)
//   top-p:    keep the smallest top set whose probability mass >= top_p (boundary ties kept)
//   min-p:    keep ids with p >= min_p * p_max
//   XTC:      if this draw applies it (xtc_probability > 0, decided by the host with the same
//             generator) and two or more kept ids have p >= xtc_threshold, drop all of them
//             but the least likely (ties with it kept)
//   mirostat: on l / T, keep ids with surprise -log2 p <= mu; after the draw mu -= eta *
//             (surprise of the drawn id in the kept set - tau). mu starts at 2 tau (draw 0)
//             and lives in the last two slots of adjust[]: [mu of the last draw, mu next].
//   draw:     u = rand(seed, draw) * Z, first id (in id order) whose running mass passes u
// Thresholds are found by binary search over the order-preserving u32 image of f32, so each
// is exact, with 32 counting passes (over the survivors, or the vocabulary) and no sort.
// work[] layout: [0, vocab) the adjusted logits, then STATS values per chunk, then CAND
// (logit, id as f32) pairs per chunk (ops::sample::work_len; ids exact in f32 below 2^24).

struct Params {
    vocab: u32,
    row: u32,            // which row of logits
    hist_start: u32,
    hist_end: u32,
    out_index: u32,      // tokens[out_index] receives the id
    top_k: u32,          // 0 = off
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,           // draw counter, mixed into the random number
    temperature: f32,    // 0 = greedy
    top_p: f32,          // 1 = off
    min_p: f32,          // 0 = off
    repeat_penalty: f32, // 1 = off
    presence_penalty: f32,  // 0 = off
    frequency_penalty: f32, // 0 = off
    typical_p: f32,         // 1 = off
    xtc_threshold: f32,
    xtc_probability: f32,   // 0 = XTC does not act on this draw
    top_n_sigma: f32,       // 0 = off
    mirostat_tau: f32,      // 0 = off
    dynatemp_range: f32,    // 0 = off
    dynatemp_exponent: f32,
    mirostat_eta: f32,
    mode: u32,              // logprobs: 0 = before the filters, 1 = after the whole chain
    alternatives: u32,      // logprobs: how many of the most likely ids to report
    round: u32,             // spread_hist: which 8 bits of the key (0 the top ones)
    spread: u32,            // 1: `spread` runs the chain (candidates writes its statistics alone)
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // (rows, vocab)
@group(0) @binding(1) var<storage, read_write> work: array<f32>;    // (work_len(vocab),) scratch
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;  // the sequence's ids
// [bias count, DRY count, then (id, f32 bits) pairs: the biases to add, DRY's amounts to
// subtract; ...; the last two: mirostat's mu (f32 bits) of the last draw and for the next].
@group(0) @binding(3) var<storage, read_write> adjust: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

// Threads per workgroup (a power of two, at most WG_MAX): ops::sample picks it per adapter class.
override WG: u32 = 256u;
const WG_MAX: u32 = 256u;
var<workgroup> red_f: array<f32, WG_MAX>;
var<workgroup> red_u: array<u32, WG_MAX>;
var<workgroup> chosen: atomic<u32>;
var<workgroup> last_kept: atomic<u32>; // fallback when rounding leaves u past the end
// Broadcast slots: read back with workgroupUniformLoad so loops with barriers stay uniform.
var<workgroup> bcast_u: u32;
var<workgroup> bcast_f: f32;

const CHUNK: u32 = 4096u; // ids per candidates workgroup: ops::sample::CHUNK
const CAND: u32 = 256u;   // candidates per chunk and survivors: ops::sample::CAND
const STATS: u32 = 10u;   // values per chunk: ops::sample::STATS
// The survivors, sorted by id, and the slots they are gathered into first.
var<workgroup> cand_v: array<f32, CAND>;
var<workgroup> cand_i: array<u32, CAND>;
var<workgroup> gather_v: array<f32, CAND>;
var<workgroup> gather_i: array<u32, CAND>;
var<workgroup> slots: atomic<u32>;
// Whether the chain runs over the survivors (set alike in every invocation), how many there
// are, and the key of the largest logit that is not among them (0: none is left out).
var<private> fast: bool = false;
var<private> n_fast: u32 = 0u;
var<private> bound: u32 = 0u;

// What the chain runs over: the survivors, or the whole of work[].
fn n_items() -> u32 {
    return select(p.vocab, n_fast, fast);
}

fn val(i: u32) -> f32 {
    if (fast) {
        return cand_v[i];
    }
    return work[i];
}

fn set_val(i: u32, v: f32) {
    if (fast) {
        cand_v[i] = v;
    } else {
        work[i] = v;
    }
}

fn id_at(i: u32) -> u32 {
    if (fast) {
        return cand_i[i];
    }
    return i;
}

fn n_chunks() -> u32 {
    return (p.vocab + CHUNK - 1u) / CHUNK;
}

fn stat(g: u32, k: u32) -> f32 {
    return work[p.vocab + g * STATS + k];
}

// Where chunk g's candidate pairs start in work[].
fn cand_base(g: u32) -> u32 {
    return p.vocab + n_chunks() * STATS + 2u * CAND * g;
}

fn uniform_f(lid: u32, v: f32) -> f32 {
    if (lid == 0u) {
        bcast_f = v;
    }
    return workgroupUniformLoad(&bcast_f);
}

fn uniform_u(lid: u32, v: u32) -> u32 {
    if (lid == 0u) {
        bcast_u = v;
    }
    return workgroupUniformLoad(&bcast_u);
}

// WGSL's uniformity analysis (which Tint, the browsers' compiler, enforces) counts every read of
// a private variable or of read_write storage as non-uniform; a value that steers control flow
// around a barrier goes through uniform_f/uniform_u first. fast and bound are the same on every
// thread, so these change nothing but what the analysis can prove.
fn fast_now(lid: u32) -> bool {
    return uniform_u(lid, u32(fast)) != 0u;
}

// Whether the whole vocabulary's mass comes from the chunks' statistics: over the survivors
// when some ids were left out.
fn whole_from_chunks(lid: u32) -> bool {
    return uniform_u(lid, u32(fast && bound != 0u)) != 0u;
}

// Order-preserving map from f32 to u32: a < b  <=>  key(a) < key(b).
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform in [0, 1) with 24 random bits; the same function is in sampling.rs.
fn uniform01() -> f32 {
    let h = pcg(p.seed_lo ^ pcg(p.seed_hi ^ pcg(p.draw)));
    return f32(h >> 8u) / 16777216.0;
}

fn sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    return uniform_f(lid, red_f[0]);
}

// One tree for the u32 reductions: op 0 = sum, 1 = min, 2 = max.
fn reduce_u(lid: u32, v: u32, op: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let a = red_u[lid];
            let b = red_u[lid + s];
            red_u[lid] = select(select(max(a, b), min(a, b), op == 1u), a + b, op == 0u);
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
}

fn sum_u(lid: u32, v: u32) -> u32 {
    return reduce_u(lid, v, 0u);
}

fn min_u(lid: u32, v: u32) -> u32 {
    return reduce_u(lid, v, 1u);
}

fn max_u(lid: u32, v: u32) -> u32 {
    return reduce_u(lid, v, 2u);
}

const MIN_TEMPERATURE: f32 = 1e-3; // sampling::MIN_TEMPERATURE
const MIROSTAT_SLOTS: u32 = 2u;    // ops::sample::MIROSTAT_SLOTS

// The inverse of key().
fn unkey(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

fn kept(k: u32, lo: u32, hi: u32) -> bool {
    return k >= lo && k <= hi;
}

// Σ exp(val(i) - mk) over the kept ids.
fn kept_mass(lid: u32, lo: u32, hi: u32, mk: f32) -> f32 {
    var z = 0.0;
    for (var i = lid; i < n_items(); i += WG) {
        let v = val(i);
        z += select(0.0, exp(v - mk), kept(key(v), lo, hi));
    }
    return sum_f(lid, z);
}

// 1 / the temperature for the kept ids of work[] (max mk): `temperature`, or with
// dynatemp_range > 0 lo + (hi - lo) * (H / ln n)^exponent, H the entropy of their softmax
// (finite ids) and n how many are kept.
fn inv_temperature(lid: u32, temperature: f32, lo: u32, hi: u32, mk: f32) -> f32 {
    if (p.dynatemp_range <= 0.0) {
        return 1.0 / temperature;
    }
    var z = 0.0;
    var s1 = 0.0;
    var c = 0u;
    for (var i = lid; i < n_items(); i += WG) {
        let v = val(i);
        let k = kept(key(v), lo, hi);
        let fin = k && v > NEG_BIG;
        let d = v - mk;
        let e = select(0.0, exp(d), fin);
        z += e;
        s1 += select(0.0, e * d, fin);
        c += u32(k);
    }
    let zt = sum_f(lid, z);
    let h = log(zt) - sum_f(lid, s1) / zt;
    let n = sum_u(lid, c);
    var hn = 0.0;
    if (n > 1u) {
        hn = max(h / log(f32(n)), 0.0);
    }
    let t_lo = max(temperature - p.dynatemp_range, 0.0);
    let t_hi = temperature + p.dynatemp_range;
    let scaled = select(0.0, pow(max(hn, 1e-30), p.dynatemp_exponent), hn > 0.0);
    return 1.0 / max(t_lo + (t_hi - t_lo) * scaled, MIN_TEMPERATURE);
}

// Lowest index in [first, end) holding the maximum.
fn argmax(lid: u32, first: u32, end: u32) -> u32 {
    var best = NEG_BIG;
    var best_i = 0xffffffffu;
    for (var i = first + lid; i < end; i += WG) {
        let v = val(i);
        if (v > best || best_i == 0xffffffffu) {
            best = v;
            best_i = i;
        }
    }
    red_f[lid] = best;
    red_u[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            // A thread with no item (index 0xffffffff) never wins over one with an item.
            let mine = red_u[lid];
            if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > red_f[lid] || (ov == red_f[lid] && oi < mine))) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
}

// work[first .. end) = those ids of row `row` of the logits, with the logit bias, the
// repetition penalty and then the presence and frequency penalties (v -= presence + count *
// frequency) once per distinct id in the window, then DRY's amounts.
fn load_penalized(lid: u32, first: u32, end: u32) {
    let base = p.row * p.vocab;
    for (var i = first + lid; i < end; i += WG) {
        work[i] = logits[base + i];
    }
    storageBarrier();
    workgroupBarrier();
    apply_pairs(lid, 0u, adjust[0], 1.0, first, end);
    if (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) {
        for (var j = p.hist_start + lid; j < p.hist_end; j += WG) {
            let id = tokens[j];
            var first_seen = id >= first && id < end;
            for (var e = p.hist_start; e < j && first_seen; e++) {
                first_seen = tokens[e] != id;
            }
            if (first_seen) {
                var count = 0u;
                for (var e = j; e < p.hist_end; e++) {
                    count += u32(tokens[e] == id);
                }
                var v = work[id];
                if (p.repeat_penalty != 1.0) {
                    v = select(v * p.repeat_penalty, v / p.repeat_penalty, v > 0.0);
                }
                work[id] = v - (p.presence_penalty + f32(count) * p.frequency_penalty);
            }
        }
        storageBarrier();
        workgroupBarrier();
    }
    apply_pairs(lid, adjust[0], adjust[1], -1.0, first, end);
}

// work[id] += sign * amount for pairs first .. first + n of adjust[] whose id is in
// [lo, hi). Each list names an id once, so threads never touch the same slot.
fn apply_pairs(lid: u32, first: u32, n: u32, sign: f32, lo: u32, hi: u32) {
    let fits = (arrayLength(&adjust) - 2u - MIROSTAT_SLOTS) / 2u;
    let end = min(first + n, fits);
    for (var k = first + lid; k < end; k += WG) {
        let id = adjust[2u + 2u * k];
        if (id >= lo && id < hi) {
            work[id] += sign * bitcast<f32>(adjust[3u + 2u * k]);
        }
    }
    storageBarrier();
    workgroupBarrier();
}

// top-k: the largest key with count(key >= it) >= k.
fn top_k_floor(lid: u32) -> u32 {
    var lo = 0u;
    var hi = 0xffffffffu;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u); // ceil, without overflow
        var c = 0u;
        for (var i = lid; i < n_items(); i += WG) {
            c += u32(key(val(i)) >= mid);
        }
        if (sum_u(lid, c) >= p.top_k) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

// top-nσ: max - n·σ, σ the population standard deviation of the finite logits (a logit bias
// of -inf leaves its id out).
fn top_n_sigma_floor(lid: u32, m: f32) -> u32 {
    var acc = 0.0;
    var c = 0u;
    for (var i = lid; i < n_items(); i += WG) {
        let fin = val(i) > NEG_BIG;
        acc += select(0.0, val(i), fin);
        c += u32(fin);
    }
    let count = f32(max(sum_u(lid, c), 1u));
    let mean = sum_f(lid, acc) / count;
    var sq = 0.0;
    for (var i = lid; i < n_items(); i += WG) {
        let d = val(i) - mean;
        sq += select(0.0, d * d, val(i) > NEG_BIG);
    }
    let sigma = select(sqrt(sum_f(lid, sq) / count), uniform_f(lid, stats_sigma()), fast_now(lid));
    return key(m - p.top_n_sigma * sigma);
}

// Typical: the span [lo, hi] of the kept ids within the smallest distance r of c = Σ p·v
// whose mass exceeds typical_p (r found by binary search over the bits of r >= 0).
fn typical_span(lid: u32, lo: u32, hi: u32) -> vec2<u32> {
    let mk = unkey(hi);
    var z = 0.0;
    var s1 = 0.0;
    for (var i = lid; i < n_items(); i += WG) {
        let v = val(i);
        let fin = kept(key(v), lo, hi) && v > NEG_BIG;
        let e = select(0.0, exp(v - mk), fin);
        z += e;
        s1 += select(0.0, e * v, fin);
    }
    let zt = sum_f(lid, z);
    let c = sum_f(lid, s1) / zt;
    let target_mass = p.typical_p * zt;
    var a = 0u;
    var b = 0x7f800000u; // +inf: every finite kept id
    while (a < b) {
        let mid = a + (b - a) / 2u;
        let r = bitcast<f32>(mid);
        var s = 0.0;
        for (var i = lid; i < n_items(); i += WG) {
            let v = val(i);
            s += select(0.0, exp(v - mk), kept(key(v), lo, hi) && v > NEG_BIG && abs(v - c) <= r);
        }
        if (sum_f(lid, s) > target_mass) {
            b = mid;
        } else {
            a = mid + 1u;
        }
    }
    let r = bitcast<f32>(a);
    var lowest = 0xffffffffu;
    var highest = 0u;
    for (var i = lid; i < n_items(); i += WG) {
        let v = val(i);
        let hit = kept(key(v), lo, hi) && v > NEG_BIG && abs(v - c) <= r;
        lowest = select(lowest, min(lowest, key(v)), hit);
        highest = select(highest, max(highest, key(v)), hit);
    }
    let span = vec2<u32>(min_u(lid, lowest), max_u(lid, highest));
    return select(vec2<u32>(lo, hi), span, span.x <= span.y);
}

// top-p over the kept: the largest floor with mass(floor <= key <= hi) >= top_p * mass.
fn top_p_floor(lid: u32, lo: u32, hi: u32) -> u32 {
    let mk = unkey(hi);
    // Over the survivors with nothing cut before: the whole vocabulary's mass, from the chunks.
    let whole = whole_from_chunks(lid) && lo == 0u;
    let target_mass = p.top_p * select(kept_mass(lid, lo, hi, mk), uniform_f(lid, total_mass(mk, false, 1.0)), whole);
    var a = lo;
    var b = hi;
    while (a < b) {
        let mid = a + (b - a) / 2u + ((b - a) & 1u); // ceil, without overflow
        if (kept_mass(lid, mid, hi, mk) >= target_mass) {
            a = mid;
        } else {
            b = mid - 1u;
        }
    }
    return a;
}

// XTC's ceiling on the kept keys: the least likely key with p >= threshold when two or more
// have it, else hi (no cut).
fn xtc_ceiling(lid: u32, lo: u32, hi: u32) -> u32 {
    let mk = unkey(hi);
    let cut = p.xtc_threshold * kept_mass(lid, lo, hi, mk);
    var c = 0u;
    var lowest = 0xffffffffu;
    for (var i = lid; i < n_items(); i += WG) {
        let v = val(i);
        let hit = kept(key(v), lo, hi) && exp(v - mk) >= cut;
        c += u32(hit);
        lowest = select(lowest, min(lowest, key(v)), hit);
    }
    let n = sum_u(lid, c);
    let low = min_u(lid, lowest);
    return select(hi, low, n >= 2u);
}

// Σ exp(v - mk) over the whole vocabulary from the chunk statistics; `scaled`: of v * inv_t
// (mirostat's logits at a fixed temperature).
fn total_mass(mk: f32, scaled: bool, inv_t: f32) -> f32 {
    var z = 0.0;
    for (var g = 0u; g < n_chunks(); g++) {
        let m = stat(g, 0u);
        z += select(stat(g, 2u) * exp(m - mk), stat(g, 3u) * exp(m * inv_t - mk), scaled);
    }
    return z;
}

// The population standard deviation of the finite logits, from the chunks' counts, means and
// sums of squared deviations (Chan et al.'s pairwise update).
fn stats_sigma() -> f32 {
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var g = 0u; g < n_chunks(); g++) {
        let nb = stat(g, 4u);
        if (nb > 0.0) {
            let d = stat(g, 5u) - mean;
            let total = n + nb;
            mean += d * nb / total;
            m2 += stat(g, 6u) + d * d * n * nb / total;
            n = total;
        }
    }
    return sqrt(m2 / max(n, 1.0));
}

// Whether a set that reaches down to key lo is all there: always over the whole vocabulary;
// over the survivors only when every id left out lies below lo.
fn covers(lo: u32) -> bool {
    return !fast || bound == 0u || lo > bound;
}

// What the chain keeps and how the draw weighs it: exp((v - mk) * scale) for the items with
// lo <= key(v) <= hi; exact = 1 when the survivors held every set the chain weighed.
struct Chain {
    lo: u32,
    hi: u32,
    mk: f32,
    scale: f32,
    exact: u32,
}

// mirostat's mu for this draw: 2 tau at draw 0, else what the last draw left.
fn mirostat_mu() -> f32 {
    if (p.draw == 0u) {
        return 2.0 * p.mirostat_tau;
    }
    return bitcast<f32>(adjust[arrayLength(&adjust) - 1u]);
}

// The chain after the adjustments, at `temperature` (> 0), with mirostat at `mu`; `best` is the
// item holding the largest logit. With mirostat, the items are scaled by 1 / T in place.
fn chain(lid: u32, best: u32, temperature: f32, mu: f32) -> Chain {
    let m = uniform_f(lid, val(best));
    if (p.mirostat_tau > 0.0) {
        let inv_t = inv_temperature(lid, temperature, 0u, 0xffffffffu, m);
        for (var i = lid; i < n_items(); i += WG) {
            set_val(i, val(i) * inv_t);
        }
        storageBarrier();
        workgroupBarrier();
        let ms = uniform_f(lid, val(best));
        let z = select(kept_mass(lid, 0u, 0xffffffffu, ms), uniform_f(lid, total_mass(ms, true, inv_t)), whole_from_chunks(lid));
        let lo = key(min(ms + log(z) - mu * 0.6931472, ms));
        // What was left out lies at or below bound's logit, and scales alike.
        let exact = !fast || bound == 0u || lo > key(unkey(bound) * inv_t);
        return Chain(lo, key(ms), ms, 1.0, u32(exact));
    }
    var exact = true;
    var lo = 0u;
    var hi = key(m);
    if (p.top_n_sigma > 0.0) {
        lo = max(lo, top_n_sigma_floor(lid, m));
    }
    if (p.top_k > 0u && p.top_k < p.vocab) {
        // Over the survivors this is exact whenever it lands above bound (and below, it is
        // below the true floor: the checks after catch it).
        lo = max(lo, top_k_floor(lid));
    }
    if (p.typical_p < 1.0) {
        exact = exact && covers(lo);
        let span = typical_span(lid, lo, hi);
        lo = span.x;
        hi = span.y;
    }
    if (p.top_p < 1.0) {
        exact = exact && (lo == 0u || covers(lo));
        lo = top_p_floor(lid, lo, hi);
    }
    if (p.min_p > 0.0) {
        lo = max(lo, key(unkey(hi) + log(p.min_p)));
    }
    lo = min(lo, hi); // the most likely token left is always kept
    exact = exact && covers(lo); // XTC, the temperature and the draw weigh what is kept
    if (p.xtc_probability > 0.0) {
        hi = xtc_ceiling(lid, lo, hi);
    }
    let mk = unkey(hi);
    return Chain(lo, hi, mk, inv_temperature(lid, temperature, lo, hi, mk), u32(exact));
}

// Pass 1 of `sample`: one workgroup per CHUNK ids. Adjusts its ids into work[], then writes its
// statistics (ops::sample::STATS values: 0 max, 1 its lowest id, 2 Σ exp(v - max), 3 the same
// of v / T, 4 how many are finite, 5 their mean, 6 their Σ (v - mean)², 7 the floor: the
// CAND-th largest logit, 8 1 when some ids are left out, i.e. the chunk holds more than CAND;
// 9 is spare, where `sample` notes the way it went)
// and its candidates: every id above the floor and ties at it up to CAND, unused slots id -1.
// Greedy writes the first two alone.
@compute @workgroup_size(WG)
fn candidates(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_workgroup(wid, nwg);
    let first = g * CHUNK;
    let end = min(first + CHUNK, p.vocab);
    load_penalized(lid, first, end);
    let best = argmax(lid, first, end);
    let m = uniform_f(lid, work[best]);
    let at = p.vocab + g * STATS;
    if (p.temperature <= 0.0) {
        // Greedy needs only the maximum and its id.
        if (lid == 0u) {
            work[at] = m;
            work[at + 1u] = f32(best);
        }
        return;
    }
    let inv_t = 1.0 / max(p.temperature, MIN_TEMPERATURE);
    var z = 0.0;
    var zs = 0.0;
    var s1 = 0.0;
    var c = 0u;
    for (var i = first + lid; i < end; i += WG) {
        let v = work[i];
        let fin = v > NEG_BIG;
        z += exp(v - m);
        zs += exp(v * inv_t - m * inv_t);
        s1 += select(0.0, v, fin);
        c += u32(fin);
    }
    let zt = sum_f(lid, z);
    let zst = sum_f(lid, zs);
    let count = sum_u(lid, c);
    let mean = sum_f(lid, s1) / f32(max(count, 1u));
    var sq = 0.0;
    for (var i = first + lid; i < end; i += WG) {
        let d = work[i] - mean;
        sq += select(0.0, d * d, work[i] > NEG_BIG);
    }
    let m2 = sum_f(lid, sq);
    if (p.spread != 0u) {
        // The spread kernels need the chunk's maximum and mass alone.
        if (lid == 0u) {
            work[at] = m;
            work[at + 1u] = f32(best);
            work[at + 2u] = zt;
        }
        return;
    }
    // The floor: the CAND-th largest.
    let len = end - first;
    var floor = 0u;
    if (len > CAND) {
        floor = kth_largest_key(lid, first, len, 1u, CAND);
    }
    let out = cand_base(g);
    if (lid == 0u) {
        atomicStore(&slots, 0u);
    }
    workgroupBarrier();
    // Above the floor (fewer than CAND), then ties at it while slots are left.
    for (var i = first + lid; i < end; i += WG) {
        let v = work[i];
        if (len <= CAND || key(v) > floor) {
            let s = atomicAdd(&slots, 1u);
            work[out + 2u * s] = v;
            work[out + 2u * s + 1u] = f32(i);
        }
    }
    workgroupBarrier();
    if (len > CAND) {
        for (var i = first + lid; i < end; i += WG) {
            let v = work[i];
            if (key(v) == floor) {
                let s = atomicAdd(&slots, 1u);
                if (s < CAND) {
                    work[out + 2u * s] = v;
                    work[out + 2u * s + 1u] = f32(i);
                }
            }
        }
    }
    workgroupBarrier();
    let written = min(atomicLoad(&slots), CAND);
    for (var s = written + lid; s < CAND; s += WG) {
        work[out + 2u * s] = NEG_BIG;
        work[out + 2u * s + 1u] = -1.0;
    }
    if (lid == 0u) {
        work[at] = m;
        work[at + 1u] = f32(best);
        work[at + 2u] = zt;
        work[at + 3u] = zst;
        work[at + 4u] = f32(count);
        work[at + 5u] = mean;
        work[at + 6u] = m2;
        work[at + 7u] = unkey(floor);
        work[at + 8u] = select(0.0, 1.0, len > CAND);
    }
}

// The largest key with count(key >= it) >= need over work[base + stride * e], e < n; with
// stride 2, over (logit, id) pairs, skipping empty ones (id -1). A radix select, 8 bits of the
// key a round: each round counts the items whose key has the digits picked so far into 256
// buckets of the next 8 bits, and keeps the bucket where the count from the top reaches
// `need` (4 passes over the items and a dozen barriers, where a binary search took 32 and 200).
fn kth_largest_key(lid: u32, base: u32, n: u32, stride: u32, need: u32) -> u32 {
    var prefix = 0u;
    var left = need;
    for (var r = 0u; r < 4u; r++) {
        let shift = 24u - 8u * r;
        for (var b = lid; b < 256u; b += WG) {
            atomicStore(&sp_hist[b], 0u);
        }
        workgroupBarrier();
        for (var e = lid; e < n; e += WG) {
            let at = base + stride * e;
            let k = key(work[at]);
            if ((stride == 1u || work[at + 1u] >= 0.0) && (r == 0u || (k >> (shift + 8u)) == prefix)) {
                atomicAdd(&sp_hist[(k >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var cum = 0u;
            var pick = 0u;
            for (var i = 0u; i < 256u; i++) {
                let c = atomicLoad(&sp_hist[255u - i]);
                if (cum + c >= left) {
                    pick = 255u - i;
                    break;
                }
                cum += c;
            }
            bcast_u = (prefix << 8u) | pick;
            red_u[0] = left - cum;
        }
        prefix = workgroupUniformLoad(&bcast_u);
        left = workgroupUniformLoad(&red_u[0]);
    }
    return prefix;
}

// The largest logit's lowest id, from the chunks (in id order, each with its lowest).
fn global_best() -> u32 {
    var best = 0xffffffffu;
    var m = NEG_BIG;
    for (var g = 0u; g < n_chunks(); g++) {
        let v = stat(g, 0u);
        if (best == 0xffffffffu || v > m) {
            m = v;
            best = u32(stat(g, 1u));
        }
    }
    return best;
}

// Keeps the CAND largest of the chunks' candidates (ties at the cut as they come; bound then
// covers the ones left out) in cand_v/cand_i sorted by id; sets n_fast and bound. Returns
// the survivors' index of id `best`, or 0xffffffff.
fn gather(lid: u32, best: u32) -> u32 {
    let total = n_chunks() * CAND;
    let base = cand_base(0u);
    var c = 0u;
    for (var e = lid; e < total; e += WG) {
        c += u32(work[base + 2u * e + 1u] >= 0.0);
    }
    let filled = sum_u(lid, c);
    var cut = 0u;
    if (filled > CAND) {
        cut = kth_largest_key(lid, base, total, 2u, CAND);
    }
    if (lid == 0u) {
        atomicStore(&slots, 0u);
    }
    workgroupBarrier();
    for (var e = lid; e < total; e += WG) {
        let v = work[base + 2u * e];
        let id = work[base + 2u * e + 1u];
        if (id >= 0.0 && (filled <= CAND || key(v) > cut)) {
            let s = atomicAdd(&slots, 1u);
            gather_v[s] = v;
            gather_i[s] = u32(id);
        }
    }
    workgroupBarrier();
    if (filled > CAND) {
        for (var e = lid; e < total; e += WG) {
            let v = work[base + 2u * e];
            let id = work[base + 2u * e + 1u];
            if (id >= 0.0 && key(v) == cut) {
                let s = atomicAdd(&slots, 1u);
                if (s < CAND) {
                    gather_v[s] = v;
                    gather_i[s] = u32(id);
                }
            }
        }
    }
    workgroupBarrier();
    let n = uniform_u(lid, min(atomicLoad(&slots), CAND));
    var b = select(0u, cut, filled > CAND);
    for (var g = 0u; g < n_chunks(); g++) {
        if (stat(g, 8u) > 0.0) {
            b = max(b, key(stat(g, 7u)));
        }
    }
    bound = b;
    n_fast = n;
    // Sorted by id: each survivor's place is how many have a smaller id (ids are distinct).
    for (var e = lid; e < n; e += WG) {
        let my_i = gather_i[e];
        var r = 0u;
        for (var j = 0u; j < n; j++) {
            r += u32(gather_i[j] < my_i);
        }
        cand_v[r] = gather_v[e];
        cand_i[r] = my_i;
    }
    workgroupBarrier();
    var found = 0xffffffffu;
    for (var e = lid; e < n; e += WG) {
        if (cand_i[e] == best) {
            found = e;
        }
    }
    return min_u(lid, found);
}

// Greedy (temperature 0) in two small kernels of its own, which run none of the chain's code
// and compute none of its statistics. (On lavapipe with uniform parameters, which it compiles
// into each dispatch, the chain's pass cost ~120 ms even taking its greedy exit; these ~1 ms.)
// greedy_chunks: one workgroup per CHUNK ids writes the chunk's maximum and its lowest id
// (after the bias and the penalties) where `candidates` does; greedy_pick writes the id.
@compute @workgroup_size(WG)
fn greedy_chunks(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_workgroup(wid, nwg);
    let first = g * CHUNK;
    let end = min(first + CHUNK, p.vocab);
    load_penalized(lid, first, end);
    let best = argmax(lid, first, end);
    if (lid == 0u) {
        let at = p.vocab + g * STATS;
        work[at] = work[best];
        work[at + 1u] = f32(best);
    }
}

@compute @workgroup_size(1)
fn greedy_pick() {
    tokens[p.out_index] = global_best();
    work[p.vocab + 9u] = 2.0; // chunk 0's spare: the greedy path (ops::sample::path_taken)
    if (p.vocab == 0u) {
        work[0] = logits[0] + f32(adjust[0]); // never runs: keeps every binding in the layout
    }
}

// Pass 2: the chain over the survivors, or where they do not hold all it weighs, over the whole
// vocabulary (adjusted again from the logits); then the draw.
@compute @workgroup_size(WG)
fn sample(@builtin(local_invocation_index) lid: u32) {
    let best = uniform_u(lid, global_best());
    if (p.temperature <= 0.0) {
        if (lid == 0u) {
            tokens[p.out_index] = best;
            work[p.vocab + 9u] = 2.0;
        }
        return;
    }
    let mu = mirostat_mu();
    var c: Chain;
    var exact = 0u;
    // Mirostat with a dynamic temperature weighs the whole vocabulary's entropy.
    if (p.mirostat_tau <= 0.0 || p.dynatemp_range <= 0.0) {
        let b = gather(lid, best);
        if (b != 0xffffffffu) {
            fast = true;
            c = chain(lid, b, p.temperature, mu);
            exact = uniform_u(lid, c.exact);
        }
    }
    if (exact == 0u) {
        fast = false;
        load_penalized(lid, 0u, p.vocab);
        c = chain(lid, best, p.temperature, mu);
    }
    if (lid == 0u) {
        work[p.vocab + 9u] = f32(exact); // chunk 0's spare: which way it went (ops::sample::path_taken)
    }
    draw(lid, c, mu);
}

// The seeded draw from what chain `c` keeps, in id order: each thread owns a contiguous run of
// items (the survivors are sorted by id), so the running mass is in id order.
fn draw(lid: u32, c: Chain, mu: f32) {
    let k = pick(lid, c, 0u, n_items(), 0.0, -1.0);
    if (lid == 0u) {
        tokens[p.out_index] = id_at(k.i);
        if (p.mirostat_tau > 0.0) {
            let surprise = (log(k.total) - (val(k.i) - c.mk)) / 0.6931472;
            let n = arrayLength(&adjust);
            adjust[n - 2u] = bitcast<u32>(mu);
            adjust[n - 1u] = bitcast<u32>(mu - p.mirostat_eta * (surprise - p.mirostat_tau));
        }
    }
}

struct Picked {
    i: u32,     // the item drawn
    total: f32, // the kept mass it was drawn from
}

// Items first .. first + n, in order, weighed exp((v - c.mk) · c.scale) where chain `c` keeps
// them: the one where u falls in the running mass, which starts at `before`. u is `given`, or
// where that is negative uniform01() times the items' own total. Each thread owns a contiguous
// run of items; their masses are prefixed serially (over WG values: cheap, in order).
fn pick(lid: u32, c: Chain, first: u32, n: u32, before: f32, given: f32) -> Picked {
    let span = (n + WG - 1u) / WG;
    let start = first + min(lid * span, n);
    let end = first + min(lid * span + span, n);
    var local_mass = 0.0;
    var my_last = 0u;
    for (var i = start; i < end; i++) {
        let v = val(i);
        let k = kept(key(v), c.lo, c.hi);
        local_mass += select(0.0, exp((v - c.mk) * c.scale), k);
        my_last = select(my_last, i, k);
    }
    if (lid == 0u) {
        atomicStore(&last_kept, 0u);
        atomicStore(&chosen, 0xffffffffu);
    }
    workgroupBarrier();
    atomicMax(&last_kept, my_last);
    red_f[lid] = local_mass;
    workgroupBarrier();
    if (lid == 0u) {
        var run = before;
        var sum = 0.0;
        for (var t = 0u; t < WG; t++) {
            let v = red_f[t];
            red_f[t] = run;
            run += v;
            sum += v;
        }
        red_u[0] = bitcast<u32>(sum);
    }
    workgroupBarrier();
    let total = bitcast<f32>(red_u[0]);
    let u = select(given, uniform01() * total, given < 0.0);
    var run = red_f[lid];
    if (u >= run && u < run + local_mass) {
        for (var i = start; i < end; i++) {
            let v = val(i);
            if (kept(key(v), c.lo, c.hi)) {
                run += exp((v - c.mk) * c.scale);
                if (u < run) {
                    atomicMin(&chosen, i);
                    break;
                }
            }
        }
    }
    workgroupBarrier();
    var i = atomicLoad(&chosen);
    if (i == 0xffffffffu) {
        i = atomicLoad(&last_kept); // u fell on the very end through rounding
    }
    return Picked(i, total);
}

// ---- spread: the chain over the whole vocabulary in many workgroups, for top-k off (or past
// the vocabulary) with nothing but top-p, min-p and the temperature after the adjustments
// (ops::sample::spreads): what top-p or min-p keep may be most of the vocabulary, more than
// `sample`'s survivors hold. After `candidates` (which then writes only each chunk's maximum
// and mass: M, the largest logit, and Z = Σ exp(v - M) come from those):
//   spread_hist, round r = 0..3 (with top-p): top-p's threshold, the largest key t whose ids
//     (key >= t) hold top_p · Z, found 8 bits at a time (a radix select). A workgroup per chunk
//     sums exp(v - M) into 256 buckets by bits [24 - 8r, 32 - 8r) of the key, over the ids whose
//     higher bits are the digits picked so far; from round 1 on, every workgroup first picks
//     the last round's digit from all chunks' buckets itself (the same sums in the same order),
//     the bucket where the mass from the top reaches top_p · Z;
//   spread_mass: picks the last digit, so the threshold, which min-p's (M + ln min_p) may
//     raise; each chunk sums its kept ids' weight exp((v - M) / T);
//   spread_draw: one workgroup finds the chunk in which u · (the kept mass) falls, counting in
//     id order, then the id within it: the draw `draw` makes, without a pass over every id.
// A round writes its buckets into one half of each chunk's candidate area and reads the last
// round's from the other; the digits picked so far go to two alternating slots after the
// chunks (ops::sample::SPREAD_STATE), so no workgroup overwrites what another still reads.
var<workgroup> sp_hist: array<atomic<u32>, 256>; // f32 bits, added by compare-and-swap
var<workgroup> sp_sum: array<f32, 256>;

struct Digits {
    prefix: u32, // the key's digits picked so far
    above: f32,  // the mass of the ids whose key lies above them
}

fn spread_slot(d: u32) -> u32 {
    return p.vocab + n_chunks() * (STATS + 2u * CAND) + 3u * (d % 2u);
}

// Where chunk g's buckets of round r are.
fn hist_at(g: u32, r: u32) -> u32 {
    return cand_base(g) + CAND * (r % 2u);
}

fn chunks_max() -> f32 {
    var m = NEG_BIG;
    for (var g = 0u; g < n_chunks(); g++) {
        m = max(m, stat(g, 0u));
    }
    return m;
}

// Never runs: keeps every binding in a spread kernel's layout.
fn spread_layout() {
    if (p.vocab == 0u) {
        work[0] = logits[0] + f32(adjust[0]) + f32(tokens[0]);
    }
}

fn hist_add(b: u32, v: f32) {
    var old = atomicLoad(&sp_hist[b]);
    loop {
        let r = atomicCompareExchangeWeak(&sp_hist[b], old, bitcast<u32>(bitcast<f32>(old) + v));
        if (r.exchanged) {
            break;
        }
        old = r.old_value;
    }
}

// Digit d from round d's buckets of every chunk and the digits before it (slot (d - 1) % 2);
// workgroup 0 (`keep`) notes the result in slot d % 2. Where rounding leaves the target
// unreached, the lowest bucket with any mass.
fn spread_digit(lid: u32, d: u32, goal: f32, keep: bool) -> Digits {
    var prev = Digits(0u, 0.0);
    if (d > 0u) {
        let at = spread_slot(d - 1u);
        prev = Digits((u32(work[at]) << 16u) | u32(work[at + 1u]), work[at + 2u]);
    }
    for (var b = lid; b < 256u; b += WG) {
        var h = 0.0;
        for (var g = 0u; g < n_chunks(); g++) {
            h += work[hist_at(g, d) + b];
        }
        sp_sum[b] = h;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var cum = prev.above;
        var pick = 256u;
        var last = 0u;
        var last_cum = cum;
        for (var i = 0u; i < 256u; i++) {
            let b = 255u - i;
            let h = sp_sum[b];
            if (h > 0.0) {
                if (cum + h >= goal) {
                    pick = b;
                    break;
                }
                last = b;
                last_cum = cum;
            }
            cum += h;
        }
        if (pick == 256u) {
            pick = last;
            cum = last_cum;
        }
        let prefix = (prev.prefix << 8u) | pick;
        bcast_u = prefix;
        bcast_f = cum;
        if (keep) {
            let at = spread_slot(d);
            work[at] = f32(prefix >> 16u);
            work[at + 1u] = f32(prefix & 0xffffu);
            work[at + 2u] = cum;
        }
    }
    return Digits(workgroupUniformLoad(&bcast_u), workgroupUniformLoad(&bcast_f));
}

@compute @workgroup_size(WG)
fn spread_hist(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    spread_layout();
    let g = linear_workgroup(wid, nwg);
    let r = p.round;
    let m = chunks_max();
    var prefix = 0u;
    if (r > 0u) {
        prefix = spread_digit(lid, r - 1u, p.top_p * total_mass(m, false, 1.0), g == 0u).prefix;
    }
    for (var b = lid; b < 256u; b += WG) {
        atomicStore(&sp_hist[b], 0u);
    }
    workgroupBarrier();
    let shift = 24u - 8u * r;
    let first = g * CHUNK;
    let end = min(first + CHUNK, p.vocab);
    for (var i = first + lid; i < end; i += WG) {
        let v = work[i];
        let k = key(v);
        if (r == 0u || (k >> (shift + 8u)) == prefix) {
            hist_add((k >> shift) & 255u, exp(v - m));
        }
    }
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG) {
        work[hist_at(g, r) + b] = bitcast<f32>(atomicLoad(&sp_hist[b]));
    }
}

// What the spread chain keeps and how the draw weighs it: from top-p's threshold (after the
// 4 rounds), raised by min-p's, up to the largest logit M, weighed exp((v - M) / T).
fn spread_chain(lid: u32) -> Chain {
    let m = chunks_max();
    var lo = 0u;
    if (p.top_p < 1.0) {
        lo = spread_digit(lid, 3u, p.top_p * total_mass(m, false, 1.0), false).prefix;
    }
    if (p.min_p > 0.0) {
        lo = max(lo, key(m + log(p.min_p)));
    }
    lo = min(lo, key(m)); // the most likely token is always kept
    return Chain(lo, key(m), m, 1.0 / max(p.temperature, MIN_TEMPERATURE), 1u);
}

// Chunk g's kept mass at the temperature goes where its round-0 buckets were (no longer read).
@compute @workgroup_size(WG)
fn spread_mass(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    spread_layout();
    let g = linear_workgroup(wid, nwg);
    let c = spread_chain(lid);
    let first = g * CHUNK;
    let end = min(first + CHUNK, p.vocab);
    var s = 0.0;
    for (var i = first + lid; i < end; i += WG) {
        let v = work[i];
        s += select(0.0, exp((v - c.mk) * c.scale), kept(key(v), c.lo, c.hi));
    }
    let total = sum_f(lid, s);
    if (lid == 0u) {
        work[hist_at(g, 0u)] = total;
    }
}

@compute @workgroup_size(WG)
fn spread_draw(@builtin(local_invocation_index) lid: u32) {
    spread_layout();
    let c = spread_chain(lid);
    // The chunk where u falls, in id order (every thread alike).
    var z = 0.0;
    for (var g = 0u; g < n_chunks(); g++) {
        z += work[hist_at(g, 0u)];
    }
    let u = uniform01() * z;
    var g = 0u;
    var before = 0.0;
    var run = 0.0;
    for (var h = 0u; h < n_chunks(); h++) {
        let kc = work[hist_at(h, 0u)];
        if (kc > 0.0) {
            g = h; // the last chunk with mass, where u fell on the very end through rounding
            before = run;
            if (u < run + kc) {
                break;
            }
        }
        run += kc;
    }
    // Within it, as `draw` picks (fast is false here: items are ids).
    let first = g * CHUNK;
    let k = pick(lid, c, first, min(first + CHUNK, p.vocab) - first, before, u);
    if (lid == 0u) {
        tokens[p.out_index] = k.i;
        work[p.vocab + 9u] = 3.0; // chunk 0's spare: the spread path (ops::sample::path_taken)
    }
}

// logprobs: log-probabilities of row `row` after the adjustments, for the id at
// tokens[out_index] and the `alternatives` most likely ids (at most MAX_TOP; lowest id first on
// ties). mode 0: the log-softmax over every id at the temperature the chain weighs at
// (greedy counts as temperature 1): the distribution before the filters cut it down. mode 1:
// the distribution the draw `draw` chose from (the whole chain; mirostat at the mu that draw
// used), ids it dropped at NEG_BIG; greedy counts as temperature 1 here too. Writes
// work[0 .. 2 + 2 * alternatives) = [id, its log-probability, then the alternatives with theirs];
// ids as f32 (exact below 2^24).
const MAX_TOP: u32 = 20u;
var<workgroup> pick_id: array<u32, 21>;
var<workgroup> pick_lp: array<f32, 21>;

@compute @workgroup_size(WG)
fn logprobs(@builtin(local_invocation_index) lid: u32) {
    load_penalized(lid, 0u, p.vocab);
    let best = argmax(lid, 0u, p.vocab);
    let temperature = select(p.temperature, 1.0, p.temperature <= 0.0);
    let mu = bitcast<f32>(adjust[arrayLength(&adjust) - 2u]);
    let c = chain(lid, best, temperature, mu);
    if (p.mode == 0u) {
        // Every id, weighed as the draw weighs the kept ones (relative to the largest, which
        // the filters may have dropped).
        let m = uniform_f(lid, work[best]);
        let lse = log(kept_mass_scaled(lid, 0u, 0xffffffffu, m, c.scale));
        for (var i = lid; i < p.vocab; i += WG) {
            work[i] = (work[i] - m) * c.scale - lse;
        }
    } else {
        let lse = log(kept_mass_scaled(lid, c.lo, c.hi, c.mk, c.scale));
        for (var i = lid; i < p.vocab; i += WG) {
            let v = work[i];
            work[i] = select(NEG_BIG, (v - c.mk) * c.scale - lse, kept(key(v), c.lo, c.hi));
        }
    }
    storageBarrier();
    workgroupBarrier();
    let n = min(min(p.alternatives, MAX_TOP), p.vocab);
    if (lid == 0u) {
        let id = tokens[p.out_index];
        pick_id[0] = id;
        pick_lp[0] = select(NEG_BIG, work[min(id, p.vocab - 1u)], id < p.vocab);
    }
    workgroupBarrier();
    // The top n, one argmax at a time; each pick is then excluded.
    for (var k = 0u; k < n; k++) {
        let id = argmax(lid, 0u, p.vocab);
        if (lid == 0u) {
            pick_id[k + 1u] = id;
            pick_lp[k + 1u] = work[id];
            work[id] = NEG_BIG;
        }
        storageBarrier();
        workgroupBarrier();
    }
    if (lid == 0u) {
        for (var j = 0u; j <= n; j++) {
            work[2u * j] = f32(pick_id[j]);
            work[2u * j + 1u] = pick_lp[j];
        }
    }
}

// Σ exp((work[i] - mk) * scale) over the kept ids.
fn kept_mass_scaled(lid: u32, lo: u32, hi: u32, mk: f32, scale: f32) -> f32 {
    var z = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
        z += select(0.0, exp((v - mk) * scale), kept(key(v), lo, hi));
    }
    return sum_f(lid, z);
}
