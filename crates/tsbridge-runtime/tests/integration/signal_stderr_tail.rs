//! Regression: a job killed by a signal carries the end of its stderr in
//! its error details (`stderrTail`), masked like all captured output. A
//! pooled job whose worker died by SIGSEGV had none (its stderr lines were
//! only events); a spawned one has it too.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, JobState};

const SECRET: &str = "crash-secret-0123456789abcdef";

fn workflows() -> String {
    let root = fixtures().display().to_string();
    let env = format!("env = {{ set = {{ CRASH_SECRET_TOKEN = \"{SECRET}\" }} }}");
    format!(
        "[workflows.spawned]\nroot = \"{root}\"\nscript = \"segv-after-stderr.js\"\nruntime = \"node\"\n{env}\n\n\
         [workflows.pooled]\nroot = \"{root}\"\nscript = \"segv-handler.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n{env}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_by_signal_carries_the_masked_stderr_tail() {
    let h = start(&workflows()).await;
    for (wf, line) in [
        ("spawned", "about to crash, token"),
        ("pooled", "pooled crash, token"),
    ] {
        let id = h.submit(wf, json!({})).await;
        let v = h.wait(id).await;
        assert_eq!(v.state, JobState::Failed, "{wf}: {v:?}");
        assert_eq!(v.reason, Some(EndReason::Signaled), "{wf}: {v:?}");
        assert_eq!(v.signal, Some(libc::SIGSEGV), "{wf}: {v:?}");
        let error = v.error.as_ref().expect("an error");
        let tail = error
            .details
            .as_ref()
            .and_then(|d| d["stderrTail"].as_str())
            .unwrap_or_else(|| panic!("{wf}: no stderrTail in {error:?}"));
        assert!(tail.contains(line), "{wf}: {tail:?}");
        assert!(!tail.contains(SECRET), "{wf}: masked: {tail:?}");
    }
}
