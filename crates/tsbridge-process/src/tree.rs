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
    /// Pids that were ever seen (for the orphan reaper).
    ever: HashSet<i32>,
    /// Whether the leader has been reaped (its pid may be reused).
    leader_reaped: bool,
    /// Scratch space of [`Self::discover`], kept to avoid allocating per walk.
    queue: Vec<Pid>,
    kids: Vec<Pid>,
    found: HashMap<i32, u64>,
}

impl Tracker {
    pub(crate) fn new(leader: Pid, needle: Vec<u8>) -> Self {
        Self {
            leader,
            needle,
            seen: HashMap::new(),
            ever: HashSet::new(),
            leader_reaped: false,
            queue: Vec::new(),
            kids: Vec::new(),
            found: HashMap::new(),
        }
    }

    pub(crate) fn pgid(&self) -> Pid {
        self.leader
    }

    pub(crate) fn set_leader_reaped(&mut self) {
        self.leader_reaped = true;
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
        sys::main_thread_children(sys::self_pid(), &mut kids);
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
            let Some(st) = sys::read_stat(p) else {
                continue;
            };
            // A pid we saw before that now has another start time was reused.
            if let Some(&start) = self.seen.get(&p.raw())
                && start != st.start
            {
                continue;
            }
            kids.clear();
            sys::children_of(p, &mut kids);
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
}
