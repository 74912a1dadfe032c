//! An unmodified process.send / process.on('message') program round-trips
//! over the engine's IPC channel under node, node --import tsx and ts-node
//! (the channel the pool's workers use).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::ffi::OsString;
use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_process::JobSpec;
use tsbridge_proto::{ChildEvent, LogLevel};

async fn round_trip(program: OsString, args: Vec<OsString>, runner: &str) {
    let spec = JobSpec::builder(program)
        .args(args)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "TS_NODE_PROJECT",
            fixtures().join("tsconfig.json").display().to_string(),
        )
        .cwd(fixtures())
        .ipc(true)
        .timeout(Some(Duration::from_secs(120)))
        .build()
        .unwrap();
    let mut p = tsbridge_process::spawn(spec).await.unwrap();
    let mut events = p.take_events().unwrap();
    let ipc = p.ipc().expect("an ipc channel");
    for i in 0..20 {
        let answer = ipc
            .request(
                json!({"op": "echo", "i": i, "text": "é ✓ \n line"}),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(answer["echo"]["i"], i);
        assert_eq!(answer["echo"]["text"], "é ✓ \n line");
        assert_eq!(answer["runner"], runner);
        assert_eq!(
            answer["pid"],
            p.pid(),
            "one process: the program itself owns the channel"
        );
    }
    let bye = ipc
        .request(json!({"op": "bye"}), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(bye, json!({"bye": true}));
    let outcome = p.wait().await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(
        outcome.result,
        Some(json!({"done": true, "runner": runner}))
    );
    let mut seen = Vec::new();
    while let Some(e) = events.recv().await {
        seen.push(e);
    }
    assert!(
        seen.iter().any(|e| matches!(e, ChildEvent::Log { level: LogLevel::Info, message, .. } if message == &format!("hello from {runner}"))),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, ChildEvent::Progress(_)))
            .count(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_node() {
    round_trip(
        "node".into(),
        vec![fixtures().join("ipc-echo.js").into()],
        "js",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_import_tsx() {
    let Some(tsx) = tsx_loader() else { return };
    round_trip(
        "node".into(),
        vec![
            "--import".into(),
            tsx.into(),
            fixtures().join("ipc-echo.ts").into(),
        ],
        "ts",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_node() {
    let Some(_) = ts_node_register() else { return };
    let bin = fixtures().join("node_modules/ts-node/dist/bin.js");
    round_trip(
        "node".into(),
        vec![
            bin.into(),
            "--transpile-only".into(),
            fixtures().join("ipc-echo.ts").into(),
        ],
        "ts",
    )
    .await;
}
