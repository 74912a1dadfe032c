//! A Server-Sent Events parser (the WHATWG event-stream format): bytes in,
//! events out. Lines end in `\n`, `\r\n` or `\r`, even split across chunks;
//! `:` lines are comments (keep-alives); `data:` lines join with `\n`; an
//! empty line dispatches.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` name; `"message"` when absent.
    pub event: String,
    pub data: String,
    /// A `retry:` the server asked for, in milliseconds.
    pub retry: Option<u64>,
}

/// Incremental parser; feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
    retry: Option<u64>,
    started: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            match self.buf[i] {
                b'\n' => {
                    let line = self.buf[start..i].to_vec();
                    self.line(&line, &mut out);
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    if i + 1 == self.buf.len() {
                        // Maybe "\r\n" split across chunks: wait for more.
                        break;
                    }
                    let line = self.buf[start..i].to_vec();
                    self.line(&line, &mut out);
                    i += if self.buf[i + 1] == b'\n' { 2 } else { 1 };
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        if raw.is_empty() {
            self.dispatch(out);
            return;
        }
        if raw[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(raw);
        let (field, value) = match line.find(':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let retry = self.retry.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseEvent {
            id: self.id.clone(),
            event: event.unwrap_or_else(|| "message".to_owned()),
            data: std::mem::take(&mut self.data),
            retry,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_comments_and_multiline_data() {
        let mut p = SseParser::new();
        let ev = p.push(
            b": keep-alive\n\nid: 1\nevent: state\ndata: {\"a\":1}\n\nid:2\ndata: x\ndata: y\n\n",
        );
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].id.as_deref(), Some("1"));
        assert_eq!(ev[0].event, "state");
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].id.as_deref(), Some("2"));
        assert_eq!(ev[1].event, "message");
        assert_eq!(ev[1].data, "x\ny");
    }

    #[test]
    fn lines_split_across_chunks_and_crlf() {
        let input = "id: 7\r\nevent: log\r\ndata: h\u{e9}llo\r\n\r\nevent: x\rdata: z\r\r";
        let bytes = input.as_bytes();
        // Every split point, including inside "\r\n" and inside "é".
        for cut in 0..bytes.len() {
            let mut p = SseParser::new();
            let mut ev = p.push(&bytes[..cut]);
            ev.extend(p.push(&bytes[cut..]));
            ev.extend(p.push(b"\n"));
            assert_eq!(ev.len(), 2, "cut at {cut}: {ev:?}");
            assert_eq!(ev[0].data, "h\u{e9}llo");
            assert_eq!(ev[0].id.as_deref(), Some("7"));
            assert_eq!(ev[1].event, "x");
            assert_eq!(ev[1].data, "z");
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").is_empty());
        let ev = p.push(b"retry: 500\ndata\n\n");
        assert_eq!(ev[0].data, "");
        assert_eq!(ev[0].retry, Some(500));
    }
}
