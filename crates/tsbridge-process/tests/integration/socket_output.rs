//! `OutputChannel::Socket`: the child's stdout and stderr are Unix sockets
//! (as under Node's child_process), reading its stdout gives end-of-file
//! instead of a hang, and the engine captures both streams and parses the
//! line protocol exactly as it does from pipes (the default, checked with
//! the same fixture).

use crate::common;

use std::time::Duration;

use tsbridge_process::{OutputChannel, run};

const MIB: u64 = 1 << 20;

async fn streams(output: Option<OutputChannel>) -> (serde_json::Value, u64, String) {
    let mut b = common::node_fixture("socket-output.js").timeout(Some(Duration::from_secs(120)));
    if let Some(o) = output {
        b = b.output(o);
    }
    let o = run(b.build().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr.head).into_owned();
    assert!(o.success(), "{:?}: {stderr}", o.reason);
    (o.result.expect("a RESULT line"), o.stdout.total, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_output_is_captured_like_a_pipe_and_reads_as_end_of_file() {
    let (result, total, stderr) = streams(Some(OutputChannel::Socket)).await;
    assert_eq!(
        result,
        serde_json::json!({"stdout": "socket", "stderr": "socket", "readBack": 0}),
        "a read of the child's stdout socket must see end-of-file, not wait"
    );
    assert!(
        total > MIB,
        "all of the 1 MiB and the protocol lines: {total}"
    );
    assert_eq!(stderr, "a line on stderr\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_stay_the_default() {
    let (result, total, stderr) = streams(None).await;
    assert_eq!(
        result,
        serde_json::json!({"stdout": "pipe", "stderr": "pipe", "readBack": "EBADF"})
    );
    assert!(total > MIB, "{total}");
    assert_eq!(stderr, "a line on stderr\n");
}
