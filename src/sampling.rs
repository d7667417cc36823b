//! Sampling settings, their validation, and the CPU reference sampler that the GPU kernel
//! (shaders/sample.wgsl) is tested against. Both apply llama.cpp's order: logit bias,
//! penalties, DRY, top-nσ, top-k, typical, top-p, min-p, XTC, temperature, then a seeded draw
//! (with mirostat v2: logit bias, penalties, DRY, temperature, mirostat, draw).

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
    /// DRY (llama.cpp's "don't repeat yourself"), after the penalties: a token that would
    /// extend a repeat of length L >= `dry_allowed_length` loses
    /// `dry_multiplier * dry_base^(L - dry_allowed_length)`. 0 = off.
    pub dry_multiplier: f32,
    pub dry_base: f32,
    pub dry_allowed_length: usize,
    /// How many of the latest tokens DRY scans; 0 = the whole sequence (llama.cpp's -1).
    pub dry_penalty_last_n: usize,
    /// Token ids a repeat may not cross (llama.cpp's sequence breakers, as ids: the caller
    /// maps `\n`, `:`, `"`, `*` through its tokenizer: `dry_breaker_ids`), sorted.
    pub dry_breakers: Vec<u32>,
    /// XTC ("exclude top choices"), after min-p: with probability `xtc_probability` (per
    /// draw), when two or more kept tokens have p >= `xtc_threshold`, all of them but the
    /// least likely are removed. Probability 0 = off.
    pub xtc_threshold: f32,
    pub xtc_probability: f32,
    /// Top-nσ, with top-k: keep tokens whose (scaled) logit is at least max - n · σ, σ the
    /// population standard deviation of the finite logits. 0 = off.
    pub top_n_sigma: f32,
    /// (id, bias) added to the logits before everything else; a bias of -inf bans the id.
    /// Each id once.
    pub logit_bias: Vec<(u32, f32)>,
    /// Dynamic temperature (llama.cpp's temp_ext): with range r > 0, the temperature is
    /// lo + (hi - lo) · (H / ln n)^exponent, lo = max(0, T - r), hi = T + r, H the entropy
    /// of the softmax of the n ids the filters kept (the temperature comes last, as in
    /// llama.cpp); at least MIN_TEMPERATURE. 0 = off.
    pub dynatemp_range: f32,
    pub dynatemp_exponent: f32,
    /// Locally typical sampling (llama.cpp's typical-p), after top-k: keep the ids whose
    /// -ln p is closest to the entropy until their mass exceeds this. 1 = off.
    pub typical_p: f32,
    /// Mirostat v2 (τ, η): the filters give way to a truncation at surprise -log2 p <= μ,
    /// after the temperature; μ starts at 2τ and after each draw μ -= η · (surprise - τ).
    /// τ 0 = off.
    pub mirostat_tau: f32,
    pub mirostat_eta: f32,
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
        // llama.cpp's defaults: the repetition penalty is off unless asked for, so
        // temperature 0 is plain greedy decoding.
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0, ..Self::greedy() }
    }
}

impl SamplingParams {
    /// Greedy, every filter and penalty off (DRY and XTC at llama.cpp's other defaults).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 0,
            dry_breakers: Vec::new(),
            xtc_threshold: 0.1,
            xtc_probability: 0.0,
            top_n_sigma: 0.0,
            logit_bias: Vec::new(),
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            typical_p: 1.0,
            mirostat_tau: 0.0,
            mirostat_eta: 0.1,
        }
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
        } else if self.mirostat_tau > 0.0 {
            format!("temperature {}, mirostat 2 (tau {}, eta {}), {penalty}", self.temperature, self.mirostat_tau, self.mirostat_eta)
        } else {
            let typical = if self.typical_p < 1.0 { format!(", typical-p {}", self.typical_p) } else { String::new() };
            format!("temperature {}, top-k {}{typical}, top-p {}, min-p {}, {penalty}", self.temperature, self.top_k, self.top_p, self.min_p)
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
        let (m, b) = (self.dry_multiplier, self.dry_base);
        if !(m.is_finite() && m >= 0.0) {
            return Err(Error::arg("--dry-multiplier", format!("{m} must be a finite number >= 0 (0 = off)")));
        }
        if !(b.is_finite() && b >= 1.0) {
            return Err(Error::arg("--dry-base", format!("{b} must be a finite number >= 1")));
        }
        for (k, &(id, b)) in self.logit_bias.iter().enumerate() {
            if !(b.is_finite() || b == f32::NEG_INFINITY) {
                return Err(Error::arg("--logit-bias", format!("{id}={b}: the bias must be a finite number or -inf")));
            }
            if self.logit_bias[..k].iter().any(|e| e.0 == id) {
                return Err(Error::arg("--logit-bias", format!("id {id} is given twice")));
            }
        }
        if !(self.dynatemp_range.is_finite() && self.dynatemp_range >= 0.0) {
            return Err(Error::arg("--dynatemp-range", format!("{} must be a finite number >= 0 (0 = off)", self.dynatemp_range)));
        }
        if !(self.dynatemp_exponent.is_finite() && self.dynatemp_exponent > 0.0) {
            return Err(Error::arg("--dynatemp-exp", format!("{} must be a finite number > 0", self.dynatemp_exponent)));
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return Err(Error::arg("--typical-p", format!("{} must be in (0, 1] (1 = off)", self.typical_p)));
        }
        if !(self.mirostat_tau.is_finite() && self.mirostat_tau >= 0.0) {
            return Err(Error::arg("--mirostat-tau", format!("{} must be a finite number >= 0 (0 = off)", self.mirostat_tau)));
        }
        if !(self.mirostat_eta.is_finite() && self.mirostat_eta >= 0.0) {
            return Err(Error::arg("--mirostat-eta", format!("{} must be a finite number >= 0", self.mirostat_eta)));
        }
        if !(self.top_n_sigma.is_finite() && self.top_n_sigma >= 0.0) {
            return Err(Error::arg("--top-n-sigma", format!("{} must be a finite number >= 0 (0 = off)", self.top_n_sigma)));
        }
        if !(0.0..=1.0).contains(&self.xtc_probability) {
            return Err(Error::arg("--xtc-probability", format!("{} must be in [0, 1] (0 = off)", self.xtc_probability)));
        }
        if !(0.0..=1.0).contains(&self.xtc_threshold) {
            return Err(Error::arg("--xtc-threshold", format!("{} must be in [0, 1] (above 0.5 = off)", self.xtc_threshold)));
        }
        Ok(())
    }

    /// Whether XTC acts on draw `draw`: its own random number, from the same counter-based
    /// generator as the draw but another stream, so the GPU decides the same.
    pub fn xtc_applies(&self, draw: u32) -> bool {
        self.xtc_probability > 0.0 && uniform01(self.seed ^ XTC_STREAM, draw) < self.xtc_probability
    }
}

