//! Bounded capture of one output stream: the first `max/2` bytes (head) and the
//! last `max/2` bytes (tail, a ring buffer), with an exact count of what was
//! dropped in between. Memory stays at `max` plus a constant whatever the
//! child writes (SPEC §4 "Output"), and each push copies only the bytes kept.

use std::fmt;

/// Accumulates one stream's bytes, keeping its head and its tail.
///
/// `max_output` is split in two: the head keeps the first `max_output / 2`
/// bytes, the tail the last `max_output - max_output / 2` bytes written after
/// the head filled up. Nothing is allocated before bytes arrive, and buffers
/// grow geometrically but never past their share of `max_output`.
pub struct CaptureBuffer {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    /// A ring once full: the oldest byte is at `tail_start`.
    tail: Vec<u8>,
    tail_start: usize,
    total: u64,
}

impl fmt::Debug for CaptureBuffer {
    // Deliberately omits the bytes: captured output may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureBuffer")
            .field("max_output", &(self.head_cap + self.tail_cap))
            .field("head_len", &self.head.len())
            .field("tail_len", &self.tail.len())
            .field("total", &self.total)
            .finish()
    }
}

impl CaptureBuffer {
    /// A buffer that keeps at most `max_output` bytes.
    pub fn new(max_output: usize) -> Self {
        let head_cap = max_output / 2;
        Self {
            head_cap,
            tail_cap: max_output - head_cap,
            head: Vec::new(),
            tail: Vec::new(),
            tail_start: 0,
            total: 0,
        }
    }

    /// Records `chunk`. Copies only the bytes that are kept.
    pub fn push(&mut self, chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        let mut rest = chunk;
        if self.head.len() < self.head_cap {
            let n = rest.len().min(self.head_cap - self.head.len());
            grow_within(&mut self.head, n, self.head_cap);
            self.head.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        if rest.is_empty() || self.tail_cap == 0 {
            return;
        }
        if rest.len() >= self.tail_cap {
            // The chunk alone fills the tail: keep its last tail_cap bytes.
            let keep = &rest[rest.len() - self.tail_cap..];
            self.tail.clear();
            grow_within(&mut self.tail, keep.len(), self.tail_cap);
            self.tail.extend_from_slice(keep);
            self.tail_start = 0;
            return;
        }
        // Fill the ring up to its capacity first.
        if self.tail.len() < self.tail_cap {
            let n = rest.len().min(self.tail_cap - self.tail.len());
            grow_within(&mut self.tail, n, self.tail_cap);
            self.tail.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        // Then overwrite the oldest bytes, wrapping at most once
        // (rest.len() < tail_cap here).
        while !rest.is_empty() {
            let n = rest.len().min(self.tail_cap - self.tail_start);
            self.tail[self.tail_start..self.tail_start + n].copy_from_slice(&rest[..n]);
            self.tail_start = (self.tail_start + n) % self.tail_cap;
            rest = &rest[n..];
        }
    }

    /// Where the next bytes can be read straight into the buffer, with no
    /// copy: the free region of the full tail ring from its oldest byte to
    /// its end, at most `max` bytes. `None` unless the head is full, the ring
    /// is allocated in full and that region holds at least `min` bytes; then
    /// read into a buffer of your own and [`Self::push`] it. Fill a prefix of
    /// the region, then [`Self::commit`] its length before any other call.
    pub fn spare(&mut self, min: usize, max: usize) -> Option<&mut [u8]> {
        if self.head.len() < self.head_cap || self.tail_cap == 0 || self.tail.len() < self.tail_cap
        {
            return None;
        }
        let end = self.tail_cap.min(self.tail_start.saturating_add(max));
        (end - self.tail_start >= min.max(1)).then(|| &mut self.tail[self.tail_start..end])
    }

    /// Records `n` bytes written at the start of the region [`Self::spare`]
    /// returned (the same as pushing them).
    pub fn commit(&mut self, n: usize) {
        if self.tail_cap == 0 {
            return;
        }
        let n = n.min(self.tail_cap - self.tail_start);
        self.total = self.total.saturating_add(n as u64);
        self.tail_start = (self.tail_start + n) % self.tail_cap;
    }

    /// Bytes pushed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes pushed so far that are no longer kept.
    pub fn dropped(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// The kept bytes, in order.
    pub fn finish(mut self) -> Captured {
        self.tail.rotate_left(self.tail_start);
        let dropped = self.dropped();
        Captured {
            head: self.head,
            tail: self.tail,
            dropped,
            total: self.total,
        }
    }
}

/// Reserves room for `extra` more bytes, doubling as usual but never past `cap`,
/// so a buffer's allocation never exceeds its share of `max_output`.
fn grow_within(buf: &mut Vec<u8>, extra: usize, cap: usize) {
    let needed = buf.len() + extra;
    if needed <= buf.capacity() {
        return;
    }
    let target = needed
        .max(buf.capacity().saturating_mul(2))
        .clamp(64.min(cap), cap);
    buf.reserve_exact(target.max(needed) - buf.len());
}

/// What a [`CaptureBuffer`] kept. When `dropped == 0`, `head` followed by
/// `tail` is the whole stream.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Captured {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// Bytes written between head and tail and not kept.
    pub dropped: u64,
    /// Bytes written in all.
    pub total: u64,
}

impl fmt::Debug for Captured {
    // Lengths only: captured output may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("head_len", &self.head.len())
            .field("tail_len", &self.tail.len())
            .field("dropped", &self.dropped)
            .field("total", &self.total)
            .finish()
    }
}

impl Captured {
    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The marker line that stands for the dropped bytes.
    pub fn marker(dropped: u64) -> String {
        format!("\n[... {dropped} bytes dropped ...]\n")
    }

