//! Finding every live process of one job, and signalling them.
//!
//! Sources, in order of trust:
//! 1. the sandbox's cgroup, when the job has one (complete by construction);
//! 2. the job's process group (`killpg`), which holds everything that did not
//!    call `setsid`/`setpgid`;
//! 3. a walk of `/proc/<pid>/task/*/children` from the leader, from every
//!    descendant seen before, and from tsbridge's own children that carry the
//!    job's marker (`TSBRIDGE_JOB=<key>` in their initial environment) or the
//!    job's process group: with `PR_SET_CHILD_SUBREAPER` on tsbridge, an
//!    orphan whose parent died (a `setsid` double-fork daemon) is reparented
//!    to tsbridge, so it is found here;
//! 4. with the subreaper, when the job (or a pool worker's task) is over:
//!    tsbridge's adopted children in another session that carry no marker
//!    (an escapee that called `setsid` and cleared its environment) and that
//!    no other live job can own: every live job has a window (a clock tick at
//!    or before the start time of each of its processes), and a process that
//!    started before every other live job's window began is this job's or
//!    belongs to a job that is over;
//! 5. without the subreaper, a full `/proc` scan for the marker (termination
//!    only: orphans then live under PID 1).
//!
//! Processes are named by pid + start time and signalled through pidfds, so a
//! reused pid is never hit.

use std::collections::{HashMap, HashSet};

use rustix::process::Signal;
#[cfg(test)]
use std::os::unix::process::CommandExt;

use crate::registry;
use crate::sys::{self, Pid, ProcRef};

/// What a search is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The job runs (the resource monitor): its own processes only.
    Running,
    /// The job, or a pool worker's task, is over (termination, the check
    /// after a normal exit, the per-task sweep): also the escapees that carry
    /// nothing of any job and that no other live job can own (see
    /// [`registry::may_belong_to_another_job`]).
    Ending,
}

/// The descendant tracker of one job.
#[derive(Debug)]
pub(crate) struct Tracker {
    leader: Pid,
    /// `TSBRIDGE_JOB=<key>`.
    needle: Vec<u8>,
    /// Every descendant seen alive, by pid -> start time.
    seen: HashMap<i32, u64>,
    /// A long-lived leader's own helpers (pid -> start time): what a pool
    /// worker had started before its first task (tsx's esbuild service).
    /// Per-task sweeps leave them; the job's end kills them like the rest.
    kept: HashMap<i32, u64>,
    /// The job's own process when the leader is the init of its PID
    /// namespace (`limits.pid_namespace`): the init's child. A pool
    /// worker's per-task sweeps spare it as they spare the leader; the
    /// job's end kills it like the rest.
    main: Option<ProcRef>,
    /// Pids that were ever seen (for the orphan reaper).
    ever: HashSet<i32>,
    /// Whether the leader has been reaped (its pid may be reused).
    leader_reaped: bool,
    /// Scratch space of [`Self::discover`], kept to avoid allocating per walk.
    queue: Vec<Pid>,
    kids: Vec<Pid>,
    found: HashMap<i32, u64>,
    /// The leader's /proc files kept open (a pool worker's, opened by its
    /// first per-task sweep; see [`Self::discover_after_task`]).
    open: Option<sys::OpenProc>,
    /// The kept helpers' /proc files, opened by [`Self::keep_current`] and
    /// kept while they live: each walk of a pool worker goes through them
    /// too (tsx's esbuild service has a thread list of its own), and read
    /// this way it costs `pread`s instead of an open, read and close per
    /// file (7 opens per walk with esbuild's threads).
    helpers: HashMap<i32, sys::OpenProc>,
    /// Taken before the last per-task sweep's walk: if no pid was allocated
    /// since, the worker cannot have a process that walk did not see.
    quiet: Option<sys::PidMark>,
    /// How many per-task sweeps skipped the walk (nothing new).
    pub(crate) quiet_sweeps: u64,
    /// Tests: take the pid mark as unchanged.
    #[cfg(test)]
    assume_nothing_new: bool,
}

impl Tracker {
    pub(crate) fn new(leader: Pid, needle: Vec<u8>) -> Self {
        Self {
            leader,
            needle,
            seen: HashMap::new(),
            kept: HashMap::new(),
            main: None,
            ever: HashSet::new(),
            leader_reaped: false,
            queue: Vec::new(),
            kids: Vec::new(),
            found: HashMap::new(),
            open: None,
            helpers: HashMap::new(),
            quiet: None,
            quiet_sweeps: 0,
            #[cfg(test)]
            assume_nothing_new: false,
        }
    }

