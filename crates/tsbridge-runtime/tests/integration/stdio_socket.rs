//! A workflow's `stdio = "socket"` reaches its jobs: the child's stdout and
//! stderr are sockets (pipes without the key), and the job's result and
//! output come through them as through pipes.

use crate::common;

use std::path::Path;

use serde_json::json;
use tsbridge_proto::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_stdio_setting_reaches_its_jobs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let wf = |name: &str, extra: &str| {
        format!(
            "[workflows.{name}]\nroot = \"{}\"\nscript = \"socket-output.js\"\nruntime = \"node\"\n{extra}\n",
            root.display()
        )
    };
    let h = common::start(&format!(
        "{}{}",
        wf("sock", "stdio = \"socket\""),
        wf("piped", "")
    ))
    .await;
    for (name, kind, read_back) in [
        ("sock", "socket", json!(0)),
        ("piped", "pipe", json!("EBADF")),
    ] {
        let id = h.submit(name, json!({})).await;
        let v = h.wait(id).await;
        assert_eq!(v.state, JobState::Succeeded, "{name}: {v:?}");
        assert_eq!(
            v.result,
            Some(json!({"stdout": kind, "stderr": kind, "readBack": read_back})),
            "{name}"
        );
        assert_eq!(v.output.stderr, "a line on stderr\n", "{name}");
    }
    h.rt.shutdown(std::time::Duration::ZERO).await;
}
