//! Chat templates: Jinja rendered with minijinja, set up like transformers' sandbox.

use std::collections::BTreeMap;

use minijinja::value::{from_args, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind};

use super::Tokenizer;
use crate::error::{Error, Result};

/// Largest template source we parse. Real templates are a few kB (tool-calling ones ~20 kB);
/// parsing a hostile 50 MB source would take seconds and gigabytes.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// minijinja's instruction budget for one render (it also charges ~1 unit per 64 bytes made):
/// a real template renders a long conversation in well under 1% of it, and a loop that never
/// ends stops within a fraction of a second.
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// Nesting depth of loops, macros and includes.
pub const TEMPLATE_RECURSION_LIMIT: usize = 100;
/// Largest rendered prompt: far beyond any context, small enough to hold in memory.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// The chat templates used when a GGUF carries none, by `general.architecture`: each is the
/// template the family's instruct models ship (Gemma folds a system message into the first
/// user turn; Qwen uses ChatML).
pub(super) fn default_template(arch: &str) -> Option<&'static str> {
    match arch {
        "gemma" | "gemma2" | "gemma3" => Some(include_str!("templates/gemma3.jinja")),
        "phi3" => Some(include_str!("templates/phi3.jinja")),
        "qwen2" | "qwen3" => Some(include_str!("templates/chatml.jinja")),
        _ => None,
    }
}

impl Tokenizer {
    /// Renders the chat template for `(role, content)` messages. With
    /// `add_generation_prompt` the text ends with the opening of the assistant's turn.
    ///
    /// The template is untrusted code from the model file: it runs with an instruction budget,
    /// a recursion limit and a cap on its output and source size, and an error names where the
    /// template came from ([`Tokenizer::chat_template_origin`]).
    pub fn apply_chat_template<R: AsRef<str>, C: AsRef<str>>(&self, messages: &[(R, C)], add_generation_prompt: bool) -> Result<String> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template("the model has no chat template (none in its GGUF metadata or tokenizer_config.json); use a raw prompt".into())
        })?;
        let origin = &self.template_origin;
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::Template(format!(
                "{origin}: the chat template is {} bytes, over the limit of {MAX_TEMPLATE_BYTES} bytes",
                source.len()
            )));
        }
        let env = chat_environment();
        let template =
            env.template_from_str(source).map_err(|e| Error::Template(format!("{origin}: cannot parse the chat template: {}", describe(&e))))?;
        let messages: Vec<JValue> = messages
            .iter()
            .map(|(role, content)| JValue::from(BTreeMap::from([("role", JValue::from(role.as_ref())), ("content", JValue::from(content.as_ref()))])))
            .collect();
        let ctx = BTreeMap::from([
            ("messages", JValue::from(messages)),
            ("add_generation_prompt", JValue::from(add_generation_prompt)),
            ("bos_token", JValue::from(self.bos_token.as_str())),
            ("eos_token", JValue::from(self.eos_token.as_str())),
        ]);
        let mut out = CappedOutput { bytes: Vec::new(), over: false };
        if let Err(e) = template.render_captured_to(JValue::from(ctx), &mut out) {
            return Err(Error::Template(if out.over {
                format!("{origin}: the chat template's output passed the limit of {MAX_RENDERED_BYTES} bytes")
            } else if e.kind() == ErrorKind::OutOfFuel {
                format!("{origin}: the chat template ran past its budget of {TEMPLATE_FUEL} instructions (a loop too long or endless)")
            } else {
                format!("{origin}: {}", describe(&e))
            }));
        }
        let text = String::from_utf8(out.bytes).map_err(|_| Error::Template(format!("{origin}: the chat template wrote invalid UTF-8")))?;
        if text.trim().is_empty() {
            // Not the user's fault: their prompt may be fine, the template wrote nothing.
            return Err(Error::Template(format!("{origin}: the chat template rendered nothing (or only whitespace) for this conversation")));
        }
        Ok(text)
    }

    /// Where the chat template came from, for messages: `model.gguf: tokenizer.chat_template`,
    /// `dir/chat_template.jinja`, or the built-in default for the architecture.
    pub fn chat_template_origin(&self) -> &str {
        &self.template_origin
    }

    /// Whether the chat template is quill's built-in default for the architecture, because the
    /// model file carries none (the CLI says so).
    pub fn chat_template_is_default(&self) -> bool {
        self.template_is_default
    }
}

