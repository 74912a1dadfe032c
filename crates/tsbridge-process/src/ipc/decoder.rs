//! The framing of Node's `json` IPC serialization: one JSON value per line
//! (`JSON.stringify(msg) + '\n'`). A decoder correct across reads (a `\n`
//! byte never occurs inside a multi-byte UTF-8 character, so splitting on it
//! is safe wherever a read ends), bounded by a maximum message size, and
//! total: every input gives messages or reasons, never a panic.

use memchr::memchr;
use serde_json::Value;

/// Splits a byte stream into JSON messages.
#[derive(Debug)]
pub struct JsonLineDecoder {
    max_message: usize,
    /// The current partial line (at most `max_message` bytes).
    buf: Vec<u8>,
    /// The current line went over `max_message`; skip to the next `\n`.
    discarding: bool,
}

impl JsonLineDecoder {
    /// A decoder refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            buf: Vec::new(),
            discarding: false,
        }
    }

    /// Feeds one read. `out` gets each complete message, or the reason a line
    /// was not one. Blank lines are skipped.
    pub fn decode(&mut self, chunk: &[u8], out: &mut impl FnMut(Result<Value, String>)) {
        let mut rest = chunk;
        while let Some(i) = memchr(b'\n', rest) {
            let seg = &rest[..i];
            rest = &rest[i + 1..];
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if self.buf.is_empty() {
                // Fast path: the whole message is in this read.
                if seg.len() > self.max_message {
                    out(Err(self.too_large()));
                } else {
                    parse(seg, out);
                }
            } else if self.buf.len() + seg.len() > self.max_message {
                self.buf.clear();
                out(Err(self.too_large()));
            } else {
                self.buf.extend_from_slice(seg);
                let line = std::mem::take(&mut self.buf);
                parse(&line, out);
                // Keep the allocation for the next partial message.
                self.buf = line;
                self.buf.clear();
            }
        }
        if rest.is_empty() || self.discarding {
            return;
        }
        if self.buf.len() + rest.len() > self.max_message {
            self.buf = Vec::new();
            self.discarding = true;
            out(Err(self.too_large()));
        } else {
            self.buf.extend_from_slice(rest);
        }
    }

    /// End of stream: a last message without its newline is reported (Node
    /// always ends a message with one).
    pub fn finish(&mut self, out: &mut impl FnMut(Result<Value, String>)) {
        if !self.discarding && !self.buf.iter().all(u8::is_ascii_whitespace) {
            out(Err(format!(
                "stream ended inside a message ({} bytes without a newline)",
                self.buf.len()
            )));
        }
        self.buf.clear();
        self.discarding = false;
    }

    fn too_large(&self) -> String {
        format!("message larger than {} bytes; discarded", self.max_message)
    }
}

fn parse(line: &[u8], out: &mut impl FnMut(Result<Value, String>)) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => out(Ok(v)),
        // The error names line/column and category, never the content.
        Err(e) => out(Err(format!("invalid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::json;

    fn run(chunks: &[&[u8]], max: usize) -> Vec<Result<Value, String>> {
        let mut d = JsonLineDecoder::new(max);
        let mut got = Vec::new();
        for c in chunks {
            d.decode(c, &mut |r| got.push(r));
        }
        d.finish(&mut |r| got.push(r));
        got
    }

    #[test]
    fn messages_in_one_read_and_across_reads() {
        let got = run(
            &[
                b"{\"n\":1}\n{\"n\":2}\n{\"n\":",
                b"3,\"s\":\"\xc3",
                b"\xa9\"}\n",
            ],
            1024,
        );
        assert_eq!(
            got,
            vec![
                Ok(json!({"n": 1})),
                Ok(json!({"n": 2})),
                Ok(json!({"n": 3, "s": "é"}))
            ]
        );
    }

    #[test]
    fn malformed_lines_are_reported_and_decoding_continues() {
        let got = run(&[b"not json\n\n  \n{\"ok\":true}\n\xff\xfe\n"], 1024);
        assert_eq!(got.len(), 3);
        assert!(
            got[0]
                .as_ref()
                .is_err_and(|e| e.starts_with("invalid JSON"))
        );
        assert_eq!(got[1], Ok(json!({"ok": true})));
        assert!(got[2].is_err());
    }

    #[test]
    fn oversized_messages_are_refused_once_and_skipped() {
        let big = format!("{{\"s\":\"{}\"}}\n", "x".repeat(100));
        let small = b"{\"a\":1}\n";
        for split in [1, 7, 50, 1000] {
            let mut data = big.clone().into_bytes();
            data.extend_from_slice(small);
            let chunks: Vec<&[u8]> = data.chunks(split).collect();
            let got = run(&chunks, 32);
            assert_eq!(got.len(), 2, "split {split}");
            assert!(got[0].as_ref().is_err_and(|e| e.contains("larger than 32")));
            assert_eq!(got[1], Ok(json!({"a": 1})));
        }
    }

    #[test]
    fn truncated_stream_end_is_reported() {
        let got = run(&[b"{\"a\":1}\n{\"b\""], 1024);
        assert_eq!(got.len(), 2);
        assert!(got[1].is_err());
        assert!(run(&[b"{\"a\":1}\n  "], 1024).len() == 1);
    }

    #[test]
    fn any_chunking_gives_the_same_messages() {
        let mut rng = StdRng::seed_from_u64(3);
        let msgs = [
            json!({"id": "1", "type": "response", "payload": {"x": [1, 2, 3]}}),
            json!("ünïcödé ✓ 😀"),
            json!({"deep": {"a": {"b": {"c": null}}}, "n": -1.5e10}),
            json!([]),
        ];
        let mut data = Vec::new();
        for m in &msgs {
            data.extend_from_slice(&serde_json::to_vec(m).unwrap_or_default());
            data.push(b'\n');
        }
        data.extend_from_slice(b"{broken\n");
        for _ in 0..300 {
            let mut chunks = Vec::new();
            let mut i = 0;
            while i < data.len() {
                let n = rng.random_range(0..8).min(data.len() - i);
                chunks.push(&data[i..i + n]);
                i += n;
            }
            let got = run(&chunks, 1 << 20);
            assert_eq!(got.len(), msgs.len() + 1);
            for (g, m) in got.iter().zip(&msgs) {
                assert_eq!(g.as_ref().ok(), Some(m));
            }
            assert!(got[msgs.len()].is_err());
        }
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let data: Vec<u8> = (0..rng.random_range(0..300))
                .map(|_| match rng.random_range(0..4) {
                    0 => b'\n',
                    1 => b'{',
                    _ => rng.random(),
                })
                .collect();
            let mut d = JsonLineDecoder::new(64);
            let mut n = 0;
            for c in data.chunks(rng.random_range(1..20)) {
                d.decode(c, &mut |_| n += 1);
            }
            d.finish(&mut |_| n += 1);
            // Never more results than lines (+1 for the unterminated end).
            assert!(n <= data.iter().filter(|b| **b == b'\n').count() + 1);
        }
    }
}