/// Declares a struct holding the writer's samplers as a request names them (llama-server's
/// fields: the server's `GenRequest`, the page's options and [`WriterFields`] itself) after
/// its own fields, and its `writer_fields()`. The one list of those fields; what each means:
/// - `dry_multiplier`, `dry_base`, `dry_allowed_length`: DRY ([`SamplingParams`] says how);
/// - `dry_penalty_last_n`: -1 = the whole sequence, 0 = DRY off (llama.cpp's meaning), N = the
///   last N ids;
/// - `dry_sequence_breakers`: None = llama.cpp's [`DRY_BREAKERS`];
/// - `xtc_threshold`, `xtc_probability`, `typical_p`, `dynatemp_range`, `dynatemp_exponent`;
/// - `top_n_sigma`: -1 (llama.cpp's default) or 0 = off;
/// - `mirostat`: 0 = off, 2 = mirostat v2; 1 (v1) is refused; `mirostat_tau`, `mirostat_eta`.
///
/// Each is None where not given. The struct's own fields must end with a comma.
#[macro_export]
macro_rules! with_writer_fields {
    ($($item:tt)*) => {
        $crate::__with_writer_fields! {
            [
                dry_multiplier: Option<f32>,
                dry_base: Option<f32>,
                dry_allowed_length: Option<usize>,
                dry_penalty_last_n: Option<i64>,
                dry_sequence_breakers: Option<Vec<String>>,
                xtc_threshold: Option<f32>,
                xtc_probability: Option<f32>,
                typical_p: Option<f32>,
                top_n_sigma: Option<f32>,
                dynatemp_range: Option<f32>,
                dynatemp_exponent: Option<f32>,
                mirostat: Option<u32>,
                mirostat_tau: Option<f32>,
                mirostat_eta: Option<f32>,
            ]
            $($item)*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __with_writer_fields {
    ([$($f:ident: $t:ty,)*] $(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            $(pub $f: $t,)*
        }

        impl $name {
            /// The writer's samplers this holds.
            pub fn writer_fields(&self) -> $crate::sampling::WriterFields {
                $crate::sampling::WriterFields { $($f: self.$f.clone(),)* }
            }
        }
    };
}

with_writer_fields! {
    /// The writer's samplers as a request names them ([`with_writer_fields`] lists them).
    #[derive(Clone, Debug, Default)]
    pub struct WriterFields {}
}

/// Most DRY sequence breakers one request may give, and the longest (bytes): each is looked
/// for in the text of every token of the vocabulary.
pub const MAX_DRY_BREAKERS: usize = 16;
pub const MAX_DRY_BREAKER_BYTES: usize = 64;
/// llama.cpp's default mirostat τ, where mirostat is turned on without one.
pub const MIROSTAT_TAU: f32 = 5.0;

impl WriterFields {
    /// `s` with these fields set, then validated; errors name the field as the request
    /// spells it. τ and η are checked whether or not mirostat is on, and used only with 2.
    pub fn apply(&self, mut s: SamplingParams, tok: &crate::tokenizer::Tokenizer) -> Result<SamplingParams> {
        s.dry_multiplier = self.dry_multiplier.unwrap_or(s.dry_multiplier);
        s.dry_base = self.dry_base.unwrap_or(s.dry_base);
        s.dry_allowed_length = self.dry_allowed_length.unwrap_or(s.dry_allowed_length);
        match self.dry_penalty_last_n {
            None | Some(-1) => {}
            Some(0) => s.dry_multiplier = 0.0,
            Some(n) if n > 0 => s.dry_penalty_last_n = n as usize,
            Some(n) => return Err(Error::arg("dry_penalty_last_n", format!("{n} must be -1 (the whole sequence), 0 (DRY off) or a count of tokens"))),
        }
        s.xtc_threshold = self.xtc_threshold.unwrap_or(s.xtc_threshold);
        s.xtc_probability = self.xtc_probability.unwrap_or(s.xtc_probability);
        s.typical_p = self.typical_p.unwrap_or(s.typical_p);
        s.top_n_sigma = match self.top_n_sigma {
            Some(v) if v == -1.0 => 0.0,
            v => v.unwrap_or(s.top_n_sigma),
        };
        s.dynatemp_range = self.dynatemp_range.unwrap_or(s.dynatemp_range);
        s.dynatemp_exponent = self.dynatemp_exponent.unwrap_or(s.dynatemp_exponent);
        let tau = self.mirostat_tau.unwrap_or(MIROSTAT_TAU);
        let eta = self.mirostat_eta.unwrap_or(s.mirostat_eta);
        for (name, v) in [("mirostat_tau", tau), ("mirostat_eta", eta)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::arg(name, format!("{v} must be a finite number >= 0")));
            }
        }
        match self.mirostat.unwrap_or(0) {
            0 => {}
            2 if tau > 0.0 => (s.mirostat_tau, s.mirostat_eta) = (tau, eta),
            2 => return Err(Error::arg("mirostat_tau", "must be > 0 with mirostat 2")),
            1 => return Err(Error::arg("mirostat", "1 (mirostat v1) is not supported; use 2 (mirostat v2) or 0 (off)")),
            m => return Err(Error::arg("mirostat", format!("{m} must be 0 (off) or 2 (mirostat v2)"))),
        }
        if s.dry_multiplier > 0.0 {
            s.dry_breakers = self.breakers(tok)?;
        }
        // The command line spells it --dynatemp-exp; requests use llama-server's name.
        s.validate().map_err(|e| match e {
            Error::Arg { arg, msg } if arg == "--dynatemp-exp" => Error::arg("dynatemp_exponent", msg),
            e => e,
        })?;
        Ok(s)
    }

    /// The token ids DRY's repeats may not cross: those whose text holds one of the given
    /// breakers (at most [`MAX_DRY_BREAKERS`] non-empty strings), else llama.cpp's.
    fn breakers(&self, tok: &crate::tokenizer::Tokenizer) -> Result<Vec<u32>> {
        let Some(given) = &self.dry_sequence_breakers else { return dry_breaker_ids(tok) };
        let field = "dry_sequence_breakers";
        if given.len() > MAX_DRY_BREAKERS {
            return Err(Error::arg(field, format!("at most {MAX_DRY_BREAKERS} strings (got {})", given.len())));
        }
        if let Some(bad) = given.iter().find(|b| b.is_empty() || b.len() > MAX_DRY_BREAKER_BYTES) {
            return Err(Error::arg(field, format!("each must be 1 to {MAX_DRY_BREAKER_BYTES} bytes (got {} bytes)", bad.len())));
        }
        let given: Vec<&str> = given.iter().map(String::as_str).collect();
        breaker_ids(tok, &given)
    }
}

/// Mixed into the seed's high word for XTC's random numbers ("XTC").
pub const XTC_STREAM: u64 = 0x0058_5443 << 32;

/// DRY's penalties for the next token, as (id, amount to subtract), computed on the CPU from
/// the ids (O(window · repeat length)); the GPU kernel applies the short list, so the logits
/// never leave the GPU. For each earlier position j of the window, L is the length of the
/// longest run ending at j that equals the run ending at the last id, stopping at the latest
/// breaker; the id after j gets `multiplier · base^(L - allowed_length)` for its largest
/// L >= allowed_length (the exponent capped, as in llama.cpp, so the penalty stays finite).
pub fn dry_penalties(ids: &[u32], s: &SamplingParams) -> Vec<(u32, f32)> {
    if s.dry_multiplier == 0.0 || ids.is_empty() {
        return Vec::new();
    }
    let window = if s.dry_penalty_last_n == 0 { ids.len() } else { s.dry_penalty_last_n.min(ids.len()) };
    let h = &ids[ids.len() - window..];
    let last = h.len() - 1;
    // A repeat never reaches back over a breaker: the latest one limits its length.
    let limit = h.iter().rev().position(|id| s.dry_breakers.binary_search(id).is_ok()).unwrap_or(h.len());
    if limit < s.dry_allowed_length.max(1) {
        return Vec::new();
    }
    let mut longest: Vec<(u32, usize)> = Vec::new();
    for j in 0..last {
        let len = (0..=j).take_while(|&k| k < limit && h[j - k] == h[last - k]).count();
        if len >= s.dry_allowed_length.max(1) {
            let next = h[j + 1];
            match longest.iter_mut().find(|(id, _)| *id == next) {
                Some(e) => e.1 = e.1.max(len),
                None => longest.push((next, len)),
            }
        }
    }
    let max_exponent = if s.dry_base > 1.000001 { (88.722_84 / s.dry_base.ln()) as usize } else { usize::MAX };
    longest.into_iter().map(|(id, len)| (id, s.dry_multiplier * s.dry_base.powi((len - s.dry_allowed_length).min(max_exponent) as i32))).collect()
}

/// llama.cpp's default DRY sequence breakers.
pub const DRY_BREAKERS: [&str; 4] = ["\n", ":", "\"", "*"];

/// The ids (ascending) whose text holds one of [`DRY_BREAKERS`]: a repeat never runs across them.
pub fn dry_breaker_ids(tok: &crate::tokenizer::Tokenizer) -> Result<Vec<u32>> {
    breaker_ids(tok, &DRY_BREAKERS)
}

/// The ids (ascending) whose text holds one of `breakers`.
pub fn breaker_ids(tok: &crate::tokenizer::Tokenizer, breakers: &[&str]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[id])?;
        if breakers.iter().any(|b| text.contains(b)) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Subtracts each (id, amount) from the logits (ids outside the vocabulary are skipped).
pub fn apply_sparse(logits: &mut [f32], list: &[(u32, f32)]) {
    for &(id, amount) in list {
        if let Some(v) = logits.get_mut(id as usize) {
            *v -= amount;
        }
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

/// The distribution the sampler draws from at draw 0 (mirostat's μ at its start, 2τ): see
/// [`distribution_at`]. With XTC's probability q strictly between 0 and 1, the mixture
/// q · cut + (1 - q) · uncut. Greedy gives a one-hot vector.
pub fn distribution(logits: &[f32], history: &[u32], s: &SamplingParams) -> Vec<f64> {
    let q = s.xtc_probability as f64;
    if q <= 0.0 || q >= 1.0 {
        return distribution_xtc(logits, history, s, q >= 1.0);
    }
    let cut = distribution_xtc(logits, history, s, true);
    let uncut = distribution_xtc(logits, history, s, false);
    cut.iter().zip(&uncut).map(|(c, u)| q * c + (1.0 - q) * u).collect()
}

/// `distribution` with XTC applied or not (and mirostat's μ at its start).
pub fn distribution_xtc(logits: &[f32], history: &[u32], s: &SamplingParams, xtc: bool) -> Vec<f64> {
    distribution_at(logits, history, s, xtc, Mirostat::new(s).mu)
}

/// Probabilities per id (f64) after the whole chain, in llama.cpp's order: logit bias,
/// penalties, DRY, then the filters on the raw logits (top-nσ, top-k, typical, top-p, min-p,
/// XTC when `xtc`: [`kept`]), then the temperature (fixed, or dynamic from the entropy of
/// what the filters kept), then the draw's softmax. With mirostat on, the temperature comes
/// first and mirostat's truncation at `mu` replaces the filters (as llama.cpp does).
pub fn distribution_at(logits: &[f32], history: &[u32], s: &SamplingParams, xtc: bool, mu: f32) -> Vec<f64> {
    let l = adjusted(logits, history, s);
    if s.temperature <= 0.0 {
        let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
        let mut p = vec![0.0; l.len()];
        p[best] = 1.0;
        return p;
    }
    let (v, lo, hi, inv_t) = chain(&l, s, xtc, mu);
    let w: Vec<f64> = v.iter().map(|&x| if x >= lo && x <= hi { ((x - hi) * inv_t).exp() } else { 0.0 }).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

/// The chain after the adjustments, on the adjusted logits `l`: (the logits the draw weighs,
/// as f64; the kept interval lo..=hi of them; 1 / temperature to weigh them at). Without
/// mirostat the logits are `l` itself and the temperature comes last; with it they are
/// `l / T` (in f32, as the GPU scales them) and the weight's 1 / T is 1.
fn chain(l: &[f32], s: &SamplingParams, xtc: bool, mu: f32) -> (Vec<f64>, f64, f64, f64) {
    if s.mirostat_tau > 0.0 {
        let inv_t = 1.0 / temperature(l, s);
        let v: Vec<f64> = l.iter().map(|&x| (x * inv_t) as f64).collect();
        let (lo, hi) = mirostat_kept(&v, mu);
        return (v, lo, hi, 1.0);
    }
    let v: Vec<f64> = l.iter().map(|&x| x as f64).collect();
    let (lo, hi) = kept(&v, s, xtc);
    let inside: Vec<f32> = l.iter().copied().filter(|&x| x as f64 >= lo && x as f64 <= hi).collect();
    let inv_t = 1.0 / temperature(&inside, s) as f64;
    (v, lo, hi, inv_t)
}

/// The filters over the adjusted logits `v` in llama.cpp's order: top-nσ, top-k, typical,
/// top-p, min-p, then XTC (when `xtc`). Each acts on what the earlier ones kept, and each
/// keeps an interval of the sorted logits, so all of them together keep the ids with
/// lo <= v <= hi. Ties at a boundary are kept.
pub fn kept(v: &[f64], s: &SamplingParams, xtc: bool) -> (f64, f64) {
    let n = v.len();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut lo, mut hi) = (f64::NEG_INFINITY, m);
    if s.top_n_sigma > 0.0 {
        // Over the finite logits (a bias of -inf removes an id from the statistics too).
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let count = finite.len() as f64;
        let mean = finite.iter().sum::<f64>() / count;
        let sd = (finite.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count).sqrt();
        lo = lo.max(m - s.top_n_sigma as f64 * sd);
    }
    if s.top_k > 0 && s.top_k < n {
        let mut sorted = v.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        lo = lo.max(sorted[s.top_k - 1]);
    }
    if s.typical_p < 1.0 {
        (lo, hi) = typical(v, lo, hi, s.typical_p as f64);
    }
    if s.top_p < 1.0 {
        let mut inside: Vec<f64> = v.iter().copied().filter(|&x| x >= lo && x <= hi).collect();
        inside.sort_by(|a, b| b.total_cmp(a));
        let z: f64 = inside.iter().map(|x| (x - hi).exp()).sum();
        // Smallest top set (ties included) whose mass reaches top_p.
        let mut mass = 0.0;
        for (i, &x) in inside.iter().enumerate() {
            mass += (x - hi).exp();
            let tie_next = inside.get(i + 1).is_some_and(|&y| y == x);
            if mass >= s.top_p as f64 * z && !tie_next {
                lo = lo.max(x);
                break;
            }
        }
    }
    if s.min_p > 0.0 {
        lo = lo.max(hi + (s.min_p as f64).ln());
    }
    lo = lo.min(hi);
    if xtc {
        hi = xtc_ceiling(v, lo, hi, s.xtc_threshold as f64);
    }
    (lo, hi)
}

/// Locally typical sampling (llama.cpp's typical-p) over the kept lo..=hi: with p the softmax
/// of what is kept and H its entropy, ids are taken in order of |-ln p_i - H| (= |v_i - c|,
/// c = Σ p_i v_i, the expected logit) until their mass exceeds `typical_p` (ties at that
/// distance kept); returns the interval they span.
fn typical(v: &[f64], lo: f64, hi: f64, typical_p: f64) -> (f64, f64) {
    let inside: Vec<f64> = v.iter().copied().filter(|&x| x >= lo && x <= hi && x.is_finite()).collect();
    let z: f64 = inside.iter().map(|x| (x - hi).exp()).sum();
    let c = inside.iter().map(|x| (x - hi).exp() * x).sum::<f64>() / z;
    let mut by_distance: Vec<(f64, f64)> = inside.iter().map(|&x| ((x - c).abs(), x)).collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut mass = 0.0;
    let mut radius = f64::INFINITY;
    for (i, &(d, x)) in by_distance.iter().enumerate() {
        mass += (x - hi).exp();
        let tie_next = by_distance.get(i + 1).is_some_and(|e| e.0 == d);
        if mass > typical_p * z && !tie_next {
            radius = d;
            break;
        }
    }
    let typical = || inside.iter().copied().filter(|x| (x - c).abs() <= radius);
    (typical().fold(f64::INFINITY, f64::min), typical().fold(f64::NEG_INFINITY, f64::max))
}

/// Mirostat v2's truncation of the (temperature-scaled) logits `v`: the ids whose surprise
/// -log2 p (p the softmax over every id) is at most `mu`, i.e. v >= lse - mu · ln 2; at
/// least the most likely.
fn mirostat_kept(v: &[f64], mu: f32) -> (f64, f64) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    ((lse - mu as f64 * std::f64::consts::LN_2).min(m), m)
}

/// Mirostat v2's state for one sequence: μ, the largest surprise (bits) a token may have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mirostat {
    pub mu: f32,
}

impl Mirostat {
    /// μ starts at 2τ.
    pub fn new(s: &SamplingParams) -> Self {
        Mirostat { mu: 2.0 * s.mirostat_tau }
    }

    /// After a draw whose token had probability `p` (in the truncated, renormalized
    /// distribution): μ -= η · (surprise - τ), the surprise -log2 p.
    pub fn update(&mut self, s: &SamplingParams, p: f64) {
        let surprise = -(p.log2()) as f32;
        self.mu -= s.mirostat_eta * (surprise - s.mirostat_tau);
    }
}

/// The logits after the logit bias, the penalties and DRY (DRY over all of `history`).
fn adjusted(logits: &[f32], history: &[u32], s: &SamplingParams) -> Vec<f32> {
    let mut l = logits.to_vec();
    for &(id, b) in &s.logit_bias {
        if let Some(v) = l.get_mut(id as usize) {
            *v += b;
        }
    }
    apply_penalties(&mut l, history, s.repeat_penalty, s.presence_penalty, s.frequency_penalty);
    apply_sparse(&mut l, &dry_penalties(history, s));
    l
}

/// The temperature to weigh `l` (what the filters kept) at: `s.temperature`, or the dynamic
/// one (see `dynatemp_range`), normalized by ln(len). Computed in f64, rounded to f32 as the
/// GPU's.
pub fn temperature(l: &[f32], s: &SamplingParams) -> f32 {
    if s.dynatemp_range <= 0.0 || s.temperature <= 0.0 {
        return s.temperature;
    }
    let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let finite = || l.iter().filter(|x| x.is_finite()).map(|&x| x as f64 - mx);
    let z: f64 = finite().map(f64::exp).sum();
    let h = z.ln() - finite().map(|d| d.exp() * d).sum::<f64>() / z;
    let hn = if l.len() > 1 { (h / (l.len() as f64).ln()).max(0.0) } else { 0.0 };
    let lo = (s.temperature - s.dynatemp_range).max(0.0) as f64;
    let hi = (s.temperature + s.dynatemp_range) as f64;
    ((lo + (hi - lo) * hn.powf(s.dynatemp_exponent as f64)) as f32).max(MIN_TEMPERATURE)
}

/// XTC's upper bound on the kept logits lo..=hi: the least likely of those with
/// p >= threshold when there are two or more (ties with it kept), else `hi` (no cut).
fn xtc_ceiling(v: &[f64], lo: f64, hi: f64, threshold: f64) -> f64 {
    let inside = || v.iter().copied().filter(|&x| x >= lo && x <= hi);
    let z: f64 = inside().map(|x| (x - hi).exp()).sum();
    let above: Vec<f64> = inside().filter(|&x| (x - hi).exp() >= threshold * z).collect();
    if above.len() < 2 {
        return hi;
    }
    above.into_iter().fold(f64::INFINITY, f64::min)
}

/// Log-softmax (f64) over every id of the adjusted logits at the temperature the chain weighs
/// them at (greedy counts as temperature 1): the distribution before the filters cut it down.
/// The CPU reference of the GPU's `ops::sample::logprobs`.
pub fn log_softmax(logits: &[f32], history: &[u32], s: &SamplingParams) -> Vec<f64> {
    let l = adjusted(logits, history, s);
    let t = if s.temperature > 0.0 {
        let (_, _, _, inv_t) = chain(&l, s, s.xtc_applies(0), Mirostat::new(s).mu);
        if s.mirostat_tau > 0.0 { temperature(&l, s) } else { (1.0 / inv_t) as f32 }
    } else {
        1.0
    };
    let v: Vec<f64> = l.iter().map(|&x| (x * (1.0 / t)) as f64).collect();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z = v.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|x| x - z).collect()
}

