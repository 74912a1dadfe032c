//! The stdout/stderr line protocol of SPEC §2.2, parsed while streaming.
//!
//! - [`LineSplitter`] turns arbitrary reads into lines: split on `\n`, a
//!   trailing `\r` stripped, a line split across reads joined, invalid UTF-8
//!   decoded lossily, an over-long line cut at `max_line` bytes (on a
//!   character boundary), flagged, and the rest of it discarded up to the
//!   next newline. Its memory is bounded by `max_line`.
//! - [`parse_line`] classifies one line ([`LineKind`]).
//! - [`StdoutProtocol`] and [`StderrProtocol`] combine the two, mask secrets
//!   and emit [`ChildEvent`]s as lines complete.
//! - [`ResultExtractor`] decides a job's result at the end, including the
//!   fallback "no marker at all and exit 0: the whole stdout, if it parses".
//!
//! Decisions where the SPEC is silent:
//! - Markers are recognised after trimming whitespace (and a UTF-8 BOM) from
//!   both ends of the line; the level word must be upper case.
//! - Log levels: `DEBUG`, `INFO`, `WARN`, `WARNING`, `ERROR`, and also
//!   `TRACE` (-> debug) and `FATAL` (-> error). The `[<timestamp>]` prefix is
//!   optional: `INFO: msg` is a log line too (a program that prints it means
//!   it as a log line, and it still reaches clients, as a `log` event).
//!   Spaces between the parts are tolerated; the colon after the level is not
//!   optional.
//! - `PROGRESS: <current>/<total>[ - <message>]`: integers, spaces around `/`
//!   and `-` tolerated, the dash may be left out before a message; anything
//!   else after the numbers makes the line plain.
//! - `RESULT: <json>` with invalid JSON (or cut at the line limit) is kept as
//!   plain output and a warning event (a `log` event at level warn, message
//!   starting with `tsbridge: `) is emitted. A `RESULT_START` block is
//!   bounded by `max_result` bytes; a block over it is discarded with a
//!   warning; a block that does not parse, or is still open at the end, is
//!   released as plain output with a warning. `RESULT_START` inside an open
//!   block starts over. A stray `RESULT_END` is plain output.
//! - A stdout line may be as long as `max_result` (plus the `RESULT: `
//!   prefix) so that a one-line result fits; plain and log lines are cut to
//!   `max_line` when they become events.
//! - The fallback result uses the whole captured stdout, or failing that only
//!   its plain lines (so a program that logs and then prints JSON works). It
//!   never applies to a truncated capture.

use std::borrow::Cow;

use memchr::memchr;
use serde_json::Value;
use tsbridge_proto::event::Stream;
use tsbridge_proto::{ChildEvent, LogLevel, Progress};

use crate::capture::Captured;
use crate::mask::Masker;

/// One line as the splitter saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line without its `\n` and trailing `\r`, lossily decoded.
    pub text: Cow<'a, str>,
    /// The line was longer than the limit and was cut.
    pub truncated: bool,
}

/// Splits a byte stream into lines, whatever the reads look like.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    /// The current partial line. Holds at most `max_line + 1` bytes, and
    /// `max_line + 1` only when the last byte is `\r` (which may yet end the
    /// line).
    buf: Vec<u8>,
    /// The current line was already emitted (cut); skip to the next `\n`.
    discarding: bool,
}

