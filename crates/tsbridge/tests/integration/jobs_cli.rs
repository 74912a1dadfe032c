//! `tsbridge jobs` against a real `tsbridge serve` that requires a token
//! (SPEC §6): the token from `--token` or `TSBRIDGE_TOKEN`, the URL from
//! `--server` or `TSBRIDGE_URL`, `list` with its filters and pages
//! (`--cursor`), `show`, and `cancel` of a finished job (the server's 409,
//! exit 1).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);
const TOKEN: &str = "jobs-cli-test-token";

fn fixtures() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")).unwrap()
}

/// `tsbridge ARGS` in `cwd`, without the caller's TSBRIDGE_* variables.
fn tsbridge(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tsbridge"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("TSBRIDGE_CONFIG")
        .env_remove("TSBRIDGE_URL")
        .env_remove("TSBRIDGE_TOKEN")
        .env_remove("TSBRIDGE_LOG")
        .stdin(Stdio::null());
    c
}

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

struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// `tsbridge serve` with one token, `TSBRIDGE_TOKEN` naming it.
    fn start(dir: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.join("tsbridge.toml"),
            format!(
                r#"[server]
bind = "127.0.0.1:{port}"
tokens = ["env:TSBRIDGE_TOKEN"]

[store]
url = "sqlite://jobs.db"

[workflows.protocol]
root = "{root}"
script = "protocol.js"
runtime = "node"
"#,
                root = fixtures().display()
            ),
        )
        .unwrap();
        let child = tsbridge(dir, &["serve"])
            .env("TSBRIDGE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "the server never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(r: &Run) -> Value {
    assert_eq!(r.code, Some(0), "{r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[test]
fn jobs_uses_the_token_and_url_from_flags_or_env_and_pages_with_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
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
