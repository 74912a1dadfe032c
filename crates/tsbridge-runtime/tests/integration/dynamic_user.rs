//! A uid per job (`user = "dynamic"`, issue #5), through the whole runtime
//! on a root tsbridge: two concurrent jobs of one workflow get different
//! uids of `defaults.dynamic_uids` and cannot read or write each other's
//! TMPDIR nor signal each other; a pool worker gets one of its own; a uid
//! is not handed out again while the tree of its last job lives (a
//! grandchild that ignores SIGTERM), nor while any process has it; a job
//! that finds the range taken waits, and fails with the typed error when
//! its timeout passes first, and is woken when a lease goes back;
//! `user = "self"` runs as tsbridge even under
//! `defaults.user`. Each test has a range of its own (nextest runs each
//! test in its own process, each with its own lease table).

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::JobState;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::units::DurationSpec;
use tsbridge_runtime::spawn::SpawnExecutor;
use tsbridge_runtime::{Executor, RuntimeOptions};

fn options(s: &UserSetup) -> RuntimeOptions {
    RuntimeOptions {
        sandbox: Some(s.sandbox.clone()),
        tmp_base: Some(s.base.clone()),
        ..RuntimeOptions::default()
    }
}

fn result(v: &tsbridge_proto::api::JobView) -> &Value {
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    v.result.as_ref().expect("a result")
}

/// The pids of the processes whose real uid is `uid`.
fn pids_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
                    == Some(uid)
            })
        })
        .collect()
}

fn probe_workflow(name: &str, extra: &str) -> String {
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"user-probe.js\"\nruntime = \"node\"\n{extra}\n",
        fixtures().display()
    )
}

/// Two jobs at a time, a range of the one uid `uid`, and the probe as
/// the dynamic workflow `dyn` (with the lines `extra`).
fn one_uid_config(uid: u32, extra: &str) -> String {
    format!(
        "[defaults]\nconcurrency = 2\ndynamic_uids = \"{uid}-{uid}\"\n\n{}",
        probe_workflow("dyn", &format!("user = \"dynamic\"\n{extra}")),
    )
}

/// The runtime of a test with the user set-up `tag` (None: not root) and
/// [`one_uid_config`]`(uid, extra)`. The set-up goes with the harness: its
/// folders and cgroup outlive the runtime.
async fn start_with_one_uid(tag: &str, uid: u32, extra: &str) -> Option<(UserSetup, Harness)> {
    let s = user_setup(tag)?;
    let h = start_with(&one_uid_config(uid, extra), options(&s)).await;
    Some((s, h))
}

fn assert_unprivileged(r: &Value, uid: u64) {
    assert_eq!(r["uid"], uid, "{r}");
    assert_eq!(r["euid"], uid, "{r}");
    assert_eq!(r["gid"], uid, "gid = the uid's number: {r}");
    assert_eq!(r["groups"], json!([]), "no supplementary group: {r}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(r["caps"][set], "0000000000000000", "{set}: {r}");
    }
}

