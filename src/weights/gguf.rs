//! GGUF reader (versions 2 and 3), from bytes. Every count, length and offset is checked
//! against the bytes that are really there before anything is allocated, so a truncated or
//! hostile file gives an error naming the file and the field, never a panic or a huge
//! allocation.
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata
//! key/value pairs, tensor infos (name, n_dims, dims innermost-first, type, offset), padding
//! to `general.alignment` (default 32), then the tensor data.

use std::collections::BTreeMap;

use std::borrow::Cow;

use super::source::ByteSource;
use super::DType;
use crate::error::{Error, Result};

/// One metadata value, of any of GGUF's 13 value types.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer value that fits in u64 (negative values do not).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// A metadata value as a person reads it (`42`, `"text"`, `[3 values]`), for messages.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) => format!("[{} values]", a.len()),
        Value::Bool(b) => b.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        other => other.as_f64().map(|x| x.to_string()).unwrap_or_default(),
    }
}

/// GGML tensor types by their GGUF code. Types quill does not read are named (from gguf-py's
/// list) so the error can say which one a file has.
fn ggml_type(code: u32) -> std::result::Result<DType, String> {
    if let Some(d) = DType::from_ggml(code) {
        return Ok(d);
    }
    const OTHERS: [(u32, &str); 12] = [
        (9, "Q8_1"), (15, "Q8_K"), (16, "IQ2_XXS"), (17, "IQ2_XS"), (18, "IQ3_XXS"), (19, "IQ1_S"),
        (21, "IQ3_S"), (22, "IQ2_S"), (29, "IQ1_M"), (34, "TQ1_0"), (35, "TQ2_0"), (39, "MXFP4"),
    ];
    Err(OTHERS.iter().find(|o| o.0 == code).map_or_else(|| format!("ggml type {code}"), |o| o.1.to_string()))
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape, outermost first (GGUF's `ne` reversed): a linear weight is [out, in].
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Offset from the start of the data section.
    pub offset: usize,
    pub n_bytes: usize,
}

/// A parsed GGUF header, with where its tensors' data is: the file's bytes in memory, or a
/// source read one tensor at a time.
pub struct Gguf<'a> {
    pub file: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Data<'a>,
}

