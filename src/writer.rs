//! Writing with banned phrases and token probabilities: a decode loop, one token per step,
//! that holds back the text a banned phrase could still grow out of, and when the text comes
//! to end in a banned phrase (case-insensitive) truncates the sequence to the phrase's first
//! token, bans that token at that position and draws again (anti-slop backtracking). Only the
//! text no phrase can take back any more reaches the caller, each token with its
//! probabilities when asked. Builds for wasm32 too (no files, no stderr: events say it all).
//! Backing up rewinds the ids and the KV cache, not the draw counter (the next draw is a new
//! random number) nor mirostat's μ.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::generate::{Session, Stats, Stop, TokenProbs};
use crate::ops::sample::MAX_TOP_LOGPROBS;
use crate::sampling::SamplingParams;

/// How many times a position may be drawn again before a banned phrase there is let be.
pub const DEFAULT_BAN_RETRIES: usize = 8;

/// Phrases the text may not end in, compared case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct BannedPhrases {
    /// Lowercased, as chars.
    phrases: Vec<Vec<char>>,
}

fn lower(text: &str) -> Vec<(usize, char)> {
    text.char_indices().map(|(i, c)| (i, c.to_lowercase().next().unwrap_or(c))).collect()
}

impl BannedPhrases {
    /// Refuses an empty phrase (it would ban everything), naming the option.
    pub fn new(phrases: &[String]) -> Result<Self> {
        if let Some(k) = phrases.iter().position(|p| p.trim().is_empty()) {
            return Err(Error::arg("--ban", format!("phrase {} is empty", k + 1)));
        }
        Ok(BannedPhrases { phrases: phrases.iter().map(|p| lower(p).into_iter().map(|(_, c)| c).collect()).collect() })
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// Where (byte offset) the earliest banned phrase in `text` that ends after byte `after`
    /// starts: the text has come to hold it with what follows `after` (a token may hold a
    /// whole phrase and more: " whispered" holds "whisper").
    pub fn found(&self, text: &str, after: usize) -> Option<usize> {
        let t = lower(text);
        let end_of = |i: usize| t.get(i).map_or(text.len(), |e| e.0);
        let hits = self.phrases.iter().flat_map(|p| {
            let t = &t;
            (0..(t.len() + 1).saturating_sub(p.len())).filter(move |&i| t[i..i + p.len()].iter().map(|e| e.1).eq(p.iter().copied())).map(move |i| (i, i + p.len()))
        });
        hits.filter(|&(_, end)| end_of(end) > after).map(|(start, _)| t[start].0).min()
    }

    /// The byte offset from which `text` must be held back: the start of its longest suffix
    /// that is the beginning of a banned phrase (a later token may complete it); `text.len()`
    /// when there is none.
    pub fn held_from(&self, text: &str) -> usize {
        let t = lower(text);
        for start in 0..t.len() {
            let tail = &t[start..];
            if self.phrases.iter().any(|p| p.len() > tail.len() && tail.iter().map(|e| e.1).eq(p[..tail.len()].iter().copied())) {
                return t[start].0;
            }
        }
        text.len()
    }
}

/// What the decode loop does beyond sampling.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub banned: BannedPhrases,
    /// Draws again per position before giving up on a banned phrase there.
    pub ban_retries: usize,
    /// Alternatives per token to report with its probability; None = no probabilities.
    pub probs_top: Option<usize>,
    pub max_tokens: usize,
    pub ignore_eos: bool,
}

/// What the loop tells its caller, in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// A token whose text is final: no banned phrase can take it back.
    Token { id: u32, text: &'a str, probs: Option<&'a TokenProbs> },
    /// A banned phrase was drawn again `retries` times at `position` (an index into the
    /// generated tokens): it stays in the text.
    GaveUp { phrase: &'a str, position: usize, retries: usize },
}

struct Drawn {
    id: u32,
    /// Bytes of the decoded generated text up to and with this token.
    end: usize,
    /// Whether that text ends at a whole character (else the next token completes it).
    whole: bool,
    probs: Option<TokenProbs>,
}

