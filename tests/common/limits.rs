//! Runs the `quill` binary on hostile input inside limits, and measures it: the child's address
//! space is capped (`RLIMIT_AS`, set in `pre_exec`) so a runaway allocation fails inside the
//! child instead of swapping the machine, it is killed after a timeout, and its peak resident
//! memory (`wait4`'s `ru_maxrss`) and wall time come back for the test to check.
//!
//! Include with `#[path = "common/limits.rs"] mod limits;` (Unix only; uses libc).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most resident memory a bad-input run may reach.
pub const MAX_RSS: u64 = 1 << 30;
/// Longest a bad-input run may take.
pub const MAX_TIME: Duration = Duration::from_secs(10);
/// Address space the child may map: the brief's 1 GB, enforced. lavapipe runs the tiny models
/// well inside it; a driver that reserves more virtual memory than it uses (some real GPUs')
/// may need QUILL_TEST_ADDRESS_SPACE (bytes) raised, while `MAX_RSS` still holds.
pub const ADDRESS_SPACE: u64 = 1 << 30;

/// Where a child's stdout or stderr goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Captured for the test.
    Capture,
    /// A pipe whose reader keeps the first line and then closes it (`2>&1 | head -n 1`).
    FirstLineThenClose,
    /// /dev/full: every write fails with ENOSPC.
    Full,
}

pub struct Limited {
    cmd: Command,
    stdout: Sink,
    stderr: Sink,
    timeout: Duration,
}

/// What a run did.
pub struct Outcome {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Limited {
    /// `quill` with `args`, stdout and stderr captured, the default timeout.
    pub fn quill(args: &[&str]) -> Limited {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quill"));
        cmd.args(args).stdin(Stdio::null());
        Limited { cmd, stdout: Sink::Capture, stderr: Sink::Capture, timeout: MAX_TIME * 3 }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }
    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }
    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }
    /// Kill after `t` instead of 3 × MAX_TIME (for runs that are not bad input, e.g. a benchmark).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn stdout(mut self, s: Sink) -> Self {
        self.stdout = s;
        self
    }
    pub fn stderr(mut self, s: Sink) -> Self {
        self.stderr = s;
        self
    }

    pub fn run(mut self) -> Outcome {
        let limit = std::env::var("QUILL_TEST_ADDRESS_SPACE").ok().and_then(|v| v.parse().ok()).unwrap_or(ADDRESS_SPACE);
        // Safety: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            self.cmd.pre_exec(move || {
                let r = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let sink = |s: Sink| match s {
            Sink::Full => Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full")),
            _ => Stdio::piped(),
        };
        self.cmd.stdout(sink(self.stdout)).stderr(sink(self.stderr));
        let start = Instant::now();
        let mut child = self.cmd.spawn().expect("spawn quill");
        let out = child.stdout.take().map(|p| reader(p, self.stdout));
        let err = child.stderr.take().map(|p| reader(p, self.stderr));
        let pid = child.id() as libc::pid_t;
        let (mut status, mut timed_out, mut peak_rss) = (None, false, 0);
        loop {
            let mut raw = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // Safety: plain syscall on our own child; WNOHANG polls.
            let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
            if r == pid {
                status = Some(ExitStatus::from_raw(raw));
                peak_rss = usage.ru_maxrss as u64 * 1024;
                break;
            }
            if r < 0 {
                break;
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = start.elapsed();
        let join = |h: Option<std::thread::JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Outcome { status, stdout: join(out), stderr: join(err), peak_rss, elapsed, timed_out }
    }
}

fn reader(pipe: impl Read + Send + 'static, sink: Sink) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut text = String::new();
        if sink == Sink::FirstLineThenClose {
            let _ = r.read_line(&mut text);
            return text; // dropping the reader closes the pipe
        }
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Outcome {
    /// Checks the run stayed within MAX_RSS and MAX_TIME.
    pub fn within_limits(&self, case: &str) -> &Self {
        assert!(!self.timed_out, "{case}: killed after {:?} (a hang); stderr:\n{}", self.elapsed, self.stderr);
        assert!(self.peak_rss < MAX_RSS, "{case}: peak memory {} MB (limit {} MB); stderr:\n{}", self.peak_rss >> 20, MAX_RSS >> 20, self.stderr);
        assert!(self.elapsed < MAX_TIME, "{case}: took {:?} (limit {MAX_TIME:?}); stderr:\n{}", self.elapsed, self.stderr);
        self
    }
    /// Exit code 1 (quill's error exit), no panic, every needle in stderr, within the limits.
    pub fn clean_error(&self, case: &str, needles: &[&str]) -> &Self {
        self.within_limits(case);
        let code = self.status.and_then(|s| s.code());
        assert_eq!(code, Some(1), "{case}: expected exit 1, got {:?}; stderr:\n{}", self.status, self.stderr);
        assert!(!self.stderr.contains("panicked"), "{case}: quill panicked:\n{}", self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "{case}: stderr should mention {n:?}:\n{}", self.stderr);
        }
        self
    }
}
