//! Secrets shorter than the base64-run bound (48 characters) in the middle
//! of long output: inside a 60 KiB line, mid-line in a block of short
//! lines, split across two writes (so across the engine's reads), at the
//! line limit's cut of an over-long line, and where a truncated capture's
//! head ends and its tail starts. None shows in the capture or in a
//! streamed line, whole or as a piece of 3 bytes or more (the cut-edge
//! bound, `MIN_PARTIAL`): the engine's captures and lines are masked as
//! wholes, and a cut edge is guarded.

use crate::common;

use std::sync::Arc;

use tsbridge_process::mask::{MIN_PARTIAL, Masker};
use tsbridge_process::spawn;
use tsbridge_proto::ChildEvent;

/// Secret bytes: none of them in the filler, the marker line's words or
/// `[REDACTED]`'s letters.
const ALPHABET: &[u8] = b"0123456789qjzxkvw";
const LENGTHS: [usize; 7] = [8, 11, 17, 23, 31, 40, 47];
const MAX_LINE: usize = 64 * 1024;

fn secrets() -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    LENGTHS
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
                })
                .collect()
        })
        .collect()
}

/// The writes the child makes, in order, and where (byte offset in the
/// stream) each secret occurrence starts.
fn plan(secrets: &[String]) -> (Vec<String>, Vec<(usize, usize)>) {
    let mut writes: Vec<String> = Vec::new();
    let mut at: Vec<(usize, usize)> = Vec::new();
    let mut cur = String::new();
    let mut offset = 0;
    fn put(cur: &mut String, s: &str, offset: &mut usize) {
        cur.push_str(s);
        *offset += s.len();
    }
    // A 60 KiB line: each secret mid-line, every other one split across
    // two writes.
    for (i, s) in secrets.iter().enumerate() {
        put(&mut cur, &".".repeat(7000 + 331 * i), &mut offset);
        at.push((offset, i));
        if i % 2 == 0 {
            let (a, b) = s.split_at(s.len() / 2);
            put(&mut cur, a, &mut offset);
            writes.push(std::mem::take(&mut cur));
            put(&mut cur, b, &mut offset);
        } else {
            put(&mut cur, s, &mut offset);
        }
    }
    put(&mut cur, &".".repeat(2000), &mut offset);
    put(&mut cur, "\n", &mut offset);
    // A block of 300 short lines, secrets mid-line in its middle.
    for line in 0..300 {
        put(&mut cur, &"-".repeat(40), &mut offset);
        if (140..140 + secrets.len()).contains(&line) {
            let i = line - 140;
            at.push((offset, i));
            put(&mut cur, &secrets[i], &mut offset);
        }
        put(&mut cur, &"-".repeat(40), &mut offset);
        put(&mut cur, "\n", &mut offset);
    }
    writes.push(std::mem::take(&mut cur));
    // An over-long line: secrets before the line limit, one across it (10
    // bytes before the cut), the rest dropped from the streamed line.
    let line_start = offset;
    for (i, s) in secrets.iter().enumerate() {
        put(&mut cur, &".".repeat(5000), &mut offset);
        at.push((offset, i));
        put(&mut cur, s, &mut offset);
    }
    let across = secrets.len() - 2;
    let gap = line_start + MAX_LINE - 10 - offset;
    put(&mut cur, &".".repeat(gap), &mut offset);
    at.push((offset, across));
    put(&mut cur, &secrets[across], &mut offset);
    put(&mut cur, &".".repeat(30_000), &mut offset);
    put(&mut cur, "\n", &mut offset);
    writes.push(cur);
    (writes, at)
}

/// Every piece of a secret of `MIN_PARTIAL` bytes or more found in `text`.
fn leaks(text: &str, secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for s in secrets {
        for k in MIN_PARTIAL..=s.len() {
            for w in 0..=s.len() - k {
                let piece = &s[w..w + k];
                if text.contains(piece) {
                    found.push(piece.to_owned());
                }
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found.truncate(5);
    found
}

/// Runs the child writing `writes` with `max_output`; returns the masked
/// capture (marker lines taken out) and the streamed lines.
async fn run(writes: &[String], secrets: &[String], max_output: usize) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("writes.json");
    std::fs::write(&plan, serde_json::to_vec(writes).unwrap()).unwrap();
    // Each write waits for the last one to drain and a timer tick, so the
    // engine reads them apart.
    let script = r#"
const writes = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));
(async () => {
  for (const w of writes) {
    await new Promise((r) => process.stdout.write(w, r));
    await new Promise((r) => setTimeout(r, 5));
  }
})();
"#;
    let masker = Arc::new(Masker::new(secrets.iter().cloned(), &[]));
    let spec = tsbridge_process::JobSpec::builder(common::node())
        .args(["-e", script])
        .arg(&plan)
        .cwd(dir.path())
        .envs(common::base_env())
        .max_output(max_output)
        .max_line(MAX_LINE)
        .masker(masker)
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let mut rx = p.take_events().unwrap();
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(e) = rx.recv().await {
            if let ChildEvent::Output { line, .. } = e {
                lines.push(line);
            }
        }
        lines
    });
    let o = p.wait().await;
    assert!(o.exit.success(), "{:?}", o.stderr.to_string_lossy());
    assert_eq!(o.events_dropped, 0);
    let capture = o.stdout.to_string_lossy();
    let capture = match capture.split_once("\n[... ") {
        Some((head, rest)) => {
            let tail = rest.split_once(" bytes dropped ...]\n").map_or("", |t| t.1);
            format!("{head}\n{tail}")
        }
        None => capture,
    };
    (capture, collector.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_secrets_in_long_output_never_show_whole_or_in_pieces() {
    let secrets = secrets();
    let (writes, at) = plan(&secrets);
    let total: usize = writes.iter().map(String::len).sum();

    // Whole capture, and the streamed lines.
    let (capture, lines) = run(&writes, &secrets, 16 << 20).await;
    assert!(capture.contains("[REDACTED]"));
    assert_eq!(leaks(&capture, &secrets), Vec::<String>::new(), "capture");
    assert_eq!(lines.len(), 302);
    assert_eq!(
        leaks(&lines.concat(), &secrets),
        Vec::<String>::new(),
        "lines"
    );

    // A truncated capture whose head ends 10 bytes into a secret (in the
    // block of short lines), then one whose tail starts 10 bytes into one.
    let (block_at, _) = at[secrets.len() + 3];
    let (capture, _) = run(&writes, &secrets, 2 * (block_at + 10)).await;
    assert_eq!(leaks(&capture, &secrets), Vec::<String>::new(), "head cut");
    let (long_at, _) = at[2 * secrets.len() + 2];
    let (capture, _) = run(&writes, &secrets, 2 * (total - (long_at + 10))).await;
    assert_eq!(leaks(&capture, &secrets), Vec::<String>::new(), "tail cut");
}
