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
//! 4. without the subreaper, a full `/proc` scan for the marker (termination
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
}

impl Tracker {
    pub(crate) fn new(leader: Pid, needle: Vec<u8>) -> Self {
        Self {
            leader,
            needle,
            seen: HashMap::new(),
            ever: HashSet::new(),
            leader_reaped: false,
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
    /// tsbridge's own adopted children carrying the marker or the group.)
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
            return !self.adopted_roots().is_empty();
        }
        false
    }

    /// tsbridge's own children that belong to this job (adopted orphans).
    fn adopted_roots(&self) -> Vec<Pid> {
        let mut kids = Vec::new();
        sys::children_of(sys::self_pid(), &mut kids);
        if kids.is_empty() {
            return kids;
        }
        let leaders: HashSet<i32> = registry::lock_leaders()
            .as_ref()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        kids.retain(|k| {
            if leaders.contains(&k.raw()) {
                return false;
            }
            let Some(st) = sys::read_stat(*k) else {
                return false;
            };
            !st.is_zombie()
                && (st.pgrp == self.pgid().raw()
                    || self.seen.contains_key(&k.raw())
                    || sys::environ_has(*k, &self.needle))
        });
        kids
    }

    /// Every live (non-zombie) process of the job that can be found.
    /// `deep`: also scan all of /proc for the marker when tsbridge is not a
    /// subreaper (orphans then live under PID 1).
    pub(crate) fn discover(&mut self, deep: bool) -> Vec<ProcRef> {
        let mut roots: Vec<Pid> = Vec::new();
        if !self.leader_reaped {
            roots.push(self.leader);
        }
        roots.extend(self.seen.keys().filter_map(|&p| Pid::new(p)));
        roots.extend(self.adopted_roots());
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
                    roots.push(p);
                }
            }
        }

        let mut found: HashMap<i32, u64> = HashMap::new();
        let mut queue = roots;
        let mut kids = Vec::new();
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
        self.seen = found
            .iter()
            .filter(|(p, _)| **p != self.leader.raw())
            .map(|(p, s)| (*p, *s))
            .collect();
        self.ever.extend(self.seen.keys().copied());
        found
            .into_iter()
            .filter_map(|(pid, start)| Pid::new(pid).map(|pid| ProcRef { pid, start }))
            .collect()
    }

    /// Signals the whole job: the cgroup (when given), the process group, and
    /// every process [`Self::discover`] finds. Returns the processes found.
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
        let found = self.discover(deep);
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