#[tokio::test]
async fn concurrent_dynamic_jobs_get_uids_of_their_own_and_cannot_reach_each_other() {
    let Some(s) = user_setup("dyn") else { return };
    const FIRST: u32 = 3_910_000_000;
    const LAST: u32 = 3_910_000_009;
    let toml = format!(
        "[defaults]\nconcurrency = 4\nuser = \"dynamic\"\ndynamic_uids = \"{FIRST}-{LAST}\"\n\n{}{}\
         [workflows.pooled]\nroot = \"{f}\"\nscript = \"user-handler.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
        probe_workflow("dyn", ""),
        probe_workflow("own", "user = \"self\""),
        f = fixtures().display(),
    );
    let h = start_with(&toml, options(&s)).await;
    let in_range = |v: &Value| {
        v.as_u64()
            .is_some_and(|u| (u64::from(FIRST)..=u64::from(LAST)).contains(&u))
    };

    // Job A holds its TMPDIR (with a file in it) open to attack.
    let a = h.submit("dyn", json!({"hold": 120_000, "tmp": true})).await;
    h.until_state(a, JobState::Running).await;
    let a_tmp = until("A's TMPDIR", || {
        std::fs::read_dir(&s.base).unwrap().flatten().find_map(|e| {
            let m = e.metadata().ok()?;
            (m.is_dir() && (FIRST..=LAST).contains(&m.uid()) && e.path().join("held").exists())
                .then(|| e.path())
        })
    })
    .await;
    let m = std::fs::metadata(&a_tmp).unwrap();
    let a_uid = m.uid();
    assert_eq!((m.gid(), m.mode() & 0o777), (a_uid, 0o700), "{a_tmp:?}");
    let a_pid = until("A's process", || pids_of(a_uid).first().copied()).await;

    // Job B, of the same workflow, goes after it.
    let held = a_tmp.join("held").display().to_string();
    let b = h
        .wait(
            h.submit(
                "dyn",
                json!({"read": [held], "write": [a_tmp], "tmp": true, "signal": a_pid}),
            )
            .await,
        )
        .await;
    let r = result(&b);
    assert!(in_range(&r["uid"]), "{r}");
    assert_ne!(r["uid"], a_uid, "both jobs got uid {a_uid}: {r}");
    assert_unprivileged(r, r["uid"].as_u64().unwrap());
    assert_eq!(r["read"][&held], "EACCES", "read A's file: {r}");
    assert_eq!(
        r["write"][a_tmp.display().to_string()],
        "EACCES",
        "write in A's TMPDIR: {r}"
    );
    assert_eq!(r["signal"], "EPERM", "signal A: {r}");
    assert_eq!(r["write"][r["tmpdir"].as_str().unwrap()], "ok", "{r}");

    // A pool worker leases a uid of its own for its lifetime.
    let v = h.wait(h.submit("pooled", json!({"tmp": true})).await).await;
    let p = result(&v);
    assert!(in_range(&p["uid"]), "{p}");
    assert_ne!(p["uid"], a_uid, "{p}");
    assert_unprivileged(p, p["uid"].as_u64().unwrap());
    assert_eq!(p["write"][p["tmpdir"].as_str().unwrap()], "ok", "{p}");

    // "self" runs as tsbridge, whatever defaults.user says.
    let v = h.wait(h.submit("own", json!({})).await).await;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(result(&v)["uid"], unsafe { libc::geteuid() }, "{v:?}");

    h.rt.cancel(a).await.expect("cancel");
    h.wait(a).await;
    h.rt.shutdown(Duration::ZERO).await;
}

/// A range of one uid: job 1 leaves a grandchild that ignores SIGTERM;
/// job 2 waits for the uid, and gets it only once that grandchild was
/// killed (with the rest of job 1's tree, at its cancel): it finds no other
/// process with its uid.
#[tokio::test]
async fn a_dynamic_uid_is_not_handed_out_while_its_last_tree_lives() {
    const UID: u32 = 3_910_000_100;
    let Some((_s, h)) = start_with_one_uid("dyt", UID, "kill_grace = \"1s\"").await else {
        return;
    };
    let first = h
        .submit("dyn", json!({"daemon": true, "linger": 600_000}))
        .await;
    // Its leader and the daemon.
    until("job 1 and its daemon", || {
        (pids_of(UID).len() >= 2).then_some(())
    })
    .await;
    let second = h.submit("dyn", json!({"peers": true})).await;
    h.rt.cancel(first).await.expect("cancel");
    let v = h.wait(second).await;
    let r = result(&v);
    assert_eq!(r["uid"], UID, "{r}");
    assert_eq!(r["peers"], json!([]), "job 1's tree still ran: {r}");
    h.wait(first).await;
    h.rt.shutdown(Duration::ZERO).await;
}

