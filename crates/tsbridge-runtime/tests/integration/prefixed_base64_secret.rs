//! Hostile test of masking streamed events (issue #5 follow-up): a job
//! prints the base64 of its secret with other bytes before it (HTTP basic
//! auth `user:<secret>`, `admin:<secret>`, a JSON blob), in one line and
//! wrapped at 64 and 76 columns one line per event, in the standard and
//! URL-safe alphabets. No event (stored), no capture shows the secret's
//! one-line base64 beyond the 1-2 characters it shares with its
//! neighbours, nor a whole wrapped line that only the secret's bytes
//! determine; the lines that show the bytes around it (the first and last
//! of each block) are left, not guessed at. Spawn mode (plain output, log
//! lines, stderr) and pool mode (`ctx.log`, console). In spawn mode a
//! request's own secret is masked too (the attempt's masker adds it to the
//! workflow's shared one).

use std::sync::Arc;

use crate::common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_proto::api::JobOptions;
use tsbridge_runtime::{Config, Runtime, RuntimeOptions};

const TOKEN: &str = "tsb-live-7Qm2Wx9Rk4Tz6Yp1Lc8Vb3Nd5Hf0Jg-aX9eR2tY7uI4oP1sD6fG3hJ8kL5zX0cV\
                     -Bn7Mq2We5Rt8Yu1Io4Pa6Sd9Fg3Hj0Kl7Zx2Cv5Bn8Mq1We4Rt7";
/// A request's own secret that contains a workflow secret (`INNER`), and
/// one that a workflow secret (`OUTER`) contains.
const REQUEST: &str = "req-secret-wraps-WF-INNER-SECRET-0042-inside";
const INNER: &str = "WF-INNER-SECRET-0042";
const REQUEST_INNER: &str = "REQ-INNER-TOKEN-0077";
const OUTER: &str = "wf-outer-secret-holds-REQ-INNER-TOKEN-0077-too";

/// The data whose base64 the fixture prints, and where the secret starts.
fn data() -> Vec<(String, usize)> {
    vec![
        (format!("user:{TOKEN}"), 5),
        (format!("admin:{TOKEN}"), 6),
        // As the fixture's JSON.stringify writes it (keys in order).
        (format!("{{\"token\":\"{TOKEN}\",\"n\":1}}"), 10),
    ]
}

/// The wrapped lines that only the secret's bytes determine (to be
/// redacted), and the first line of each block (left: it shows the
/// prefix).
fn lines() -> (Vec<String>, Vec<(String, usize)>) {
    let (mut whole, mut first) = (Vec::new(), Vec::new());
    for (data, at) in data() {
        let inside = (at * 8).div_ceil(6)..(at + TOKEN.len()) * 8 / 6;
        for b64 in [STANDARD.encode(&data), URL_SAFE.encode(&data)] {
            for width in [64, 76] {
                for (i, line) in b64.as_bytes().chunks(width).enumerate() {
                    let line = String::from_utf8(line.to_vec()).unwrap();
                    let (a, b) = (i * width, i * width + line.len());
                    // Lines under 8 characters are left by design.
                    if a >= inside.start && b <= inside.end {
                        if line.len() >= 8 {
                            whole.push(line);
                        }
                    } else if i == 0 {
                        first.push((line, at));
                    }
                }
            }
        }
    }
    (whole, first)
}

fn toml(dir: &std::path::Path, name: &str, extra: &str) -> String {
    format!(
        "[store]\nurl = \"sqlite://{}/jobs.db\"\n\
         [workflows.{name}]\nroot = \"{}\"\nscript = \"prefixed-b64-secret.mjs\"\nruntime = \"node\"\n{extra}\
         env = {{ set = {{ PREFIXED_SECRET_TOKEN = \"{TOKEN}\", INNER_SECRET = \"{INNER}\", \
         OUTER_SECRET = \"{OUTER}\" }}, request = [\"REQUEST_SECRET_TOKEN\", \"REQUEST_INNER_TOKEN\"] }}\n",
        dir.display(),
        fixtures().display(),
    )
}

