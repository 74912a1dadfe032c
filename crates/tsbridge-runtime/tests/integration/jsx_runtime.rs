//! Regression: a `.jsx` script had no runtime of its own (it was exec'd and
//! failed to start), while `.tsx` went through tsx. A workflow whose script
//! is `.jsx` and names no runtime now runs through tsx in spawn mode and in
//! pool mode, with real JSX in the fixtures.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::config::RuntimeKind;

fn jsx_workflows() -> String {
    let root = fixtures().display().to_string();
    format!(
        "[workflows.spawned]\nroot = \"{root}\"\nscript = \"jsx-job.jsx\"\n\n\
         [workflows.pooled]\nroot = \"{root}\"\nscript = \"jsx-handler.jsx\"\nmode = \"pool\"\n\
         pool = {{ min = 1, max = 1 }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsx_script_runs_through_tsx_in_spawn_and_pool_mode() {
    let h = start(&jsx_workflows()).await;
    for wf in ["spawned", "pooled"] {
        let runtime = h.config.workflows[wf].runtime;
        assert_eq!(runtime, RuntimeKind::Tsx, "{wf}: chosen by the extension");
        assert_eq!(h.rt.availability(wf), Some(Ok(())), "{wf}");
    }

    let id = h.submit("spawned", json!({})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let r = v.result.expect("result");
    assert_eq!(
        (&r["tag"], &r["mode"]),
        (&json!("job"), &json!("spawn")),
        "{r}"
    );
    assert!(r["pid"].as_u64().is_some_and(|p| p > 0), "{r}");

    let id = h.submit("pooled", json!({"n": 7})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let r = v.result.expect("result");
    assert_eq!(
        (&r["tag"], &r["mode"], &r["n"]),
        (&json!("job"), &json!("pool"), &json!(7)),
        "{r}"
    );
}
