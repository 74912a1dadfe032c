//! Every line the client commands print goes through here, so that a reader
//! that goes away (`tsbridge jobs logs ID | head`) ends the command quietly
//! instead of a panic: `println!` panics on a write error, and the Rust
//! runtime ignores SIGPIPE, so a closed pipe is an `EPIPE` error on write.
//!
//! SIGPIPE's disposition is deliberately left alone (ignored): `serve` must
//! never die of a client's closed socket, and the children tsbridge spawns get
//! the default disposition back from the engine (std's `Command` resets it
//! between fork and exec), whatever tsbridge's own is.

use std::fmt;
use std::io::{self, Write};

/// Which of tsbridge's own streams a write failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "standard output",
            Stream::Stderr => "standard error",
        })
    }
}

/// A write to tsbridge's own stdout or stderr failed.
#[derive(Debug)]
pub enum OutputError {
    /// The reader went away (EPIPE): not an error of ours, the command ends quietly.
    Closed(Stream),
    /// Any other write error (a full disk, ...): reported.
    Write { stream: Stream, source: io::Error },
}

impl OutputError {
    fn from_io(stream: Stream, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed(stream)
        } else {
            OutputError::Write { stream, source: e }
        }
    }

    /// Whether `e` (anywhere in its chain) is a reader that went away.
    pub fn is_closed(e: &anyhow::Error) -> bool {
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<OutputError>(),
                Some(OutputError::Closed(_))
            )
        })
    }
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::Closed(s) => write!(f, "{s} was closed by its reader"),
            OutputError::Write { stream, .. } => write!(f, "cannot write to {stream}"),
        }
    }
}

impl std::error::Error for OutputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutputError::Closed(_) => None,
            OutputError::Write { source, .. } => Some(source),
        }
    }
}

/// Writes to stdout (locked for the whole write).
pub fn stdout(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(|e| OutputError::from_io(Stream::Stdout, e))
}

/// Writes to stderr (locked for the whole write).
pub fn stderr(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    io::stderr()
        .lock()
        .write_fmt(args)
        .map_err(|e| OutputError::from_io(Stream::Stderr, e))
}

/// Flushes stdout, so that a write error of the last, unterminated line is
/// seen (std's flush at exit ignores it).
pub fn flush() -> Result<(), OutputError> {
    io::stdout()
        .lock()
        .flush()
        .map_err(|e| OutputError::from_io(Stream::Stdout, e))
}

/// A diagnostic on stderr that must not fail the command: when stderr is
/// gone there is nobody to tell.
pub fn diagnostic(args: fmt::Arguments<'_>) {
    let _ = stderr(args);
}

/// `print!` that returns a `Result<(), OutputError>` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}

/// `println!` that returns a `Result<(), OutputError>` instead of panicking.
macro_rules! outln {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` that returns a `Result<(), OutputError>` instead of panicking.
macro_rules! err {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*)) };
}

/// `eprintln!` that returns a `Result<(), OutputError>` instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` for a diagnostic that cannot fail (see [`diagnostic`]).
macro_rules! note {
    ($($arg:tt)*) => { $crate::output::diagnostic(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {err, errln, note, out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_closed_and_found_through_context() {
        let e = OutputError::from_io(Stream::Stdout, io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(e, OutputError::Closed(Stream::Stdout)));
        let e = anyhow::Error::from(e).context("printing the table");
        assert!(OutputError::is_closed(&e));

        let full =
            OutputError::from_io(Stream::Stdout, io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(full, OutputError::Write { .. }));
        assert!(!OutputError::is_closed(&anyhow::Error::from(full)));
    }
}