    /// Names the job's own process under the leader, the init of its PID
    /// namespace: a pool worker's sweeps spare it as they spare the leader.
    pub(crate) fn set_main(&mut self, main: ProcRef) {
        self.main = Some(main);
    }

    pub(crate) fn pgid(&self) -> Pid {
        self.leader
    }

    pub(crate) fn set_leader_reaped(&mut self) {
        self.leader_reaped = true;
        self.open = None;
        self.quiet = None;
    }

    /// The cheap check after a normal exit of the leader: is anything of the
    /// job possibly left? (`killpg(pgid, 0)`, descendants seen earlier, and
    /// tsbridge's own adopted children carrying the marker or the group, or
    /// escapees no other live job can own.)
    pub(crate) fn maybe_leftovers(&mut self) -> bool {
        if self.pgid().group_exists() {
            return true;
        }
        if self
            .seen
            .iter()
            .filter_map(|(&pid, &start)| Pid::new(pid).map(|pid| ProcRef { pid, start }))
            .any(alive)
        {
            return true;
        }
        if registry::is_subreaper() {
            let mut roots = Vec::new();
            self.adopted_roots(Scope::Ending, &mut roots);
            return !roots.is_empty();
        }
        false
    }

    /// Appends tsbridge's own children that belong to this job (adopted
    /// orphans: the job's marker, group, or a descendant seen before) and,
    /// with [`Scope::Ending`], the escapees no other live job can own: an
    /// adopted child in another session (tsbridge starts none) with no
    /// marker of a job was left by a job whose window began at or before its
    /// start time; if no other live job's did, it is this job's or its job is
    /// over.
    fn adopted_roots(&self, scope: Scope, out: &mut Vec<Pid>) {
        let mut kids = Vec::new();
        sys::own_main_thread_children(&mut kids);
        if kids.is_empty() {
            return;
        }
        // Held across the check: no job is forked meanwhile, so every
        // process seen here belongs to a job the registry knows.
        let leaders = registry::lock_leaders();
        for k in kids {
            if leaders.as_ref().is_some_and(|l| l.contains(&k.raw())) {
                continue;
            }
            let Some(st) = sys::read_stat(k) else {
                continue;
            };
            if st.is_zombie() {
                continue;
            }
            let ours = st.pgrp == self.pgid().raw()
                || self.seen.contains_key(&k.raw())
                || sys::environ_has(k, &self.needle);
            let escapee = !ours
                && scope == Scope::Ending
                && st.session != sys::self_session()
                && !registry::may_belong_to_another_job(st.start, self.leader);
            if ours || escapee {
                out.push(k);
            }
        }
    }

    /// Every live (non-zombie) process of the job that can be found.
    /// `deep`: also scan all of /proc for the marker when tsbridge is not a
    /// subreaper (orphans then live under PID 1).
    pub(crate) fn discover(&mut self, deep: bool, scope: Scope) -> Vec<ProcRef> {
        let mut queue = std::mem::take(&mut self.queue);
        let mut kids = std::mem::take(&mut self.kids);
        let mut found = std::mem::take(&mut self.found);
        queue.clear();
        found.clear();
        if !self.leader_reaped {
            queue.push(self.leader);
        }
        queue.extend(self.seen.keys().filter_map(|&p| Pid::new(p)));
        self.adopted_roots(scope, &mut queue);
        if deep && !registry::is_subreaper() {
            let me = sys::self_pid();
            for p in sys::all_pids() {
                if p == me || (p == self.leader && self.leader_reaped) {
                    continue;
                }
                let Some(st) = sys::read_stat(p) else {
                    continue;
                };
                if st.is_zombie() {
                    continue;
                }
                if st.pgrp == self.pgid().raw() || sys::environ_has(p, &self.needle) {
                    queue.push(p);
                }
            }
        }

        while let Some(p) = queue.pop() {
            if found.contains_key(&p.raw()) {
                continue;
            }
            if p == self.leader && self.leader_reaped {
                continue;
            }
            let mut open = match self.open.as_mut().filter(|o| o.pid() == p) {
                Some(o) => Some(o),
                None => self.helpers.get_mut(&p.raw()),
            };
            let mut st = match &open {
                Some(o) => o.stat(),
                None => sys::read_stat(p),
            };
            if st.is_none() && open.as_ref().is_some_and(|o| o.pid() != self.leader) {
                // A helper that ended: its pid may name another process
                // now, read as any other.
                open = None;
                st = sys::read_stat(p);
            }
            let Some(st) = st else {
                continue;
            };
            // A pid we saw before that now has another start time was reused.
            if let Some(&start) = self.seen.get(&p.raw())
                && start != st.start
            {
                continue;
            }
            kids.clear();
            match open {
                Some(o) => o.children(&mut kids),
                None => sys::children_of(p, &mut kids),
            }
            queue.extend(kids.iter().copied());
            if st.is_zombie() {
                continue;
            }
            found.insert(p.raw(), st.start);
        }
        let leader = self.leader.raw();
        self.seen.clear();
        self.seen.extend(
            found
                .iter()
                .filter(|(p, _)| **p != leader)
                .map(|(p, s)| (*p, *s)),
        );
        // A helper that ended is not walked again.
        let seen = &self.seen;
        self.helpers.retain(|p, _| seen.contains_key(p));
        self.ever.extend(self.seen.keys().copied());
        let out = found
            .iter()
            .filter_map(|(&pid, &start)| Pid::new(pid).map(|pid| ProcRef { pid, start }))
            .collect();
        self.queue = queue;
        self.kids = kids;
        self.found = found;
        out
    }

