//! Hugging Face safetensors: each shard's JSON header parsed from its first bytes, then each
//! tensor's bytes read from the shard's [`ByteSource`] when it is uploaded (a memory map
//! natively; in the browser a `File` slice or a range request, so the page holds one tensor,
//! never the file). Several shards form one source.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use serde_json::Value;

use super::source::{ByteSource, Bytes};
use super::{DType, TensorMeta, TensorSource, TensorView};
use crate::error::{Error, Result};

pub struct SafetensorsSource<'a> {
    label: String,
    shards: Vec<Shard<'a>>,
    /// Tensor name -> (shard, entry).
    index: HashMap<String, (usize, usize)>,
}

struct Shard<'a> {
    name: String,
    src: Box<dyn ByteSource + 'a>,
    /// Where the data section starts: after the 8-byte length and the header.
    data_start: u64,
    /// In the order of their data.
    tensors: Vec<Entry>,
}

struct Entry {
    name: String,
    /// The header's dtype name (`F32`, `I64`, …); only some are read (`dtype_of`).
    dtype: &'static str,
    shape: Vec<usize>,
    /// Bytes of its data, inside the data section.
    data: Range<u64>,
}

impl<'a> SafetensorsSource<'a> {
    /// `files` are (name for errors, bytes) of every shard, already in memory.
    pub fn parse(files: &[(String, &'a [u8])]) -> Result<Self> {
        Self::open(files.iter().map(|(n, b)| (n.clone(), Box::new(Bytes(b)) as Box<dyn ByteSource + 'a>)).collect())
    }

    /// Every shard's header, read from its source: (name for errors, source). Only the
    /// headers are read here; tensor data is read when asked for.
    pub fn open(files: Vec<(String, Box<dyn ByteSource + 'a>)>) -> Result<Self> {
        let mut shards: Vec<Shard<'a>> = Vec::new();
        let mut index: HashMap<String, (usize, usize)> = HashMap::new();
        for (name, src) in files {
            let (data_start, tensors) = read_header(&name, src.as_ref())?;
            for (i, t) in tensors.iter().enumerate() {
                // A tensor in two shards: lookups would take one and ignore the other.
                if let Some(&(other, _)) = index.get(&t.name) {
                    return Err(Error::tensor(&name, &t.name, format!("is also in {}", shards[other].name)));
                }
                index.insert(t.name.clone(), (shards.len(), i));
            }
            shards.push(Shard { name, src, data_start, tensors });
        }
        let label = shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        Ok(SafetensorsSource { label, shards, index })
    }
}

impl SafetensorsSource<'_> {
    /// Every tensor's name, shard by shard.
    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().flat_map(|s| s.tensors.iter().map(|t| t.name.as_str())).collect()
    }

    /// Bytes of all the shards (headers included): what a load's progress counts up to.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.src.len()).sum()
    }

    fn entry(&self, name: &str) -> Option<(&Shard<'_>, &Entry)> {
        let &(s, i) = self.index.get(name)?;
        Some((&self.shards[s], &self.shards[s].tensors[i]))
    }
}

/// The safetensors crate's limit on a header's size (its MAX_HEADER_SIZE).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes per element of every dtype the format defines.
fn dtype_width(name: &str) -> Option<(&'static str, u64)> {
    const WIDTHS: [(&str, u64); 15] = [
        ("BOOL", 1), ("U8", 1), ("I8", 1), ("F8_E5M2", 1), ("F8_E4M3", 1), ("I16", 2), ("U16", 2), ("F16", 2),
        ("BF16", 2), ("I32", 4), ("U32", 4), ("F32", 4), ("F64", 8), ("I64", 8), ("U64", 8),
    ];
    WIDTHS.iter().find(|(n, _)| *n == name).copied()
}

/// A shard's header from the first bytes of `src`: where its data starts and its tensors,
/// each checked against the data section (inside it, the size of its shape and dtype, and
/// together covering it without gaps or overlaps, as the format requires).
fn read_header(file: &str, src: &dyn ByteSource) -> Result<(u64, Vec<Entry>)> {
    let bad = |why: String| Error::format(file, format!("not a valid safetensors file: {why}"));
    if src.len() < 8 {
        return Err(bad(format!("{} bytes, fewer than the 8 of the header's length", src.len())));
    }
    let n = u64::from_le_bytes(src.read(0, 8)?.as_ref().try_into().map_err(|_| bad("no header length".into()))?);
    if n > MAX_HEADER_BYTES || n > src.len() - 8 {
        return Err(bad(format!("a header of {n} bytes, in a file of {} (at most {MAX_HEADER_BYTES})", src.len())));
    }
    let header = src.read(8, n as usize)?;
    if let Some(dup) = duplicate_header_key(&header) {
        return Err(Error::tensor(file, dup, "appears twice in the header"));
    }
    let map: serde_json::Map<String, Value> = serde_json::from_slice(&header).map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
    let data_start = 8 + n;
    let data_len = src.len() - data_start;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, info) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        tensors.push(entry(name, info, data_len).map_err(|why| bad(format!("tensor '{name}': {why}")))?);
    }
    tensors.sort_by_key(|t| t.data.start);
    let mut end = 0;
    for t in &tensors {
        if t.data.start != end {
            return Err(bad(format!("tensor '{}': data_offsets start at {} where the previous tensor's end at {end}", t.name, t.data.start)));
        }
        end = t.data.end;
    }
    if end != data_len {
        return Err(bad(format!("the tensors' data ends at {end} but the data section has {data_len} bytes")));
    }
    Ok((data_start, tensors))
}

/// One tensor's header entry, checked against a data section of `data_len` bytes.
fn entry(name: &str, info: &Value, data_len: u64) -> std::result::Result<Entry, String> {
    let dtype = info.get("dtype").and_then(Value::as_str).ok_or("no dtype string")?;
    let (dtype, width) = dtype_width(dtype).ok_or_else(|| format!("dtype {dtype:?} is not a safetensors dtype"))?;
    let dims = info.get("shape").and_then(Value::as_array).ok_or("no shape array")?;
    let shape: Vec<usize> = dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<_>>().ok_or("a shape entry that is not a size")?;
    let offsets = info.get("data_offsets").and_then(Value::as_array).filter(|o| o.len() == 2).ok_or("no data_offsets pair")?;
    let (start, end) = (offsets[0].as_u64().ok_or("data_offsets[0] is not an offset")?, offsets[1].as_u64().ok_or("data_offsets[1] is not an offset")?);
    if end > data_len || start > end {
        return Err(format!("data_offsets [{start}, {end}] but the data section has {data_len} bytes"));
    }
    let bytes = shape.iter().try_fold(width, |a, &d| a.checked_mul(d as u64));
    if bytes != Some(end - start) {
        return Err(format!("data_offsets [{start}, {end}] do not hold its shape and dtype"));
    }
    Ok(Entry { name: name.to_string(), dtype, shape, data: start..end })
}

/// The first key that appears twice in a safetensors JSON header (a map keeps the last
/// silently). Values are skipped unparsed.
fn duplicate_header_key(header: &[u8]) -> Option<String> {
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
    serde_json::Deserializer::from_slice(header).deserialize_map(FirstDuplicate).ok()?
}

fn dtype_of(file: &str, t: &Entry) -> Result<DType> {
    match t.dtype {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(Error::tensor(file, &t.name, format!("dtype {other} is not supported ({} are)", DType::names_where(|d| d.block_len() == 1)))),
    }
}

impl TensorSource for SafetensorsSource<'_> {
    fn file_name(&self) -> &str {
        &self.label
    }
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (shard, t) = self.entry(name)?;
        let dtype = dtype_of(&shard.name, t).ok()?;
        Some(TensorMeta { shape: t.shape.clone(), dtype, n_bytes: (t.data.end - t.data.start) as usize })
    }
    fn read(&self, name: &str, range: Range<usize>) -> Result<Cow<'_, [u8]>> {
        let (shard, t) = self.entry(name).ok_or_else(|| Error::tensor(&self.label, name, "missing"))?;
        let n_bytes = t.data.end - t.data.start;
        if range.start > range.end || range.end as u64 > n_bytes {
            return Err(Error::tensor(&self.label, name, format!("bytes {range:?} of its {n_bytes} asked for")));
        }
        shard.src.read(shard.data_start + t.data.start + range.start as u64, range.len())
    }
    fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        if let Some((shard, t)) = self.entry(name) {
            dtype_of(&shard.name, t)?;
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

#[cfg(test)]
mod streamed {
    use super::*;
    use std::cell::RefCell;

    /// A file read through `ByteSource` that notes every range read.
    struct Noting<'a> {
        bytes: &'a [u8],
        reads: RefCell<Vec<(u64, usize)>>,
    }

    impl ByteSource for &Noting<'_> {
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
            self.reads.borrow_mut().push((offset, len));
            Ok(Cow::Owned(Bytes(self.bytes).read(offset, len)?.into_owned()))
        }
    }

    #[test]
    fn a_streamed_shard_reads_its_header_then_one_tensor_at_a_time() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-tiny/model.safetensors");
        let bytes = std::fs::read(path).unwrap();
        let whole = SafetensorsSource::parse(&[("m.safetensors".into(), &bytes[..])]).unwrap();
        let noting = Noting { bytes: &bytes, reads: RefCell::default() };
        let src = SafetensorsSource::open(vec![("m.safetensors".into(), Box::new(&noting) as Box<dyn ByteSource>)]).unwrap();
        assert_eq!(src.names(), whole.names());
        assert_eq!(src.total_bytes(), bytes.len() as u64);
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(*noting.reads.borrow(), [(0, 8), (8, header)], "only the header, from the first bytes");
        let largest = src.names().iter().filter_map(|n| src.meta(n)).map(|m| m.n_bytes).max().unwrap();
        for name in src.names() {
            assert_eq!(src.tensor(name).unwrap().unwrap().data, whole.tensor(name).unwrap().unwrap().data, "{name}");
        }
        let reads = noting.reads.borrow();
        assert_eq!(reads.len(), 2 + src.names().len(), "one read per tensor: {reads:?}");
        assert!(reads[2..].iter().all(|&(_, n)| n <= largest), "a read larger than the largest tensor: {reads:?}");
    }

    #[test]
    fn headers_that_lie_are_refused_naming_the_file_and_tensor() {
        let file = |header: &str, data: usize| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.resize(b.len() + data, 0);
            b
        };
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "fewer than the 8"),
            (huge, "a header of 18446744073709551615 bytes"),
            (file("[1]", 0), "not a JSON object"),
            (file(r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, 4), "'a': dtype \"Q9\""),
            (file(r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4), "'a': a shape entry"),
            (file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#, 4), "'a': data_offsets [0, 8] but the data section has 4"),
            (file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, 4), "'a': data_offsets [0, 4] do not hold"),
            (file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8), "'a': data_offsets start at 4"),
            (file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8), "ends at 4 but the data section has 8"),
            (file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4), "'b': data_offsets start at 0"),
        ];
        for (bytes, want) in cases {
            let e = SafetensorsSource::parse(&[("x.safetensors".into(), &bytes[..])]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("x.safetensors") && e.contains(want), "{want}: {e}");
        }
    }
}
