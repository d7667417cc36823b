// sample.wgsl: choose the next token on the GPU, in one workgroup, and write its id into the
// token buffer (where the next step's embedding reads it) so only 4 bytes ever come back.
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
// is exact, with 32 counting passes and no sort.

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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // (rows, vocab)
@group(0) @binding(1) var<storage, read_write> work: array<f32>;    // (vocab,) scratch
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;  // the sequence's ids
// [bias count, DRY count, then (id, f32 bits) pairs: the biases to add, DRY's amounts to
// subtract; ...; the last two: mirostat's mu (f32 bits) of the last draw and for the next].
@group(0) @binding(3) var<storage, read_write> adjust: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> chosen: atomic<u32>;
var<workgroup> last_kept: atomic<u32>; // fallback when rounding leaves u past the end
// Broadcast slots: read back with workgroupUniformLoad so loops with barriers stay uniform.
var<workgroup> bcast_u: u32;
var<workgroup> bcast_f: f32;

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

fn sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] += red_u[lid + s];
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
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

// Σ exp(work[i] - mk) over the kept ids.
fn kept_mass(lid: u32, lo: u32, hi: u32, mk: f32) -> f32 {
    var z = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
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
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
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

// Lowest index holding the maximum of work[].
fn argmax(lid: u32) -> u32 {
    var best = NEG_BIG;
    var best_i = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
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
            if (ov > red_f[lid] || (ov == red_f[lid] && oi < red_u[lid])) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
}

// work[] = row `row` of the logits, with the repetition penalty and then the presence and
// frequency penalties (v -= presence + count * frequency) applied once per distinct id in
// the window.
fn load_penalized(lid: u32) {
    let base = p.row * p.vocab;
    for (var i = lid; i < p.vocab; i += WG) {
        work[i] = logits[base + i];
    }
    storageBarrier();
    workgroupBarrier();
    apply_pairs(lid, 0u, adjust[0], 1.0);
    if (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) {
        for (var j = p.hist_start + lid; j < p.hist_end; j += WG) {
            let id = tokens[j];
            var first = id < p.vocab;
            for (var e = p.hist_start; e < j && first; e++) {
                first = tokens[e] != id;
            }
            if (first) {
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
    apply_pairs(lid, adjust[0], adjust[1], -1.0);
}

// work[id] += sign * amount for pairs first .. first + n of adjust[]. Each list names an id
// once, so threads never touch the same slot.
fn apply_pairs(lid: u32, first: u32, n: u32, sign: f32) {
    let fits = (arrayLength(&adjust) - 2u - MIROSTAT_SLOTS) / 2u;
    let end = min(first + n, fits);
    for (var k = first + lid; k < end; k += WG) {
        let id = adjust[2u + 2u * k];
        if (id < p.vocab) {
            work[id] += sign * bitcast<f32>(adjust[3u + 2u * k]);
        }
    }
    storageBarrier();
    workgroupBarrier();
}

fn min_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] = min(red_u[lid], red_u[lid + s]);
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
}

fn max_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] = max(red_u[lid], red_u[lid + s]);
        }
        workgroupBarrier();
    }
    return uniform_u(lid, red_u[0]);
}

// top-k: the largest key with count(key >= it) >= k.
fn top_k_floor(lid: u32) -> u32 {
    var lo = 0u;
    var hi = 0xffffffffu;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u); // ceil, without overflow
        var c = 0u;
        for (var i = lid; i < p.vocab; i += WG) {
            c += u32(key(work[i]) >= mid);
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
    for (var i = lid; i < p.vocab; i += WG) {
        let fin = work[i] > NEG_BIG;
        acc += select(0.0, work[i], fin);
        c += u32(fin);
    }
    let count = f32(max(sum_u(lid, c), 1u));
    let mean = sum_f(lid, acc) / count;
    var sq = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let d = work[i] - mean;
        sq += select(0.0, d * d, work[i] > NEG_BIG);
    }
    let sigma = sqrt(sum_f(lid, sq) / count);
    return key(m - p.top_n_sigma * sigma);
}

// Typical: the span [lo, hi] of the kept ids within the smallest distance r of c = Σ p·v
// whose mass exceeds typical_p (r found by binary search over the bits of r >= 0).
fn typical_span(lid: u32, lo: u32, hi: u32) -> vec2<u32> {
    let mk = unkey(hi);
    var z = 0.0;
    var s1 = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
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
        for (var i = lid; i < p.vocab; i += WG) {
            let v = work[i];
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
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
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
    let target_mass = p.top_p * kept_mass(lid, lo, hi, mk);
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
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
        let hit = kept(key(v), lo, hi) && exp(v - mk) >= cut;
        c += u32(hit);
        lowest = select(lowest, min(lowest, key(v)), hit);
    }
    let n = sum_u(lid, c);
    let low = min_u(lid, lowest);
    return select(hi, low, n >= 2u);
}