/// Runs one job of `name`: its stored event texts and its captures.
async fn run(name: &str, extra: &str, opts: JobOptions) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config: Arc<Config> = Arc::new(
        Config::parse(&toml(dir.path(), name, extra), &fixtures())
            .unwrap_or_else(|e| panic!("{e:?}")),
    );
    let store = open_store(dir.path()).await;
    let rt = Runtime::start(config, store, RuntimeOptions::default())
        .await
        .expect("runtime starts");
    let id = rt
        .submit(name, json!({}), opts)
        .await
        .expect("submit")
        .job_id;
    let v = tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("job ends in time")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let mut texts: Vec<String> = rt
        .events_after(id, 0)
        .await
        .unwrap()
        .iter()
        .filter_map(event_text)
        .collect();
    texts.push(v.output.stdout.clone());
    texts.push(v.output.stderr.clone());
    rt.shutdown(std::time::Duration::from_secs(5)).await;
    texts
}

fn check(texts: &[String]) {
    let (whole, first) = lines();
    assert!(whole.len() >= 12, "{}", whole.len());
    for line in &whole {
        for t in texts {
            assert!(!t.contains(line.as_str()), "{t:?} shows {line:?}");
        }
    }
    // Unwrapped: only the prefix's characters and 1-2 at each end show.
    for (data, at) in data() {
        for b64 in [STANDARD.encode(&data), URL_SAFE.encode(&data)] {
            let inside = &b64[(at * 8).div_ceil(6) + 2..(at + TOKEN.len()) * 8 / 6 - 2];
            for t in texts {
                assert!(!t.contains(inside), "{t:?} shows the one-line form");
            }
        }
    }
    // Not guessed at: the first line of each block shows the prefix (a
    // 64-column piece of the secret inside it may be redacted).
    for (line, at) in &first {
        let shown = &line[..at * 4 / 3];
        assert!(texts.iter().any(|t| t.contains(shown)), "{line}");
    }
    assert!(texts.iter().any(|t| t.contains("[REDACTED]")));
}

#[tokio::test]
async fn prefixed_base64_of_a_secret_is_masked_in_streamed_events_in_spawn_mode() {
    let texts = run("spawned", "", JobOptions::default()).await;
    check(&texts);
}

#[tokio::test]
async fn prefixed_base64_of_a_secret_is_masked_in_streamed_events_in_pool_mode() {
    let texts = run(
        "pooled",
        "mode = \"pool\"\npool = { min = 1, max = 1 }\n",
        JobOptions::default(),
    )
    .await;
    check(&texts);
}

/// A request secret that contains a workflow secret, and one that a
/// workflow secret contains: each redacted whole in the attempt whose
/// masker adds them to the workflow's shared one (never cut around the
/// inner one's `[REDACTED]`).
#[tokio::test]
async fn request_secrets_overlapping_workflow_secrets_are_redacted_whole() {
    let opts = JobOptions {
        env: Some(
            [
                ("REQUEST_SECRET_TOKEN".to_owned(), REQUEST.to_owned()),
                ("REQUEST_INNER_TOKEN".to_owned(), REQUEST_INNER.to_owned()),
            ]
            .into(),
        ),
        ..JobOptions::default()
    };
    let texts = run("requested", "", opts).await;
    check(&texts);
    // Events and the captures' lines.
    let env_lines: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| l.contains("env: "))
        .collect();
    assert!(env_lines.len() >= 4 * 3, "{env_lines:?}");
    for t in &env_lines {
        assert!(t.ends_with("= [REDACTED] (end)"), "{t:?}");
    }
    for t in &texts {
        for shown in [REQUEST, REQUEST_INNER, OUTER, INNER, "-inside", "-too"] {
            assert!(!t.contains(shown), "{t:?} shows {shown:?}");
        }
    }
}
