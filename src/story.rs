//! A story as a writer keeps it: the text, Memory (always at the top of the context), an
//! Author's Note (inserted a few tokens before the end), World Info (entries whose keys, seen
//! near the end of the story, bring their content in) and the history of earlier texts. Reads
//! and writes bytes only (plain .txt/.md: the text; .json: every field, versioned; KoboldAI's
//! story JSON), so it builds for the browser too; the files live with the caller
//! (`files::atomic_write` natively).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The `format` field of quill's story JSON, and its version.
pub const FORMAT: &str = "quill-story";
pub const VERSION: u32 = 1;

/// World Info tokens scanned for keys when a story does not say.
pub const DEFAULT_WORLD_INFO_SCAN: usize = 256;
/// Tokens before the end where the Author's Note goes when a story does not say.
pub const DEFAULT_AUTHORS_NOTE_DEPTH: usize = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldInfo {
    /// Any of these (case-insensitive) in the scanned end of the story brings `content` in.
    pub keys: Vec<String>,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Story {
    #[serde(default = "format_name")]
    pub format: String,
    #[serde(default = "version")]
    pub version: u32,
    pub text: String,
    #[serde(default)]
    pub memory: String,
    #[serde(default)]
    pub authors_note: String,
    /// Tokens of story between the Author's Note and the end.
    #[serde(default = "authors_note_depth")]
    pub authors_note_depth: usize,
    #[serde(default)]
    pub world_info: Vec<WorldInfo>,
    /// How many of the story's last tokens are scanned for World Info keys.
    #[serde(default = "world_info_scan")]
    pub world_info_scan: usize,
    /// Earlier versions of `text`, oldest first (undo).
    #[serde(default)]
    pub history: Vec<String>,
    /// What the studio page keeps beside the fields above: the text as tokens with their
    /// probabilities and alternatives, its undo steps as tokens, the sampler settings and the
    /// mode. Opaque here, and kept as it is when the command line writes the story on; the page
    /// uses its tokens only as far as they still spell `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studio: Option<serde_json::Value>,
}

/// Fields of the studio page's own story JSON before it wrote this format (its extras at the
/// top level and `history` as lists of tokens): such a file is read as a story whose `studio`
/// holds them.
const PAGE_V1_FIELDS: [&str; 6] = ["pieces", "sampling", "mode", "history", "history_at", "saved"];

fn format_name() -> String {
    FORMAT.into()
}
fn version() -> u32 {
    VERSION
}
fn authors_note_depth() -> usize {
    DEFAULT_AUTHORS_NOTE_DEPTH
}
fn world_info_scan() -> usize {
    DEFAULT_WORLD_INFO_SCAN
}

impl Default for Story {
    fn default() -> Self {
        Story::new("")
    }
}

/// Which part of the context a span of tokens holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Memory,
    /// The entry's index in `world_info`.
    WorldInfo(usize),
    /// Story text (two spans when the Author's Note sits inside it).
    Story,
    AuthorsNote,
}

/// The exact context sent to the model: its ids and what each span of them holds, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    pub ids: Vec<u32>,
    pub parts: Vec<(Part, Range<usize>)>,
    /// Story tokens left out at the start to fit.
    pub dropped: usize,
}

/// How a file holds a story, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// .txt, .md or anything else: the text alone.
    Text,
    /// .json: quill's story, or KoboldAI's (read; written back as KoboldAI's).
    Json,
}

impl Kind {
    pub fn of(name: &str) -> Kind {
        if name.to_ascii_lowercase().ends_with(".json") {
            Kind::Json
        } else {
            Kind::Text
        }
    }
}

impl Story {
    pub fn new(text: &str) -> Self {
        Story {
            format: FORMAT.into(),
            version: VERSION,
            text: text.into(),
            memory: String::new(),
            authors_note: String::new(),
            authors_note_depth: DEFAULT_AUTHORS_NOTE_DEPTH,
            world_info: Vec::new(),
            world_info_scan: DEFAULT_WORLD_INFO_SCAN,
            history: Vec::new(),
            studio: None,
        }
    }

