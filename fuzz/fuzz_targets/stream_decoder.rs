//! AFL target: `quill_fuzz::targets::stream_decoder` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| quill_fuzz::targets::stream_decoder(data));
}
