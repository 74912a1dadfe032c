//! `tsbridge check` on a config whose `server.tokens` names an environment
//! variable (`env:NAME`): the config is valid either way (exit 0), but when
//! the variable is unset or empty here, check says that `serve` would refuse
//! to start, in the text and in the JSON report.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

fn check(dir: &Path, var: Option<&str>, json: bool) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tsbridge"));
    c.arg("check")
        .current_dir(dir)
        .env_remove("TSBRIDGE_CONFIG")
        .env_remove("TSBRIDGE_LOG")
        .env_remove("CHECK_TOKENS_TEST_TOKEN")
        .stdin(Stdio::null());
    if json {
        c.arg("--json");
    }
    if let Some(v) = var {
        c.env("CHECK_TOKENS_TEST_TOKEN", v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout)
}

#[test]
fn check_notes_an_env_token_that_is_not_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        "[server]\ntokens = [\"env:CHECK_TOKENS_TEST_TOKEN\", \"literal-token\"]\n",
    )
    .unwrap();
    let note = "env:CHECK_TOKENS_TEST_TOKEN is not set";

    for var in [None, Some("")] {
        let (code, stdout) = check(dir.path(), var, false);
        assert_eq!(code, Some(0), "still valid: {stdout}");
        assert!(stdout.contains("valid"), "{stdout}");
        assert!(stdout.contains(note), "{var:?}: {stdout}");
    }
    let (code, stdout) = check(dir.path(), None, true);
    assert_eq!(code, Some(0), "{stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["config"]["valid"], true, "{v}");
    let notes = v["config"]["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{v}");
    assert!(notes[0].as_str().unwrap().contains(note), "{v}");

    // Set: nothing to say.
    let (code, stdout) = check(dir.path(), Some("s3cret-value"), false);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("note:"), "{stdout}");
    let (_, stdout) = check(dir.path(), Some("s3cret-value"), true);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["config"]["notes"].as_array().unwrap().len(), 0, "{v}");
}
