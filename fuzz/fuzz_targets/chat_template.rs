//! AFL target: `quill_fuzz::targets::chat_template` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::chat_template(data));
}
