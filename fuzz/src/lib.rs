//! The fuzz targets' bodies, shared by the AFL binaries (fuzz_targets/) and by the main
//! crate's corpus replay (tests/fuzz_corpus.rs includes targets.rs).
#[path = "targets.rs"]
pub mod targets;
