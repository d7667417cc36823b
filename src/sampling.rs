//! Sampling settings, their validation, and the CPU reference sampler that the GPU kernel
//! (shaders/sample.wgsl) is tested against. Both apply, in this order: repetition penalty,
//! temperature, top-k, top-p, min-p, then a seeded draw.

use crate::error::{Error, Result};
use crate::models::GenerationDefaults;

/// Below this, 1/temperature overflows the logits' range; use 0 (greedy) instead.
pub const MIN_TEMPERATURE: f32 = 1e-3;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off; > 1 discourages tokens already in the window.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalties look at.
    pub repeat_last_n: usize,
    pub seed: u64,
    /// OpenAI's penalties over the same window, after the repetition penalty: each distinct
    /// id in it loses `presence_penalty + count * frequency_penalty`. 0 = off.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

/// The sampling options a user gave, each None where not given.
#[derive(Clone, Debug, Default)]
pub struct SamplingFlags {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
}

/// quill's own defaults, used where neither a flag nor the model's generation_config.json
/// sets a value; `quill write --help` states the same numbers.
impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.1, repeat_last_n: 64, seed: 0, presence_penalty: 0.0, frequency_penalty: 0.0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 0, seed: 0, presence_penalty: 0.0, frequency_penalty: 0.0 }
    }

    /// Each setting from the user's flag if given, else from the model's generation config,
    /// else quill's default; `repeat_last_n` and `seed` are the defaults', for the caller to set.
    /// `do_sample: false` in the model's config means greedy unless a temperature was given.
    /// Also returns the Hugging Face names of the settings taken from the model.
    pub fn resolve(flags: &SamplingFlags, model: &GenerationDefaults) -> (Self, Vec<&'static str>) {
        let d = SamplingParams::default();
        let model_temperature = if model.do_sample == Some(false) { Some(0.0) } else { model.temperature };
        let mut from_model = Vec::new();
        let mut pick = |flag: Option<f32>, model: Option<f32>, name: &'static str, default: f32| match (flag, model) {
            (Some(v), _) => v,
            (None, Some(v)) => {
                from_model.push(name);
                v
            }
            (None, None) => default,
        };
        let temperature = pick(flags.temperature, model_temperature, if model.do_sample == Some(false) { "do_sample" } else { "temperature" }, d.temperature);
        let top_p = pick(flags.top_p, model.top_p, "top_p", d.top_p);
        let min_p = pick(flags.min_p, model.min_p, "min_p", d.min_p);
        let repeat_penalty = pick(flags.repeat_penalty, model.repetition_penalty, "repetition_penalty", d.repeat_penalty);
        let top_k = match (flags.top_k, model.top_k) {
            (Some(k), _) => k,
            (None, Some(k)) => {
                from_model.push("top_k");
                k
            }
            (None, None) => d.top_k,
        };
        (SamplingParams { temperature, top_k, top_p, min_p, repeat_penalty, ..d }, from_model)
    }

    /// One line for humans: "temperature 0.8, top-k 40, …", or "greedy, …" at temperature 0.
    pub fn describe(&self) -> String {
        let penalty = if self.repeat_penalty == 1.0 { "no repeat penalty".to_string() } else { format!("repeat penalty {} over {} tokens", self.repeat_penalty, self.repeat_last_n) };
        if self.temperature == 0.0 {
            format!("greedy (temperature 0), {penalty}")
        } else {
            format!("temperature {}, top-k {}, top-p {}, min-p {}, {penalty}", self.temperature, self.top_k, self.top_p, self.min_p)
        }
    }

    /// Refuses values that have no meaning, naming the option.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 || (t > 0.0 && t < MIN_TEMPERATURE) {
            return Err(Error::arg("--temperature", format!("{t} must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}")));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg("--top-p", format!("{} must be in (0, 1] (1 = off)", self.top_p)));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return Err(Error::arg("--min-p", format!("{} must be in [0, 1) (0 = off)", self.min_p)));
        }
        let r = self.repeat_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(Error::arg("--repeat-penalty", format!("{r} must be a finite number > 0 (1 = off)")));
        }
        for (name, v) in [("--presence-penalty", self.presence_penalty), ("--frequency-penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::arg(name, format!("{v} must be between -2 and 2 (0 = off)")));
            }
        }
        Ok(())
    }
}

fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The uniform number in [0, 1) of draw `draw` under `seed`; the GPU computes the same.
pub fn uniform01(seed: u64, draw: u32) -> f32 {
    let h = pcg((seed as u32) ^ pcg(((seed >> 32) as u32) ^ pcg(draw)));
    (h >> 8) as f32 / 16777216.0
}