    /// The search of a pool worker's per-task sweep: what
    /// [`Self::discover`]`(true, Scope::Ending)` finds, cheaper when the
    /// worker left nothing behind.
    ///
    /// With the subreaper, when the last sweep's walk left no descendant
    /// alive (none seen since) and no pid was allocated in our pid namespace
    /// since it began ([`sys::PidMark`]), the worker's subtree cannot hold a
    /// process that walk did not see: a process that is not the worker's
    /// descendant only becomes one by being created. Then only tsbridge's
    /// adopted children are examined (their marker, group and the hidden
    /// escapee rule can change without a fork, so they are looked at every
    /// time); anything there and the walk runs. Otherwise the full walk
    /// runs, through the worker's /proc files kept open ([`sys::OpenProc`]).
    pub(crate) fn discover_after_task(&mut self) -> Vec<ProcRef> {
        if self.open.is_none() && !self.leader_reaped {
            self.open = self.open_worker();
        }
        if self.nothing_new() {
            let mut roots = Vec::new();
            self.adopted_roots(Scope::Ending, &mut roots);
            if roots.is_empty() {
                self.quiet_sweeps += 1;
                return Vec::new();
            }
        }
        // Before the walk: whatever is created after it moves the mark.
        let before = self.open.as_ref().and_then(sys::OpenProc::thread_links);
        let mark = if registry::is_subreaper() {
            sys::PidMark::take()
        } else {
            None
        };
        let found = self.discover(true, Scope::Ending);
        // A worker thread that ended during the walk handed its children to
        // another thread, perhaps one already read: this walk may have
        // missed them, so the next sweep must walk again. (A thread that
        // started moved the mark anyway.)
        let after = self.open.as_ref().and_then(sys::OpenProc::thread_links);
        self.quiet = mark.filter(|_| before.is_some() && before == after);
        found
    }

    /// The /proc files of the long-lived process a pool worker's sweeps
    /// walk most: the leader, or under an init the job's own process (the
    /// worker, whose threads' children the walk reads and whose thread
    /// count [`Self::discover_after_task`] compares), checked to be the
    /// same process (start time) once open.
    fn open_worker(&self) -> Option<sys::OpenProc> {
        match self.main {
            Some(main) => sys::OpenProc::open(main.pid)
                .filter(|o| o.stat().is_some_and(|st| st.start == main.start)),
            None => sys::OpenProc::open(self.leader),
        }
    }

    /// Takes the leader's descendants alive now as its own helpers
    /// ([`Self::is_kept`]); returns how many.
    pub(crate) fn keep_current(&mut self) -> usize {
        let leader = self.leader;
        let main = self.main;
        self.kept = self
            .discover(true, Scope::Ending)
            .into_iter()
            .filter(|p| p.pid != leader && Some(*p) != main)
            .map(|p| (p.pid.raw(), p.start))
            .collect();
        // Opened after the walk that found them: a file opened now names
        // the process the pid has now, the one kept if its start time is.
        self.helpers = self
            .kept
            .iter()
            .filter_map(|(&pid, &start)| {
                let open = sys::OpenProc::open(Pid::new(pid)?)?;
                (open.stat()?.start == start).then_some((pid, open))
            })
            .collect();
        self.kept.len()
    }

