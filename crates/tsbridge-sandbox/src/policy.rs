//! What one job may use: [`SandboxPolicy`], its file-system part [`FsPolicy`]
//! (with the runtime helper [`FsPolicy::for_node`]) and [`Rlimits`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::user::JobUser;

/// The sandbox of one job. `Default` limits nothing except core dumps (off),
/// allows the network, sets no_new_privs and installs the seccomp deny-list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxPolicy {
    /// Memory limit in bytes (RAM + swap: swap is disabled for the job).
    pub memory: Option<u64>,
    /// CPU quota in cores, e.g. `0.5` = 50 ms every 100 ms.
    pub cpu: Option<f64>,
    /// Maximum number of tasks (processes *and threads*) in the job.
    pub pids: Option<u64>,
    /// `false` = the job gets a network namespace of its own with only `lo`
    /// (up), and (with `seccomp`) cannot make unix sockets: `socket(AF_UNIX)`
    /// fails with EACCES, so socket files on the host are out of reach too
    /// (unless `unix_sockets` says otherwise).
    pub network: bool,
    /// Whether the job may make unix sockets (`socket(AF_UNIX)`, refused
    /// with EACCES by seccomp otherwise; `socketpair` and inherited sockets
    /// always work). `None` follows `network`. `Some(false)` with the
    /// network: TCP and UDP only, so the socket files of the host (a
    /// container runtime's, a database's, the system bus) are out of reach
    /// even where file permissions would let the job's uid in (Landlock has
    /// no right for `connect()` to them). `Some(true)` without the network:
    /// a local service's socket file stays reachable. Needs `seccomp`.
    pub unix_sockets: Option<bool>,
    /// `None` = no Landlock file-system restriction.
    pub fs: Option<FsPolicy>,
    /// Per-process resource limits.
    pub rlimits: Rlimits,
    /// Set `PR_SET_NO_NEW_PRIVS` (setuid binaries no longer gain privileges)
    /// and empty the bounding and inheritable capability sets, so that the
    /// job's exec grants no capability even to root (where tsbridge holds
    /// CAP_SETPCAP); with it, a job without `fs` still gets a Landlock
    /// domain: `/proc`, `/sys` and cgroupfs read-only and block devices
    /// closed (ABI 2+), signals and abstract unix sockets scoped (ABI 6+).
    pub no_new_privs: bool,
    /// Install the seccomp deny-list (see `docs/design/sandbox.md`).
    pub seccomp: bool,
    /// Signal sent to the direct child when the thread that forked it dies
    /// (`PR_SET_PDEATHSIG`). Reaches only the direct child; see the design doc.
    pub parent_death_signal: Option<i32>,
    /// Run the job as this uid and gid, with no supplementary groups
    /// (`None`: tsbridge's own). Switched to in the child after the steps
    /// that need privilege; implies `no_new_privs`. Needs CAP_SETUID and
    /// CAP_SETGID ([`crate::user::switch_refusal`]).
    pub user: Option<JobUser>,
    /// `Some(tmpdir)`: `user` is a dynamic uid ([`crate::dynamic`]), handed
    /// to later jobs, and `tmpdir` is the job's private TMPDIR. The job
    /// then gets an IPC namespace of its own (System V IPC and POSIX
    /// message queues die with it) and, without `fs` lists, a second
    /// Landlock layer that lets it create entries beneath `tmpdir` only: it
    /// leaves nothing in the shared world-writable folders
    /// ([`crate::leftovers::SHARED_DIRS`]) for the next job with its uid.
    /// `tmpdir` must exist when the sandbox is prepared.
    pub dynamic_tmpdir: Option<PathBuf>,
    /// Run the job in a PID namespace of its own, under a tiny init of
    /// tsbridge's (PID 1 there: it forwards signals to the job, reaps
    /// orphans, passes on the job's exit status or death signal), with a
    /// `/proc` of its own in a private mount namespace: the job sees its
    /// own processes only, and nothing of it outlives its main process.
    /// Needs CAP_SYS_ADMIN ([`crate::Capabilities::pid_ns`]). See
    /// `docs/design/pid-namespace.md`.
    pub pid_namespace: bool,
}

