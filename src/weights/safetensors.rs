//! Hugging Face safetensors, read through the `safetensors` crate from bytes (a memory map
//! natively, a fetched buffer in the browser). Several shards form one source.

use safetensors::{tensor::TensorView as StView, Dtype, SafeTensors};

use std::borrow::Cow;
use std::ops::Range;

use super::{DType, TensorMeta, TensorSource, TensorView};
use crate::error::{Error, Result};

pub struct SafetensorsSource<'a> {
    label: String,
    shards: Vec<(String, SafeTensors<'a>)>,
}

impl<'a> SafetensorsSource<'a> {
    /// `files` are (name for errors, bytes) of every shard.
    pub fn parse(files: &[(String, &'a [u8])]) -> Result<Self> {
        let mut shards: Vec<(String, SafeTensors<'a>)> = Vec::new();
        for (name, bytes) in files {
            if let Some(dup) = duplicate_header_key(bytes) {
                return Err(Error::tensor(name, dup, "appears twice in the header"));
            }
            let st = SafeTensors::deserialize(bytes).map_err(|e| {
                let detail = offending_tensor(bytes).map(|t| format!(" ({t})")).unwrap_or_default();
                Error::format(name, format!("not a valid safetensors file: {e}{detail}"))
            })?;
            // A tensor in two shards: lookups would take one and ignore the other.
            for (other, earlier) in &shards {
                if let Some(dup) = st.names().into_iter().find(|n| earlier.tensor(n).is_ok()) {
                    return Err(Error::tensor(name, dup, format!("is also in {other}")));
                }
            }
            shards.push((name.clone(), st));
        }
        let label = files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        Ok(SafetensorsSource { label, shards })
    }
}

impl SafetensorsSource<'_> {
    /// Every tensor's name, shard by shard.
    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().flat_map(|(_, st)| st.iter().map(|(n, _)| n)).collect()
    }
}

/// The safetensors crate's limit on a header's size (its MAX_HEADER_SIZE).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// The first key that appears twice in a safetensors JSON header (the crate's map keeps the
/// last silently). Reads only the header, with values skipped unparsed.
fn duplicate_header_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    // Headers past the crate's own limit are refused by it, with its message.
    if n > MAX_HEADER_BYTES {
        return None;
    }
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    serde_json::Deserializer::from_slice(header).deserialize_map(FirstDuplicate).ok()?
}

/// For a file the crate refused: the first tensor whose `data_offsets` leave the data section
/// or disagree with its shape and dtype, so the message names it (the crate's "file not fully
/// covered" does not). Reads only the header; None when nothing specific is found.
fn offending_tensor(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = (bytes.len() - 8 - n) as u64;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = info.get("data_offsets")?.as_array()?;
        let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        if end > data_len || start > end {
            return Some(format!("tensor '{name}': data_offsets [{start}, {end}] but the data section has {data_len} bytes"));
        }
        let elems = info.get("shape")?.as_array()?.iter().try_fold(1u64, |a, d| a.checked_mul(d.as_u64()?))?;
        let width = match info.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        if elems.checked_mul(width) != Some(end - start) {
            return Some(format!("tensor '{name}': data_offsets [{start}, {end}] do not hold its shape and dtype"));
        }
    }
    None
}

fn dtype_of(file: &str, name: &str, t: &StView<'_>) -> Option<Result<DType>> {
    Some(match t.dtype() {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::tensor(file, name, format!("dtype {other:?} is not supported ({} are)", DType::names_where(|d| d.block_len() == 1)))),
    })
}

impl TensorSource for SafetensorsSource<'_> {
    fn file_name(&self) -> &str {
        &self.label
    }
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.shards.iter().find_map(|(file, st)| {
            let t = st.tensor(name).ok()?;
            let dtype = dtype_of(file, name, &t)?.ok()?;
            Some(TensorMeta { shape: t.shape().to_vec(), dtype, n_bytes: t.data().len() })
        })
    }
    fn read(&self, name: &str, range: Range<usize>) -> Result<Cow<'_, [u8]>> {
        let t = self.shards.iter().find_map(|(_, st)| st.tensor(name).ok()).ok_or_else(|| Error::tensor(&self.label, name, "missing"))?;
        let data: &[u8] = t.data();
        data.get(range.clone()).map(Cow::Borrowed).ok_or_else(|| Error::tensor(&self.label, name, format!("bytes {range:?} of its {} asked for", data.len())))
    }
    fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        for (file, st) in &self.shards {
            if let Ok(t) = st.tensor(name) {
                if let Some(Err(e)) = dtype_of(file, name, &t) {
                    return Err(e);
                }
            }
        }
        let m = self.meta(name).ok_or_else(|| Error::tensor(&self.label, name, "missing"))?;
        if m.shape != shape {
            return Err(Error::tensor(&self.label, name, format!("shape {:?}, expected {:?}", m.shape, shape)));
        }
        let data = self.read(name, 0..m.n_bytes)?;
        Ok(TensorView { name: name.to_string(), shape: m.shape, dtype: m.dtype, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of F32 tensors, with its JSON header written as given.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data_len, 0);
        b
    }

    #[test]
    fn a_name_twice_in_one_header_is_refused() {
        let f = file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8);
        let e = SafetensorsSource::parse(&[("m.safetensors".into(), &f[..])]).err().unwrap().to_string();
        assert!(e.contains("m.safetensors") && e.contains("'a'") && e.contains("twice"), "{e}");
    }

    #[test]
    fn a_name_in_two_shards_is_refused() {
        let one = file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
        let two = file(r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8);
        let files = [("s1.safetensors".to_string(), &one[..]), ("s2.safetensors".to_string(), &two[..])];
        let e = SafetensorsSource::parse(&files).err().unwrap().to_string();
        assert!(e.contains("s2.safetensors") && e.contains("'a'") && e.contains("also in s1.safetensors"), "{e}");
        // Distinct names across shards are fine.
        let files = [("s1.safetensors".to_string(), &one[..])];
        assert_eq!(SafetensorsSource::parse(&files).unwrap().names(), vec!["a"]);
    }
}