    /// Whether `p` is one of the helpers [`Self::keep_current`] took, or
    /// the job's own process under an init ([`Self::set_main`]): the same
    /// process, its pid and its start time.
    pub(crate) fn is_kept(&self, p: &ProcRef) -> bool {
        self.main == Some(*p) || self.kept.get(&p.pid.raw()) == Some(&p.start)
    }

    fn nothing_new(&self) -> bool {
        // Seen in the last walk and still there on purpose: only kept helpers.
        let only_kept = self.seen.iter().all(|(&pid, &start)| {
            Pid::new(pid).is_some_and(|pid| self.is_kept(&ProcRef { pid, start }))
        });
        if !registry::is_subreaper() || self.leader_reaped || !only_kept {
            return false;
        }
        #[cfg(test)]
        if self.assume_nothing_new {
            return true;
        }
        self.quiet.as_ref().is_some_and(sys::PidMark::unchanged)
    }

    /// Signals the whole job: the cgroup (when given), the process group, and
    /// every process [`Self::discover`] finds (scope [`Scope::Ending`]).
    /// Returns the processes found.
    pub(crate) fn signal_all(
        &mut self,
        sig: Signal,
        cgroup: Option<&dyn Fn(Signal)>,
        deep: bool,
    ) -> Vec<ProcRef> {
        if let Some(cg) = cgroup {
            cg(sig);
        }
        if let Err(e) = self.pgid().signal_group(sig) {
            tracing::debug!(error = %e, pgid = self.pgid().raw(), "killpg failed");
        }
        let found = self.discover(deep, Scope::Ending);
        for p in &found {
            if let Err(e) = sys::signal_proc(*p, sig) {
                tracing::debug!(error = %e, pid = p.pid.raw(), "signal failed");
            }
        }
        found
    }

    /// Whether adopted zombies of this job may exist: some descendant was
    /// seen, or the process group still has members (zombies included).
    /// Otherwise the background reaper (subreaper mode) is enough.
    pub(crate) fn may_have_orphans(&self) -> bool {
        !self.ever.is_empty() || self.pgid().group_exists()
    }

    /// Reaps this job's adopted zombies.
    pub(crate) fn reap(&self) -> usize {
        registry::reap_orphans(&self.ever)
    }
}

