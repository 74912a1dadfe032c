//! Throughput and latency of the streaming/protocol modules:
//! - the stdout line protocol over a realistic mix (MiB/s),
//! - capture of a 64 MiB stream into a 16 MiB `CaptureBuffer`,
//! - the masker's cost per line,
//! - the IPC request round trip through `IpcHandle` against a bare round
//!   trip on the same kind of socket and the same Node responder (skipped
//!   when `node` is absent).
//!
//! Run: `cargo bench -p tsbridge-process --bench protocol`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use serde_json::json;
use tsbridge_process::capture::CaptureBuffer;
use tsbridge_process::ipc::{IpcChannel, IpcHandle, attach_to_command};
use tsbridge_process::lineproto::{LineSplitter, ProtocolLimits, StdoutProtocol, parse_line};
use tsbridge_process::mask::Masker;

fn main() {
    divan::main();
}

/// About 4 MiB of what a workflow prints: mostly plain lines of varied
/// length, logs, progress, the odd result.
fn stdout_mix() -> Vec<u8> {
    let mut out = Vec::with_capacity(4 << 20);
    let mut i: u64 = 0;
    while out.len() < 4 << 20 {
        i += 1;
        let line = match i % 20 {
            0..=2 => format!(
                "[2024-05-01T10:00:{:02}.123Z] INFO: processed record {i} of batch {}",
                i % 60,
                i / 100
            ),
            3 => format!(
                "[2024-05-01T10:00:{:02}.123Z] WARN: slow response from upstream ({i} ms)",
                i % 60
            ),
            4 | 5 => format!("PROGRESS: {}/1000000 - processing item {i}", i % 1_000_000),
            6 => format!("RESULT: {{\"partial\":{i},\"ok\":true,\"items\":[1,2,3]}}"),
            7 => "ERROR: retrying request after timeout".to_owned(),
            8 => String::new(),
            _ => format!(
                "row {i}: {} é✓ {}",
                "lorem ipsum dolor sit amet ".repeat((i % 5) as usize + 1),
                i * 7
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

fn mix() -> &'static [u8] {
    static MIX: OnceLock<Vec<u8>> = OnceLock::new();
    MIX.get_or_init(stdout_mix)
}

const READ: usize = 64 * 1024;

#[divan::bench]
fn stdout_protocol(bencher: Bencher) {
    let data = mix();
    bencher.counter(BytesCount::new(data.len())).bench(|| {
        let mut p = StdoutProtocol::new(ProtocolLimits::default());
        let mut events = 0usize;
        for chunk in data.chunks(READ) {
            p.feed(chunk, &mut |e| {
                events += 1;
                divan::black_box(e);
            });
        }
        p.finish(&mut |_| events += 1);
        events
    });
}

#[divan::bench]
fn stdout_protocol_masked(bencher: Bencher) {
    let data = mix();
    let masker = Masker::new(
        [
            "sk-live-0123456789abcdef",
            "hunter2-password",
            "ghp_abcdefghijklmnop",
        ]
        .map(String::from),
        &[],
    );
    bencher.counter(BytesCount::new(data.len())).bench(|| {
        let mut p = StdoutProtocol::new(ProtocolLimits::default()).with_masker(masker.clone());
        let mut events = 0usize;
        for chunk in data.chunks(READ) {
            p.feed(chunk, &mut |e| {
                events += 1;
                divan::black_box(e);
            });
        }
        events
    });
}

#[divan::bench]
fn line_splitter(bencher: Bencher) {
    let data = mix();
    bencher.counter(BytesCount::new(data.len())).bench(|| {
        let mut s = LineSplitter::new(64 * 1024);
        let mut n = 0usize;
        for chunk in data.chunks(READ) {
            s.feed(chunk, &mut |l| n += l.text.len());
        }
        n
    });
}

#[divan::bench]
fn parse_line_only(bencher: Bencher) {
    let text = String::from_utf8_lossy(mix()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    bencher.counter(ItemsCount::new(lines.len())).bench(|| {
        lines
            .iter()
            .map(|l| parse_line(divan::black_box(l)))
            .filter(|k| !matches!(k, tsbridge_process::lineproto::LineKind::Plain))
            .count()
    });
}

#[divan::bench(sample_count = 10)]
fn capture_64mib_into_16mib(bencher: Bencher) {
    let chunk = vec![b'x'; READ];
    let total = 64usize << 20;
    bencher.counter(BytesCount::new(total)).bench(|| {
        let mut c = CaptureBuffer::new(16 << 20);
        for _ in 0..total / READ {
            c.push(divan::black_box(&chunk));
        }
        c.finish().dropped
    });
}

mod masker {
    use super::*;

    fn secrets() -> Masker {
        Masker::new(
            [
                "sk-live-0123456789abcdef",
                "hunter2-password",
                "ghp_abcdefghijklmnop",
                "AKIAIOSFODNN7EXAMPLE",
                "db-pass-XYZ",
            ]
            .map(String::from),
            &[],
        )
    }

    pub(super) const CLEAN: &str =
        "[2024-05-01T10:00:00.123Z] INFO: processed record 12345 of batch 77 in 12 ms";
    const DIRTY: &str = "[2024-05-01T10:00:00.123Z] INFO: connecting with hunter2-password to db";

    #[divan::bench]
    fn empty_masker(bencher: Bencher) {
        let m = Masker::default();
        bencher.bench(|| m.mask(divan::black_box(CLEAN)).len());
    }

    #[divan::bench]
    fn five_secrets_no_match(bencher: Bencher) {
        let m = secrets();
        bencher.bench(|| m.mask(divan::black_box(CLEAN)).len());
    }

    #[divan::bench]
    fn five_secrets_one_match(bencher: Bencher) {
        let m = secrets();
        bencher.bench(|| m.mask(divan::black_box(DIRTY)).len());
    }
}

/// The masker with long secrets (1 PEM key of 1,704 bytes and 4 tokens of
/// 120 bytes, whose base64 runs are looked up per line), per line: a
/// clean log line, a log line with a line of the key, a 64-character
/// base64 line that is no secret's (the case that pays a lookup), and a
/// whole 64-column line of `base64("user:" + key)`.
mod masker_long {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn pem() -> String {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let der: Vec<u8> = (0..1218)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let b64 = STANDARD.encode(der);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    fn masker() -> Masker {
        let mut secrets = vec![pem()];
        for t in 0..4_u8 {
            let (a, b) = (char::from(b'a' + 2 * t), char::from(b'b' + 2 * t));
            secrets.push((0..60).flat_map(|_| [a, b]).collect());
        }
        Masker::new(secrets, &[])
    }

    fn lines() -> [String; 4] {
        let key = pem();
        let wrapped = STANDARD.encode(format!("user:{key}"));
        [
            super::masker::CLEAN.to_owned(),
            format!("INFO: key {} end", key.lines().nth(3).unwrap_or_default()),
            STANDARD.encode("no secret here, only 48 bytes of text to encode.."),
            wrapped[128..192].to_owned(),
        ]
    }

    #[divan::bench(args = ["clean", "pem_line", "clean_base64_64", "prefixed_base64_64"])]
    fn one_line(bencher: Bencher, which: &str) {
        let m = masker();
        let i = ["clean", "pem_line", "clean_base64_64", "prefixed_base64_64"]
            .iter()
            .position(|w| *w == which)
            .unwrap_or(0);
        let line = lines()[i].clone();
        bencher.bench(|| m.mask(divan::black_box(&line)).len());
    }

    #[divan::bench]
    fn build(bencher: Bencher) {
        let secrets = [pem()];
        bencher.bench(|| Masker::new(secrets.iter().cloned(), &[]).is_empty());
    }
}

mod ipc {
    use super::*;

    fn responder() -> Option<std::path::PathBuf> {
        let ok = Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("ipc benches skipped: node not found");
            return None;
        }
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-ipc/responder.js"))
    }

    struct Bare {
        _child: Child,
        w: StdUnixStream,
        r: BufReader<StdUnixStream>,
        line: String,
    }

    /// A responder reached by plain blocking socket I/O: the floor.
    fn bare() -> Option<&'static Mutex<Bare>> {
        static BARE: OnceLock<Option<Mutex<Bare>>> = OnceLock::new();
        BARE.get_or_init(|| {
            let script = responder()?;
            let (parent, child) = StdUnixStream::pair().ok()?;
            let mut cmd = Command::new("node");
            cmd.arg(script).stdin(Stdio::null()).stdout(Stdio::null());
            let child_fd = std::os::fd::OwnedFd::from(child);
            attach_to_command(&mut cmd, &child_fd);
            let proc = cmd.spawn().ok()?;
            drop(child_fd);
            let mut r = BufReader::new(parent.try_clone().ok()?);
            let mut line = String::new();
            r.read_line(&mut line).ok()?; // "responder ready"
            Some(Mutex::new(Bare {
                _child: proc,
                w: parent,
                r,
                line,
            }))
        })
        .as_ref()
    }

    struct Managed {
        _child: Child,
        rt: tokio::runtime::Runtime,
        handle: IpcHandle,
    }

    fn managed(multi_thread: bool) -> Option<&'static Managed> {
        static MT: OnceLock<Option<Managed>> = OnceLock::new();
        static CT: OnceLock<Option<Managed>> = OnceLock::new();
        let cell = if multi_thread { &MT } else { &CT };
        cell.get_or_init(|| {
            let script = responder()?;
            let rt = if multi_thread {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .ok()?
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?
            };
            let (parent, child_end) = IpcChannel::new().ok()?;
            let mut cmd = Command::new("node");
            cmd.arg(script).stdin(Stdio::null()).stdout(Stdio::null());
            attach_to_command(&mut cmd, &child_end);
            let proc = cmd.spawn().ok()?;
            drop(child_end);
            let (handle, mut incoming) = rt.block_on(async { parent.start() }).ok()?;
            // Drain what the child sends besides answers.
            rt.spawn(async move { while incoming.recv().await.is_some() {} });
            Some(Managed {
                _child: proc,
                rt,
                handle,
            })
        })
        .as_ref()
    }

    const REQ: &str =
        "{\"id\":\"1\",\"type\":\"request\",\"payload\":{\"value\":\"ping\"},\"timestamp\":0}\n";

    #[divan::bench(sample_count = 300)]
    fn bare_round_trip(bencher: Bencher) {
        let Some(b) = bare() else { return };
        bencher.bench(|| {
            let mut b = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let b = &mut *b;
            b.w.write_all(REQ.as_bytes()).ok();
            b.line.clear();
            b.r.read_line(&mut b.line).ok();
            b.line.len()
        });
    }

    #[divan::bench(sample_count = 300)]
    fn handle_request_multi_thread(bencher: Bencher) {
        let Some(m) = managed(true) else { return };
        bencher.bench(|| {
            m.rt.block_on(
                m.handle
                    .request(json!({"value": "ping"}), Duration::from_secs(10)),
            )
            .is_ok()
        });
    }

    #[divan::bench(sample_count = 300)]
    fn handle_request_current_thread(bencher: Bencher) {
        let Some(m) = managed(false) else { return };
        bencher.bench(|| {
            m.rt.block_on(
                m.handle
                    .request(json!({"value": "ping"}), Duration::from_secs(10)),
            )
            .is_ok()
        });
    }
}