impl SandboxPolicy {
    /// Whether `socket(AF_UNIX)` is refused (see [`Self::unix_sockets`]).
    pub fn refuses_unix_sockets(&self) -> bool {
        !self.unix_sockets.unwrap_or(self.network)
    }
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            memory: None,
            cpu: None,
            pids: None,
            network: true,
            unix_sockets: None,
            fs: None,
            rlimits: Rlimits::default(),
            no_new_privs: true,
            seccomp: true,
            parent_death_signal: None,
            user: None,
            dynamic_tmpdir: None,
            pid_namespace: false,
        }
    }
}

/// Per-process resource limits (`setrlimit`), soft = hard unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: open file descriptors.
    pub nofile: Option<u64>,
    /// `RLIMIT_FSIZE`: largest file the job may write, in bytes (SIGXFSZ/EFBIG beyond).
    pub fsize: Option<u64>,
    /// `RLIMIT_CORE`: core file size; `Some(0)` (the default) turns core dumps off.
    pub core: Option<u64>,
    /// `RLIMIT_CPU`: CPU seconds per process; SIGXCPU at the limit, SIGKILL 2 s later.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_AS`: virtual address space in bytes. Do not use with node: V8
    /// reserves far more address space than it uses; use `memory` instead.
    pub address_space: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self {
            nofile: None,
            fsize: None,
            core: Some(0),
            cpu_seconds: None,
            address_space: None,
        }
    }
}

/// Landlock path allowlists. Paths that do not exist are skipped when the
/// ruleset is built (that only removes access). Write implies read; exec
/// implies read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FsPolicy {
    /// Read files and list directories beneath these paths.
    pub read: Vec<PathBuf>,
    /// Read, create, write, truncate, rename and remove beneath these paths.
    pub write: Vec<PathBuf>,
    /// Read and execute beneath these paths.
    pub exec: Vec<PathBuf>,
}

/// Read-only files a node process needs or tolerates losing only with a worse
/// behaviour (see `shared/notes/sandbox-facts.md` §1).
const NODE_READ_FILES: &[&str] = &[
    "/etc/ssl/openssl.cnf", // EACCES here is fatal for node at startup
    "/etc/hosts",
    "/etc/nsswitch.conf", // with /etc/hosts: dns.lookup('localhost')
    "/etc/resolv.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime", // time zone
    "/etc/ssl/certs", // NODE_EXTRA_CA_CERTS / --use-openssl-ca
];

impl FsPolicy {
    /// Everything `node script.js` and `node --import tsx script.ts` need:
    /// rx `/usr` (plus `/lib*`, `/bin` when they are real directories, and the
    /// real location of `node_binary` with its sibling `lib` when it lives
    /// outside `/usr`), ro resolver/TLS files, ro `root`, EXECUTE on
    /// `root/node_modules/@esbuild/*/bin/esbuild`, rw `tmpdir`, rw `/dev/null`.
    pub fn for_node(root: &Path, node_binary: &Path, tmpdir: &Path) -> FsPolicy {
        let mut p = FsPolicy::default();
        p.exec.push(PathBuf::from("/usr"));
        for d in ["/bin", "/lib", "/lib64", "/lib32", "/sbin"] {
            let path = Path::new(d);
            // Merged-/usr hosts have symlinks here; the rule on /usr covers them.
            if path
                .symlink_metadata()
                .map(|m| m.file_type().is_dir())
                .unwrap_or(false)
            {
                p.exec.push(path.to_path_buf());
            }
        }
        if let Ok(real) = node_binary.canonicalize()
            && !real.starts_with("/usr")
        {
            // e.g. /opt/node/bin/node or ~/.nvm/versions/node/vX/bin/node
            if let Some(bin_dir) = real.parent() {
                p.exec.push(bin_dir.to_path_buf());
                if let Some(prefix) = bin_dir.parent() {
                    let lib = prefix.join("lib");
                    if lib.is_dir() {
                        p.exec.push(lib);
                    }
                }
            }
        }
        p.read
            .extend(NODE_READ_FILES.iter().map(|f| PathBuf::from(*f)));
        p.read.push(root.to_path_buf());
        let esbuild_dir = root.join("node_modules").join("@esbuild");
        if let Ok(entries) = std::fs::read_dir(&esbuild_dir) {
            let mut bins: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin").join("esbuild"))
                .filter(|b| b.is_file())
                .collect();
            bins.sort();
            p.exec.extend(bins);
        }
        p.write.push(tmpdir.to_path_buf());
        p.write.push(PathBuf::from("/dev/null"));
        p
    }