impl LineSplitter {
    /// A splitter emitting lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            buf: Vec::new(),
            discarding: false,
        }
    }

    /// The line limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Feeds one read; calls `out` for each line it completes.
    pub fn feed(&mut self, chunk: &[u8], out: &mut impl FnMut(Line<'_>)) {
        let mut rest = chunk;
        while let Some(i) = memchr(b'\n', rest) {
            self.end_line(&rest[..i], out);
            rest = &rest[i + 1..];
        }
        if !rest.is_empty() {
            self.partial(rest, out);
        }
    }

    /// The end of the stream: emits a last line that had no newline.
    /// The splitter can then be reused.
    pub fn finish(&mut self, out: &mut impl FnMut(Line<'_>)) {
        if !self.discarding && !self.buf.is_empty() {
            let mut n = self.buf.len();
            if self.buf[n - 1] == b'\r' {
                n -= 1;
            }
            out(Line {
                text: String::from_utf8_lossy(&self.buf[..n]),
                truncated: false,
            });
        }
        self.buf.clear();
        self.discarding = false;
    }

    fn end_line(&mut self, seg: &[u8], out: &mut impl FnMut(Line<'_>)) {
        if self.discarding {
            self.discarding = false;
            return;
        }
        if self.buf.is_empty() {
            // Fast path: the whole line is in this read; borrow it.
            let line = strip_cr(seg);
            if line.len() <= self.max_line {
                out(Line {
                    text: String::from_utf8_lossy(line),
                    truncated: false,
                });
            } else {
                out(Line {
                    text: String::from_utf8_lossy(cut_at_char(line, self.max_line)),
                    truncated: true,
                });
            }
            return;
        }
        let total = self.buf.len() + seg.len();
        let last = seg.last().or(self.buf.last()).copied();
        let content = if last == Some(b'\r') {
            total - 1
        } else {
            total
        };
        if content <= self.max_line {
            self.buf.extend_from_slice(seg);
            self.buf.truncate(content);
            out(Line {
                text: String::from_utf8_lossy(&self.buf),
                truncated: false,
            });
        } else {
            // One byte past the limit tells cut_at_char whether a character
            // straddles the cut; content > max_line guarantees it exists.
            let need = (self.max_line + 1)
                .saturating_sub(self.buf.len())
                .min(seg.len());
            self.buf.extend_from_slice(&seg[..need]);
            out(Line {
                text: String::from_utf8_lossy(cut_at_char(&self.buf, self.max_line)),
                truncated: true,
            });
        }
        self.buf.clear();
    }

    fn partial(&mut self, seg: &[u8], out: &mut impl FnMut(Line<'_>)) {
        if self.discarding {
            return;
        }
        let room = (self.max_line + 1).saturating_sub(self.buf.len());
        let take = room.min(seg.len());
        self.buf.extend_from_slice(&seg[..take]);
        let over = seg.len() > take
            || (self.buf.len() == self.max_line + 1 && self.buf[self.max_line] != b'\r');
        if over {
            // Certainly longer than the limit: emit the cut line now, so a
            // stream without newlines still produces output while it runs.
            out(Line {
                text: String::from_utf8_lossy(cut_at_char(&self.buf, self.max_line)),
                truncated: true,
            });
            self.buf.clear();
            self.discarding = true;
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line.split_last() {
        Some((b'\r', rest)) => rest,
        _ => line,
    }
}

/// The first `max` bytes of `b`, moved back (by at most 3 bytes) so that a
/// UTF-8 character is not split.
fn cut_at_char(b: &[u8], max: usize) -> &[u8] {
    if b.len() <= max {
        return b;
    }
    let is_cont = |x: u8| (x & 0xC0) == 0x80;
    let mut end = max;
    while end > 0 && max - end < 3 && is_cont(b[end]) {
        end -= 1;
    }
    if is_cont(b[end]) {
        end = max; // not valid UTF-8 here anyway
    }
    &b[..end]
}

/// `s` cut to at most `max` bytes on a character boundary; whether it was cut.
fn cut_str(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// What one line of output means (SPEC §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind<'a> {
    /// `[<timestamp>] LEVEL: message` or `LEVEL: message`.
    Log {
        level: LogLevel,
        timestamp: Option<&'a str>,
        message: &'a str,
    },
    /// `PROGRESS: current/total - message`.
    Progress {
        current: u64,
        total: u64,
        message: &'a str,
    },
    /// `RESULT: <json>`; the JSON text is not parsed here.
    Result { json: &'a str },
    /// A line `RESULT_START`.
    ResultStart,
    /// A line `RESULT_END`.
    ResultEnd,
    /// Any other line.
    Plain,
}

/// Classifies one line (without its newline). Cheap for plain lines: one
/// look at the first byte.
pub fn parse_line(line: &str) -> LineKind<'_> {
    let t = line.trim_start_matches('\u{feff}').trim();
    match t.as_bytes().first() {
        Some(b'[') => parse_timestamped(t),
        Some(b'P') => parse_progress(t),
        Some(b'R') => parse_result(t),
        Some(b'D' | b'I' | b'W' | b'E' | b'T' | b'F') => parse_level(t, None),
        _ => LineKind::Plain,
    }
}

fn parse_timestamped(t: &str) -> LineKind<'_> {
    let Some(close) = t.find(']') else {
        return LineKind::Plain;
    };
    let ts = t[1..close].trim();
    if ts.is_empty() {
        return LineKind::Plain;
    }
    parse_level(t[close + 1..].trim_start(), Some(ts))
}

fn parse_level<'a>(t: &'a str, timestamp: Option<&'a str>) -> LineKind<'a> {
    let word_len = t.bytes().take_while(u8::is_ascii_uppercase).count();
    let level = match &t[..word_len] {
        "DEBUG" | "TRACE" => LogLevel::Debug,
        "INFO" => LogLevel::Info,
        "WARN" | "WARNING" => LogLevel::Warn,
        "ERROR" | "FATAL" => LogLevel::Error,
        _ => return LineKind::Plain,
    };
    let Some(message) = t[word_len..].trim_start().strip_prefix(':') else {
        return LineKind::Plain;
    };
    LineKind::Log {
        level,
        timestamp,
        message: message.trim_start(),
    }
}

fn parse_progress(t: &str) -> LineKind<'_> {
    let Some(rest) = t.strip_prefix("PROGRESS:") else {
        return parse_level(t, None);
    };
    let rest = rest.trim_start();
    let Some((current, rest)) = leading_u64(rest) else {
        return LineKind::Plain;
    };
    let Some(rest) = rest.trim_start().strip_prefix('/') else {
        return LineKind::Plain;
    };
    let Some((total, after)) = leading_u64(rest.trim_start()) else {
        return LineKind::Plain;
    };
    let message = match after.as_bytes().first() {
        None => "",
        Some(b'-') => after[1..].trim_start(),
        Some(b) if b.is_ascii_whitespace() => {
            let m = after.trim_start();
            m.strip_prefix('-').map_or(m, str::trim_start)
        }
        Some(_) => return LineKind::Plain,
    };
    LineKind::Progress {
        current,
        total,
        message,
    }
}

/// Leading decimal digits as a u64 (None if none, or on overflow).
fn leading_u64(s: &str) -> Option<(u64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

fn parse_result(t: &str) -> LineKind<'_> {
    match t {
        "RESULT_START" => LineKind::ResultStart,
        "RESULT_END" => LineKind::ResultEnd,
        _ => match t.strip_prefix("RESULT:") {
            Some(json) => LineKind::Result { json: json.trim() },
            None => LineKind::Plain,
        },
    }
}

/// Limits of the line protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolLimits {
    /// Longest line emitted as an event (longer ones are cut).
    pub max_line: usize,
    /// Largest result (a `RESULT:` line's JSON or a `RESULT_START` block).
    pub max_result: usize,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            max_result: 8 * 1024 * 1024,
        }
    }
}