    /// The whole stream when nothing was dropped (`None` otherwise).
    pub fn contiguous(&self) -> Option<Vec<u8>> {
        (!self.truncated()).then(|| [self.head.as_slice(), self.tail.as_slice()].concat())
    }

    /// Head, then (if truncated) the marker line, then tail, as lossy UTF-8.
    /// Head and tail are decoded separately when truncated, so a character cut
    /// at either edge becomes U+FFFD and never merges with its neighbour.
    pub fn to_string_lossy(&self) -> String {
        if !self.truncated() {
            let mut bytes = Vec::with_capacity(self.head.len() + self.tail.len());
            bytes.extend_from_slice(&self.head);
            bytes.extend_from_slice(&self.tail);
            return match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
        }
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        s.push_str(&Self::marker(self.dropped));
        s.push_str(&String::from_utf8_lossy(&self.tail));
        s
    }

    /// The last (at most) `n` bytes of the stream as lossy UTF-8, for the
    /// stderr tail of an error. Starts at a character boundary: leading UTF-8
    /// continuation bytes left by the cut are skipped. When the stream was
    /// truncated and the tail is shorter than `n`, only the tail is used (the
    /// bytes before it were dropped).
    pub fn tail_string(&self, n: usize) -> String {
        let bytes: Vec<u8> = if self.tail.len() >= n || self.truncated() {
            self.tail[self.tail.len().saturating_sub(n)..].to_vec()
        } else {
            let from_head = n - self.tail.len();
            let mut v = self.head[self.head.len().saturating_sub(from_head)..].to_vec();
            v.extend_from_slice(&self.tail);
            v
        };
        let total_len = self.head.len() + self.tail.len();
        let cut = bytes.len() < total_len;
        let text = if cut { after_cut(&bytes) } else { &bytes };
        String::from_utf8_lossy(text).into_owned()
    }
}

/// Bytes that begin where a longer text was cut, without the UTF-8
/// continuation bytes (at most 3) of the character the cut went through.
fn after_cut(bytes: &[u8]) -> &[u8] {
    let orphans = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    &bytes[orphans..]
}

/// The last (at most) `max` bytes of `s`, starting at a character
/// boundary: a character the cut goes through is left out whole (so the
/// result may be up to 3 bytes shorter than `max`). The cut of
/// [`Captured::tail_string`], for text that is already a `str`.
pub fn tail_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let tail = after_cut(&s.as_bytes()[s.len() - max..]);
    // Continuation bytes skipped: a character boundary.
    s.get(s.len() - tail.len()..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// Reading straight into the ring ([`CaptureBuffer::spare`] +
    /// [`CaptureBuffer::commit`]) keeps exactly what pushing the same bytes
    /// keeps, whatever the chunk sizes.
    #[test]
    fn spare_and_commit_equal_push() {
        let stream: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for (max, chunk, min) in [
            (1000, 37, 1),
            (4096, 700, 64),
            (64, 5, 1),
            (10_000, 3000, 100),
        ] {
            let mut pushed = CaptureBuffer::new(max);
            let mut direct = CaptureBuffer::new(max);
            let mut used_spare = false;
            let mut at = 0;
            while at < stream.len() {
                let end = (at + chunk).min(stream.len());
                pushed.push(&stream[at..end]);
                match direct.spare(min, end - at) {
                    Some(slot) => {
                        let n = slot.len();
                        slot.copy_from_slice(&stream[at..at + n]);
                        direct.commit(n);
                        used_spare = true;
                        at += n;
                        // Keep `pushed` in step: it took the whole chunk.
                        if at < end {
                            direct.push(&stream[at..end]);
                            at = end;
                        }
                    }
                    None => {
                        direct.push(&stream[at..end]);
                        at = end;
                    }
                }
            }
            assert!(used_spare, "max {max}: the ring was never read into");
            assert_eq!(pushed.finish(), direct.finish(), "max {max}, chunk {chunk}");
        }
    }

    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The reference: what head/tail must be for a stream `all`.
    fn expected(all: &[u8], max: usize) -> Captured {
        let head_cap = max / 2;
        let tail_cap = max - head_cap;
        let head = all[..all.len().min(head_cap)].to_vec();
        let after = &all[head.len()..];
        let tail = after[after.len().saturating_sub(tail_cap)..].to_vec();
        let dropped = (all.len() - head.len() - tail.len()) as u64;
        Captured {
            head,
            tail,
            dropped,
            total: all.len() as u64,
        }
    }

    fn random_chunks(rng: &mut StdRng, all: &[u8], max_chunk: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < all.len() {
            let n = rng.random_range(0..=max_chunk).min(all.len() - i);
            out.push(all[i..i + n].to_vec());
            i += n;
        }
        out
    }

    #[test]
    fn small_stream_is_kept_whole() {
        let mut c = CaptureBuffer::new(100);
        c.push(b"hello ");
        c.push(b"world");
        let got = c.finish();
        assert!(!got.truncated());
        assert_eq!(got.to_string_lossy(), "hello world");
        assert_eq!(got.total, 11);
        assert_eq!(got.contiguous().as_deref(), Some(&b"hello world"[..]));
    }

    #[test]
    fn head_and_tail_are_kept_and_drops_counted() {
        let mut c = CaptureBuffer::new(8);
        c.push(b"0123456789abcdef");
        let got = c.finish();
        assert_eq!(got.head, b"0123");
        assert_eq!(got.tail, b"cdef");
        assert_eq!(got.dropped, 8);
        assert!(got.truncated());
        assert_eq!(
            got.to_string_lossy(),
            "0123\n[... 8 bytes dropped ...]\ncdef"
        );
        assert_eq!(got.contiguous(), None);
    }

    #[test]
    fn any_chunking_matches_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..300 {
            let len = rng.random_range(0..400);
            let all: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let max = rng.random_range(0..64);
            let max_chunk = [1, 3, 17, 100, 500][round % 5];
            let mut c = CaptureBuffer::new(max);
            for ch in random_chunks(&mut rng, &all, max_chunk) {
                c.push(&ch);
            }
            assert_eq!(c.dropped(), expected(&all, max).dropped);
            let got = c.finish();
            assert_eq!(got, expected(&all, max), "round {round} max {max}");
        }
    }

