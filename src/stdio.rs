//! Writing to stdout and stderr without std's panics.
//!
//! `print!`/`eprint!` panic when the stream fails (`quill write ... 2>&1 | head -n 1`,
//! `2>/dev/full`). Progress and summaries on stderr are for a person watching: when nobody can
//! read them the work goes on, so `note!` ignores failures. What goes to stdout is the result:
//! `out!` returns an error to pass on with `?`, except for a closed pipe, which is the reader
//! saying it has seen enough (`quill info | head`), and ends the command quietly.

use std::io::{ErrorKind, Write};

use quill::error::{Error, Result};

/// stderr, best effort: progress, summaries, warnings.
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

/// `note!` with a newline.
macro_rules! noteln {
    () => { note!("\n") };
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// A line of the command's result on stdout; `?` passes a failure on (see `stdout_result`).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::stdio::stdout_result({
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            writeln!(o, $($t)*).and_then(|_| o.flush())
        })
    };
}

/// `out!` without the newline.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::stdio::stdout_result({
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            write!(o, $($t)*).and_then(|_| o.flush())
        })
    };
}

/// A closed pipe is the reader's choice, not an error; anything else (a full disk) is one.
pub fn stdout_result(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}

/// The generated text's way out: counts the bytes written so that a failure can say how much
/// got out, and remembers the first failure (the text then stops).
pub struct TextOut {
    out: std::io::StdoutLock<'static>,
    written: u64,
    /// A write failed: nothing more is written.
    pub stopped: bool,
    /// Why, unless it was a closed pipe (a quiet stop).
    pub error: Option<Error>,
}

impl TextOut {
    pub fn new() -> Self {
        TextOut { out: std::io::stdout().lock(), written: 0, stopped: false, error: None }
    }
    /// Writes and flushes `text` (the generated text streams token by token).
    pub fn put(&mut self, text: &str) {
        if self.stopped {
            return;
        }
        match self.out.write_all(text.as_bytes()).and_then(|_| self.out.flush()) {
            Ok(()) => self.written += text.len() as u64,
            Err(e) => {
                self.stopped = true;
                if e.kind() != ErrorKind::BrokenPipe {
                    let msg = format!("{e} after {} bytes of text were written; the output is incomplete", self.written);
                    self.error = Some(Error::io("stdout", std::io::Error::new(e.kind(), msg)));
                }
            }
        }
    }
}
