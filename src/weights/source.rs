//! Where a model file's bytes come from, one range at a time: natively a memory map, in the
//! browser a `File`/`Blob` slice, an HTTP range request or a cached file read by the page's
//! worker (`web.rs` wraps those). The loaders parse a header from the first bytes and then
//! read each tensor's range as they upload it, so nothing ever holds the whole file: a
//! WebAssembly page needs memory for its largest tensor, not for the model.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Random access to a file's bytes.
pub trait ByteSource {
    /// The file's size in bytes.
    fn len(&self) -> u64;
    /// `len` bytes from `offset`, which the caller has checked lie inside the file. Borrowed
    /// where the bytes are already in memory (a memory map), owned where they were read.
    fn read(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes already in memory (tests, the page's older whole-file calls).
pub struct Bytes<'a>(pub &'a [u8]);

impl ByteSource for Bytes<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let start = usize::try_from(offset).ok();
        let range = start.and_then(|s| Some(s..s.checked_add(len)?)).filter(|r| r.end <= self.0.len());
        range.map(|r| Cow::Borrowed(&self.0[r])).ok_or_else(|| Error::format("bytes", format!("{len} bytes at {offset} lie outside the {} bytes given", self.0.len())))
    }
}