fn alive(p: ProcRef) -> bool {
    matches!(sys::read_stat(p.pid), Some(st) if st.start == p.start && !st.is_zombie())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normal-exit check after a leader that left nothing behind: it says
    /// "nothing left" and is cheap (the cost is printed; run with
    /// `--nocapture` to see it).
    #[test]
    fn normal_exit_check_finds_nothing_and_is_cheap() {
        let mut child = std::process::Command::new("/bin/true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::new(child.id() as i32).unwrap();
        child.wait().unwrap();
        for subreaper in [false, true] {
            if subreaper {
                registry::set_subreaper();
            }
            let mut t = Tracker::new(pid, b"TSBRIDGE_JOB=none".to_vec());
            t.set_leader_reaped();
            let n = 2000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                assert!(!t.maybe_leftovers());
            }
            let per = start.elapsed() / n;
            eprintln!("normal-exit leftover check (subreaper={subreaper}): {per:?} per job");
            assert!(!t.may_have_orphans());
        }
    }

    /// `sh -c SCRIPT x <pidfile>`: starts a hidden escapee (a grandchild
    /// that `setsid`s and execs `sleep` with an empty environment, orphaned at
    /// once), writes its pid, then becomes a childless `sleep` (a pool
    /// worker's shape).
    const ESCAPE: &str = r#"
( setsid env -i /bin/sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > "$1.tmp"; mv "$1.tmp" "$1" )
exec /bin/sleep 1000
"#;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILLs (and reaps, if ours) the processes it names when dropped, so a
    /// failed assertion leaves nothing running.
    struct KillOnDrop(Vec<Pid>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &p in &self.0 {
                kill_and_reap(p);
            }
        }
    }

    fn kill_and_reap(pid: Pid) {
        // SAFETY: kill and waitpid on a specific pid this test started
        // (waitpid fails at once with ECHILD if it is not our child).
        unsafe {
            libc::kill(pid.raw(), libc::SIGKILL);
            libc::waitpid(pid.raw(), std::ptr::null_mut(), 0);
        }
    }

    /// The per-task sweep's cheap check may say "nothing new" (no pid
    /// allocated since the last sweep's walk) while a hidden escapee of the
    /// worker's last task exists: one the last sweep left alone because
    /// another live job's window began before it. When that job is over, the
    /// next sweep still kills the escapee: adopted children are examined
    /// whatever the check says.
    #[test]
    fn a_sweep_that_sees_nothing_new_still_finds_a_hidden_escapee() {
        // SAFETY: prctl with integer arguments (this test's own process:
        // nextest runs each test in a process of its own).
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        registry::set_subreaper();
        let mut older = std::process::Command::new("/bin/sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let older_pid = Pid::new(older.id() as i32).unwrap();
        let mut cleanup = KillOnDrop(vec![older_pid]);
        registry::add_group(older_pid, 0);

        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escapee.pid");
        let since = sys::boot_ticks_now();
        let mut worker = std::process::Command::new("/bin/sh")
            .args(["-c", ESCAPE, "x"])
            .arg(&pidfile)
            .process_group(0)
            .spawn()
            .unwrap();
        let worker_pid = Pid::new(worker.id() as i32).unwrap();
        cleanup.0.push(worker_pid);
        registry::add_group(worker_pid, since);
        let mut escapee = None;
        wait_until("the escapee's pid file", || {
            escapee = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .and_then(Pid::new);
            escapee.is_some()
        });
        let escapee = escapee.unwrap();
        cleanup.0.push(escapee);
        wait_until(
            "the escapee hides (own session, empty env, adopted)",
            || {
                let env_empty = std::fs::read(format!("/proc/{}/environ", escapee.raw()))
                    .is_ok_and(|e| e.is_empty());
                let mut kids = Vec::new();
                sys::own_main_thread_children(&mut kids);
                env_empty
                    && kids.contains(&escapee)
                    && sys::read_stat(escapee).is_some_and(|st| st.session == escapee.raw())
            },
        );
        wait_until("the worker is a childless sleep", || {
            let mut kids = Vec::new();
            sys::children_of(worker_pid, &mut kids);
            kids.is_empty()
                && std::fs::read_to_string(format!("/proc/{}/comm", worker_pid.raw()))
                    .is_ok_and(|c| c.trim() == "sleep")
        });

        let mut t = Tracker::new(worker_pid, b"TSBRIDGE_JOB=q2-test".to_vec());
        let found = t.discover_after_task();
        assert!(
            found.iter().all(|p| p.pid != escapee),
            "the older job may own it: left alone ({found:?})"
        );
        registry::restart_window(worker_pid, sys::boot_ticks_now());

        // The older job is over; the check says nothing new.
        registry::remove_group(older_pid);
        t.assume_nothing_new = true;
        assert!(t.nothing_new());
        let found = t.discover_after_task();
        assert!(
            found.iter().any(|p| p.pid == escapee),
            "the escapee {escapee:?} was not found: {found:?}"
        );

        // That walk saw the escapee: the next sweep walks again (and finds
        // it gone); with nothing adopted left, the one after skips the walk.
        kill_and_reap(escapee);
        assert!(!t.nothing_new());
        let quiet = t.quiet_sweeps;
        assert!(t.discover_after_task().iter().all(|p| p.pid == worker_pid));
        assert_eq!(t.quiet_sweeps, quiet);
        assert!(t.nothing_new());
        assert!(t.discover_after_task().is_empty());
        assert_eq!(t.quiet_sweeps, quiet + 1);

        drop(cleanup);
        let _ = older.wait();
        let _ = worker.wait();
        registry::remove_group(worker_pid);
    }

    /// Without an assumed verdict: a child the worker forks after a sweep is
    /// found by the next one (the fork moved the pid mark, so it walks), and
    /// a sweep that found descendants never lets the next one skip its walk.
    #[test]
    fn a_sweep_after_a_fork_walks_and_finds_the_child() {
        registry::set_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        // The leader forks a child once `go` exists, then waits.
        let script = r#"while [ ! -e "$1" ]; do sleep 0.02; done; /bin/sleep 1000 & wait"#;
        let mut leader = std::process::Command::new("/bin/sh")
            .args(["-c", script, "x"])
            .arg(&go)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::new(leader.id() as i32).unwrap();
        let mut cleanup = KillOnDrop(vec![pid]);
        let mut t = Tracker::new(pid, b"TSBRIDGE_JOB=q2-test-2".to_vec());
        // The polling loop forks `sleep 0.02` children: sweep until one
        // sees none alive.
        wait_until("a sweep that finds no child", || {
            t.discover_after_task().iter().all(|p| p.pid == pid)
        });
        std::fs::write(&go, b"").unwrap();
        let mut child = None;
        wait_until("the leader's child sleep 1000", || {
            let mut kids = Vec::new();
            sys::children_of(pid, &mut kids);
            child = kids.into_iter().find(|k| {
                std::fs::read(format!("/proc/{}/cmdline", k.raw()))
                    .is_ok_and(|c| c.ends_with(b"1000\0"))
            });
            child.is_some()
        });
        let child = child.unwrap();
        cleanup.0.push(child);
        let found = t.discover_after_task();
        assert!(found.iter().any(|p| p.pid == child), "{found:?}");
        assert!(!t.nothing_new(), "descendants seen: the next sweep walks");
        drop(cleanup);
        let _ = leader.wait();
    }

    /// Nothing assumed: a childless worker's sweeps skip the walk once no
    /// pid is allocated between two of them (tried until that happens: the
    /// machine's other processes fork too).
    #[test]
    fn a_childless_worker_s_sweeps_skip_the_walk_when_nothing_is_new() {
        registry::set_subreaper();
        let mut worker = std::process::Command::new("/bin/sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::new(worker.id() as i32).unwrap();
        let cleanup = KillOnDrop(vec![pid]);
        let mut t = Tracker::new(pid, b"TSBRIDGE_JOB=q2-test-3".to_vec());
        wait_until("a sweep that skips the walk", || {
            for _ in 0..2 {
                let found = t.discover_after_task();
                assert!(found.iter().all(|p| p.pid == pid), "{found:?}");
            }
            t.quiet_sweeps > 0
        });
        drop(cleanup);
        let _ = worker.wait();
    }

    /// A kept helper (a pool worker's esbuild service) is walked through
    /// /proc files opened once, by `keep_current`: a child it forks later is
    /// still found, and once it is gone its files are let go.
    #[test]
    fn a_kept_helper_is_walked_through_files_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("go");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // The leader starts a helper that waits on the fifo (no fork
        // before), then forks `sleep 1000` and waits for it.
        let helper = r#"read x < "$1"; /bin/sleep 1000 & wait"#;
        let mut leader = std::process::Command::new("/bin/sh")
            .args(["-c", r#"/bin/sh -c "$1" y "$2" & wait"#, "x", helper])
            .arg(&fifo)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::new(leader.id() as i32).unwrap();
        let mut cleanup = KillOnDrop(vec![pid]);
        let mut helper_pid = None;
        wait_until("the helper waits on the fifo", || {
            let mut kids = Vec::new();
            sys::children_of(pid, &mut kids);
            helper_pid = kids.first().copied();
            // Exec'd (until then it is a copy of the leader).
            helper_pid.is_some_and(|h| {
                std::fs::read(format!("/proc/{}/cmdline", h.raw()))
                    .is_ok_and(|c| c.starts_with(b"/bin/sh\0-c\0read x"))
            })
        });
        let helper_pid = helper_pid.unwrap();
        cleanup.0.push(helper_pid);
        let mut t = Tracker::new(pid, b"TSBRIDGE_JOB=kept-open-test".to_vec());
        assert_eq!(t.keep_current(), 1);
        assert!(
            t.helpers.contains_key(&helper_pid.raw()),
            "the helper's files are open: {:?}",
            t.helpers.keys().collect::<Vec<_>>()
        );

        std::fs::write(&fifo, b"go\n").unwrap();
        let mut child = None;
        wait_until("the helper's child sleep 1000", || {
            let mut kids = Vec::new();
            sys::children_of(helper_pid, &mut kids);
            child = kids.first().copied();
            child.is_some()
        });
        let child = child.unwrap();
        cleanup.0.push(child);
        let found = t.discover_after_task();
        assert!(found.iter().any(|p| p.pid == child), "{found:?}");
        assert!(t.helpers.contains_key(&helper_pid.raw()));

        kill_and_reap(child);
        kill_and_reap(helper_pid);
        wait_until("the helper is gone", || {
            let mut kids = Vec::new();
            sys::children_of(pid, &mut kids);
            !kids.contains(&helper_pid)
        });
        // Not ours to reap: SIGKILLed, it may not have died yet, and the
        // walk goes through every descendant seen before (it was).
        wait_until("the helper's child is dead", || {
            sys::read_stat(child).is_none_or(|st| st.is_zombie())
        });
        let found = t.discover_after_task();
        assert!(found.iter().all(|p| p.pid == pid), "{found:?}");
        assert!(t.helpers.is_empty(), "a helper that ended is let go");
        drop(cleanup);
        let _ = leader.wait();
    }
}
