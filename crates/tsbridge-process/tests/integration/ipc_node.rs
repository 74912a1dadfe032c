//! Node's IPC channel against real Node processes (fixtures in
//! tests/fixtures-ipc/): unmodified programs using only `process.send` /
//! `process.on('message')`, under `node`, `node --import tsx`, the `tsx` CLI
//! and `ts-node`. Runners that are not installed are skipped with a printed
//! reason; Node itself is required unless `TSBRIDGE_SKIP_NODE_TESTS` is set.
//!
//! TypeScript runners are looked up in `$TSBRIDGE_TEST_NODE_MODULES`, else in
//! `examples/omega-workflow/node_modules`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::mpsc::Receiver;
use tsbridge_process::ipc::{IpcChannel, IpcError, IpcHandle, IpcIncoming, attach_to_command};
use tsbridge_proto::{ChildEvent, LogLevel, Progress};

/// A guard against a hung test, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures-ipc")
        .join(name)
}

fn node_modules() -> PathBuf {
    std::env::var_os("TSBRIDGE_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/omega-workflow/node_modules")
        })
}

fn have_node() -> bool {
    if std::env::var_os("TSBRIDGE_SKIP_NODE_TESTS").is_some() {
        eprintln!("skipped: TSBRIDGE_SKIP_NODE_TESTS is set");
        return false;
    }
    let ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "node is not installed (set TSBRIDGE_SKIP_NODE_TESTS=1 to skip these tests)"
    );
    ok
}

/// A running child with its channel.
struct Running {
    child: tokio::process::Child,
    handle: IpcHandle,
    incoming: Receiver<IpcIncoming>,
}

fn spawn(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr], cwd: &Path) -> Running {
    let (parent, child_end) = IpcChannel::new().expect("socketpair");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group, so that a child that runs the script in a process
        // of its own (the tsx CLI) can be ended whole.
        .process_group(0)
        .kill_on_drop(true);
    attach_to_command(cmd.as_std_mut(), &child_end);
    let child = cmd.spawn().expect("spawn");
    // The parent must not keep the child's end open, or it never sees EOF.
    drop(child_end);
    let (handle, incoming) = parent.start().expect("start");
    Running {
        child,
        handle,
        incoming,
    }
}