/// Starts the session's sequence anew at `prompt` and writes up to `opts.max_tokens` tokens
/// (see the module comment);
/// `on_event` returns false to stop. Returns why it stopped, the timings and how many times
/// it backtracked.
pub fn write(session: &mut Session, prompt: &[u32], s: &SamplingParams, opts: &WriteOptions, mut on_event: impl FnMut(Event) -> bool) -> Result<(Stop, Stats, usize)> {
    s.validate()?;
    if let Some(top) = opts.probs_top.filter(|&t| t > MAX_TOP_LOGPROBS) {
        return Err(Error::arg("--probs-top", format!("{top} must be at most {MAX_TOP_LOGPROBS}")));
    }
    if prompt.is_empty() {
        return Err(Error::arg("prompt", "is empty: give some text to continue"));
    }
    let start = web_time::Instant::now();
    let tokenizer = &session.model.tokenizer;
    if prompt.len() >= session.ctx_len() {
        return Err(Error::Context(format!("the prompt has {} tokens but the context holds {} positions (one more is needed to write)", prompt.len(), session.ctx_len())));
    }
    // A new sequence with the draw counter at 0, so a seed writes what it writes in a new
    // session (the KV cache of a common prefix is kept).
    session.restart(prompt)?;
    let base = session.ids().len();
    let mut drawn: Vec<Drawn> = Vec::new();
    let mut shown = 0; // tokens already given to on_event
    // Ids banned at an absolute position, and how often that position was drawn again.
    let mut bans: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut retries: HashMap<usize, usize> = HashMap::new();
    let mut backtracks = 0;
    let mut stats = Stats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut stop = Stop::MaxTokens;
    let mut text = String::new();
    while drawn.len() < opts.max_tokens {
        if session.ids().len() >= session.ctx_len() {
            stop = Stop::ContextFull;
            break;
        }
        let pos = session.ids().len();
        let step = with_bans(s, bans.get(&pos).map_or(&[][..], |v| v));
        let id = session.next_token(&step)?;
        if stats.time_to_first_token.is_zero() {
            stats.time_to_first_token = start.elapsed();
            stats.prefill = stats.time_to_first_token;
        }
        let probs = match opts.probs_top {
            Some(top) => Some(session.token_probs(&step, top)?),
            None => None,
        };
        if !opts.ignore_eos && session.model.is_eos(id) {
            session.truncate(pos);
            stop = Stop::Eos;
            break;
        }
        drawn.push(Drawn { id, end: 0, whole: false, probs });
        let ids: Vec<u32> = drawn.iter().map(|d| d.id).collect();
        text = tokenizer.decode(&ids)?;
        // The ends of the tokens not shown yet (a completed character moves them).
        for k in shown..drawn.len() {
            let t = if k + 1 == drawn.len() { text.clone() } else { tokenizer.decode(&ids[..k + 1])? };
            drawn[k].end = t.len();
            drawn[k].whole = !t.ends_with('\u{FFFD}') && text.is_char_boundary(t.len());
        }
        let newest = if drawn.len() >= 2 { drawn[drawn.len() - 2].end } else { 0 };
        if let Some(at) = opts.banned.found(&text, newest) {
            // The first token holding the phrase's first byte (never one already shown).
            let k = drawn.iter().position(|d| d.end > at).unwrap_or(drawn.len() - 1).max(shown);
            let tries = retries.entry(base + k).or_insert(0);
            if *tries < opts.ban_retries {
                *tries += 1;
                backtracks += 1;
                bans.retain(|&p, _| p <= base + k);
                bans.entry(base + k).or_default().push(drawn[k].id);
                drawn.truncate(k);
                session.truncate(base + k);
                continue;
            }
            if !on_event(Event::GaveUp { phrase: text.get(at..).unwrap_or_default(), position: k, retries: *tries }) {
                stop = Stop::Cancelled;
                break;
            }
        }
        // Show what no phrase can take back: up to the held suffix, at whole characters.
        let safe = opts.banned.held_from(&text);
        if !show(&drawn, &mut shown, &text, safe, false, &mut on_event) {
            stop = Stop::Cancelled;
            break;
        }
    }
    if stop != Stop::Cancelled {
        show(&drawn, &mut shown, &text, text.len(), true, &mut on_event);
    }
    stats.generated = drawn.len();
    stats.decode = start.elapsed().saturating_sub(stats.prefill);
    Ok((stop, stats, backtracks))
}

