//! Streaming detokenization that never cuts a UTF-8 character.

use super::Tokenizer;
use crate::error::Result;

/// Most ids held back waiting for a character to complete (see [`StreamDecoder`]).
pub const MAX_HELD_IDS: usize = 8;

/// Turns generated ids into text as they come, one piece per call, never cutting a UTF-8
/// character that spans several tokens (CJK and emoji often take two or three byte tokens).
///
/// The text of a token depends on its neighbours (a character's bytes, or a SentencePiece
/// leading space), so we decode a window: `ids[prefix..read]` was already printed, and
/// `ids[prefix..]` is decoded again with it as context; what it adds is new. While that text
/// ends in U+FFFD the last character is incomplete and we wait for more ids.
///
/// A character takes at most four byte tokens, so once [`MAX_HELD_IDS`] ids that change the
/// text are held back the bytes are truly invalid: they are printed as U+FFFD rather than held
/// (and re-decoded) for ever. Ids that leave the text as it was (a special token that decodes
/// to nothing, between a character's bytes) do not count, up to `4 * MAX_HELD_IDS` held in all.
/// [`finish`] flushes what is left, U+FFFD included.
///
/// Bytes printed as U+FFFD stay in the next window's context, so a character they begin that
/// later bytes complete is printed when it completes (after the U+FFFD already out): the
/// window's text then no longer starts with what was printed, and what follows their common
/// prefix is the new part.
///
/// [`finish`]: StreamDecoder::finish
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the context window: ids before it are printed and no longer needed.
    prefix: usize,
    /// End of what has been printed.
    read: usize,
    /// Held ids (past `read`) that changed the window's text, and that text.
    changed: usize,
    last: String,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds one generated id; returns the text it completes, or `None` while a character is
    /// still incomplete.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let printed = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        let held = self.ids.len() - self.read;
        let piece = new_part(&text, &printed);
        if piece.is_empty() {
            // Ids that add no text (not even part of a character) need no context: drop them
            // from the window so it does not grow. Not sooner than the bound on held ids: the
            // window may end in bytes printed as U+FFFD that a later byte completes.
            if held >= 4 * MAX_HELD_IDS {
                self.prefix = self.read;
                self.read = self.ids.len();
                self.changed = 0;
                self.last.clear();
            }
            return Ok(None);
        }
        if text != self.last {
            self.changed += 1;
        }
        if text.ends_with('\u{FFFD}') && self.changed < MAX_HELD_IDS && held < 4 * MAX_HELD_IDS {
            self.last = text;
            return Ok(None);
        }
        let piece = piece.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        self.changed = 0;
        self.last.clear();
        Ok(Some(piece))
    }

    /// Returns whatever has not been printed yet, even an incomplete character (as U+FFFD);
    /// `None` when everything was.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let printed = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        self.changed = 0;
        self.last.clear();
        let rest = new_part(&text, &printed);
        Ok((!rest.is_empty()).then(|| rest.to_string()))
    }
}

/// The part of `text` after what it shares with `printed`: all after `printed` while `text`
/// extends it; after their common prefix once bytes printed as U+FFFD became part of a
/// character (the window's text can then even be shorter than what was printed).
fn new_part<'t>(text: &'t str, printed: &str) -> &'t str {
    if let Some(rest) = text.strip_prefix(printed) {
        return rest;
    }
    let common: usize = text.chars().zip(printed.chars()).take_while(|(a, b)| a == b).map(|(c, _)| c.len_utf8()).sum();
    &text[common..]
}
