//! AFL target: `quill_fuzz::targets::safetensors` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::safetensors(data));
}
