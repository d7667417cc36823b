//! Sizes a tokenizer.json declares, counted before the tokenizers crate builds its tables:
//! a vocabulary or merge list far beyond any real model's would take gigabytes and minutes.

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Most vocabulary entries accepted: four times the largest real vocabulary (Gemma's 262144).
pub const MAX_HF_VOCAB: usize = 1 << 20;
/// Most merges accepted: about four times the longest real list (Gemma 3's ~514k).
pub const MAX_HF_MERGES: usize = 1 << 21;

/// `model.vocab` and `model.merges` of a tokenizer.json, only counted.
#[derive(serde::Deserialize)]
pub(super) struct ModelSizes {
    vocab: Option<Count>,
    merges: Option<Count>,
}

impl ModelSizes {
    pub(super) fn check(&self) -> std::result::Result<(), String> {
        for (what, count, max) in [("model.vocab", &self.vocab, MAX_HF_VOCAB), ("model.merges", &self.merges, MAX_HF_MERGES)] {
            if let Some(Count(n)) = count {
                if *n > max {
                    return Err(format!("{what} has {n} entries, more than the {max} allowed"));
                }
            }
        }
        Ok(())
    }
}

/// The number of entries of a JSON array or object (0 for anything else), with each entry
/// skipped unparsed.
struct Count(usize);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(Counter)
    }
}

struct Counter;

impl<'de> Visitor<'de> for Counter {
    type Value = Count;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array or object")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Count, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Count(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Count, A::Error> {
        let mut n = 0;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Count(n))
    }
    fn visit_unit<E>(self) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Count, E> {
        Ok(Count(0))
    }
}
