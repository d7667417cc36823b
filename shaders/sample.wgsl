// sample.wgsl: choose the next token on the GPU, in one workgroup, and write its id into the
// token buffer (where the next step's embedding reads it) so only 4 bytes ever come back.
//
// Order (documented in README): logit bias -> repetition penalty -> DRY -> temperature
// (fixed, or dynamic from the entropy) -> top-k -> top-p
// -> min-p -> XTC -> seeded draw. temperature = 0 means greedy (argmax, lowest id on ties).
//   bias:     l[id] += bias for the first adjust[0] pairs of adjust[] (-inf bans an id)
//   penalty:  for each distinct id in tokens[hist_start .. hist_end): l > 0 ? l / r : l * r
//   DRY:      l[id] -= amount for the next adjust[1] pairs (found on the CPU from the ids)
//   top-k:    keep ids whose logit >= the k-th largest (ties at the boundary are kept)
//   top-nσ:   with top-k, keep ids whose logit >= max - n·σ (σ over the finite logits)
//   top-p:    keep the smallest top set whose probability mass >= top_p (boundary ties kept)
//   min-p:    keep ids with p >= min_p * p_max
//   XTC:      if this draw applies it (xtc_probability > 0, decided by the host with the same
//             generator) and two or more kept ids have p >= xtc_threshold, drop all of them
//             but the least likely (ties with it kept)
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
    _pad0: u32,
    xtc_threshold: f32,
    xtc_probability: f32,   // 0 = XTC does not act on this draw
    top_n_sigma: f32,       // 0 = off
    _pad1: u32,
    dynatemp_range: f32,    // 0 = off
    dynatemp_exponent: f32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // (rows, vocab)
@group(0) @binding(1) var<storage, read_write> work: array<f32>;    // (vocab,) scratch
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;  // the sequence's ids
// [bias count, DRY count, then (id, f32 bits) pairs: the biases to add, DRY's amounts to subtract].
@group(0) @binding(3) var<storage, read> adjust: array<u32>;
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

// 1 / the temperature for work[] (1 for greedy): p.temperature, or with dynatemp_range > 0
// lo + (hi - lo) * (H / ln vocab)^exponent, H the entropy of softmax(work) (finite ids).
fn inv_temperature(lid: u32) -> f32 {
    if (p.temperature <= 0.0) {
        return 1.0;
    }
    if (p.dynatemp_range <= 0.0) {
        return 1.0 / p.temperature;
    }
    let mx = uniform_f(lid, work[argmax(lid)]);
    var z = 0.0;
    var s1 = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let d = work[i] - mx;
        let e = select(0.0, exp(d), work[i] > NEG_BIG);
        z += e;
        s1 += select(0.0, e * d, work[i] > NEG_BIG);
    }
    let zt = sum_f(lid, z);
    let h = log(zt) - sum_f(lid, s1) / zt;
    var hn = 0.0;
    if (p.vocab > 1u) {
        hn = max(h / log(f32(p.vocab)), 0.0);
    }
    let lo = max(p.temperature - p.dynatemp_range, 0.0);
    let hi = p.temperature + p.dynatemp_range;
    let scaled = select(0.0, pow(max(hn, 1e-30), p.dynatemp_exponent), hn > 0.0);
    return 1.0 / max(lo + (hi - lo) * scaled, MIN_TEMPERATURE);
}