/// A range of one uid: job 1 holds it for 5 s, job 2 waits for it and is
/// woken when job 1's lease goes back. With the fallback retry made an hour
/// long, job 2 reads the process table twice: once to find the range
/// taken, once after the release. It used to try every 100 ms (49 reads
/// here). Counts this process's reads: nextest runs each test alone.
#[tokio::test]
async fn a_job_waiting_for_a_dynamic_uid_is_woken_by_its_release() {
    let Some(s) = user_setup("dyw") else { return };
    const UID: u32 = 3_910_000_400;
    let toml = one_uid_config(UID, "");
    let spawn = SpawnExecutor::new(Some(s.sandbox.clone()), Some(s.base.clone()))
        .with_lease_fallback(Duration::from_secs(3600));
    let opts = RuntimeOptions {
        executors: [("dyn".to_owned(), Arc::new(spawn) as Arc<dyn Executor>)].into(),
        ..options(&s)
    };
    let h = start_with(&toml, opts).await;
    let first = h.submit("dyn", json!({"hold": 5_000})).await;
    // Its process: it holds the uid (`running` is stored before the lease).
    until("job 1's process", || {
        (!pids_of(UID).is_empty()).then_some(())
    })
    .await;
    let before = tsbridge_sandbox::dynamic::process_scans();
    let v = h.wait(h.submit("dyn", json!({"peers": true})).await).await;
    let scans = tsbridge_sandbox::dynamic::process_scans() - before;
    let r = result(&v);
    assert_eq!(r["uid"], UID, "{r}");
    assert_eq!(r["peers"], json!([]), "job 1's tree still ran: {r}");
    assert_eq!(h.wait(first).await.state, JobState::Succeeded);
    assert_eq!(
        scans, 2,
        "job 2 should read the process table once to find the uid taken and once at its release \
         (1: job 1 ended before job 2 tried; more: job 2 polled)"
    );
    h.rt.shutdown(Duration::ZERO).await;
}

/// A child killed and reaped when dropped (a failed test leaves none).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Submits a job of workflow `dyn` with a 1 s timeout and returns the
/// message of its failure, which says that every uid of the range is taken.
async fn fails_for_want_of_a_uid(h: &Harness) -> String {
    let opts = JobOptions {
        timeout: Some(DurationSpec::from_millis(1_000)),
        ..JobOptions::default()
    };
    let v = h.wait(h.submit_opts("dyn", json!({}), opts).await).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    let msg = v
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("every uid of the dynamic range"), "{v:?}");
    msg
}

/// A process group killed and its leader reaped when dropped.
struct KilledGroup(std::process::Child);

impl Drop for KilledGroup {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.0.id()) else {
            return;
        };
        // SAFETY: killpg has no memory preconditions.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A range of one uid that a process of the host has: a job waits for it,
/// and fails with the typed error once its timeout passed; once that
/// process is gone, the next job gets the uid.
#[tokio::test]
async fn a_taken_range_makes_the_job_wait_then_fail_and_a_live_process_keeps_its_uid() {
    const UID: u32 = 3_910_000_200;
    let Some((_s, h)) = start_with_one_uid("dyx", UID, "").await else {
        return;
    };
    let holder = {
        use std::os::unix::process::CommandExt;
        Killed(
            std::process::Command::new("sleep")
                .arg("600")
                .uid(UID)
                .gid(UID)
                .spawn()
                .expect("sleep as the range's uid"),
        )
    };
    let msg = fails_for_want_of_a_uid(&h).await;
    assert!(msg.contains("1 by processes still alive"), "{msg}");
    drop(holder);
    let v = h.wait(h.submit("dyn", json!({"peers": true})).await).await;
    let r = result(&v);
    assert_eq!(r["uid"], UID, "{r}");
    assert_eq!(r["peers"], json!([]), "{r}");
    h.rt.shutdown(Duration::ZERO).await;
}

