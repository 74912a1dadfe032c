//! `tsbridge jobs` against a real `tsbridge serve` that requires a token
//! (SPEC §6): the token from `--token` or `TSBRIDGE_TOKEN`, the URL from
//! `--server` or `TSBRIDGE_URL`, `list` with its filters and pages
//! (`--cursor`), `show`, and `cancel` of a finished job (the server's 409,
//! exit 1).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::{ServeCgroups, Server, free_port, tsbridge, write_protocol_config};

const TOKEN: &str = "jobs-cli-test-token";

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(c: &mut Command) -> Run {
    let out = c.output().unwrap();
    let r = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    r
}

/// `tsbridge serve` in `dir` with one token, `TSBRIDGE_TOKEN` naming it.
fn token_server(dir: &Path) -> Server {
    let port = free_port();
    write_protocol_config(dir, port, &["tokens = [\"env:TSBRIDGE_TOKEN\"]"]);
    let mut serve = tsbridge(dir, &["serve"]);
    serve.env("TSBRIDGE_TOKEN", TOKEN);
    Server::spawn(serve, port)
}

fn json(r: &Run) -> Value {
    assert_eq!(r.code, Some(0), "{r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[test]
fn jobs_uses_the_token_and_url_from_flags_or_env_and_pages_with_cursor() {
    let dir = tempfile::tempdir().unwrap();
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let server = token_server(dir.path());
    let url = server.url.as_str();

    // No token: the server's 401, one line, exit 1.
    let r = run(&mut tsbridge(
        dir.path(),
        &["jobs", "--server", url, "list"],
    ));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("Unauthorized"), "{r:?}");

    // Three finished jobs, submitted with --token (`logs --follow` ends
    // with the job).
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = run(&mut tsbridge(
            dir.path(),
            &[
                "jobs", "--server", url, "--token", TOKEN, "submit", "protocol",
            ],
        ));
        assert_eq!(r.code, Some(0), "{r:?}");
        let id = r.stdout.split_whitespace().next().unwrap().to_owned();
        let r = run(&mut tsbridge(
            dir.path(),
            &[
                "jobs", "--server", url, "--token", TOKEN, "logs", &id, "--follow",
            ],
        ));
        assert!(r.stdout.contains("state succeeded"), "{r:?}");
        ids.push(id);
    }

    // The URL and the token from the environment.
    let env = |args: &[&str]| {
        let mut c = tsbridge(dir.path(), args);
        c.env("TSBRIDGE_URL", url).env("TSBRIDGE_TOKEN", TOKEN);
        run(&mut c)
    };

    // Newest first, one per page; each page's cursor gets the next one.
    let first = json(&env(&["jobs", "--json", "list", "--limit", "1"]));
    assert_eq!(first["jobs"][0]["jobId"], ids[2].as_str());
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = json(&env(&[
        "jobs", "--json", "list", "--limit", "1", "--cursor", &cursor,
    ]));
    assert_eq!(second["jobs"][0]["jobId"], ids[1].as_str(), "{second}");
    // The table says how to get the next page.
    let r = env(&["jobs", "list", "--limit", "1"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains(&format!("--cursor {cursor}")), "{r:?}");

    // Filters.
    let none = json(&env(&["jobs", "--json", "list", "--state", "failed"]));
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0, "{none}");
    let all = json(&env(&["jobs", "--json", "list", "--workflow", "protocol"]));
    assert_eq!(all["jobs"].as_array().unwrap().len(), 3, "{all}");

    // show, and cancel of a finished job: the server's 409, exit 1.
    let job = json(&env(&["jobs", "--json", "show", &ids[0]]));
    assert_eq!(job["result"]["answer"], 42, "{job}");
    let r = env(&["jobs", "cancel", &ids[0]]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("Conflict"), "{r:?}");
}

/// `jobs submit --wait` of a job that fails exits 1 and says why on stderr
/// (its error type and message), as `run` does: the events it streamed
/// need not show it (a non-zero exit is no event). A request the server
/// refuses shows the error's details too (which parameter broke the schema).
#[test]
fn submit_wait_of_a_failing_job_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let port = free_port();
    write_protocol_config(dir.path(), port, &[]);
    let config = dir.path().join("tsbridge.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[workflows.exits]\nroot = \"{}\"\nscript = \"exit-code.sh\"\nruntime = \"exec\"\nargs = [\"5\"]\nparams_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n",
        crate::common::fixtures().display()
    ));
    std::fs::write(&config, text).unwrap();
    let server = Server::spawn(tsbridge(dir.path(), &["serve"]), port);

    let submit = |more: &[&str]| {
        let mut args = vec!["jobs", "--server", &server.url, "submit", "exits"];
        args.extend_from_slice(more);
        run(&mut tsbridge(dir.path(), &args))
    };
    let r = submit(&["{}", "--wait"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("failed: ExecutionError") && r.stderr.contains("code 5"),
        "{r:?}"
    );

    let r = submit(&[r#"{"n":"x"}"#]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("ValidationError"), "{r:?}");
    assert!(
        r.stderr.contains("details:") && r.stderr.contains("/n"),
        "{r:?}"
    );
}
