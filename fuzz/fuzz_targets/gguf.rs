//! AFL target: `quill_fuzz::targets::gguf` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::gguf(data));
}
