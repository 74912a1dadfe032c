//! What a job list shows of a job's captured output, the same for both
//! stores: the last [`LIST_OUTPUT_TAIL`] bytes per stream. Each store's list
//! query reads a stream's last 4096 characters and its whole length in
//! bytes (`stdout_len`, `stderr_len`); [`cut_listed_output`] cuts those
//! characters to the byte budget and counts every byte not shown as
//! dropped.

use tsbridge_proto::api::OutputView;

/// Output shown per stream in job lists.
pub(super) const LIST_OUTPUT_TAIL: usize = 4096;

/// Cuts a listed row's output to the last `max` bytes per stream (from a
/// character boundary), given each stream's whole length in the store:
/// the bytes not shown are added to its dropped count and flag it
/// truncated.
pub(super) fn cut_listed_output(
    out: &mut OutputView,
    max: usize,
    stdout_len: u64,
    stderr_len: u64,
) {
    cut_stream(
        &mut out.stdout,
        &mut out.stdout_dropped_bytes,
        &mut out.stdout_truncated,
        stdout_len,
        max,
    );
    cut_stream(
        &mut out.stderr,
        &mut out.stderr_dropped_bytes,
        &mut out.stderr_truncated,
        stderr_len,
        max,
    );
}

fn cut_stream(text: &mut String, dropped: &mut u64, truncated: &mut bool, len: u64, max: usize) {
    keep_tail(text, max);
    let cut = len.saturating_sub(text.len() as u64);
    *dropped += cut;
    *truncated |= cut > 0;
}

/// Keeps the last `max` bytes of `s`, starting on a character boundary
/// (so possibly fewer).
fn keep_tail(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stdout: &str, stderr: &str, dropped: u64, truncated: bool) -> OutputView {
        OutputView {
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            stdout_truncated: truncated,
            stderr_truncated: false,
            stdout_dropped_bytes: dropped,
            stderr_dropped_bytes: 0,
        }
    }

    #[test]
    fn a_listed_stream_keeps_its_last_bytes_and_counts_the_rest_dropped() {
        // "é" is 2 bytes: a cut inside it starts after it.
        let mut out = view("abcé12", "xy", 10, true);
        cut_listed_output(&mut out, 3, 100, 2);
        assert_eq!(out.stdout, "12", "a cut inside a character starts after it");
        assert_eq!(out.stdout_dropped_bytes, 10 + 98);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, "xy");
        assert_eq!(out.stderr_dropped_bytes, 0);
        assert!(!out.stderr_truncated, "nothing of stderr was cut");

        let mut out = view("abcé1", "", 0, false);
        cut_listed_output(&mut out, 3, 6, 0);
        assert_eq!(out.stdout, "é1");
        assert_eq!(out.stdout_dropped_bytes, 3);
        assert!(out.stdout_truncated);
    }
}
