//! AFL target: `quill_fuzz::targets::openai_request` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::openai_request(data));
}
