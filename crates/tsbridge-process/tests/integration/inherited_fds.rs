//! A job gets no fd it was not given (SPEC: jobs get only what they are
//! given): an fd tsbridge holds without FD_CLOEXEC (inherited from whoever
//! started it, a shell's `3>file`, or one a library opened without
//! O_CLOEXEC) does not reach the job; stdio and the IPC channel do. The job
//! lists its own /proc/self/fd.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use crate::common;

use tsbridge_process::{JobSpec, run};

/// Opens `path` read-only WITHOUT O_CLOEXEC, and a copy of it at 100 or
/// above (so that the IPC channel's fd 3 cannot hide the leak by replacing
/// it). Both stay open for the rest of the test process.
fn leaky_fds(path: &std::path::Path) -> [i32; 2] {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: open of a NUL-terminated path; the fd is never closed (it
    // lives as long as this test process, as an inherited one would).
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: F_DUPFD (no close-on-exec) of the fd just opened.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD, 100) };
    assert!(high >= 100, "{}", std::io::Error::last_os_error());
    for f in [fd, high] {
        // SAFETY: F_GETFD on an open fd.
        assert_eq!(unsafe { libc::fcntl(f, libc::F_GETFD) }, 0, "fd {f} leaks");
    }
    [fd, high]
}

/// `ls -l /proc/self/fd` as fd number -> link target.
fn fd_table(ls: &str) -> BTreeMap<i32, String> {
    ls.lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            let n = left.rsplit(' ').next()?.parse().ok()?;
            Some((n, target.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_stdio_and_its_ipc_fd_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tsbridge-leaky-fd");
    std::fs::write(&path, b"").unwrap();
    let leaky = leaky_fds(&path);
    let spec = JobSpec::builder("/bin/ls")
        .arg("-l")
        .arg("/proc/self/fd")
        .cwd(common::repo_root().join("fixtures"))
        .envs(common::base_env())
        .ipc(true)
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    let out = String::from_utf8_lossy(&o.stdout.head).into_owned();
    assert!(o.exit.success(), "{out}");
    let fds = fd_table(&out);
    assert!(
        !out.contains("tsbridge-leaky-fd"),
        "leaked {leaky:?}:\n{out}"
    );
    assert_eq!(fds.get(&0).map(String::as_str), Some("/dev/null"), "{out}");
    for n in [1, 2] {
        assert!(fds[&n].starts_with("pipe:"), "{n}: {out}");
    }
    assert!(fds[&3].starts_with("socket:"), "the IPC channel: {out}");
    // Beside those, only ls's own handle on the directory it lists.
    let others: Vec<_> = fds.iter().filter(|(n, _)| **n > 3).collect();
    assert!(
        others.iter().all(|(_, t)| t.starts_with("/proc/")),
        "{others:?}"
    );
    assert!(others.len() <= 1, "{others:?}");
}
