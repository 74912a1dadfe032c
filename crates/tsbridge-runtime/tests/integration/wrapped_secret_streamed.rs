//! Hostile test of masking streamed events (issue #5): a job prints its
//! secrets one line at a time (a PEM key and a config blob line by line,
//! each secret's base64 wrapped at 64 and 76 columns), so no event holds a
//! whole secret. No event (read from the store, and live from the bus),
//! no capture and no result shows a whole line of one (8 bytes or more,
//! not PEM armour), in spawn mode (log lines, PROGRESS messages, plain
//! output and JSON on stdout and stderr) and in pool mode (`ctx.log`,
//! `ctx.progress`, console); the job's result is unaffected.

use crate::common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::json;
use tsbridge_proto::JobState;

/// A PEM private key of made-up base64 (64 columns, a short last line).
fn pem_key() -> String {
    let der: Vec<u8> = (0u32..700)
        .map(|i| u8::try_from((i * 7919 + 13) % 251).unwrap())
        .collect();
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

const CONFIG: &str = "id = 7\r\npassword = \"pa55\\w0rd-Xy7\"\r\napi_key = sk-9Qz7Wm2Rt5Yx8Kp3\r\n";
const TOKEN: &str = "tsb-live-7Qm2Wx9Rk4Tz6Yp1Lc8Vb3Nd5Hf0Jg-aX9eR2tY7uI4oP1sD6fG3hJ8kL5zX0cV\
                     -Bn7Mq2We5Rt8Yu1Io4Pa6Sd9Fg3Hj0Kl7Zx2Cv5Bn8Mq1We4Rt7";

/// The lines the fixture prints, as it makes them.
fn printed(pem: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (secret, multi_line) in [(pem, true), (CONFIG, true), (TOKEN, false)] {
        if multi_line {
            out.extend(secret.split(['\n', '\r']).map(str::to_owned));
        }
        let b64 = STANDARD.encode(secret);
        for width in [64, 76] {
            for text in [b64.as_str(), b64.trim_end_matches('=')] {
                out.extend(
                    text.as_bytes()
                        .chunks(width)
                        .map(|c| String::from_utf8(c.to_vec()).unwrap()),
                );
            }
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// The whole pieces of the secrets: their lines and the lines of their
/// base64 at 64 and 76 columns, 8 bytes or more, not armour. Not the first
/// base64 line of the PEM file: it encodes its armour line and the start of
/// the DER header, the same in every key of one type.
fn pieces(pem: &str) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    for (secret, multi_line) in [(pem, true), (CONFIG, true), (TOKEN, false)] {
        if multi_line {
            p.extend(
                secret
                    .split(['\n', '\r'])
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        let b64 = STANDARD.encode(secret);
        let skip = usize::from(secret.starts_with("-----BEGIN"));
        for width in [64, 76] {
            for text in [b64.as_str(), b64.trim_end_matches('=')] {
                p.extend(
                    text.as_bytes()
                        .chunks(width)
                        .skip(skip)
                        .map(|c| String::from_utf8(c.to_vec()).unwrap()),
                );
            }
        }
    }
    p.retain(|l| l.len() >= 8);
    p.sort();
    p.dedup();
    p
}

fn workflow(name: &str, extra: &str, pem: &str) -> String {
    let s = |v: &str| serde_json::to_string(v).unwrap();
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"wrap-secret-lines.mjs\"\nruntime = \"node\"\n{extra}\
         env = {{ set = {{ WRAP_SECRET_PEM = {}, WRAP_SECRET_CONFIG = {}, WRAP_SECRET_TOKEN = {} }} }}\n",
        fixtures().display(),
        s(pem),
        s(CONFIG),
        s(TOKEN)
    )
}

/// Asserts no text shows a piece, as it is or JSON-escaped.
fn assert_clean(texts: &[String], pieces: &[String], what: &str) {
    for piece in pieces {
        let json = serde_json::to_string(piece).unwrap();
        let escaped = &json[1..json.len() - 1];
        for t in texts {
            assert!(
                !t.contains(piece.as_str()) && !t.contains(escaped),
                "{what}: {t:?} shows {piece:?}"
            );
        }
    }
}

/// Runs one job of `workflow`, following its live events from before it
/// prints: the job's view, its stored event texts and the live ones.
async fn run(
    h: &Harness,
    workflow: &str,
) -> (tsbridge_proto::api::JobView, Vec<String>, Vec<String>) {
    let go = h.path("go");
    let id = h.submit(workflow, json!({ "go": go })).await;
    let mut sub = h.rt.subscribe(id);
    std::fs::write(&go, b"go").unwrap();
    let mut live = Vec::new();
    let deadline = tokio::time::Instant::now() + SOON;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, sub.recv()).await {
        let end = e.data.is_terminal_state();
        live.extend(event_text(&e));
        if end {
            break;
        }
    }
    let v = h.wait(id).await;
    let stored: Vec<String> =
        h.rt.events_after(id, 0)
            .await
            .unwrap()
            .iter()
            .filter_map(event_text)
            .collect();
    (v, stored, live)
}

fn check(
    v: &tsbridge_proto::api::JobView,
    stored: &[String],
    live: &[String],
    pem: &str,
    per_line: usize,
) {
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let printed = printed(pem);
    let pieces = pieces(pem);
    assert!(pieces.len() > 40, "{}", pieces.len());
    assert!(pieces.contains(&"password = \"pa55\\w0rd-Xy7\"".to_owned()));
    assert!(
        stored.len() >= per_line * printed.len(),
        "one event per printed line: {} for {} lines",
        stored.len(),
        printed.len()
    );
    assert_eq!(live.len(), stored.len(), "every event came live");
    assert_clean(stored, &pieces, "stored event");
    assert_clean(live, &pieces, "live event");
    let captured = [v.output.stdout.clone(), v.output.stderr.clone()];
    assert_clean(&captured, &pieces, "capture");
    // The result is the job's own, untouched (the armour too).
    assert_eq!(
        v.result,
        Some(
            json!({"done": true, "armour": "-----BEGIN PRIVATE KEY-----", "lines": printed.len()})
        )
    );
    // What is not a piece still shows: the armour, a short line, the first
    // line of the PEM file's base64.
    let first = &STANDARD.encode(pem)[..64];
    assert!(stored.iter().any(|t| t.contains(first)), "{first}");
    assert!(
        stored
            .iter()
            .any(|t| t.contains("-----BEGIN PRIVATE KEY-----"))
    );
    assert!(stored.iter().any(|t| t.contains("id = 7")));
}

#[tokio::test]
async fn a_secret_printed_line_by_line_is_masked_in_streamed_events_in_spawn_mode() {
    let pem = pem_key();
    let h = start(&workflow("lines", "", &pem)).await;
    let (v, stored, live) = run(&h, "lines").await;
    // Per line: plain, INFO, WARN, PROGRESS, JSON on stdout; 2 on stderr.
    check(&v, &stored, &live, &pem, 7);
}

#[tokio::test]
async fn a_secret_printed_line_by_line_is_masked_in_streamed_events_in_pool_mode() {
    let pem = pem_key();
    let h = start(&workflow(
        "pooled",
        "mode = \"pool\"\npool = { min = 1, max = 1 }\n",
        &pem,
    ))
    .await;
    let (v, stored, live) = run(&h, "pooled").await;
    // Per line: 2 ctx.log, 1 ctx.progress, console.log, console.error.
    check(&v, &stored, &live, &pem, 5);
}