    /// The default ruleset of a job whose workflow takes path parameters
    /// but lists no `read`/`write` paths, applied where Landlock is
    /// available: what node needs ([`FsPolicy::for_node`]: system dirs and
    /// the runtime read+execute, the workflow root read-only, the private
    /// `tmpdir` read-write) plus read access to each checked, canonical
    /// path-parameter target. Nothing else of the file system: a job given
    /// a legitimate path cannot read (or write) anything beside it that its
    /// uid could. Writes stay where the workflow allows them (`write`
    /// lists take the other path, [`FsPolicy::allow_write`]).
    pub fn for_path_params(
        root: &Path,
        node_binary: &Path,
        tmpdir: &Path,
        targets: &[PathBuf],
    ) -> FsPolicy {
        let mut p = FsPolicy::for_node(root, node_binary, tmpdir);
        p.read.extend(targets.iter().cloned());
        p
    }

    /// Adds read access beneath `path` (builder style).
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Self {
        self.read.push(path.into());
        self
    }

    /// Adds read-write access beneath `path` (builder style).
    pub fn allow_write(mut self, path: impl Into<PathBuf>) -> Self {
        self.write.push(path.into());
        self
    }

    /// Adds read-execute access beneath `path` (builder style).
    pub fn allow_exec(mut self, path: impl Into<PathBuf>) -> Self {
        self.exec.push(path.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_limits_nothing_but_core_dumps() {
        let p = SandboxPolicy::default();
        assert!(p.network);
        assert!(p.no_new_privs);
        assert!(p.seccomp);
        assert_eq!(p.memory, None);
        assert_eq!(p.rlimits.core, Some(0));
        assert!(p.fs.is_none());
    }

    #[test]
    fn for_node_includes_runtime_paths_and_esbuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("app");
        let bin = root.join("node_modules/@esbuild/linux-x64/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::write(bin.join("esbuild"), b"").expect("write");
        let tmp = dir.path().join("tmp");
        let p = FsPolicy::for_node(&root, Path::new("/usr/bin/node"), &tmp);
        assert!(p.exec.contains(&PathBuf::from("/usr")));
        assert!(p.exec.contains(&bin.join("esbuild")));
        assert!(p.read.contains(&root));
        assert!(p.read.contains(&PathBuf::from("/etc/ssl/openssl.cnf")));
        assert!(p.write.contains(&tmp));
        assert!(p.write.contains(&PathBuf::from("/dev/null")));
    }

    #[test]
    fn path_params_ruleset_reads_the_targets_and_writes_only_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("app");
        let tmp = dir.path().join("tmp");
        let target = root.join("data/in.csv");
        let p = FsPolicy::for_path_params(
            &root,
            Path::new("/usr/bin/node"),
            &tmp,
            std::slice::from_ref(&target),
        );
        assert!(p.read.contains(&root));
        assert!(p.read.contains(&target));
        assert_eq!(p.write, vec![tmp, PathBuf::from("/dev/null")]);
        assert!(
            !p.read
                .iter()
                .any(|r| r == Path::new("/") || r == Path::new("/etc"))
        );
    }

    #[test]
    fn policy_deserializes_with_defaults() {
        let p: SandboxPolicy =
            serde_json::from_str(r#"{"memory": 1024, "network": false}"#).expect("json");
        assert_eq!(p.memory, Some(1024));
        assert!(!p.network);
        assert!(p.seccomp);
        assert_eq!(p.rlimits.core, Some(0));
    }
}