/// A range of one uid that another tsbridge of the host holds (its
/// host-wide reservation: an exclusive `flock` of the uid's file in
/// `/run/tsbridge/dynamic-uids`, held here by flock(1), a separate
/// process, as another tsbridge's lease would be): a job waits for it and
/// fails with the typed error at its timeout, although no process has the
/// uid; once the holder is gone, the next job gets it.
#[tokio::test]
async fn a_uid_another_tsbridge_holds_is_not_handed_out() {
    const UID: u32 = 3_910_000_700;
    let Some((_s, h)) = start_with_one_uid("dyh", UID, "").await else {
        return;
    };
    let dir = std::path::Path::new(tsbridge_sandbox::dynamic::DEFAULT_LOCK_DIR);
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .expect("lock folder");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let file = dir.join(UID.to_string());
    // `--close`: the lock is flock(1)'s alone, not its command's (which
    // would keep it after flock(1) is killed); both die with their group.
    let holder = KilledGroup({
        use std::os::unix::process::CommandExt;
        std::process::Command::new("flock")
            .args(["--exclusive", "--close"])
            .arg(&file)
            .args(["sleep", "600"])
            .process_group(0)
            .spawn()
            .expect("flock(1) holding the uid's reservation")
    });
    // flock(1) has the lock once a non-blocking try of ours is refused.
    until("the holder's lock", || {
        let f = std::fs::File::open(&file).ok()?;
        match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                None
            }
            Err(_) => Some(()),
        }
    })
    .await;
    let msg = fails_for_want_of_a_uid(&h).await;
    assert!(msg.contains("another tsbridge"), "{msg}");
    assert!(pids_of(UID).is_empty(), "no process had the uid");
    drop(holder);
    let v = h.wait(h.submit("dyn", json!({})).await).await;
    assert_eq!(result(&v)["uid"], UID, "{v:?}");
    h.rt.shutdown(Duration::ZERO).await;
}

/// The shared world-writable folders a dynamic job tries to leave files in
/// (`leak-probe.py`'s list).
const SHARED_DIRS: [&str; 5] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"];

/// What a leak test may have left on the host (a test that fails, or runs
/// before the fix): its files in [`SHARED_DIRS`] and its System V IPC
/// objects and POSIX message queue in tsbridge's IPC namespace; removed on
/// drop.
struct Planted {
    name: String,
    /// shm, msg, sem.
    keys: [i32; 3],
    /// A shm segment the test gives the uid before its first job.
    old_shm: i32,
}

impl Planted {
    fn new(tag: &str) -> Planted {
        let pid = std::process::id();
        let base = 0x7d00_0000 + i32::try_from((pid & 0xffff) * 8).unwrap();
        Planted {
            name: format!("tsbridge-leak-{tag}-{pid}"),
            keys: [base, base + 1, base + 2],
            old_shm: base + 3,
        }
    }