fn kept(k: u32, tau: u32, top: u32) -> bool {
    return k >= tau && k <= top;
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
    let fits = (arrayLength(&adjust) - 2u) / 2u;
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

// XTC's ceiling on the kept keys (key >= tau): the least likely key with p >= threshold when
// two or more have it, else key(m) (no cut).
fn xtc_ceiling(lid: u32, tau: u32, m: f32) -> u32 {
    var z = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
        z += select(0.0, exp(v - m), key(v) >= tau);
    }
    let cut = p.xtc_threshold * sum_f(lid, z);
    var c = 0u;
    var lowest = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = work[i];
        let hit = key(v) >= tau && exp(v - m) >= cut;
        c += u32(hit);
        lowest = select(lowest, min(lowest, key(v)), hit);
    }
    let n = sum_u(lid, c);
    let low = min_u(lid, lowest);
    return select(key(m), low, n >= 2u);
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

    // Temperature, and the max of the scaled logits.
    let inv_t = inv_temperature(lid);
    for (var i = lid; i < p.vocab; i += WG) {
        work[i] = work[i] * inv_t;
    }
    storageBarrier();
    workgroupBarrier();
    let m = uniform_f(lid, work[best]);

    // top-k: the largest key tau with count(key >= tau) >= k.
    var tau = 0u;
    if (p.top_k > 0u && p.top_k < p.vocab) {
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
        tau = lo;
    }

    // top-nσ: mean, then the population standard deviation of the scaled logits.
    if (p.top_n_sigma > 0.0) {
        // Over the finite logits: a logit bias of -inf leaves its id out.
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
        tau = max(tau, key(m - p.top_n_sigma * sigma));
    }

    // top-p over what top-k and top-nσ kept: the largest tau_p with mass(key >= tau_p) >= top_p * mass.
    if (p.top_p < 1.0) {
        var z = 0.0;
        for (var i = lid; i < p.vocab; i += WG) {
            let v = work[i];
            z += select(0.0, exp(v - m), key(v) >= tau);
        }
        let target_mass = p.top_p * sum_f(lid, z);
        var lo = tau;
        var hi = key(m);
        while (lo < hi) {
            let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u); // ceil, without overflow
            var s = 0.0;
            for (var i = lid; i < p.vocab; i += WG) {
                let v = work[i];
                s += select(0.0, exp(v - m), key(v) >= mid);
            }
            if (sum_f(lid, s) >= target_mass) {
                lo = mid;
            } else {
                hi = mid - 1u;
            }
        }
        tau = lo;
    }

    // min-p: p_i >= min_p * p_max  <=>  v_i >= m + ln(min_p).
    if (p.min_p > 0.0) {
        tau = max(tau, key(m + log(p.min_p)));
    }
    tau = min(tau, key(m)); // the most likely token is always kept
    var top = key(m);
    if (p.xtc_probability > 0.0) {
        top = xtc_ceiling(lid, tau, m);
    }

    // Draw: each thread owns a contiguous chunk of ids, so the running mass is in id order.
    let chunk = (p.vocab + WG - 1u) / WG;
    let start = min(lid * chunk, p.vocab);
    let end = min(start + chunk, p.vocab);
    var local_mass = 0.0;
    var my_last = 0u;
    for (var i = start; i < end; i++) {
        let v = work[i];
        let k = kept(key(v), tau, top);
        local_mass += select(0.0, exp(v - m), k);
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
            if (kept(key(v), tau, top)) {
                run += exp(v - m);
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
            // u fell on the very end through rounding: the most likely id, unless XTC removed it.
            id = select(atomicLoad(&last_kept), best, top == key(m));
        }
        tokens[p.out_index] = id;
    }
}

// logprobs: the log-softmax of row `row` after the repetition penalty and temperature
// (greedy counts as temperature 1): the distribution top-k/top-p/min-p then cut down. Writes
// work[0 .. 2 + 2 * top_k) = [id at tokens[out_index], its log-probability, then the top_k
// most likely ids (lowest id first on ties) with theirs]; ids as f32 (exact below 2^24).
// Here `top_k` is the number of alternatives, at most MAX_TOP.
const MAX_TOP: u32 = 20u;
var<workgroup> pick_id: array<u32, 21>;
var<workgroup> pick_lp: array<f32, 21>;

@compute @workgroup_size(WG)
fn logprobs(@builtin(local_invocation_index) lid: u32) {
    load_penalized(lid);
    let inv_t = inv_temperature(lid);
    for (var i = lid; i < p.vocab; i += WG) {
        work[i] = work[i] * inv_t;
    }
    storageBarrier();
    workgroupBarrier();
    let m = uniform_f(lid, work[argmax(lid)]);
    var z = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        z += exp(work[i] - m);
    }
    let lse = m + log(sum_f(lid, z));
    let n = min(min(p.top_k, MAX_TOP), p.vocab);
    if (lid == 0u) {
        let id = tokens[p.out_index];
        pick_id[0] = id;
        pick_lp[0] = select(NEG_BIG, work[min(id, p.vocab - 1u)] - lse, id < p.vocab);
    }
    workgroupBarrier();
    // The top n, one argmax at a time; each pick is then excluded.
    for (var k = 0u; k < n; k++) {
        let id = argmax(lid);
        if (lid == 0u) {
            pick_id[k + 1u] = id;
            pick_lp[k + 1u] = work[id] - lse;
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