    /// Reads a story file's bytes; `name` (for the kind and for messages) is its path.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Story> {
        let text = std::str::from_utf8(bytes).map_err(|e| Error::format(name, format!("not UTF-8 text ({e})")))?;
        match Kind::of(name) {
            Kind::Text => Ok(Story::new(text)),
            Kind::Json if text.trim().is_empty() => Ok(Story::new("")),
            Kind::Json => Story::from_json(name, text),
        }
    }

    /// quill's story JSON, or KoboldAI's (told apart by quill's `format` field).
    pub fn from_json(name: &str, text: &str) -> Result<Story> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::format(name, format!("not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::format(name, "a story is a JSON object"));
        }
        if v.get("format").is_none() && (v.get("actions").is_some() || v.get("gamestarted").is_some() || v.get("prompt").is_some()) {
            return Story::from_kobold(name, &v);
        }
        let v = Story::from_page_v1(v);
        let story: Story = serde_json::from_value(v).map_err(|e| Error::format(name, format!("not a quill story: {e}")))?;
        if story.format != FORMAT {
            return Err(Error::format(name, format!("field format: {:?} is not {FORMAT:?}", story.format)));
        }
        if story.version != VERSION {
            return Err(Error::format(name, format!("field version: {} is not a version this quill reads ({VERSION})", story.version)));
        }
        Ok(story)
    }

    /// A story the studio page wrote before it used this format (`PAGE_V1_FIELDS` at the top
    /// level, `history` as lists of `{t}` tokens), moved into this one: the extras go into
    /// `studio`, and `history` becomes the texts of the undo steps before the one shown.
    /// Anything else comes back as it was.
    fn from_page_v1(mut v: serde_json::Value) -> serde_json::Value {
        let old_history = v.get("history").and_then(|h| h.as_array()).is_some_and(|h| h.iter().any(|step| step.is_array()));
        let page = (v.get("pieces").is_some() || v.get("history_at").is_some() || old_history) && v.get("studio").is_none();
        if let (true, Some(o)) = (page, v.as_object_mut()) {
            Story::move_page_fields(o);
        }
        v
    }

    /// `from_page_v1`'s move of the page's fields of object `o` into `studio`.
    fn move_page_fields(o: &mut serde_json::Map<String, serde_json::Value>) {
        let studio: serde_json::Map<String, serde_json::Value> = PAGE_V1_FIELDS.iter().filter_map(|&k| Some((k.to_string(), o.remove(k)?))).collect();
        let steps = studio.get("history").and_then(|h| h.as_array()).cloned().unwrap_or_default();
        let at = studio.get("history_at").and_then(|a| a.as_u64()).map_or(steps.len().saturating_sub(1), |a| a as usize);
        // A step is a list of pieces: its text is theirs joined (anything else: no text).
        let text = |step: &serde_json::Value| -> String { step.as_array().map(|ps| ps.iter().filter_map(|p| p.get("t")?.as_str()).collect()).unwrap_or_default() };
        let history: Vec<serde_json::Value> = steps.iter().take(at.min(steps.len())).map(|s| text(s).into()).collect();
        o.insert("history".into(), history.into());
        o.insert("studio".into(), studio.into());
    }

    /// The bytes of the story as a file named `name` holds it: the text alone for .txt/.md,
    /// every field for .json.
    pub fn to_bytes(&self, name: &str) -> Result<Vec<u8>> {
        match Kind::of(name) {
            Kind::Text => Ok(self.text.as_bytes().to_vec()),
            Kind::Json => serde_json::to_vec_pretty(self).map_err(|e| Error::format(name, format!("cannot write the story as JSON: {e}"))),
        }
    }

    /// A KoboldAI story: `prompt` then `actions` make the text; `memory`, `authorsnote`,
    /// `worldinfo` (`key` a comma-separated list, `content`).
    pub fn from_kobold(name: &str, v: &serde_json::Value) -> Result<Story> {
        let field = |k: &str| -> Result<String> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(Error::format(name, format!("KoboldAI story field {k}: not a string"))),
            }
        };
        let mut text = field("prompt")?;
        match v.get("actions") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(a)) => {
                for (i, action) in a.iter().enumerate() {
                    text += action.as_str().ok_or_else(|| Error::format(name, format!("KoboldAI story field actions[{i}]: not a string")))?;
                }
            }
            Some(_) => return Err(Error::format(name, "KoboldAI story field actions: not a list")),
        }
        let mut world_info = Vec::new();
        if let Some(entries) = v.get("worldinfo").filter(|w| !w.is_null()) {
            let entries = entries.as_array().ok_or_else(|| Error::format(name, "KoboldAI story field worldinfo: not a list"))?;
            for (i, e) in entries.iter().enumerate() {
                let s = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
                if !e.is_object() {
                    return Err(Error::format(name, format!("KoboldAI story field worldinfo[{i}]: not an object")));
                }
                let keys: Vec<String> = s("key").split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
                world_info.push(WorldInfo { keys, content: s("content") });
            }
        }
        Ok(Story { memory: field("memory")?, authors_note: field("authorsnote")?, world_info, ..Story::new(&text) })
    }

    /// KoboldAI's story JSON: the whole text as `prompt`, no `actions`.
    pub fn to_kobold(&self) -> serde_json::Value {
        let wi: Vec<serde_json::Value> = self
            .world_info
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({"key": w.keys.join(", "), "keysecondary": "", "content": w.content, "comment": "", "folder": null, "num": i, "init": true, "selective": false, "constant": false}))
            .collect();
        serde_json::json!({"gamestarted": true, "prompt": self.text, "memory": self.memory, "authorsnote": self.authors_note, "anotetemplate": "[Author's note: <|>]", "actions": [], "worldinfo": wi, "wifolders_d": {}, "wifolders_l": []})
    }

    /// The World Info entries whose keys (case-insensitive) appear in `scanned`.
    pub fn world_info_hits(&self, scanned: &str) -> Vec<usize> {
        let s = scanned.to_lowercase();
        (0..self.world_info.len()).filter(|&i| self.world_info[i].keys.iter().any(|k| !k.trim().is_empty() && s.contains(&k.trim().to_lowercase()))).collect()
    }

    /// The context for continuing the story within `budget` tokens: Memory, the World Info
    /// entries whose keys appear in the story's last `world_info_scan` tokens, then the story
    /// (its oldest tokens dropped to fit; Memory and World Info are kept), with the Author's
    /// Note `authors_note_depth` tokens before its end. Parts other than the story end in a
    /// newline, so each starts a line. Fails when the parts other than the story leave no room.
    pub fn assemble(&self, tok: &Tokenizer, budget: usize) -> Result<Assembled> {
        let story = tok.encode(&self.text)?;
        let scan = &story[story.len().saturating_sub(self.world_info_scan)..];
        let hits = self.world_info_hits(&tok.decode(scan)?);
        let line = |t: &str| -> Result<Vec<u32>> { if t.trim().is_empty() { Ok(Vec::new()) } else { tok.encode(&format!("{}\n", t.trim_end())) } };
        let memory = line(&self.memory)?;
        let entries: Vec<(usize, Vec<u32>)> = hits.iter().map(|&i| Ok((i, line(&self.world_info[i].content)?))).collect::<Result<_>>()?;
        let note = if self.authors_note.trim().is_empty() { Vec::new() } else { tok.encode(&format!("\n{}\n", self.authors_note.trim()))? };
        let fixed = memory.len() + entries.iter().map(|e| e.1.len()).sum::<usize>() + note.len();
        if fixed > budget || (fixed == budget && !story.is_empty()) {
            return Err(Error::Context(format!("Memory, World Info and the Author's Note take {fixed} tokens of a context of {budget}: no room for the story; shorten them or raise --ctx")));
        }
        let room = budget - fixed;
        let dropped = story.len().saturating_sub(room);
        let kept = &story[dropped..];
        // Without a note the story is one span.
        let split = if note.is_empty() { kept.len() } else { kept.len() - self.authors_note_depth.min(kept.len()) };
        let mut out = Assembled { ids: Vec::with_capacity(budget), parts: Vec::new(), dropped };
        let mut put = |part: Part, ids: &[u32]| {
            if !ids.is_empty() {
                let start = out.ids.len();
                out.ids.extend_from_slice(ids);
                out.parts.push((part, start..out.ids.len()));
            }
        };
        put(Part::Memory, &memory);
        for (i, ids) in &entries {
            put(Part::WorldInfo(*i), ids);
        }
        put(Part::Story, &kept[..split]);
        put(Part::AuthorsNote, &note);
        put(Part::Story, &kept[split..]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level tokenizer (one id per byte) from a tokenizer.json built here, so every
    /// count below is a count of bytes.
    fn bytes_tokenizer() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = (0u8..=255).map(|b| (format!("<0x{b:02X}>"), serde_json::json!(b as u32))).collect();
        let j = serde_json::json!({
            "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "ByteFallback"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": true, "unk_token": null, "dropout": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "ignore_merges": false}
        });
        Tokenizer::from_hf(j.to_string().as_bytes(), None, None, "test").unwrap()
    }

    fn story() -> Story {
        Story {
            memory: "MEM".into(),
            authors_note: "NOTE".into(),
            authors_note_depth: 2,
            world_info: vec![WorldInfo { keys: vec!["dragon".into()], content: "WI-D".into() }, WorldInfo { keys: vec!["castle".into(), "Keep".into()], content: "WI-C".into() }],
            world_info_scan: 11,
            ..Story::new("the castle fell. a DRAGON came")
        }
    }

    fn text(tok: &Tokenizer, a: &Assembled, part: &Part) -> Vec<String> {
        a.parts.iter().filter(|(p, _)| p == part).map(|(_, r)| tok.decode(&a.ids[r.clone()]).unwrap()).collect()
    }

    #[test]
    fn the_context_has_each_part_where_it_belongs() {
        let tok = bytes_tokenizer();
        let s = story();
        assert_eq!(tok.encode("abc").unwrap().len(), 3, "one token per byte");
        let a = s.assemble(&tok, 100).unwrap();
        // The last 11 tokens are "DRAGON came": the dragon's entry (keys match whatever the
        // case), not the castle's.
        let order: Vec<&Part> = a.parts.iter().map(|(p, _)| p).collect();
        assert_eq!(order, vec![&Part::Memory, &Part::WorldInfo(0), &Part::Story, &Part::AuthorsNote, &Part::Story], "{:?}", a.parts);
        assert_eq!(text(&tok, &a, &Part::Memory), vec!["MEM\n"]);
        assert_eq!(text(&tok, &a, &Part::AuthorsNote), vec!["\nNOTE\n"]);
        // The note sits 2 tokens before the end.
        assert_eq!(text(&tok, &a, &Part::Story), vec!["the castle fell. a DRAGON ca", "me"]);
        assert_eq!(a.dropped, 0);
        assert_eq!(tok.decode(&a.ids).unwrap(), "MEM\nWI-D\nthe castle fell. a DRAGON ca\nNOTE\nme");
    }

    #[test]
    fn world_info_comes_in_only_for_keys_near_the_end() {
        let tok = bytes_tokenizer();
        let mut s = story();
        s.world_info_scan = 6; // "N came"
        let a = s.assemble(&tok, 100).unwrap();
        assert!(a.parts.iter().all(|(p, _)| !matches!(p, Part::WorldInfo(_))), "{:?}", a.parts);
        s.world_info_scan = 1000;
        let a = s.assemble(&tok, 100).unwrap();
        let wi: Vec<&Part> = a.parts.iter().map(|(p, _)| p).filter(|p| matches!(p, Part::WorldInfo(_))).collect();
        assert_eq!(wi, vec![&Part::WorldInfo(0), &Part::WorldInfo(1)]);
        assert_eq!(s.world_info_hits("in the KEEP"), vec![1]);
    }

    #[test]
    fn the_oldest_story_text_goes_first_and_memory_stays() {
        let tok = bytes_tokenizer();
        let s = Story { world_info: Vec::new(), ..story() };
        // Fixed parts: "MEM\n" (4) + "\nNOTE\n" (6) = 10; a budget of 20 leaves 10 story tokens.
        let a = s.assemble(&tok, 20).unwrap();
        assert_eq!(a.ids.len(), 20);
        assert_eq!(a.dropped, s.text.len() - 10);
        assert_eq!(text(&tok, &a, &Part::Memory), vec!["MEM\n"]);
        assert_eq!(text(&tok, &a, &Part::Story), vec!["RAGON ca", "me"]);
        // No room for any story: a clear error.
        let e = s.assemble(&tok, 10).unwrap_err().to_string();
        assert!(e.contains("Memory") && e.contains("10"), "{e}");
        // Empty parts take nothing and make no span.
        let plain = Story::new("just text");
        let a = plain.assemble(&tok, 100).unwrap();
        assert_eq!(a.parts, vec![(Part::Story, 0..9)]);
    }

    #[test]
    fn files_round_trip() {
        let s = Story { history: vec!["the castle".into()], ..story() };
        let json = s.to_bytes("a.json").unwrap();
        assert_eq!(Story::from_bytes("a.json", &json).unwrap(), s);
        // Text files hold the text alone.
        assert_eq!(s.to_bytes("a.txt").unwrap(), s.text.as_bytes());
        assert_eq!(Story::from_bytes("a.md", b"# Title\nOnce").unwrap(), Story::new("# Title\nOnce"));
        assert_eq!(Story::from_bytes("new.json", b"").unwrap(), Story::new(""));
        // A minimal quill story: defaults for the rest.
        let min = Story::from_bytes("m.json", br#"{"format": "quill-story", "version": 1, "text": "hi"}"#).unwrap();
        assert_eq!(min, Story::new("hi"));
    }

    #[test]
    fn bad_story_files_name_the_file_and_field() {
        let cases: [(&[u8], &str); 6] = [
            (b"\xff\xfe", "UTF-8"),
            (b"{not json", "not JSON"),
            (b"[1, 2]", "object"),
            (br#"{"format": "quill-story", "version": 9, "text": ""}"#, "version"),
            (br#"{"format": "quill-story", "version": 1, "text": "", "color": 3}"#, "color"),
            (br#"{"prompt": "a", "actions": "b"}"#, "actions"),
        ];
        for (bytes, needle) in cases {
            let e = Story::from_bytes("s.json", bytes).unwrap_err().to_string();
            assert!(e.contains("s.json") && e.contains(needle), "{e}");
        }
    }

    /// The page's own story JSON of before (its tokens, alternatives, undo steps as tokens,
    /// sampler settings at the top level: a file the studio test saved) reads as a story: the
    /// same text and notes, the earlier undo steps' texts as `history`, the rest in `studio`,
    /// and it round-trips in this format.
    #[test]
    fn old_studio_page_stories_import() {
        let bytes = include_bytes!("../tests/fixtures/studio-story-v1.json");
        let old: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let s = Story::from_bytes("page.json", bytes).unwrap();
        assert_eq!(s.text, old["text"].as_str().unwrap());
        assert!(s.text.starts_with("The keeper climbed the stairs"));
        assert_eq!((s.memory.as_str(), s.authors_note.as_str(), s.authors_note_depth), ("IM", "IN", 2));
        assert_eq!(s.world_info, vec![WorldInfo { keys: vec!["sea".into(), "ship".into()], content: "The sea is cold.".into() }]);
        let at = old["history_at"].as_u64().unwrap() as usize;
        assert_eq!(s.history.len(), at);
        assert_eq!(s.history[0], "Once upon a time, in a lighthouse at the edge of the world,");
        let studio = s.studio.as_ref().unwrap();
        for k in PAGE_V1_FIELDS {
            assert_eq!(studio[k], old[k], "studio.{k}");
        }
        let pieces: String = studio["pieces"].as_array().unwrap().iter().map(|p| p["t"].as_str().unwrap()).collect();
        assert_eq!(pieces, s.text);
        let again = Story::from_bytes("page.json", &s.to_bytes("page.json").unwrap()).unwrap();
        assert_eq!(again, s);
        // A command-line story has no `studio` and writes none.
        assert!(!String::from_utf8(Story::new("x").to_bytes("x.json").unwrap()).unwrap().contains("studio"));
    }

    #[test]
    fn koboldai_stories_import_and_export() {
        let kobold = serde_json::json!({
            "gamestarted": true, "prompt": "You enter the cave.", "memory": "You are a knight.",
            "authorsnote": "Dark and tense.", "actions": [" A bat flies out.", " You draw your sword."],
            "worldinfo": [{"key": "bat, bats", "keysecondary": "", "content": "Bats here bite.", "comment": "", "folder": null, "num": 0, "init": true, "selective": false, "constant": false}]
        });
        let s = Story::from_bytes("k.json", kobold.to_string().as_bytes()).unwrap();
        assert_eq!(s.text, "You enter the cave. A bat flies out. You draw your sword.");
        assert_eq!((s.memory.as_str(), s.authors_note.as_str()), ("You are a knight.", "Dark and tense."));
        assert_eq!(s.world_info, vec![WorldInfo { keys: vec!["bat".into(), "bats".into()], content: "Bats here bite.".into() }]);
        let back = Story::from_kobold("k2.json", &s.to_kobold()).unwrap();
        assert_eq!((back.text, back.memory, back.authors_note, back.world_info), (s.text.clone(), s.memory.clone(), s.authors_note.clone(), s.world_info.clone()));
    }
}
