//! What the modules of this test binary share: the repository's fixtures,
//! the `tsbridge` command as a user would run it, and a `tsbridge serve`
//! that is killed when the test ends, failed or not.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long anything a test waits for may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The repository's `fixtures/` folder, canonical.
pub fn fixtures() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")).unwrap()
}

/// A file of [`fixtures`], as an argument.
pub fn fixture(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_owned()
}

/// `tsbridge ARGS` in `cwd`, with none of the variables that would change its
/// defaults inherited from whoever runs the tests.
pub fn tsbridge(cwd: &Path, args: &[&str]) -> Command {
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

/// A loopback port nobody listens on (the OS's pick, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/tsbridge.toml`: a server on `port` (plus `server_lines` in
/// its `[server]` table), a SQLite store in `dir`, and the `protocol.js`
/// fixture as the workflow `protocol`.
pub fn write_protocol_config(dir: &Path, port: u16, server_lines: &[&str]) {
    let extra: String = server_lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        dir.join("tsbridge.toml"),
        format!(
            r#"[server]
bind = "127.0.0.1:{port}"
{extra}
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
}

/// A running `tsbridge serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `serve` (its stderr is the test's) and returns once it listens
    /// on `port`.
    pub fn spawn(mut serve: Command, port: u16) -> Server {
        let child = serve
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

/// Whether `pid` is a process that can still run: a zombie (or a dying
/// task) has exited, only its parent's reaping is missing.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..].split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