// What the chain keeps of work[] and how the draw weighs it: exp((v - mk) * scale) for ids
// with lo <= key(v) <= hi.
struct Chain {
    lo: u32,
    hi: u32,
    mk: f32,
    scale: f32,
}

// mirostat's mu for this draw: 2 tau at draw 0, else what the last draw left.
fn mirostat_mu() -> f32 {
    if (p.draw == 0u) {
        return 2.0 * p.mirostat_tau;
    }
    return bitcast<f32>(adjust[arrayLength(&adjust) - 1u]);
}

// The chain after the adjustments, at `temperature` (> 0), with mirostat at `mu`; `best` is the
// argmax of work[]. With mirostat, work[] is scaled by 1 / T in place.
fn chain(lid: u32, best: u32, temperature: f32, mu: f32) -> Chain {
    let m = uniform_f(lid, work[best]);
    if (p.mirostat_tau > 0.0) {
        let inv_t = inv_temperature(lid, temperature, 0u, 0xffffffffu, m);
        for (var i = lid; i < p.vocab; i += WG) {
            work[i] = work[i] * inv_t;
        }
        storageBarrier();
        workgroupBarrier();
        let ms = uniform_f(lid, work[best]);
        let lse = ms + log(kept_mass(lid, 0u, 0xffffffffu, ms));
        return Chain(key(min(lse - mu * 0.6931472, ms)), key(ms), ms, 1.0);
    }
    var lo = 0u;
    var hi = key(m);
    if (p.top_n_sigma > 0.0) {
        lo = max(lo, top_n_sigma_floor(lid, m));
    }
    if (p.top_k > 0u && p.top_k < p.vocab) {
        lo = max(lo, top_k_floor(lid));
    }
    if (p.typical_p < 1.0) {
        let span = typical_span(lid, lo, hi);
        lo = span.x;
        hi = span.y;
    }
    if (p.top_p < 1.0) {
        lo = top_p_floor(lid, lo, hi);
    }
    if (p.min_p > 0.0) {
        lo = max(lo, key(unkey(hi) + log(p.min_p)));
    }
    lo = min(lo, hi); // the most likely token left is always kept
    if (p.xtc_probability > 0.0) {
        hi = xtc_ceiling(lid, lo, hi);
    }
    let mk = unkey(hi);
    return Chain(lo, hi, mk, inv_temperature(lid, temperature, lo, hi, mk));
}

@compute @workgroup_size(WG)
fn sample(@builtin(local_invocation_index) lid: u32) {
    load_penalized(lid);
    let best = argmax(lid);
    if (p.temperature <= 0.0) {
        if (lid == 0u) {
            tokens[p.out_index] = best;
        }
        return;
    }
    let mu = mirostat_mu();
    let c = chain(lid, best, p.temperature, mu);

    // Draw: each thread owns a contiguous chunk of ids, so the running mass is in id order.
    let chunk = (p.vocab + WG - 1u) / WG;
    let start = min(lid * chunk, p.vocab);
    let end = min(start + chunk, p.vocab);
    var local_mass = 0.0;
    var my_last = 0u;
    for (var i = start; i < end; i++) {
        let v = work[i];
        let k = kept(key(v), c.lo, c.hi);
        local_mass += select(0.0, exp((v - c.mk) * c.scale), k);
        my_last = select(my_last, i, k);
    }
    if (lid == 0u) {
        atomicStore(&last_kept, 0u);
    }
    workgroupBarrier();
    atomicMax(&last_kept, my_last);
    // Exclusive prefix sum of the chunk masses (serial over 256 values: cheap and exact order).
    red_f[lid] = local_mass;
    if (lid == 0u) {
        atomicStore(&chosen, 0xffffffffu);
    }
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0.0;
        for (var t = 0u; t < WG; t++) {
            let v = red_f[t];
            red_f[t] = run;
            run += v;
        }
        red_u[0] = bitcast<u32>(run);
    }
    workgroupBarrier();
    let total = bitcast<f32>(red_u[0]);
    let u = uniform01() * total;
    var run = red_f[lid];
    if (u >= run && u < run + local_mass) {
        for (var i = start; i < end; i++) {
            let v = work[i];
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
    if (lid == 0u) {
        var id = atomicLoad(&chosen);
        if (id == 0xffffffffu) {
            id = atomicLoad(&last_kept); // u fell on the very end through rounding
        }
        tokens[p.out_index] = id;
        if (p.mirostat_tau > 0.0) {
            let surprise = (log(total) - (work[id] - c.mk)) / 0.6931472;
            let n = arrayLength(&adjust);
            adjust[n - 2u] = bitcast<u32>(mu);
            adjust[n - 1u] = bitcast<u32>(mu - p.mirostat_eta * (surprise - p.mirostat_tau));
        }
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
    load_penalized(lid);
    let best = argmax(lid);
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
        let id = argmax(lid);
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