/// How the stdout protocol went, for [`ResultExtractor::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdoutSummary {
    /// A `RESULT:` or `RESULT_START` line was seen (valid or not).
    pub saw_result_marker: bool,
    /// Warning events emitted.
    pub warnings: u64,
}

/// A `RESULT_START` block being accumulated.
#[derive(Debug)]
struct ResultBlock {
    text: String,
    overflowed: bool,
}

/// The stdout state machine: chunks in, [`ChildEvent`]s out (log, progress,
/// result, plain output on stdout, and warnings as `log` events).
#[derive(Debug)]
pub struct StdoutProtocol {
    splitter: LineSplitter,
    state: StdoutState,
}

#[derive(Debug)]
struct StdoutState {
    limits: ProtocolLimits,
    masker: Masker,
    block: Option<ResultBlock>,
    summary: StdoutSummary,
}

/// Room for the `RESULT: ` prefix and surrounding spaces on a result line.
const RESULT_LINE_SLACK: usize = 64;

impl StdoutProtocol {
    pub fn new(limits: ProtocolLimits) -> Self {
        let splitter_limit = limits
            .max_line
            .max(limits.max_result.saturating_add(RESULT_LINE_SLACK));
        Self {
            splitter: LineSplitter::new(splitter_limit),
            state: StdoutState {
                limits,
                masker: Masker::default(),
                block: None,
                summary: StdoutSummary::default(),
            },
        }
    }

    /// Masks secrets in every event with `masker`.
    pub fn with_masker(mut self, masker: Masker) -> Self {
        self.state.masker = masker;
        self
    }

    /// Feeds one read of stdout.
    pub fn feed(&mut self, chunk: &[u8], out: &mut impl FnMut(ChildEvent)) {
        let state = &mut self.state;
        self.splitter
            .feed(chunk, &mut |line| state.on_line(line, &mut *out));
    }

    /// Whether a result marker was seen so far.
    pub fn saw_result_marker(&self) -> bool {
        self.state.summary.saw_result_marker
    }

    /// End of stdout: the last line, and an unterminated result block.
    pub fn finish(mut self, out: &mut impl FnMut(ChildEvent)) -> StdoutSummary {
        let state = &mut self.state;
        self.splitter
            .finish(&mut |line| state.on_line(line, &mut *out));
        if let Some(block) = state.block.take() {
            state.warn("RESULT_START block never ended; kept as output", out);
            if !block.overflowed {
                state.release_block(&block.text, out);
            }
        }
        self.state.summary
    }
}

impl StdoutState {
    fn warn(&mut self, message: &str, out: &mut impl FnMut(ChildEvent)) {
        self.summary.warnings += 1;
        out(ChildEvent::Log {
            level: LogLevel::Warn,
            message: format!("tsbridge: {message}"),
            child_timestamp: None,
        });
    }

    fn output(&self, text: &str, truncated: bool, out: &mut impl FnMut(ChildEvent)) {
        let (text, cut) = cut_str(text, self.limits.max_line);
        out(ChildEvent::Output {
            stream: Stream::Stdout,
            line: self
                .masker
                .mask_cut(text, false, cut || truncated)
                .into_owned(),
        });
    }

    /// The lines of a block that did not become a result, as plain output.
    fn release_block(&self, text: &str, out: &mut impl FnMut(ChildEvent)) {
        for line in text.lines() {
            self.output(line, false, out);
        }
    }

