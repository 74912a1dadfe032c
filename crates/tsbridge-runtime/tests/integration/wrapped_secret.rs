//! Hostile test of masking: a job prints its secret with line breaks inside
//! it (split at every position by `\n` and `\r\n`, base64-wrapped at 64 and
//! 76 columns). No stored event, no captured output shows a piece of it
//! of `MIN_WRAP_PIECE` bytes (at most 3 bytes can show at a break).

use crate::common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::json;
use tsbridge_process::mask::MIN_WRAP_PIECE;
use tsbridge_proto::JobState;

const SECRET: &str = "tsb-7Qm2Wx9Rk4Tz6Yp1Lc8Vb3Nd5Hf0Jg";

fn pieces(form: &str) -> Vec<String> {
    form.as_bytes()
        .windows(MIN_WRAP_PIECE)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

#[tokio::test]
async fn a_secret_printed_wrapped_across_lines_is_masked_in_events_and_output() {
    let toml = format!(
        "[workflows.wrap]\nroot = \"{}\"\nscript = \"wrap-secret.js\"\nruntime = \"node\"\n\
         env = {{ set = {{ WRAP_SECRET_TOKEN = \"{SECRET}\" }} }}\n",
        fixtures().display()
    );
    let h = start(&toml).await;
    let id = h.submit("wrap", json!({})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let events = h.rt.events_after(id, 0).await.unwrap();
    assert!(events.len() > 60, "one event per line: {}", events.len());
    let mut texts: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    texts.push(v.output.stdout.clone());
    texts.push(v.output.stderr.clone());
    // The secret, and its base64 (the part its bytes alone determine: the
    // encoding of 4 copies starts aligned with it every 3rd copy).
    let b64 = STANDARD.encode(SECRET);
    let b64 = &b64[..SECRET.len() * 8 / 6];
    for form in [SECRET, b64] {
        for p in pieces(form) {
            for t in &texts {
                assert!(!t.contains(&p), "{t:?} shows {p:?} of {form:?}");
            }
        }
    }
    // The lines are still there, one event each.
    assert!(v.output.stdout.contains("-----END TOKEN-----"));
}