    #[test]
    fn zero_and_odd_limits() {
        let mut c = CaptureBuffer::new(0);
        c.push(b"abc");
        let got = c.finish();
        assert!(got.head.is_empty() && got.tail.is_empty());
        assert_eq!(got.dropped, 3);

        let mut c = CaptureBuffer::new(5);
        c.push(b"abcdefgh");
        let got = c.finish();
        assert_eq!(
            (got.head.as_slice(), got.tail.as_slice()),
            (&b"ab"[..], &b"fgh"[..])
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let max = 4096;
        let mut c = CaptureBuffer::new(max);
        let chunk = vec![b'x'; 1000];
        // 64 MiB in small and odd-sized pushes.
        for i in 0..(64 * 1024) {
            c.push(&chunk[..(i % 1000) + 1]);
            assert!(c.head.capacity() + c.tail.capacity() <= max);
        }
        let total = c.total();
        let got = c.finish();
        assert_eq!(got.head.len() + got.tail.len(), max);
        assert_eq!(got.dropped, total - max as u64);
    }

    #[test]
    fn tail_string_cuts_at_char_boundary() {
        let mut c = CaptureBuffer::new(1000);
        c.push("line one\nerr: é failed\n".as_bytes());
        let got = c.finish();
        assert_eq!(got.tail_string(7), "failed\n");
        // 'é' is 2 bytes; a cut inside it drops the orphan byte.
        let s = "line one\nerr: é failed\n";
        let idx = s.find('é').map(|i| i + 1).unwrap_or(0);
        let n = s.len() - idx;
        assert_eq!(got.tail_string(n), " failed\n");
        assert_eq!(got.tail_string(10_000), s);
    }

    /// Cuts through 2-, 3- and 4-byte characters leave each out whole; a
    /// cut on a boundary keeps everything after it; short text is whole.
    #[test]
    fn tail_at_char_boundary_cuts_multibyte_characters_whole() {
        let s = "aé€😀z"; // 1 + 2 + 3 + 4 + 1 bytes
        assert_eq!(tail_at_char_boundary(s, 100), s);
        assert_eq!(tail_at_char_boundary(s, s.len()), s);
        assert_eq!(tail_at_char_boundary(s, 0), "");
        assert_eq!(tail_at_char_boundary(s, 1), "z");
        for max in 2..=4 {
            assert_eq!(tail_at_char_boundary(s, max), "z", "{max}");
        }
        assert_eq!(tail_at_char_boundary(s, 5), "😀z");
        for max in 6..=7 {
            assert_eq!(tail_at_char_boundary(s, max), "😀z", "{max}");
        }
        assert_eq!(tail_at_char_boundary(s, 8), "€😀z");
        assert_eq!(tail_at_char_boundary(s, 9), "€😀z");
        assert_eq!(tail_at_char_boundary(s, 10), "é€😀z");
        // The same cuts as the bytes of a capture.
        let mut c = CaptureBuffer::new(1000);
        c.push(s.as_bytes());
        let got = c.finish();
        for max in 0..=s.len() + 1 {
            assert_eq!(got.tail_string(max), tail_at_char_boundary(s, max), "{max}");
        }
    }

    #[test]
    fn tail_string_of_truncated_uses_tail_only() {
        let mut c = CaptureBuffer::new(8);
        c.push(b"AAAAzzzzzzzzBBBB");
        let got = c.finish();
        assert_eq!(got.tail_string(100), "BBBB");
        assert_eq!(got.tail_string(2), "BB");
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        let mut c = CaptureBuffer::new(100);
        c.push(&[b'a', 0xff, b'b']);
        assert_eq!(c.finish().to_string_lossy(), "a\u{fffd}b");
    }

    #[test]
    fn debug_does_not_print_content() {
        let mut c = CaptureBuffer::new(100);
        c.push(b"hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.finish()).contains("hunter2"));
    }
}