    fn on_line(&mut self, line: Line<'_>, out: &mut impl FnMut(ChildEvent)) {
        let kind = parse_line(&line.text);
        if let Some(block) = &mut self.block {
            match kind {
                LineKind::ResultEnd => {
                    if let Some(block) = self.block.take() {
                        self.end_block(block, out);
                    }
                }
                LineKind::ResultStart => {
                    self.block = Some(ResultBlock {
                        text: String::new(),
                        overflowed: false,
                    });
                    self.warn("RESULT_START inside a result block; starting over", out);
                }
                _ if block.overflowed => {}
                _ => {
                    if line.truncated
                        || block.text.len() + line.text.len() + 1 > self.limits.max_result
                    {
                        block.overflowed = true;
                        block.text = String::new();
                    } else {
                        block.text.push_str(&line.text);
                        block.text.push('\n');
                    }
                }
            }
            return;
        }
        match kind {
            LineKind::Plain | LineKind::ResultEnd => self.output(&line.text, line.truncated, out),
            LineKind::Log {
                level,
                timestamp,
                message,
            } => {
                let (message, cut) = cut_str(message, self.limits.max_line);
                out(ChildEvent::Log {
                    level,
                    message: self
                        .masker
                        .mask_cut(message, false, cut || line.truncated)
                        .into_owned(),
                    child_timestamp: timestamp.map(|t| self.masker.mask(t).into_owned()),
                });
            }
            LineKind::Progress {
                current,
                total,
                message,
            } => {
                let (message, cut) = cut_str(message, self.limits.max_line);
                let message = self.masker.mask_cut(message, false, cut || line.truncated);
                out(ChildEvent::Progress(Progress::new(current, total, message)));
            }
            LineKind::Result { json } => {
                self.summary.saw_result_marker = true;
                if line.truncated || json.len() > self.limits.max_result {
                    self.warn(
                        &format!(
                            "RESULT line longer than the result limit of {} bytes; kept as output",
                            self.limits.max_result
                        ),
                        out,
                    );
                    self.output(&line.text, true, out);
                    return;
                }
                match serde_json::from_str::<Value>(json) {
                    Ok(mut value) => {
                        self.masker.mask_json(&mut value);
                        out(ChildEvent::Result { value });
                    }
                    Err(e) => {
                        self.warn(
                            &format!("RESULT line is not valid JSON ({e}); kept as output"),
                            out,
                        );
                        self.output(&line.text, false, out);
                    }
                }
            }
            LineKind::ResultStart => {
                self.summary.saw_result_marker = true;
                self.block = Some(ResultBlock {
                    text: String::new(),
                    overflowed: false,
                });
            }
        }
    }

    fn end_block(&mut self, block: ResultBlock, out: &mut impl FnMut(ChildEvent)) {
        if block.overflowed {
            self.warn(
                &format!(
                    "RESULT_START block larger than the result limit of {} bytes; discarded",
                    self.limits.max_result
                ),
                out,
            );
            return;
        }
        match serde_json::from_str::<Value>(&block.text) {
            Ok(mut value) => {
                self.masker.mask_json(&mut value);
                out(ChildEvent::Result { value });
            }
            Err(e) => {
                self.warn(
                    &format!("RESULT_START block is not valid JSON ({e}); kept as output"),
                    out,
                );
                self.release_block(&block.text, out);
            }
        }
    }
}

/// The stderr side: log lines become `log` events, every other line is
/// plain output on stderr. No results, no progress.
#[derive(Debug)]
pub struct StderrProtocol {
    splitter: LineSplitter,
    masker: Masker,
}

impl StderrProtocol {
    pub fn new(limits: ProtocolLimits) -> Self {
        Self {
            splitter: LineSplitter::new(limits.max_line),
            masker: Masker::default(),
        }
    }

    /// Masks secrets in every event with `masker`.
    pub fn with_masker(mut self, masker: Masker) -> Self {
        self.masker = masker;
        self
    }

    /// Feeds one read of stderr.
    pub fn feed(&mut self, chunk: &[u8], out: &mut impl FnMut(ChildEvent)) {
        let masker = &self.masker;
        self.splitter
            .feed(chunk, &mut |line| stderr_line(masker, line, &mut *out));
    }

    /// End of stderr.
    pub fn finish(mut self, out: &mut impl FnMut(ChildEvent)) {
        let masker = &self.masker;
        self.splitter
            .finish(&mut |line| stderr_line(masker, line, &mut *out));
    }
}