    /// What an earlier holder of `uid` (an older tsbridge, or one on a
    /// host without Landlock) left: a 0600 file `<name>-old` of the uid in
    /// each shared folder that exists, and a shm segment it owns.
    fn leave_old(&self, uid: u32) {
        use std::os::unix::fs::OpenOptionsExt;
        for d in SHARED_DIRS {
            let p = std::path::Path::new(d).join(format!("{}-old", self.name));
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p);
            if made.is_ok() {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
        // SAFETY: shmget with integer arguments; shmctl with a live,
        // zeroed-then-filled shmid_ds.
        unsafe {
            let id = libc::shmget(self.old_shm, 4096, libc::IPC_CREAT | 0o600);
            assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
            let mut ds: libc::shmid_ds = std::mem::zeroed();
            assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
            ds.shm_perm.uid = uid;
            ds.shm_perm.gid = uid;
            assert_eq!(libc::shmctl(id, libc::IPC_SET, &mut ds), 0);
        }
    }

    /// The `<name>-old` files still there.
    fn old_files(&self) -> Vec<String> {
        SHARED_DIRS
            .iter()
            .map(|d| format!("{d}/{}-old", self.name))
            .filter(|p| std::path::Path::new(p).exists())
            .collect()
    }

    fn params(&self, extra: Value) -> Value {
        let mut p = json!({"name": self.name, "keys": self.keys});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    }

    /// The System V objects of these keys and the POSIX message queue that
    /// exist in this process's (the host's) IPC namespace.
    fn on_host(&self) -> Vec<&'static str> {
        let [shm, msg, sem] = self.keys;
        let mut found = Vec::new();
        let mq = std::ffi::CString::new(format!("/{}", self.name)).unwrap();
        // SAFETY: plain syscalls with integer arguments or a live C string.
        unsafe {
            if libc::shmget(self.old_shm, 0, 0) >= 0 {
                found.push("the old shm");
            }
            let q = libc::mq_open(mq.as_ptr(), libc::O_RDONLY);
            if q >= 0 {
                libc::mq_close(q);
                found.push("mq");
            }
            if libc::shmget(shm, 0, 0) >= 0 {
                found.push("shm");
            }
            if libc::msgget(msg, 0) >= 0 {
                found.push("msg");
            }
            if libc::semget(sem, 0, 0) >= 0 {
                found.push("sem");
            }
        }
        found
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for d in SHARED_DIRS {
            let _ = std::fs::remove_file(std::path::Path::new(d).join(&self.name));
            let _ =
                std::fs::remove_file(std::path::Path::new(d).join(format!("{}-old", self.name)));
        }
        let [shm, msg, sem] = self.keys;
        let mq = std::ffi::CString::new(format!("/{}", self.name)).unwrap();
        // SAFETY: plain syscalls; the pointers are null or to live data.
        unsafe {
            for key in [shm, self.old_shm] {
                let id = libc::shmget(key, 0, 0);
                if id >= 0 {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
            }
            let id = libc::msgget(msg, 0);
            if id >= 0 {
                libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            let id = libc::semget(sem, 0, 0);
            if id >= 0 {
                libc::semctl(id, 0, libc::IPC_RMID);
            }
            libc::mq_unlink(mq.as_ptr());
        }
    }
}

fn leak_workflow(name: &str, extra: &str) -> String {
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"leak-probe.py\"\nruntime = \"exec\"\n\
         user = \"dynamic\"\n{extra}\n",
        fixtures().display()
    )
}

/// The result of a job of `workflow` with `params`, which must succeed.
async fn succeeded(h: &Harness, workflow: &str, params: Value) -> Value {
    result(&h.wait(h.submit(workflow, params).await).await).clone()
}

/// This process's IPC namespace (`ipc:[inode]`).
fn own_ipcns() -> String {
    std::fs::read_link("/proc/self/ns/ipc")
        .unwrap()
        .display()
        .to_string()
}

/// A range of one uid: job 1 tries to leave a 0600 file in each shared
/// world-writable folder, a System V shared-memory segment, message queue
/// and semaphore set, and a POSIX message queue; job 2, given the same
/// uid, tries to open each. It gets none: job 1 could create no file there
/// (Landlock: those folders are read-only to a dynamic job, but for its
/// TMPDIR), and its IPC objects lived in an IPC namespace of its own, gone
/// with it. Both still write their TMPDIR, and only it: job 1 cannot
/// create a file in another folder anyone may write either. What an
/// earlier holder of the uid left before this tsbridge ran (files in those
/// folders, a shm segment) was removed at its first lease.
#[tokio::test]
async fn a_dynamic_jobs_leftovers_do_not_reach_the_next_job_with_its_uid() {
    let Some(s) = user_setup("dyl") else { return };
    const UID: u32 = 3_910_000_500;
    let planted = Planted::new("dyl");
    let toml = format!(
        "[defaults]\ndynamic_uids = \"{UID}-{UID}\"\n\n{}",
        leak_workflow("leak", "")
    );
    planted.leave_old(UID);
    // A folder anyone may write, outside the shared ones.
    let open = s.files.path().join("open");
    std::fs::create_dir(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let open = open.display().to_string();
    let h = start_with(&toml, options(&s)).await;
    let params = planted.params(json!({"plant": true, "write": [open]}));
    let first = succeeded(&h, "leak", params).await;
    let second = succeeded(&h, "leak", planted.params(json!({"steal": true}))).await;
    h.rt.shutdown(Duration::ZERO).await;

    assert_eq!((&first["uid"], &second["uid"]), (&json!(UID), &json!(UID)));
    // Every leak, not only the first.
    let mut leaks = Vec::new();
    for r in [&first, &second] {
        let tmp = r["write"].as_object().unwrap();
        assert!(
            tmp.iter().all(|(d, w)| *d == open || w == "ok"),
            "its TMPDIR: {r}"
        );
        if r["ipcns"] == own_ipcns() {
            leaks.push("a job in tsbridge's IPC namespace".to_owned());
        }
    }
    for d in SHARED_DIRS {
        if first["files"][d] == "ok" {
            leaks.push(format!("job 1 created {d}/{}", planted.name));
        }
        if second["files"][d] == "ok" {
            leaks.push(format!("job 2 read job 1's file in {d}"));
        }
        if second["old"][d] == "ok" {
            leaks.push(format!("job 2 read the earlier holder's file in {d}"));
        }
    }
    if first["write"][&open] == "ok" {
        leaks.push(format!("job 1 created a file in {open}"));
    }
    leaks.extend(planted.old_files().into_iter().map(|f| format!("{f} left")));
    for k in ["shm", "msg", "sem", "mq"] {
        if second["ipc"][k] == "ok" {
            leaks.push(format!("job 2 opened job 1's {k}"));
        }
    }
    leaks.extend(
        planted
            .on_host()
            .into_iter()
            .map(|k| format!("{k} left on the host")),
    );
    assert!(
        leaks.is_empty(),
        "{leaks:#?}\njob 1: {first}\njob 2: {second}"
    );
}

/// A dynamic job with a write folder still writes it and its TMPDIR, and
/// leaves nothing in the shared folders; a dynamic pool worker (its uid
/// leased for its lifetime) is kept out of them too and has an IPC
/// namespace of its own.
#[tokio::test]
async fn dynamic_jobs_and_workers_write_their_own_folders_only() {
    let Some(s) = user_setup("dyw") else { return };
    use std::os::unix::fs::PermissionsExt;
    const FIRST: u32 = 3_910_000_600;
    let planted = Planted::new("dyw");
    let out = s.files.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let toml = format!(
        "[defaults]\ndynamic_uids = \"{FIRST}-{}\"\n\n{}\
         [workflows.pooled]\nroot = \"{f}\"\nscript = \"user-handler.mjs\"\nruntime = \"node\"\n\
         user = \"dynamic\"\nmode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
        FIRST + 3,
        leak_workflow(
            "leak",
            &format!("limits = {{ write = [\"{}\"] }}", out.display())
        ),
        f = fixtures().display(),
    );
    let h = start_with(&toml, options(&s)).await;
    let params = planted.params(json!({"plant": true, "write": [out]}));
    let r = succeeded(&h, "leak", params).await;
    let params = json!({"name": planted.name, "write": SHARED_DIRS, "tmp": true, "ipcns": true});
    let p = succeeded(&h, "pooled", params).await;
    h.rt.shutdown(Duration::ZERO).await;

    assert_eq!(r["write"].as_object().unwrap().len(), 2, "{r}");
    assert!(
        r["write"].as_object().unwrap().values().all(|w| w == "ok"),
        "its write folder and TMPDIR: {r}"
    );
    let mut leaks = Vec::new();
    for d in SHARED_DIRS {
        if r["files"][d] == "ok" {
            leaks.push(format!("the job created a file in {d}"));
        }
        if p["write"][d] == "ok" {
            leaks.push(format!("the worker created a file in {d}"));
        }
    }
    assert_eq!(p["write"][p["tmpdir"].as_str().unwrap()], "ok", "{p}");
    assert!(p["ipcns"].as_str().unwrap().starts_with("ipc:["), "{p}");
    if p["ipcns"] == own_ipcns() {
        leaks.push("the worker is in tsbridge's IPC namespace".to_owned());
    }
    leaks.extend(
        planted
            .on_host()
            .into_iter()
            .map(|k| format!("{k} left on the host")),
    );
    assert!(leaks.is_empty(), "{leaks:#?}\njob: {r}\nworker: {p}");
}
