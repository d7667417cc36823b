//! `quill write --story`: every printed token is in the file, whatever stops the run (SIGINT,
//! SIGKILL, a full disk), and a file that cannot be written is a clear error that leaves it as
//! it was. Spawns the quill binary on llama-tiny (fast on lavapipe).

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use quill::story::Story;

const START: &str = "Permission is hereby granted, free of charge, to any person";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("quill-story-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn story_args(file: &Path) -> Vec<String> {
    let tiny = fixture("llama-tiny").display().to_string();
    ["write", "--model", &tiny, "--story", file.to_str().unwrap(), "--max-tokens", "240", "--ignore-eos", "--seed", "9"].iter().map(|s| s.to_string()).collect()
}

fn text_of(file: &Path) -> String {
    let bytes = std::fs::read(file).unwrap();
    Story::from_bytes(&file.to_string_lossy(), &bytes).unwrap_or_else(|e| panic!("the story no longer parses: {e}")).text
}

/// Starts a story run, waits until at least 40 bytes are printed, sends `signal`, and returns
/// (everything printed, how the process ended).
fn interrupt(file: &Path, signal: &str) -> (String, std::process::ExitStatus) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quill")).args(story_args(file)).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut printed = Vec::new();
    let mut buf = [0u8; 64];
    while printed.len() < 40 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "quill ended before printing 40 bytes: {:?}", String::from_utf8_lossy(&printed));
        printed.extend_from_slice(&buf[..n]);
    }
    let ok = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    // What was printed until it died counts too: each of those tokens was saved first.
    stdout.read_to_end(&mut printed).unwrap();
    (String::from_utf8_lossy(&printed).into_owned(), child.wait().unwrap())
}

/// The file holds the story, then every printed token, then at most the token in flight.
fn check_kept(file: &Path, printed: &str) {
    let text = text_of(file);
    let want = format!("{START}{printed}");
    assert!(text.starts_with(&want), "the file lost printed text:\nfile:    {text:?}\nprinted: {want:?}");
    assert!(text.len() - want.len() <= 32, "more than one token beyond the printed text: {:?}", &text[want.len()..]);
}

#[test]
fn sigint_and_sigkill_keep_every_printed_token() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let d = dir("signals");
    for (name, signal, number) in [("story.txt", "-INT", 2), ("story.json", "-KILL", 9)] {
        let file = d.join(name);
        std::fs::write(&file, Story::new(START).to_bytes(name).unwrap()).unwrap();
        let (printed, status) = interrupt(&file, signal);
        assert_eq!(status.signal(), Some(number), "{name}: quill should have died of {signal} mid-generation ({status:?})");
        assert!(printed.len() >= 40);
        check_kept(&file, &printed);
        // The version before the run is kept beside it.
        let previous = std::fs::read(d.join(format!("{name}~"))).unwrap();
        assert_eq!(Story::from_bytes(name, &previous).unwrap().text, START);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_read_only_story_is_an_error_and_stays_as_it_was() {
    let d = dir("readonly");
    let file = d.join("story.txt");
    std::fs::write(&file, START).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quill")).args(story_args(&file)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("read-only") && err.contains("story.txt") && !err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), START);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_dir_all(&d).ok();
}

/// A disk that fills mid-run (a file-size limit of 1 KiB, SIGXFSZ ignored so writes fail with
/// EFBIG as on a full disk): a clear error, exit 1, and the file as last saved, which holds
/// every printed token and still parses.
#[test]
fn a_full_disk_is_an_error_and_the_file_keeps_what_was_printed() {
    if quill::gpu::context::test_context().is_none() {
        return;
    }
    let d = dir("full");
    let file = d.join("story.json");
    std::fs::write(&file, Story::new(START).to_bytes("story.json").unwrap()).unwrap();
    let quill = env!("CARGO_BIN_EXE_quill");
    let args: Vec<String> = story_args(&file).iter().map(|a| format!("'{a}'")).collect();
    // ulimit -f counts 512-byte blocks in dash and 1024-byte ones in bash: 2 is 1 or 2 KiB.
    let script = format!("trap '' XFSZ; ulimit -f 2; exec '{quill}' {}", args.join(" "));
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("story.json") && !err.contains("panicked"), "{err}");
    let printed = String::from_utf8_lossy(&o.stdout).trim_end_matches('\n').to_string();
    assert!(!printed.is_empty(), "some tokens should fit before the limit: {err}");
    check_kept(&file, &printed);
    std::fs::remove_dir_all(&d).ok();
}