/// Gives `on_event` the drawn tokens from `shown` whose text ends by `safe` (all of them
/// when `flush`); a token ending inside a character goes out with the one completing it, the
/// character's text on the latter. False when `on_event` asked to stop.
fn show(drawn: &[Drawn], shown: &mut usize, text: &str, safe: usize, flush: bool, on_event: &mut impl FnMut(Event) -> bool) -> bool {
    let mut k = *shown;
    while k < drawn.len() {
        let last = k + 1 == drawn.len();
        let end = if flush && last { text.len() } else { drawn[k].end };
        if end > safe || !(drawn[k].whole || flush && last) {
            if end > safe {
                break;
            }
            k += 1;
            continue;
        }
        let from = if *shown == 0 { 0 } else { drawn[*shown - 1].end };
        let piece = text.get(from..end).unwrap_or_default();
        for (j, d) in drawn.iter().enumerate().take(k + 1).skip(*shown) {
            if !on_event(Event::Token { id: d.id, text: if j == k { piece } else { "" }, probs: d.probs.as_ref() }) {
                *shown = j + 1;
                return false;
            }
        }
        *shown = k + 1;
        k += 1;
    }
    true
}

/// `s` with the ids banned at this position added to its logit bias as -inf.
fn with_bans(s: &SamplingParams, banned: &[u32]) -> SamplingParams {
    let mut step = s.clone();
    for &id in banned {
        match step.logit_bias.iter_mut().find(|e| e.0 == id) {
            Some(e) => e.1 = f32::NEG_INFINITY,
            None => step.logit_bias.push((id, f32::NEG_INFINITY)),
        }
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phrases(p: &[&str]) -> BannedPhrases {
        BannedPhrases::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_phrase_is_found_in_the_new_text_whatever_its_case() {
        let b = phrases(&["shivers down", "Elara"]);
        assert_eq!(b.found("It sent SHIVERS Down", 17), Some(8));
        // Inside the newest token too; but one that ended before it was dealt with already.
        assert_eq!(b.found("It sent shivers down her spine", 17), Some(8));
        assert_eq!(b.found("It sent shivers down her spine", 20), None);
        assert_eq!(b.found("said elara", 0), Some(5));
        assert_eq!(b.found("ara", 0), None);
        assert!(BannedPhrases::new(&["ok".into(), " ".into()]).unwrap_err().to_string().contains("--ban"));
    }

    #[test]
    fn text_a_phrase_could_still_grow_out_of_is_held_back() {
        let b = phrases(&["shivers down"]);
        // "shiv" may become the phrase: held from its start; "sh" of "she" cannot once "e" follows.
        assert_eq!(b.held_from("It sent shiv"), 8);
        assert_eq!(b.held_from("It sent she"), 11);
        assert_eq!(b.held_from("It sent s"), 8);
        assert_eq!(b.held_from("It sent shivers down"), 20, "a whole phrase is the ending match's business");
        assert_eq!(BannedPhrases::default().held_from("abc"), 3);
    }

    #[test]
    fn bans_join_the_logit_bias() {
        let s = SamplingParams { logit_bias: vec![(3, 1.5)], ..SamplingParams::greedy() };
        let step = with_bans(&s, &[3, 9]);
        assert_eq!(step.logit_bias, vec![(3, f32::NEG_INFINITY), (9, f32::NEG_INFINITY)]);
        assert_eq!(with_bans(&s, &[]).logit_bias, s.logit_bias);
    }
}