/// A `chat_template.jinja` file's text. Not decoded lossily: a template with U+FFFD in place
/// of its bytes would render a prompt the model was never trained on, so invalid UTF-8 is an
/// error naming the file.
pub fn template_text(bytes: Vec<u8>, file: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        Error::format(file, format!("the chat template is not UTF-8 text (invalid bytes at offset {})", e.utf8_error().valid_up_to()))
    })
}

/// Collects a render and refuses to grow past [`MAX_RENDERED_BYTES`].
struct CappedOutput {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minijinja error with its cause chain (the template line lives in the chain).
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// A Jinja environment that behaves like transformers' chat-template sandbox.
fn chat_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // transformers renders with trim_blocks and lstrip_blocks; templates are written for it.
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the template raised: {msg}")))
    });
    env.add_function("strftime_now", |format: String| -> String { strftime_now(&format) });
    env.set_unknown_method_callback(python_method);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION_LIMIT);
    env
}

/// The Python `str` and `dict` methods chat templates call (`.strip()`, `.startswith()`,
/// `.get()`, `.items()`, …), which Jinja2 offers and minijinja does not.
fn python_method(_: &mut minijinja::State, value: &JValue, method: &str, args: &[JValue]) -> std::result::Result<JValue, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let chars = |c: Option<&str>| -> Vec<char> { c.map_or_else(Vec::new, |c| c.chars().collect()) };
        let strip = |c: &Option<&str>, ch: char| if c.is_some() { chars(*c).contains(&ch) } else { ch.is_whitespace() };
        return Ok(match method {
            "strip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_matches(|ch| strip(&c, ch)))
            }
            "lstrip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_start_matches(|ch| strip(&c, ch)))
            }
            "rstrip" => {
                let (c,): (Option<&str>,) = from_args(args)?;
                JValue::from(s.trim_end_matches(|ch| strip(&c, ch)))
            }
            "startswith" | "endswith" => {
                let (p,): (JValue,) = from_args(args)?;
                // Python accepts one prefix or a tuple of them.
                let prefixes: Vec<JValue> = if p.kind() == ValueKind::Seq { p.try_iter()?.collect() } else { vec![p] };
                let hit = prefixes.iter().filter_map(|p| p.as_str()).any(|p| if method == "startswith" { s.starts_with(p) } else { s.ends_with(p) });
                JValue::from(hit)
            }
            "upper" => JValue::from(s.to_uppercase()),
            "lower" => JValue::from(s.to_lowercase()),
            "title" | "capitalize" => {
                let mut out = String::with_capacity(s.len());
                let mut start = true;
                for ch in s.chars() {
                    if start { out.extend(ch.to_uppercase()) } else { out.extend(ch.to_lowercase()) }
                    start = method == "title" && !ch.is_alphanumeric();
                }
                JValue::from(out)
            }
            "replace" => {
                let (old, new, count): (&str, &str, Option<usize>) = from_args(args)?;
                JValue::from(match count {
                    Some(n) => s.replacen(old, new, n),
                    None => s.replace(old, new),
                })
            }
            "split" => {
                let (sep, max): (Option<&str>, Option<i64>) = from_args(args)?;
                let max = max.filter(|&m| m >= 0).map(|m| m as usize + 1).unwrap_or(usize::MAX);
                let parts: Vec<JValue> = match sep {
                    Some(sep) => s.splitn(max, sep).map(JValue::from).collect(),
                    None => s.split_whitespace().take(max).map(JValue::from).collect(),
                };
                JValue::from(parts)
            }
            "join" => {
                let (items,): (JValue,) = from_args(args)?;
                let items: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
                JValue::from(items.join(s))
            }
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "get" => {
                let (key, default): (JValue, Option<JValue>) = from_args(args)?;
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() { default.unwrap_or(JValue::from(())) } else { v })
            }
            "items" => {
                let (): () = from_args(args)?;
                let pairs: Vec<JValue> = value.try_iter()?.map(|k| Ok(JValue::from(vec![k.clone(), value.get_item(&k)?]))).collect::<std::result::Result<_, minijinja::Error>>()?;
                Ok(JValue::from(pairs))
            }
            "keys" => Ok(JValue::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => Ok(JValue::from(value.try_iter()?.map(|k| value.get_item(&k)).collect::<std::result::Result<Vec<_>, _>>()?)),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

/// Python's `strftime` for the current UTC time, for templates that print today's date
/// (Llama 3.2). Knows %Y %m %d %b %B %a %A %H %M %S %%; anything else is copied.
pub(super) fn strftime_now(format: &str) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"]; // 1970-01-01 was a Thursday
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