enum Data<'a> {
    /// The data section.
    Bytes(&'a [u8]),
    /// The file, whose data section starts at `start`.
    Source { src: &'a dyn ByteSource, start: u64 },
}

/// Bytes `Gguf::open` reads first; a longer header (a big vocabulary) is read on.
const HEAD_GUESS: u64 = 1 << 20;

/// What the header says, before the data is attached.
struct Head {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
}

/// Nested arrays deeper than this are refused (the format uses at most one level).
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_DIMS: usize = 8;

/// Metadata array elements allowed in one file (all arrays together). A `Value` takes more
/// memory than its bytes in the file, so this bounds what a hostile file can make us allocate;
/// real vocabularies and merge lists have a few hundred thousand entries (the largest,
/// Gemma's, 262144 tokens with their scores and types).
const MAX_ARRAY_ELEMENTS: usize = 4 << 20;
/// Elements allowed in one metadata array: a vocabulary (tokens, scores, types) or merge list
/// of up to 524288 entries, twice the largest real ones (Gemma's 262144 tokens, Llama 3's
/// 280147 merges). Checked before the array is allocated. Building a tokenizer costs about
/// 10 µs and 0.8 KB per token, so this also bounds load time (~5 s) and memory (~450 MB).
pub const MAX_ARRAY_LEN: usize = 1 << 19;
/// Tensors allowed in one file (real ones have a few thousand; experts are stored merged).
pub const MAX_TENSORS: usize = 1 << 16;
/// Metadata entries allowed in one file (real ones have tens).
pub const MAX_METADATA: usize = 1 << 16;
/// Bytes allowed in one metadata string (the longest are chat templates of some KB).
pub const MAX_STRING: usize = 16 << 20;

struct Reader<'a> {
    file: &'a str,
    /// The start of the file: all of it, or the part read so far.
    bytes: &'a [u8],
    /// The whole file's size, which bounds counts.
    file_len: usize,
    /// Set when a read ran past `bytes` but not past the file: read more and parse again.
    need: Option<usize>,
    pos: usize,
    /// Array elements still allowed (see MAX_ARRAY_ELEMENTS).
    element_budget: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> Error {
        Error::format(self.file, format!("{what} (at byte {} of {})", self.pos, self.file_len))
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => {
                self.need = self.pos.checked_add(n).filter(|&e| e <= self.file_len);
                Err(self.err(&format!("truncated: {what} needs {n} more bytes")))
            }
        }
    }
    fn remaining(&self) -> usize {
        self.file_len - self.pos
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap_or_default()))
    }
    /// A count that must be backed by at least `min_each` bytes per item still in the file.
    fn count(&mut self, min_each: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| n.checked_mul(min_each.max(1)).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| self.err(&format!("{what} = {n} cannot fit in the {} bytes left", self.remaining())))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, &format!("length of {what}"))?;
        if n > MAX_STRING {
            return Err(self.err(&format!("{what} is {n} bytes long, more than the {MAX_STRING} allowed")));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(&format!("{what} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(&format!("{what}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(&format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(what)?;
                let min_each = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4 | 5 | 6 => 4,
                    8 | 9 | 10 | 11 | 12 => 8,
                    t => return Err(self.err(&format!("{what}: unknown array element type {t}"))),
                };
                let n = self.count(min_each, &format!("element count of {what}"))?;
                if n > MAX_ARRAY_LEN {
                    return Err(self.err(&format!("{what}: {n} array elements, more than the {MAX_ARRAY_LEN} allowed in one array")));
                }
                self.element_budget = self
                    .element_budget
                    .checked_sub(n)
                    .ok_or_else(|| self.err(&format!("{what}: more than {MAX_ARRAY_ELEMENTS} metadata array elements in all")))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(self.err(&format!("{what}: unknown value type {t}"))),
        })
    }
}

/// Refuses tensors whose data overlap: a writer never shares bytes between tensors, so an
/// overlap is a corrupt or crafted file whose weights would silently alias each other.
fn check_overlap(file: &str, tensors: &[TensorInfo]) -> Result<()> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    match by_offset.windows(2).find(|w| w[0].offset + w[0].n_bytes > w[1].offset) {
        Some(w) => Err(Error::tensor(file, &w[1].name, format!(
            "its data (offset {}) overlaps tensor '{}' (bytes {} to {} of the data section)", w[1].offset, w[0].name, w[0].offset, w[0].offset + w[0].n_bytes))),
        None => Ok(()),
    }
}

impl<'a> Gguf<'a> {
    /// Parses a GGUF file held in `bytes`; `file` names it in errors.
    pub fn parse(file: &str, bytes: &'a [u8]) -> Result<Self> {
        let h = parse_head(file, bytes, bytes.len(), &mut None)?;
        let data = Data::Bytes(bytes.get(h.data_start..).unwrap_or(&[]));
        Ok(Gguf { file: file.to_string(), version: h.version, metadata: h.metadata, tensors: h.tensors, data })
    }

    /// Parses the header of the GGUF file `src` from its first bytes (reading on while the
    /// header is longer); tensors are read from `src` when asked for.
    pub fn open(file: &str, src: &'a dyn ByteSource) -> Result<Self> {
        Self::open_reading(file, src, HEAD_GUESS)
    }