/// The probabilities the draw `draw` chose from (XTC decided for that draw, mirostat at
/// `mu`); at temperature 0 (a greedy pick) those of temperature 1, so the alternatives show.
/// The CPU reference of the GPU's `ops::sample::token_probs`.
pub fn processed_probs(logits: &[f32], history: &[u32], s: &SamplingParams, draw: u32, mu: f32) -> Vec<f64> {
    let t1;
    let s = if s.temperature <= 0.0 {
        t1 = SamplingParams { temperature: 1.0, ..s.clone() };
        &t1
    } else {
        s
    };
    distribution_at(logits, history, s, s.xtc_applies(draw), mu)
}

/// CPU reference sampler: draws from `distribution` with the same random number as the GPU.
pub fn sample_reference(logits: &[f32], history: &[u32], s: &SamplingParams, draw: u32) -> u32 {
    sample_reference_at(logits, history, s, draw, Mirostat::new(s).mu).0
}

/// `sample_reference` with mirostat at `mu`; also returns the probability of the id drawn.
pub fn sample_reference_at(logits: &[f32], history: &[u32], s: &SamplingParams, draw: u32, mu: f32) -> (u32, f64) {
    let p = distribution_at(logits, history, s, s.xtc_applies(draw), mu);
    let u = uniform01(s.seed, draw) as f64;
    let mut run = 0.0;
    let mut last = 0;
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            run += pi;
            last = i;
            if u < run {
                return (i as u32, pi);
            }
        }
    }
    (last as u32, p[last])
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
    fn dry_penalty_of_a_constructed_repeat() {
        let s = SamplingParams { dry_multiplier: 0.8, dry_breakers: vec![9], ..SamplingParams::greedy() };
        // ... 1 2 3 4 5 ... 1 2 3 4: the run "1 2 3 4" (L = 4) was followed by 5, the run
        // "3 4" (L = 2) once by 7; 5 loses 0.8 * 1.75^2, 7 loses 0.8 * 1.75^0.
        let ids = [1, 2, 3, 4, 5, 3, 4, 7, 0, 1, 2, 3, 4];
        let mut got = dry_penalties(&ids, &s);
        got.sort_by_key(|e| e.0);
        assert_eq!(got, vec![(5, 0.8 * 1.75f32.powi(2)), (7, 0.8)]);
        // A breaker inside the run caps L at the ids after it: "3 4" only, so 5 and 7 both at L = 2.
        let broken = [1, 2, 3, 4, 5, 3, 4, 7, 0, 1, 9, 3, 4];
        let mut got = dry_penalties(&broken, &s);
        got.sort_by_key(|e| e.0);
        assert_eq!(got, vec![(5, 0.8), (7, 0.8)]);
        // Shorter than allowed_length: nothing; a window of 5 ids holds no earlier "3 4"; off is off.
        assert!(dry_penalties(&ids, &SamplingParams { dry_allowed_length: 5, ..s.clone() }).is_empty());
        assert!(dry_penalties(&ids, &SamplingParams { dry_penalty_last_n: 5, ..s.clone() }).is_empty());
        assert!(dry_penalties(&ids, &SamplingParams { dry_multiplier: 0.0, ..s.clone() }).is_empty());
        // The distribution sees the penalty.
        let logits = [0.0f32; 8];
        let p = distribution(&logits, &ids, &SamplingParams { temperature: 1.0, ..s.clone() });
        assert!((p[7] / p[0] - (-0.8f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn xtc_removes_all_likely_tokens_but_the_least_likely() {
        // p ∝ e^[3, 2.9, 2.8, 0, 0]: the first three are above 0.1, so 0 and 1 go.
        let logits = [3.0f32, 2.9, 2.8, 0.0, 0.0];
        let s = SamplingParams { temperature: 1.0, xtc_threshold: 0.1, xtc_probability: 1.0, ..SamplingParams::greedy() };
        let p = distribution(&logits, &[], &s);
        assert!(p[0] == 0.0 && p[1] == 0.0 && p[2] > 0.0 && p[3] > 0.0);
        assert!((p[2] - 2.8f64.exp() / (2.8f64.exp() + 2.0)).abs() < 1e-6);
        // Only one above the threshold: no cut.
        let p = distribution(&logits, &[], &SamplingParams { xtc_threshold: 0.5, ..s.clone() });
        assert!(p[0] > 0.0);
        // Probability 0.5: a mixture, and about half of the draws are cut.
        let half = SamplingParams { xtc_probability: 0.5, seed: 3, ..s.clone() };
        let p = distribution(&logits, &[], &half);
        assert!(p[0] > 0.0 && p[0] < distribution(&logits, &[], &SamplingParams { xtc_probability: 0.0, ..s.clone() })[0]);
        let cut = (0..10_000).filter(|&d| half.xtc_applies(d)).count();
        assert!((4800..5200).contains(&cut), "{cut}");
    }

    #[test]
    fn logit_bias_comes_before_the_penalty() {
        // id 1: 1 + 1 = 2, then the penalty 2 halves it to 1; id 0 banned.
        let s = SamplingParams { temperature: 1.0, repeat_penalty: 2.0, logit_bias: vec![(1, 1.0), (0, f32::NEG_INFINITY)], ..SamplingParams::greedy() };
        let p = distribution(&[0.5, 1.0, 1.0], &[1], &s);
        assert_eq!(p[0], 0.0);
        assert!((p[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn dynamic_temperature_follows_the_entropy() {
        let s = SamplingParams { temperature: 1.0, dynatemp_range: 0.5, ..SamplingParams::greedy() };
        // Uniform logits: H = ln n, so the top of the range; one certain id: the bottom.
        assert!((temperature(&[0.0; 8], &s) - 1.5).abs() < 1e-6);
        assert!((temperature(&[0.0, -200.0, -200.0], &s) - 0.5).abs() < 1e-6);
        // Two equal of four (H = ln 2 = half of ln 4) with exponent 2: 0.5 + 1 * 0.25.
        let two = [0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        assert!((temperature(&two, &SamplingParams { dynatemp_exponent: 2.0, ..s.clone() }) - 0.75).abs() < 1e-6);
        assert_eq!(temperature(&two, &SamplingParams { dynatemp_range: 0.0, ..s.clone() }), 1.0);
    }

    #[test]
    fn top_n_sigma_by_hand() {
        // Logits [4, 2, 0, -2, -4]: mean 0, σ = sqrt(8) = 2.83; n = 1 keeps >= 1.17: ids 0, 1.
        let logits = [4.0f32, 2.0, 0.0, -2.0, -4.0];
        let s = SamplingParams { temperature: 1.0, top_n_sigma: 1.0, ..SamplingParams::greedy() };
        let p = distribution(&logits, &[], &s);
        assert!(p[0] > 0.0 && p[1] > 0.0 && p[2] == 0.0);
        // n = 1.5 reaches down to -0.24: id 2 too; a temperature scales max and σ alike.
        let p = distribution(&logits, &[], &SamplingParams { top_n_sigma: 1.5, temperature: 0.3, ..s.clone() });
        assert!(p[2] > 0.0 && p[3] == 0.0);
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
    fn the_temperature_comes_after_the_filters() {
        // Raw p(1) = 0.64 alone reaches top-p 0.6, so only id 1 is left whatever the
        // temperature (scaled first, by 1/2, its p would be 0.45 and keep two more).
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let s = SamplingParams { temperature: 2.0, top_p: 0.6, ..SamplingParams::greedy() };
        assert_eq!(distribution(&logits, &[], &s), vec![0.0, 1.0, 0.0, 0.0]);
        // min-p 0.3 on the raw logits keeps ids 1, 2 (>= 3 + ln 0.3), then temperature 2 weighs them.
        let p = distribution(&logits, &[], &SamplingParams { top_p: 1.0, min_p: 0.3, ..s.clone() });
        let (a, b) = (1.5f64.exp(), 1.0f64.exp());
        assert!(p[0] == 0.0 && p[3] == 0.0 && (p[1] - a / (a + b)).abs() < 1e-12, "{p:?}");
        // Dynamic temperature over what top-k kept: two equal ids of two, the top of the range.
        let two = [0.0f32, 0.0, -1.0, -1.0];
        let dyn_t = SamplingParams { temperature: 1.0, dynatemp_range: 0.5, top_k: 2, ..SamplingParams::greedy() };
        let (_, _, _, inv_t) = chain(&two, &dyn_t, false, 0.0);
        assert!((1.0 / inv_t - 1.5).abs() < 1e-6, "{}", 1.0 / inv_t);
    }

    #[test]
    fn typical_keeps_the_ids_nearest_the_entropy() {
        // p = [0.454, 0.167 x3, 0.023 x2], H = 1.426; |-ln p - H| = [0.64, 0.36 x3, 2.36 x2]:
        // the three middle ids are the most typical, and their mass 0.501 exceeds 0.5, so the
        // most likely id goes.
        let logits = [3.0f32, 2.0, 2.0, 2.0, 0.0, 0.0];
        let s = SamplingParams { temperature: 1.0, typical_p: 0.5, ..SamplingParams::greedy() };
        let p = distribution(&logits, &[], &s);
        assert!(p[0] == 0.0 && p[4] == 0.0 && p[5] == 0.0, "{p:?}");
        assert!((p[1] - 1.0 / 3.0).abs() < 1e-12, "{p:?}");
        // 0.3 is passed after two of them, but the third is as typical (a tie): kept too.
        assert_eq!(distribution(&logits, &[], &SamplingParams { typical_p: 0.3, ..s.clone() }), p);
        // 0.6 needs the next nearest, id 0; 1 is off.
        let p = distribution(&logits, &[], &SamplingParams { typical_p: 0.6, ..s.clone() });
        assert!(p[0] > 0.0 && p[3] > 0.0 && p[4] == 0.0, "{p:?}");
        assert!(distribution(&logits, &[], &SamplingParams { typical_p: 1.0, ..s.clone() })[5] > 0.0);
        // Typical acts on what top-k kept: over the top four the middle three hold 0.525, so
        // 0.52 keeps them alone; over all six (0.501) it needs id 0 as well.
        let p = distribution(&logits, &[], &SamplingParams { typical_p: 0.52, top_k: 4, ..s.clone() });
        assert!(p[0] == 0.0 && p[1] > 0.0, "{p:?}");
        assert!(distribution(&logits, &[], &SamplingParams { typical_p: 0.52, ..s.clone() })[0] > 0.0);
    }

    #[test]
    fn mirostat_truncates_by_surprise_and_updates_mu() {
        // p = softmax [2, 1, 0, -1] = [0.644, 0.237, 0.087, 0.032]; tau 1.5 starts mu at 3
        // bits: p >= 1/8 keeps ids 0 and 1, renormalized to [0.731, 0.269].
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let s = SamplingParams { temperature: 1.0, mirostat_tau: 1.5, mirostat_eta: 0.1, ..SamplingParams::greedy() };
        let mut m = Mirostat::new(&s);
        assert_eq!(m.mu, 3.0);
        let p = distribution_at(&logits, &[], &s, false, m.mu);
        let e = 1f64.exp();
        assert!((p[0] - e / (e + 1.0)).abs() < 1e-12 && p[2] == 0.0 && p[3] == 0.0, "{p:?}");
        // Drawing id 1: surprise -log2 0.269 = 1.894 bits, so mu -= 0.1 * (1.894 - 1.5).
        m.update(&s, p[1]);
        let want = 3.0 - 0.1 * (-(p[1].log2()) - 1.5);
        assert!((m.mu as f64 - want).abs() < 1e-6 && (m.mu - 2.9606).abs() < 1e-3, "{}", m.mu);
        // A mu below every surprise keeps the most likely id alone; the filters give way.
        assert_eq!(distribution_at(&logits, &[], &SamplingParams { top_k: 3, ..s.clone() }, false, 0.1), vec![1.0, 0.0, 0.0, 0.0]);
        assert_eq!(distribution_at(&logits, &[], &SamplingParams { top_k: 1, ..s.clone() }, false, 3.0), p);
        // The temperature comes first: at T = 2, p = softmax [1, 0.5, 0, -0.5] and 1/8 keeps three.
        let p = distribution_at(&logits, &[], &SamplingParams { temperature: 2.0, ..s.clone() }, false, 3.0);
        assert!(p[2] > 0.0 && p[3] == 0.0, "{p:?}");
        // The draw reports the probability it drew with, for the update.
        let (id, pid) = sample_reference_at(&logits, &[], &s, 5, 3.0);
        assert_eq!(pid, distribution_at(&logits, &[], &s, false, 3.0)[id as usize]);
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
            (SamplingParams { dry_multiplier: -1.0, ..Default::default() }, "--dry-multiplier"),
            (SamplingParams { dry_base: 0.5, ..Default::default() }, "--dry-base"),
            (SamplingParams { xtc_probability: 1.5, ..Default::default() }, "--xtc-probability"),
            (SamplingParams { top_n_sigma: -1.0, ..Default::default() }, "--top-n-sigma"),
            (SamplingParams { logit_bias: vec![(3, f32::NAN)], ..Default::default() }, "--logit-bias"),
            (SamplingParams { logit_bias: vec![(3, 1.0), (3, 2.0)], ..Default::default() }, "--logit-bias"),
            (SamplingParams { xtc_threshold: -0.1, ..Default::default() }, "--xtc-threshold"),
            (SamplingParams { typical_p: 0.0, ..Default::default() }, "--typical-p"),
            (SamplingParams { mirostat_tau: -1.0, ..Default::default() }, "--mirostat-tau"),
            (SamplingParams { mirostat_eta: f32::INFINITY, ..Default::default() }, "--mirostat-eta"),
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
