//! Hostile test of masking: a job prints its secret with line breaks inside
//! it (split at every position by `\n` and `\r\n`, base64-wrapped at 64 and
//! 76 columns). The captured output shows no 4-byte piece of it. (Streamed
//! events are masked per line and do not guess at pieces: see mask.rs.)

use crate::common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::json;
use tsbridge_proto::JobState;

const SECRET: &str = "tsb-7Qm2Wx9Rk4Tz6Yp1Lc8Vb3Nd5Hf0Jg";

fn pieces(form: &str) -> Vec<String> {
    form.as_bytes()
        .windows(4)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

#[tokio::test]
async fn a_secret_printed_wrapped_across_lines_is_masked_in_the_captured_output() {
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
    let texts = [v.output.stdout.clone(), v.output.stderr.clone()];
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