fn spawn_node(script: &str) -> Running {
    let path = fixture(script);
    spawn(
        "node",
        &[path.as_os_str()],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

async fn next(rx: &mut Receiver<IpcIncoming>) -> IpcIncoming {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("child answered before the hang guard")
        .expect("channel still open")
}

async fn next_message(rx: &mut Receiver<IpcIncoming>) -> Value {
    match next(rx).await {
        IpcIncoming::Message(v) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Round trips through an echoing child, then a clean shutdown. When
/// `exits_on_close`, the child must exit by itself (status 0) once the
/// channel is closed; otherwise it is killed.
async fn echo_round_trips(mut r: Running, exits_on_close: bool) {
    let hello = next_message(&mut r.incoming).await;
    assert_eq!(hello["hello"], "ready");

    let small = json!({"n": 1, "text": "ünïcödé ✓ 😀 — \u{2028} \n\t\"quoted\""});
    r.handle.send(&small).await.expect("send");
    assert_eq!(next_message(&mut r.incoming).await, small);

    // Several messages back to back arrive in order.
    for i in 0..20 {
        r.handle.send(&json!({"seq": i})).await.expect("send");
    }
    for i in 0..20 {
        assert_eq!(next_message(&mut r.incoming).await, json!({"seq": i}));
    }

    // A 1 MiB message made of multi-byte characters: it crosses many reads
    // and the read boundaries fall inside characters.
    let big_text: String = "é✓😀x".chars().cycle().take(450_000).collect();
    assert!(big_text.len() > 1024 * 1024);
    let big = json!({"big": big_text});
    r.handle.send(&big).await.expect("send");
    assert_eq!(next_message(&mut r.incoming).await, big);

    // Closing the channel lets the child exit by itself, with status 0.
    r.handle.close().await;
    assert_eq!(next(&mut r.incoming).await, IpcIncoming::Disconnected);
    if !exits_on_close {
        // The whole group: the tsx CLI's inner node process would outlive
        // its killed parent (nextest saw it hold the test's stderr: LEAK).
        let pid = r.child.id().expect("running") as i32;
        // SAFETY: kill(2) of the process group this test started.
        assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
        r.child.wait().await.expect("wait");
        return;
    }
    let status = tokio::time::timeout(HANG_GUARD, r.child.wait())
        .await
        .expect("child exited")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn unmodified_node_program_round_trips() {
    if !have_node() {
        return;
    }
    echo_round_trips(spawn_node("echo.js"), true).await;
}

#[tokio::test]
async fn node_import_tsx_round_trips() {
    if !have_node() {
        return;
    }
    let nm = node_modules();
    if !nm.join("tsx/package.json").exists() {
        eprintln!("skipped: tsx not found in {}", nm.display());
        return;
    }
    // `--import tsx` resolves from the working directory.
    let cwd = nm
        .parent()
        .expect("node_modules has a parent")
        .to_path_buf();
    let script = fixture("echo.ts");
    echo_round_trips(
        spawn(
            "node",
            &["--import".as_ref(), "tsx".as_ref(), script.as_os_str()],
            &cwd,
        ),
        true,
    )
    .await;
}

#[tokio::test]
async fn tsx_cli_round_trips_through_its_relay() {
    if !have_node() {
        return;
    }
    let bin = node_modules().join(".bin/tsx");
    if !bin.exists() {
        eprintln!("skipped: {} not found", bin.display());
        return;
    }
    let script = fixture("echo.ts");
    echo_round_trips(
        spawn(
            &bin,
            &[script.as_os_str()],
            Path::new(env!("CARGO_MANIFEST_DIR")),
        ),
        // The tsx CLI runs the script in a second node process and relays
        // messages; closing our channel does not end that inner process, so
        // the outer one keeps waiting. The engine ends jobs by process
        // group anyway; `node --import tsx` is the recommended runner.
        false,
    )
    .await;
}

#[tokio::test]
async fn ts_node_round_trips() {
    if !have_node() {
        return;
    }
    let bin = node_modules().join(".bin/ts-node");
    if !bin.exists() {
        eprintln!("skipped: {} not found", bin.display());
        return;
    }
    let script = fixture("echo.ts");
    echo_round_trips(
        spawn(
            &bin,
            &[
                "--transpile-only".as_ref(),
                "--skip-project".as_ref(),
                // ts-node's built-in defaults (module NodeNext) are refused by
                // TypeScript 5.9 without a matching moduleResolution.
                "-O".as_ref(),
                r#"{"module":"commonjs","moduleResolution":"node10"}"#.as_ref(),
                script.as_os_str(),
            ],
            Path::new(env!("CARGO_MANIFEST_DIR")),
        ),
        true,
    )
    .await;
}

#[tokio::test]
async fn requests_correlate_out_of_order_and_time_out() {
    if !have_node() {
        return;
    }
    let mut r = spawn_node("responder.js");
    // The responder says it is ready (a log envelope -> an event).
    let ready = next(&mut r.incoming).await;
    assert!(
        matches!(
            &ready,
            IpcIncoming::Event(ChildEvent::Log { level: LogLevel::Info, message, child_timestamp: Some(_) })
                if message == "responder ready"
        ),
        "{ready:?}"
    );

    let timeout = HANG_GUARD;
    // Three held requests, answered last-first when the fourth arrives.
    let mut tasks = Vec::new();
    for (i, fail) in [(0, false), (1, true), (2, false)] {
        let h = r.handle.clone();
        let payload = if fail {
            json!({"hold": true, "fail": format!("no {i}")})
        } else {
            json!({"hold": true, "value": i})
        };
        tasks.push(tokio::spawn(
            async move { h.request(payload, timeout).await },
        ));
    }
    // Wait until the three are in flight before releasing them.
    while r.handle.pending_requests() < 3 {
        tokio::task::yield_now().await;
    }
    let release = r
        .handle
        .request(json!({"release": true, "value": "r"}), timeout)
        .await
        .expect("release answered");
    assert_eq!(release, json!({"echo": "r"}));
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join"));
    }
    assert_eq!(results[0].as_ref().ok(), Some(&json!({"echo": 0})));
    assert!(matches!(&results[1], Err(IpcError::Remote { message, .. }) if message == "no 1"));
    assert_eq!(results[2].as_ref().ok(), Some(&json!({"echo": 2})));

    // A request the child never answers times out; nothing stays pending.
    let err = r
        .handle
        .request(json!({"ignore": true}), Duration::from_millis(100))
        .await
        .expect_err("times out");
    assert!(matches!(err, IpcError::Timeout { .. }), "{err}");
    assert_eq!(r.handle.pending_requests(), 0);
    // The channel still works afterwards.
    let again = r
        .handle
        .request(json!({"value": "again"}), timeout)
        .await
        .expect("answered");
    assert_eq!(again, json!({"echo": "again"}));

    r.handle.close().await;
    let status = tokio::time::timeout(HANG_GUARD, r.child.wait())
        .await
        .expect("child exited")
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn events_internal_malformed_and_disconnect() {
    if !have_node() {
        return;
    }
    let mut r = spawn_node("events.js");
    let mut seen = Vec::new();
    loop {
        let item = next(&mut r.incoming).await;
        let done = item == IpcIncoming::Disconnected;
        seen.push(item);
        if done {
            break;
        }
    }
    // The NODE_ message never shows up.
    let text = format!("{seen:?}");
    assert!(!text.contains("NODE_TSBRIDGE_TEST"), "{text}");
    assert_eq!(seen.len(), 6, "{seen:#?}");
    assert_eq!(
        seen[0],
        IpcIncoming::Event(ChildEvent::Progress(Progress::new(1, 4, "quarter")))
    );
    assert!(
        matches!(&seen[1], IpcIncoming::Malformed { reason } if reason.starts_with("invalid JSON"))
    );
    assert!(matches!(
        &seen[2],
        IpcIncoming::Event(ChildEvent::Log { level: LogLevel::Warn, message, .. }) if message == "careful ünïcode"
    ));
    assert_eq!(
        seen[3],
        IpcIncoming::Event(ChildEvent::Result {
            value: json!({"answer": 42, "text": "fin ✓"})
        })
    );
    assert_eq!(seen[4], IpcIncoming::Message(json!({"plain": "message"})));
    assert_eq!(seen[5], IpcIncoming::Disconnected);
    // After the child disconnected, requests fail at once.
    assert!(matches!(
        r.handle.request(json!(1), HANG_GUARD).await,
        Err(IpcError::Closed)
    ));
    let status = tokio::time::timeout(HANG_GUARD, r.child.wait())
        .await
        .expect("child exited")
        .expect("wait");
    assert!(status.success());
}