fn stderr_line(masker: &Masker, line: Line<'_>, out: &mut impl FnMut(ChildEvent)) {
    match parse_line(&line.text) {
        LineKind::Log {
            level,
            timestamp,
            message,
        } => out(ChildEvent::Log {
            level,
            message: masker.mask_cut(message, false, line.truncated).into_owned(),
            child_timestamp: timestamp.map(|t| masker.mask(t).into_owned()),
        }),
        _ => out(ChildEvent::Output {
            stream: Stream::Stderr,
            line: masker
                .mask_cut(&line.text, false, line.truncated)
                .into_owned(),
        }),
    }
}

/// Decides a job's result: the last `result` event from any source (stdout
/// protocol or IPC, in arrival order), else the fallback of SPEC §2.2.
#[derive(Debug, Default)]
pub struct ResultExtractor {
    last: Option<Value>,
}

impl ResultExtractor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks at an event; a `result` replaces any earlier one.
    pub fn observe(&mut self, event: &ChildEvent) {
        if let ChildEvent::Result { value } = event {
            self.last = Some(value.clone());
        }
    }

    /// Records a result directly (same as observing a `result` event).
    pub fn set(&mut self, value: Value) {
        self.last = Some(value);
    }

    /// The result so far, if any.
    pub fn current(&self) -> Option<&Value> {
        self.last.as_ref()
    }

    /// The final result: the last one seen; else, when stdout had no result
    /// marker and the child exited 0, the captured stdout parsed as JSON
    /// ([`fallback_result`]); else `null`.
    pub fn resolve(
        self,
        summary: &StdoutSummary,
        exit_success: bool,
        stdout: &Captured,
        masker: &Masker,
    ) -> Value {
        if let Some(v) = self.last {
            return v;
        }
        if summary.saw_result_marker || !exit_success {
            return Value::Null;
        }
        match fallback_result(stdout) {
            Some(mut v) => {
                masker.mask_json(&mut v);
                v
            }
            None => Value::Null,
        }
    }
}