    fn open_reading(file: &str, src: &'a dyn ByteSource, guess: u64) -> Result<Self> {
        let file_len = usize::try_from(src.len()).map_err(|_| Error::format(file, format!("{} bytes do not fit in memory addresses", src.len())))?;
        let mut want = guess.min(file_len as u64) as usize;
        loop {
            let head = src.read(0, want)?;
            let mut need = None;
            match parse_head(file, &head, file_len, &mut need) {
                Ok(h) => return Ok(Gguf { file: file.to_string(), version: h.version, metadata: h.metadata, tensors: h.tensors, data: Data::Source { src, start: h.data_start as u64 } }),
                // The header goes on past what was read: read at least twice as much.
                Err(_) if need.is_some() && want < file_len => want = need.unwrap_or(0).max(want.saturating_mul(2)).min(file_len),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses the header at the start of a file of `file_len` bytes, of which `bytes` are here;
/// `need` is set when it goes on past them.
fn parse_head(file: &str, bytes: &[u8], file_len: usize, need: &mut Option<usize>) -> Result<Head> {
    let mut r = Reader { file, bytes, file_len, need: None, pos: 0, element_budget: MAX_ARRAY_ELEMENTS };
    let h = parse_with(file, &mut r);
    *need = r.need;
    h
}

fn parse_with(file: &str, r: &mut Reader) -> Result<Head> {
    if r.file_len == 0 {
        return Err(Error::format(file, "empty file, not a GGUF model"));
    }
    let magic = r.take(4, "magic").map_err(|_| Error::format(file, "too short to be a GGUF file"))?;
    if magic != b"GGUF" {
        return Err(Error::format(file, format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(file, format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
    // a key/value at least 8 + 4 + 1.
    let n_tensors = r.count(24, "tensor count")?;
    let n_kv = r.count(13, "metadata count")?;
    if n_tensors > MAX_TENSORS || n_kv > MAX_METADATA {
        return Err(Error::format(file, format!("{n_tensors} tensors and {n_kv} metadata entries: at most {MAX_TENSORS} and {MAX_METADATA} are allowed")));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key #{i}"))?;
        let ty = r.u32(&format!("type of metadata '{key}'"))?;
        let v = r.value(ty, 0, &format!("metadata '{key}'"))?;
        if metadata.contains_key(&key) {
            return Err(Error::format(file, format!("metadata key '{key}' appears twice")));
        }
        metadata.insert(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => return Err(Error::format(file, format!("general.alignment {} is not a power of two up to 65536", value_text(v)))),
        },
    };
    let mut infos = Vec::with_capacity(n_tensors);
    let mut names = std::collections::BTreeSet::new();
    for i in 0..n_tensors {
        let name = r.string(&format!("name of tensor #{i}"))?;
        // Later lookups take the first match; a second entry of one name is a broken or
        // hostile file, not something to resolve silently.
        if !names.insert(name.clone()) {
            return Err(Error::tensor(file, &name, format!("appears twice in the tensor list (again as tensor #{i})")));
        }
        let n_dims = r.u32(&format!("dims of tensor '{name}'"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::tensor(file, &name, format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64(&format!("dims of tensor '{name}'"))?);
        }
        let code = r.u32(&format!("type of tensor '{name}'"))?;
        let offset = r.u64(&format!("offset of tensor '{name}'"))?;
        infos.push((name, ne, code, offset));
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    let data_len = r.file_len.saturating_sub(data_start);

    let mut tensors = Vec::with_capacity(infos.len());
    for (name, ne, code, offset) in infos {
        let dtype = ggml_type(code).map_err(|t| Error::tensor(file, &name, format!("type {t} is not supported ({} are)", DType::supported_list())))?;
        let n = ne.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
        let n_bytes = n.and_then(|n| dtype.bytes_for(n)).ok_or_else(|| {
            Error::tensor(file, &name, format!("dims {ne:?} overflow or are not whole {} blocks", dtype.name()))
        })?;
        if ne[0] as usize % dtype.block_len() != 0 {
            return Err(Error::tensor(file, &name, format!("row length {} is not a multiple of the {} block of {}", ne[0], dtype.name(), dtype.block_len())));
        }
        let raw_offset = offset;
        let offset = usize::try_from(offset).ok().filter(|o| o % alignment == 0);
        let end = offset.and_then(|o| o.checked_add(n_bytes)).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(Error::tensor(file, &name, format!(
                "data ({n_bytes} bytes at offset {raw_offset}, alignment {alignment}) lies outside the file's {data_len} data bytes or is misaligned; the file may be truncated")));
        };
        let shape = ne.iter().rev().map(|&d| d as usize).collect();
        tensors.push(TensorInfo { name, shape, dtype, offset: end - n_bytes, n_bytes });
    }
    check_overlap(file, &tensors)?;
    Ok(Head { version, metadata, tensors, data_start })
}

impl<'a> Gguf<'a> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    fn missing(&self, key: &str, what: &str) -> Error {
        Error::format(&self.file, format!("metadata '{key}' is missing or not {what}"))
    }
    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key, "a string"))
    }
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key, "an unsigned integer"))
    }
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| self.missing(key, "a size that fits in memory"))
    }
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| self.missing(key, "a number"))
    }
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.get(key).and_then(Value::as_array).ok_or_else(|| self.missing(key, "an array"))?;
        arr.iter().map(|v| v.as_str().ok_or_else(|| self.missing(key, "an array of strings"))).collect()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes `range` of tensor `t`'s data (`range` inside its `n_bytes`).
    pub fn read(&self, t: &TensorInfo, range: std::ops::Range<usize>) -> Result<Cow<'a, [u8]>> {
        if range.start > range.end || range.end > t.n_bytes {
            return Err(Error::tensor(&self.file, &t.name, format!("bytes {range:?} of its {} asked for", t.n_bytes)));
        }
        match self.data {
            Data::Bytes(d) => Ok(Cow::Borrowed(&d[t.offset + range.start..t.offset + range.end])),
            Data::Source { src, start } => src.read(start + (t.offset + range.start) as u64, range.len()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::weights::source::Bytes;
    use crate::weights::TensorSource;

    /// Builds a small GGUF file in memory: metadata given as raw (key, type, payload).
    pub fn build(version: u32, kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, ty, payload) in kv {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(payload);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, _, data) in tensors {
            b.extend_from_slice(data);
            while b.len() % 32 != 0 {
                b.push(0);
            }
        }
        b
    }

    pub fn gguf_string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn sample() -> Vec<u8> {
        let mut arr = 8u32.to_le_bytes().to_vec(); // array of strings
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend(gguf_string("a"));
        arr.extend(gguf_string("bc"));
        let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        build(
            3,
            &[
                ("general.architecture", 8, gguf_string("llama")),
                ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
                ("x.f", 6, 0.5f32.to_le_bytes().to_vec()),
                ("x.b", 7, vec![1]),
                ("x.i64", 11, (-3i64).to_le_bytes().to_vec()),
                ("x.f64", 12, 2.5f64.to_le_bytes().to_vec()),
                ("x.u8", 0, vec![7]),
                ("x.i16", 3, (-2i16).to_le_bytes().to_vec()),
                ("tokens", 9, arr),
            ],
            &[("w", &[3, 2], 0, w)],
        )
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let bytes = sample();
        let g = Gguf::parse("t.gguf", &bytes).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.f64("x.f").unwrap(), 0.5);
        assert_eq!(g.get("x.b"), Some(&Value::Bool(true)));
        assert_eq!(g.get("x.i64"), Some(&Value::I64(-3)));
        assert_eq!(g.f64("x.f64").unwrap(), 2.5);
        assert_eq!(g.get("x.u8"), Some(&Value::U8(7)));
        assert_eq!(g.get("x.i16"), Some(&Value::I16(-2)));
        assert_eq!(g.strings("tokens").unwrap(), vec!["a", "bc"]);
        let t = g.tensor("w").unwrap().unwrap();
        assert_eq!(t.shape, vec![2, 3]); // ne = [3, 2] innermost first
        assert_eq!(t.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    /// A source that records the ranges read from it.
    struct Counting<'a>(Bytes<'a>, std::cell::RefCell<Vec<(u64, usize)>>);
    impl ByteSource for Counting<'_> {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
            self.1.borrow_mut().push((offset, len));
            self.0.read(offset, len)
        }
    }

    #[test]
    fn open_reads_the_header_on_demand_and_each_tensor_alone() {
        // A header longer than the first read, and two tensors behind it.
        let w: Vec<u8> = (0..1040u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = build(3, &[("general.name", 8, gguf_string(&"x".repeat(300)))], &[("a", &[16], 0, w[..64].to_vec()), ("b", &[1024], 0, w[64..].to_vec())]);
        let whole = Gguf::parse("t.gguf", &bytes).unwrap();
        for guess in [1u64, 7, 64, 1 << 20] {
            let src = Counting(Bytes(&bytes), Default::default());
            let g = Gguf::open_reading("t.gguf", &src, guess).unwrap();
            assert_eq!((g.version, &g.metadata), (whole.version, &whole.metadata), "guess {guess}");
            assert_eq!(g.tensors.iter().map(|t| (&t.name, t.offset, t.n_bytes)).collect::<Vec<_>>(), whole.tensors.iter().map(|t| (&t.name, t.offset, t.n_bytes)).collect::<Vec<_>>());
            // The header (448 bytes) is read in growing reads from 0, at most twice its size:
            // not the 4 KB of data behind it.
            let reads = src.1.borrow().clone();
            let header_end = reads.iter().map(|&(o, n)| o + n as u64).max().unwrap();
            assert!(reads.iter().all(|&(o, _)| o == 0), "guess {guess}: {reads:?}");
            assert!(header_end <= guess.max(2 * 448), "guess {guess}: read {header_end} of {}", bytes.len());
            src.1.borrow_mut().clear();
            let b = g.tensor("b").unwrap().unwrap();
            assert_eq!(b.to_f32().unwrap(), (16..1040).map(|i| i as f32).collect::<Vec<_>>());
            assert_eq!(src.1.borrow().as_slice(), &[(bytes.len() as u64 - 4096, 4096)], "tensor b is read alone");
        }
        // Truncated in the header or in the data: still an error naming the file.
        for cut in [20, 300, bytes.len() - 100] {
            let src = Counting(Bytes(&bytes[..cut]), Default::default());
            let e = Gguf::open_reading("t.gguf", &src, 7).err().unwrap().to_string();
            assert!(e.contains("t.gguf") && (e.contains("at byte") || e.contains("truncated")), "cut {cut}: {e}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() - 1 {
            // Cutting into the trailing padding of the last tensor still leaves its data whole.
            let cut = &bytes[..len];
            if let Ok(g) = Gguf::parse("t.gguf", cut) {
                assert!(g.info("w").is_some(), "a file cut at {len} parsed without its tensor");
                assert!(len >= bytes.len() - 8, "a file cut at {len} of {} parsed", bytes.len());
            }
        }
    }

    #[test]
    fn hostile_counts_are_refused_without_allocating() {
        let mut bytes = sample();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
        let e = Gguf::parse("t.gguf", &bytes).err().unwrap().to_string();
        assert!(e.contains("tensor count"), "{e}");

        let mut bytes = sample();
        bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()); // metadata count
        assert!(Gguf::parse("t.gguf", &bytes).is_err());

        // A string length far beyond the file.
        let mut bytes = sample();
        bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = Gguf::parse("t.gguf", &bytes).err().unwrap().to_string();
        assert!(e.contains("t.gguf") && e.contains("length"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let w = || vec![0u8; 16];
        let dup = build(3, &[], &[("w", &[4], 0, w()), ("v", &[4], 0, w()), ("w", &[4], 0, w())]);
        let e = Gguf::parse("t.gguf", &dup).err().unwrap().to_string();
        assert!(e.contains("'w'") && e.contains("twice") && e.contains("#2"), "{e}");
        let one = || 1u32.to_le_bytes().to_vec();
        let dup = build(3, &[("a", 4, one()), ("b", 4, one()), ("a", 4, one())], &[]);
        let e = Gguf::parse("t.gguf", &dup).err().unwrap().to_string();
        assert!(e.contains("metadata key 'a' appears twice"), "{e}");
    }

    #[test]
    fn one_array_longer_than_the_limit_is_refused_before_allocating() {
        // MAX_ARRAY_LEN + 1 u8 elements: the bytes are there, the count is still refused.
        let n = MAX_ARRAY_LEN + 1;
        let mut arr = 0u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&(n as u64).to_le_bytes());
        arr.resize(arr.len() + n, 0);
        let e = Gguf::parse("t.gguf", &build(3, &[("big", 9, arr)], &[])).err().unwrap().to_string();
        assert!(e.contains("metadata 'big'") && e.contains(&n.to_string()) && e.contains(&MAX_ARRAY_LEN.to_string()), "{e}");
    }

    #[test]
    fn counts_and_strings_beyond_the_limits_are_refused() {
        // A 17 MiB string (the bytes are there): refused by its length alone.
        let n = MAX_STRING + (1 << 20);
        let mut payload = (n as u64).to_le_bytes().to_vec();
        payload.resize(8 + n, b'x');
        let e = Gguf::parse("t.gguf", &build(3, &[("tokenizer.chat_template", 8, payload)], &[])).err().unwrap().to_string();
        assert!(e.contains("tokenizer.chat_template") && e.contains(&MAX_STRING.to_string()), "{e}");
        // 70000 tensor infos' worth of bytes behind a count of 70000.
        let mut bytes = build(3, &[], &[]);
        bytes[8..16].copy_from_slice(&70000u64.to_le_bytes());
        bytes.resize(bytes.len() + 70000 * 24, 0);
        let e = Gguf::parse("t.gguf", &bytes).err().unwrap().to_string();
        assert!(e.contains("70000 tensors") && e.contains(&MAX_TENSORS.to_string()), "{e}");
    }

    #[test]
    fn messages_show_values_not_rust_debug_forms() {
        let e = Gguf::parse("t.gguf", &build(3, &[("general.alignment", 4, 0u32.to_le_bytes().to_vec())], &[])).err().unwrap().to_string();
        assert!(e.contains("general.alignment 0 is not") && !e.contains("U32"), "{e}");
        assert_eq!(value_text(&Value::String("x".into())), "\"x\"");
        assert_eq!(value_text(&Value::Array(vec![Value::U8(1); 3])), "[3 values]");
        assert_eq!(value_text(&Value::I64(-3)), "-3");
    }

    #[test]
    fn bad_magic_version_and_types() {
        let e = Gguf::parse("x.bin", b"PK\x03\x04 not a gguf at all").err().unwrap().to_string();
        assert!(e.contains("not a GGUF"), "{e}");
        let mut bytes = sample();
        bytes[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert!(Gguf::parse("t.gguf", &bytes).err().unwrap().to_string().contains("version 9"));
        // IQ2_XXS (code 16) is not read: the message names it and lists what is, from the table.
        let iq2 = build(3, &[], &[("w", &[256], 16, vec![0; 66])]);
        let e = Gguf::parse("t.gguf", &iq2).err().unwrap().to_string();
        assert!(e.contains("'w'") && e.contains("IQ2_XXS") && e.contains(&DType::supported_list()), "{e}");
        assert!(e.contains("Q5_0") && e.contains("IQ4_XS"), "{e}");
        let lie = build(3, &[], &[("w", &[1 << 20, 1 << 20], 0, vec![0; 16])]);
        let e = Gguf::parse("t.gguf", &lie).err().unwrap().to_string();
        assert!(e.contains("'w'") && e.contains("outside"), "{e}");
    }
}