/// Applies the repetition penalty once per distinct id of `history`.
pub fn apply_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    apply_penalties(logits, history, penalty, 0.0, 0.0);
}

/// The repetition penalty, then the presence and frequency penalties, once per distinct id
/// of `history` (the GPU computes the same, in f32).
pub fn apply_penalties(logits: &mut [f32], history: &[u32], penalty: f32, presence: f32, frequency: f32) {
    if penalty == 1.0 && presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &id in history {
        if (id as usize) < logits.len() && seen.insert(id) {
            let count = history.iter().filter(|&&h| h == id).count() as f32;
            let v = &mut logits[id as usize];
            if penalty != 1.0 {
                *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
            }
            *v -= presence + count * frequency;
        }
    }
}

/// The distribution the sampler draws from: probabilities per id after penalty,
/// temperature, top-k, top-p and min-p (computed in f64). Greedy gives a one-hot vector.
pub fn distribution(logits: &[f32], history: &[u32], s: &SamplingParams) -> Vec<f64> {
    let mut l = logits.to_vec();
    apply_penalties(&mut l, history, s.repeat_penalty, s.presence_penalty, s.frequency_penalty);
    let n = l.len();
    let best = (0..n).fold(0, |b, i| if l[i] > l[b] { i } else { b });
    if s.temperature <= 0.0 {
        let mut p = vec![0.0; n];
        p[best] = 1.0;
        return p;
    }
    let v: Vec<f64> = l.iter().map(|&x| (x * (1.0 / s.temperature)) as f64).collect();
    let m = v[best];
    let mut sorted: Vec<f64> = v.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut thr = f64::NEG_INFINITY;
    if s.top_k > 0 && s.top_k < n {
        thr = sorted[s.top_k - 1];
    }
    if s.top_p < 1.0 {
        let kept: Vec<f64> = sorted.iter().copied().filter(|&x| x >= thr).collect();
        let z: f64 = kept.iter().map(|x| (x - m).exp()).sum();
        // Smallest top set (ties included) whose mass reaches top_p.
        let mut mass = 0.0;
        for (i, &x) in kept.iter().enumerate() {
            mass += (x - m).exp();
            let tie_next = kept.get(i + 1).is_some_and(|&y| y == x);
            if mass >= s.top_p as f64 * z && !tie_next {
                thr = thr.max(x);
                break;
            }
        }
    }
    if s.min_p > 0.0 {
        thr = thr.max(m + (s.min_p as f64).ln());
    }
    thr = thr.min(m);
    let w: Vec<f64> = v.iter().map(|&x| if x >= thr { (x - m).exp() } else { 0.0 }).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

/// Log-softmax (f64) of the logits after the repetition penalty and temperature: the
/// distribution that top-k, top-p and min-p then cut down (greedy counts as temperature 1).
/// The CPU reference of the GPU's `ops::sample::logprobs`.
pub fn log_softmax(logits: &[f32], history: &[u32], s: &SamplingParams) -> Vec<f64> {
    let mut l = logits.to_vec();
    apply_penalties(&mut l, history, s.repeat_penalty, s.presence_penalty, s.frequency_penalty);
    let t = if s.temperature > 0.0 { s.temperature } else { 1.0 };
    let v: Vec<f64> = l.iter().map(|&x| (x * (1.0 / t)) as f64).collect();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z = v.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|x| x - z).collect()
}

