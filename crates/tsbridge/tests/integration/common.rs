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

/// Writes `dir/tsbridge.toml`: a server on `port`, the SQLite store
/// `jobs.db` in `dir`, and `workflows` (TOML of `[workflows.*]` tables);
/// returns its path.
pub fn write_serve_config(dir: &Path, port: u16, workflows: &str) -> PathBuf {
    let cfg = dir.join("tsbridge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n\n[store]\nurl = \"sqlite://jobs.db\"\n\n{workflows}"
        ),
    )
    .unwrap();
    cfg
}

/// GETs `url` and reads its JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Awaits `f()` (a fact outside the server, like /proc), polling; fails
/// the test after [`DEADLINE`].
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// The parent cgroups of the `tsbridge serve`s whose store is `jobs.db` in
/// `dir` (however spelt): `tsbridge-<hash of sqlite://CANONICAL-PATH>`
/// under this test's own cgroup in each hierarchy, as `serve` names them.
/// Removed when this is dropped, with the `job-*` cgroups left in them
/// (their processes killed first): a SIGKILLed server leaves its parent by
/// design, a test leaves nothing. Only these names are touched. Declare it
/// before the servers, so that it drops after them.
pub struct ServeCgroups {
    parents: Vec<PathBuf>,
}

impl ServeCgroups {
    pub fn for_config_dir(dir: &Path) -> ServeCgroups {
        let url = format!(
            "sqlite://{}/jobs.db",
            std::fs::canonicalize(dir).unwrap().display()
        );
        // `serve`'s name: FNV-1a of the store's name, 32 bits.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in url.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let name = format!("tsbridge-{:08x}", h as u32);
        ServeCgroups {
            parents: own_cgroup_dirs().iter().map(|d| d.join(&name)).collect(),
        }
    }
}

impl Drop for ServeCgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        for parent in self.parents.iter().filter(|p| p.is_dir()) {
            let jobs = std::fs::read_dir(parent)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
                .map(|e| e.path());
            for job in jobs {
                // Empty it (what a SIGKILLed server's jobs left), then rmdir.
                while std::fs::remove_dir(&job).is_err() && job.exists() {
                    let procs =
                        std::fs::read_to_string(job.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: plain kill(2) of a process of this test's server's job.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            while std::fs::remove_dir(parent).is_err()
                && parent.exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// This process's own cgroup directory in each mounted hierarchy (v1:
/// `/sys/fs/cgroup/<controllers>/<path>`; v2: `/sys/fs/cgroup/<path>` or the
/// hybrid `/sys/fs/cgroup/unified/<path>`), those that exist.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    cgroup_dirs("self")
}

/// The cgroup directories of process `pid` (`self`: this process), as
/// [`own_cgroup_dirs`], those that exist.
pub fn cgroup_dirs(pid: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    for (controllers, path) in proc_cgroups(pid) {
        let rel = path.trim_start_matches('/');
        let candidates = if controllers.is_empty() {
            vec![root.join(rel), root.join("unified").join(rel)]
        } else {
            vec![root.join(controllers).join(rel)]
        };
        out.extend(candidates.into_iter().filter(|d| d.is_dir()));
    }
    out.sort();
    out.dedup();
    out
}

/// `(controllers, path)` of each line of `/proc/<pid>/cgroup` (`self`: this
/// process); none when it cannot be read.
pub fn proc_cgroups(pid: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers.to_owned(), path.to_owned()))
        })
        .collect()
}