/// The whole captured stdout as JSON, or failing that its plain lines (log
/// and progress lines left out) as JSON. `None` when stdout was truncated,
/// empty, or does not parse.
pub fn fallback_result(stdout: &Captured) -> Option<Value> {
    let bytes = stdout.contiguous()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Some(v);
    }
    let mut plain = String::with_capacity(text.len());
    for line in text.lines() {
        if parse_line(line) == LineKind::Plain {
            plain.push_str(line);
            plain.push('\n');
        }
    }
    if plain.trim().is_empty() {
        return None;
    }
    serde_json::from_str(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureBuffer;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::json;

    fn split_all(chunks: &[&[u8]], max: usize) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut got = Vec::new();
        let mut push = |l: Line<'_>| got.push((l.text.into_owned(), l.truncated));
        for c in chunks {
            s.feed(c, &mut push);
        }
        s.finish(&mut push);
        got
    }

    fn random_split<'a>(rng: &mut StdRng, data: &'a [u8], max_chunk: usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = rng.random_range(0..=max_chunk).min(data.len() - i);
            out.push(&data[i..i + n]);
            i += n;
        }
        out
    }

    /// The reference splitter: whole input at once, by a different method.
    fn reference_lines(data: &[u8], max: usize) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut parts: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        if parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        for p in parts {
            let p = strip_cr(p);
            if p.len() <= max {
                out.push((String::from_utf8_lossy(p).into_owned(), false));
            } else {
                out.push((
                    String::from_utf8_lossy(cut_at_char(p, max)).into_owned(),
                    true,
                ));
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let got = split_all(&[b"a\r\nb\n\nc"], 100);
        assert_eq!(
            got,
            vec![
                ("a".into(), false),
                ("b".into(), false),
                ("".into(), false),
                ("c".into(), false)
            ]
        );
    }

    #[test]
    fn joins_lines_split_across_reads() {
        let got = split_all(&[b"PROG", b"RESS: 1/2", b" - x\r", b"\nnext"], 100);
        assert_eq!(
            got,
            vec![("PROGRESS: 1/2 - x".into(), false), ("next".into(), false)]
        );
    }

    #[test]
    fn multibyte_char_split_across_reads() {
        let s = "héllo wörld ✓\n".as_bytes();
        for i in 0..s.len() {
            let got = split_all(&[&s[..i], &s[i..]], 100);
            assert_eq!(got, vec![("héllo wörld ✓".into(), false)]);
        }
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        let got = split_all(&[&[b'a', 0xff, 0xfe, b'b', b'\n']], 100);
        assert_eq!(got, vec![("a\u{fffd}\u{fffd}b".into(), false)]);
    }

    #[test]
    fn long_line_is_cut_flagged_and_rest_discarded() {
        let got = split_all(&[b"0123456789abcdef\nok\n"], 8);
        assert_eq!(got, vec![("01234567".into(), true), ("ok".into(), false)]);
        // A line exactly at the limit plus \r\n is not truncated.
        let got = split_all(&[b"01234567\r", b"\n"], 8);
        assert_eq!(got, vec![("01234567".into(), false)]);
        let got = split_all(&[b"01234567\r", b"x\n"], 8);
        assert_eq!(got, vec![("01234567".into(), true)]);
    }

    #[test]
    fn cut_does_not_split_a_character() {
        let got = split_all(&["abcdefgé-----\n".as_bytes()], 8);
        assert_eq!(got, vec![("abcdefg".into(), true)]);
    }

    #[test]
    fn endless_line_is_emitted_early_and_memory_bounded() {
        let mut s = LineSplitter::new(16);
        let mut got = Vec::new();
        let chunk = [b'z'; 1000];
        for _ in 0..1000 {
            s.feed(&chunk, &mut |l| got.push(l.text.into_owned()));
            assert!(s.buf.capacity() <= 1024);
        }
        assert_eq!(got, vec!["z".repeat(16)]);
    }

    #[test]
    fn any_chunking_gives_the_same_lines() {
        let mut rng = StdRng::seed_from_u64(42);
        let alphabet: &[&[u8]] = &[
            b"a",
            b"b",
            b"\n",
            b"\r",
            b"\r\n",
            "é".as_bytes(),
            "✓".as_bytes(),
            &[0xff],
            b" ",
            b"RESULT: {\"a\":1}\n",
        ];
        for round in 0..500 {
            let mut data = Vec::new();
            for _ in 0..rng.random_range(0..60) {
                data.extend_from_slice(alphabet[rng.random_range(0..alphabet.len())]);
            }
            let max = rng.random_range(1..12);
            let expected = reference_lines(&data, max);
            for max_chunk in [1, 2, 5, 64] {
                let chunks = random_split(&mut rng, &data, max_chunk);
                let got = split_all(&chunks, max);
                assert_eq!(got, expected, "round {round} max {max} data {data:?}");
            }
        }
    }

    #[test]
    fn parse_log_lines() {
        assert_eq!(
            parse_line("[2024-01-01T00:00:00Z] INFO: started"),
            LineKind::Log {
                level: LogLevel::Info,
                timestamp: Some("2024-01-01T00:00:00Z"),
                message: "started"
            }
        );
        assert_eq!(
            parse_line("[t]   WARNING :  careful  "),
            LineKind::Log {
                level: LogLevel::Warn,
                timestamp: Some("t"),
                message: "careful"
            }
        );
        assert_eq!(
            parse_line("ERROR: boom"),
            LineKind::Log {
                level: LogLevel::Error,
                timestamp: None,
                message: "boom"
            }
        );
        assert!(matches!(
            parse_line("[x] DEBUG:"),
            LineKind::Log {
                level: LogLevel::Debug,
                message: "",
                ..
            }
        ));
        for plain in [
            "[] INFO: no timestamp",
            "[ts] info: lower case",
            "[ts] INFO no colon",
            "[ts] NOTICE: unknown",
            "Error: something failed",
            "INFORMATION: x",
            "[unclosed INFO: x",
            "",
        ] {
            assert_eq!(parse_line(plain), LineKind::Plain, "{plain:?}");
        }
    }

    #[test]
    fn parse_progress_lines() {
        let p = |c, t, m| LineKind::Progress {
            current: c,
            total: t,
            message: m,
        };
        assert_eq!(
            parse_line("PROGRESS: 3/10 - loading data"),
            p(3, 10, "loading data")
        );
        assert_eq!(parse_line("PROGRESS:3/10"), p(3, 10, ""));
        assert_eq!(
            parse_line("  PROGRESS:  3 / 10  -  spaced "),
            p(3, 10, "spaced")
        );
        assert_eq!(parse_line("PROGRESS: 3/10 no dash"), p(3, 10, "no dash"));
        assert_eq!(parse_line("PROGRESS: 3/10 -"), p(3, 10, ""));
        assert_eq!(parse_line("PROGRESS: 3/10 - a - b"), p(3, 10, "a - b"));
        for plain in [
            "PROGRESS: a/10",
            "PROGRESS: 3/",
            "PROGRESS: 3/10x",
            "PROGRESS: 3.5/10",
            "PROGRESS: 99999999999999999999999/1",
            "PROGRESS 3/10",
        ] {
            assert_eq!(parse_line(plain), LineKind::Plain, "{plain:?}");
        }
    }

    #[test]
    fn parse_result_lines() {
        assert_eq!(
            parse_line("RESULT: {\"a\":1} "),
            LineKind::Result { json: "{\"a\":1}" }
        );
        assert_eq!(parse_line("RESULT_START"), LineKind::ResultStart);
        assert_eq!(parse_line(" RESULT_END \r"), LineKind::ResultEnd);
        assert_eq!(parse_line("\u{feff}RESULT_START"), LineKind::ResultStart);
        assert_eq!(parse_line("RESULTS: 1"), LineKind::Plain);
    }

    fn run_stdout(chunks: &[&[u8]], limits: ProtocolLimits) -> (Vec<ChildEvent>, StdoutSummary) {
        let mut p = StdoutProtocol::new(limits);
        let mut evs = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| evs.push(e));
        }
        let s = p.finish(&mut |e| evs.push(e));
        (evs, s)
    }

    fn out(line: &str) -> ChildEvent {
        ChildEvent::Output {
            stream: Stream::Stdout,
            line: line.into(),
        }
    }

    fn is_warning(e: &ChildEvent) -> bool {
        matches!(e, ChildEvent::Log { level: LogLevel::Warn, message, .. } if message.starts_with("tsbridge: "))
    }

    const MIX: &str = "starting up\n\
        [2024-05-01 10:00:00] INFO: loading\n\
        PROGRESS: 1/4 - step one\n\
        RESULT: {\"early\":true}\n\
        some output é\n\
        RESULT_START\n\
        {\n  \"rows\": [1, 2, 3],\n  \"name\": \"ünïcode\"\n}\n\
        RESULT_END\n\
        WARN: almost done\n\
        tail without newline";

    fn mix_expected() -> Vec<ChildEvent> {
        vec![
            out("starting up"),
            ChildEvent::Log {
                level: LogLevel::Info,
                message: "loading".into(),
                child_timestamp: Some("2024-05-01 10:00:00".into()),
            },
            ChildEvent::Progress(Progress::new(1, 4, "step one")),
            ChildEvent::Result {
                value: json!({"early": true}),
            },
            out("some output é"),
            ChildEvent::Result {
                value: json!({"rows": [1, 2, 3], "name": "ünïcode"}),
            },
            ChildEvent::Log {
                level: LogLevel::Warn,
                message: "almost done".into(),
                child_timestamp: None,
            },
            out("tail without newline"),
        ]
    }

    #[test]
    fn stdout_protocol_mix() {
        let (evs, summary) = run_stdout(&[MIX.as_bytes()], ProtocolLimits::default());
        assert_eq!(evs, mix_expected());
        assert!(summary.saw_result_marker);
        assert_eq!(summary.warnings, 0);
    }

    #[test]
    fn stdout_protocol_any_chunking_same_events() {
        let mut rng = StdRng::seed_from_u64(9);
        let data = MIX.as_bytes();
        for max_chunk in [1, 2, 3, 7, 16, 300] {
            for _ in 0..30 {
                let chunks = random_split(&mut rng, data, max_chunk);
                let (evs, _) = run_stdout(&chunks, ProtocolLimits::default());
                assert_eq!(evs, mix_expected(), "max_chunk {max_chunk}");
            }
        }
    }

    #[test]
    fn result_block_one_byte_per_write() {
        let data = b"RESULT_START\n{\"a\": [1,\n 2], \"s\": \"\xc3\xa9\"}\nRESULT_END\n";
        let chunks: Vec<&[u8]> = data.chunks(1).collect();
        let (evs, _) = run_stdout(&chunks, ProtocolLimits::default());
        assert_eq!(
            evs,
            vec![ChildEvent::Result {
                value: json!({"a": [1, 2], "s": "é"})
            }]
        );
    }

    #[test]
    fn invalid_result_line_is_output_plus_warning() {
        let (evs, summary) = run_stdout(&[b"RESULT: {not json\n"], ProtocolLimits::default());
        assert_eq!(evs.len(), 2);
        assert!(is_warning(&evs[0]));
        assert_eq!(evs[1], out("RESULT: {not json"));
        assert!(summary.saw_result_marker);
        assert_eq!(summary.warnings, 1);
    }

    #[test]
    fn later_result_replaces_earlier() {
        let (evs, summary) = run_stdout(
            &[b"RESULT: 1\nRESULT: {\"b\":2}\n"],
            ProtocolLimits::default(),
        );
        let mut x = ResultExtractor::new();
        evs.iter().for_each(|e| x.observe(e));
        let v = x.resolve(&summary, true, &Captured::default(), &Masker::default());
        assert_eq!(v, json!({"b": 2}));
    }

    #[test]
    fn oversized_block_is_discarded_with_warning() {
        let limits = ProtocolLimits {
            max_line: 100,
            max_result: 20,
        };
        let data = b"RESULT_START\n[1,2,3,4,5,6,7,8,9,\n10,11,12,13,14,15]\nRESULT_END\nafter\n";
        let (evs, _) = run_stdout(&[data], limits);
        assert_eq!(evs.len(), 2);
        assert!(is_warning(&evs[0]));
        assert_eq!(evs[1], out("after"));
    }

    #[test]
    fn bad_or_unterminated_block_is_released_as_output() {
        let (evs, _) = run_stdout(
            &[b"RESULT_START\n{oops\nRESULT_END\n"],
            ProtocolLimits::default(),
        );
        assert!(is_warning(&evs[0]));
        assert_eq!(evs[1..], [out("{oops")]);

        let (evs, s) = run_stdout(&[b"RESULT_START\n{\"a\":1}\n"], ProtocolLimits::default());
        assert!(is_warning(&evs[0]));
        assert_eq!(evs[1..], [out("{\"a\":1}")]);
        assert!(s.saw_result_marker);
    }

    #[test]
    fn restarted_block_keeps_the_second() {
        let (evs, _) = run_stdout(
            &[b"RESULT_START\n{\"a\":\nRESULT_START\n{\"b\":1}\nRESULT_END\n"],
            ProtocolLimits::default(),
        );
        assert!(is_warning(&evs[0]));
        assert_eq!(
            evs[1],
            ChildEvent::Result {
                value: json!({"b": 1})
            }
        );
    }

    #[test]
    fn one_line_result_may_exceed_max_line() {
        let limits = ProtocolLimits {
            max_line: 16,
            max_result: 1000,
        };
        let big = format!(
            "RESULT: {{\"k\":\"{}\"}}\nplain line longer than sixteen\n",
            "v".repeat(500)
        );
        let (evs, _) = run_stdout(&[big.as_bytes()], limits);
        assert!(
            matches!(&evs[0], ChildEvent::Result { value } if value["k"].as_str().map(str::len) == Some(500))
        );
        assert_eq!(evs[1], out("plain line longe"));
    }

    #[test]
    fn events_are_masked() {
        let masker = Masker::new(["s3cr3t-v4lue".to_string()], &[]);
        let mut p = StdoutProtocol::new(ProtocolLimits::default()).with_masker(masker);
        let mut evs = Vec::new();
        let data = b"token s3cr3t-v4lue\nINFO: using s3cr3t-v4lue\nPROGRESS: 1/2 - s3cr3t-v4lue\nRESULT: {\"t\":\"s3cr3t-v4lue\"}\n";
        // Split the secret across reads: lines are whole, so it is masked.
        p.feed(&data[..10], &mut |e| evs.push(e));
        p.feed(&data[10..], &mut |e| evs.push(e));
        p.finish(&mut |e| evs.push(e));
        let text = serde_json::to_string(&evs).unwrap_or_default();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(evs.len(), 4);
        assert_eq!(evs[0], out("token [REDACTED]"));
    }

    #[test]
    fn stderr_protocol() {
        let mut p = StderrProtocol::new(ProtocolLimits::default());
        let mut evs = Vec::new();
        p.feed(b"[t] ERROR: bad\nTypeError: x\nPROGRESS: 1/2", &mut |e| {
            evs.push(e)
        });
        p.finish(&mut |e| evs.push(e));
        assert_eq!(
            evs,
            vec![
                ChildEvent::Log {
                    level: LogLevel::Error,
                    message: "bad".into(),
                    child_timestamp: Some("t".into())
                },
                ChildEvent::Output {
                    stream: Stream::Stderr,
                    line: "TypeError: x".into()
                },
                ChildEvent::Output {
                    stream: Stream::Stderr,
                    line: "PROGRESS: 1/2".into()
                },
            ]
        );
    }

    fn captured(s: &str, max: usize) -> Captured {
        let mut c = CaptureBuffer::new(max);
        c.push(s.as_bytes());
        c.finish()
    }

    #[test]
    fn fallback_whole_stdout_json() {
        let none = StdoutSummary::default();
        let m = Masker::default();
        let r = |s: &str, ok: bool| {
            ResultExtractor::new().resolve(&none, ok, &captured(s, 1 << 20), &m)
        };
        assert_eq!(r("{\"a\": 1}\n", true), json!({"a": 1}));
        assert_eq!(r("[1,\n2]", true), json!([1, 2]));
        assert_eq!(r("{\"a\": 1}\n", false), Value::Null);
        assert_eq!(r("hello", true), Value::Null);
        assert_eq!(r("", true), Value::Null);
        assert_eq!(
            r("[t] INFO: start\nPROGRESS: 1/1\n{\"a\":\n2}\n", true),
            json!({"a": 2})
        );
        // Truncated: never.
        let big = format!("[{}]", "1,".repeat(100) + "1");
        let got = ResultExtractor::new().resolve(&none, true, &captured(&big, 50), &m);
        assert_eq!(got, Value::Null);
        // A marker was seen (even invalid): no fallback.
        let seen = StdoutSummary {
            saw_result_marker: true,
            warnings: 1,
        };
        let got = ResultExtractor::new().resolve(&seen, true, &captured("{\"a\":1}", 100), &m);
        assert_eq!(got, Value::Null);
    }

    #[test]
    fn fallback_is_masked() {
        let m = Masker::new(["hunter22".to_string()], &[]);
        let got = ResultExtractor::new().resolve(
            &StdoutSummary::default(),
            true,
            &captured("{\"pw\":\"hunter22\"}", 100),
            &m,
        );
        assert_eq!(got, json!({"pw": "[REDACTED]"}));
    }
}