/// CPU reference sampler: draws from `distribution` with the same random number as the GPU.
pub fn sample_reference(logits: &[f32], history: &[u32], s: &SamplingParams, draw: u32) -> u32 {
    let p = distribution(logits, history, s);
    let u = uniform01(s.seed, draw) as f64;
    let mut run = 0.0;
    let mut last = 0;
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            run += pi;
            last = i;
            if u < run {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_by_hand() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let e = |x: f64| x.exp();
        let s = SamplingParams { temperature: 1.0, ..SamplingParams::greedy() };
        let p = distribution(&logits, &[], &s);
        let z = e(1.0) + e(3.0) + e(2.0) + e(0.0);
        assert!((p[1] - e(3.0) / z).abs() < 1e-12);
        // top-k 2 keeps ids 1 and 2.
        let p = distribution(&logits, &[], &SamplingParams { top_k: 2, ..s.clone() });
        assert!((p[1] - e(3.0) / (e(3.0) + e(2.0))).abs() < 1e-12 && p[0] == 0.0 && p[3] == 0.0);
        // top-p 0.6: p(1) = 0.64 alone reaches it.
        let p = distribution(&logits, &[], &SamplingParams { top_p: 0.6, ..s.clone() });
        assert_eq!(p[1], 1.0);
        // min-p 0.3: keeps p >= 0.3 * p_max, i.e. logits >= 3 + ln 0.3 = 1.796: ids 1, 2.
        let p = distribution(&logits, &[], &SamplingParams { min_p: 0.3, ..s.clone() });
        assert!(p[0] == 0.0 && p[2] > 0.0 && p[3] == 0.0);
        // penalty 2 on id 1 (positive: divided) and id 3 (zero: multiplied, stays 0).
        let p = distribution(&logits, &[1, 1, 3], &SamplingParams { repeat_penalty: 2.0, ..s.clone() });
        let z = e(1.0) + e(1.5) + e(2.0) + e(0.0);
        assert!((p[1] - e(1.5) / z).abs() < 1e-12);
        // temperature 0.5 doubles the logits.
        let p = distribution(&logits, &[], &SamplingParams { temperature: 0.5, ..s.clone() });
        let z = e(2.0) + e(6.0) + e(4.0) + e(0.0);
        assert!((p[2] - e(4.0) / z).abs() < 1e-12);
    }

    #[test]
    fn presence_and_frequency_penalties_by_hand() {
        let mut l = [1.0f32, 2.0, -1.0, 0.5];
        // id 1 twice, id 2 once: repetition 2 first, then minus 0.5 + count * 0.25.
        apply_penalties(&mut l, &[1, 2, 1], 2.0, 0.5, 0.25);
        assert_eq!(l, [1.0, 1.0 - 1.0, -2.0 - 0.75, 0.5]);
    }

    #[test]
    fn log_softmax_by_hand() {
        let s = SamplingParams { temperature: 0.5, repeat_penalty: 2.0, ..SamplingParams::greedy() };
        let lp = log_softmax(&[1.0, 2.0, -1.0], &[1, 2], &s);
        // penalty: [1, 1, -2]; temperature 0.5: [2, 2, -4].
        let z = (2f64.exp() * 2.0 + (-4f64).exp()).ln();
        assert!((lp[0] - (2.0 - z)).abs() < 1e-12 && (lp[2] - (-4.0 - z)).abs() < 1e-12);
        let total: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_option() {
        let bad = [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "--temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "--temperature"),
            (SamplingParams { temperature: 1e-30, ..Default::default() }, "--temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "--top-p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "--top-p"),
            (SamplingParams { min_p: 1.0, ..Default::default() }, "--min-p"),
            (SamplingParams { repeat_penalty: 0.0, ..Default::default() }, "--repeat-penalty"),
        ];
        for (s, name) in bad {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        SamplingParams::default().validate().unwrap();
        SamplingParams::greedy().validate().unwrap();
    }

    #[test]
    fn flags_then_the_model_then_quill() {
        let none = GenerationDefaults::default();
        let (s, from) = SamplingParams::resolve(&SamplingFlags::default(), &none);
        assert_eq!((s, from), (SamplingParams::default(), vec![]));

        let model = GenerationDefaults { temperature: Some(0.7), top_k: Some(20), repetition_penalty: Some(1.05), ..Default::default() };
        let flags = SamplingFlags { top_k: Some(5), min_p: Some(0.0), ..Default::default() };
        let (s, from) = SamplingParams::resolve(&flags, &model);
        assert_eq!((s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty), (0.7, 5, 0.95, 0.0, 1.05));
        assert_eq!(from, vec!["temperature", "repetition_penalty"]);

        // do_sample: false is greedy, over the model's own temperature, but not over the flag.
        let greedy = GenerationDefaults { do_sample: Some(false), temperature: Some(0.7), ..Default::default() };
        let (s, from) = SamplingParams::resolve(&SamplingFlags::default(), &greedy);
        assert_eq!((s.temperature, from), (0.0, vec!["do_sample"]));
        let (s, _) = SamplingParams::resolve(&SamplingFlags { temperature: Some(1.0), ..Default::default() }, &greedy);
        assert_eq!(s.temperature, 1.0);
        let sampled = GenerationDefaults { do_sample: Some(true), ..Default::default() };
        assert_eq!(SamplingParams::resolve(&SamplingFlags::default(), &sampled).0.temperature, 0.8);
    }

    #[test]
    fn uniform_numbers_look_uniform() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| uniform01(42, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert_ne!(uniform01(1, 0), uniform01(2, 0));
    }
}
