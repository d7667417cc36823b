//! AFL target: `quill_fuzz::targets::tokenizer_json` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::tokenizer_json(data));
}
