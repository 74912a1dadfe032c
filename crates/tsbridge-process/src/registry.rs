//! Process-wide bookkeeping the engine needs across jobs: which pids are job
//! leaders (reaped by their own job's waiter, never by the orphan reaper),
//! which process groups belong to live jobs, whether tsbridge is a child
//! subreaper, and the orphan reaper that waits for adopted descendants by
//! their specific pids (never `waitpid(-1)`, which would steal other code's
//! children).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::sys::{self, Pid};

/// Leader pids whose wait status belongs to their job's waiter.
pub(crate) static LEADERS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);
/// Process group id (= leader pid) -> the start of the job's current window,
/// for every job not yet fully ended (see [`may_belong_to_another_job`]).
static GROUPS: Mutex<Option<HashMap<i32, u64>>> = Mutex::new(None);
/// Set once `init_supervisor` made tsbridge a child subreaper.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

pub(crate) fn lock_leaders() -> MutexGuard<'static, Option<HashSet<i32>>> {
    LEADERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_groups() -> MutexGuard<'static, Option<HashMap<i32, u64>>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn leader_done(pid: Pid) {
    if let Some(s) = lock_leaders().as_mut() {
        s.remove(&pid.raw());
    }
}

/// Registers a new job's group and the start of its window: a clock tick
/// (see [`sys::boot_ticks_now`]) taken before its leader was forked, so every
/// process of the job has a start time at or after it. Called by the spawner
/// thread while it holds [`LEADERS`], right after the fork.
pub(crate) fn add_group(pgid: Pid, since: u64) {
    lock_groups()
        .get_or_insert_with(HashMap::new)
        .insert(pgid.raw(), since);
}

/// Moves the start of a job's window to `since` (a pool worker after its
/// per-task sweep: what its earlier tasks started was searched for and killed;
/// anything it starts from now on has a start time at or after `since`).
pub(crate) fn restart_window(pgid: Pid, since: u64) {
    if let Some(s) = lock_groups().as_mut().and_then(|g| g.get_mut(&pgid.raw())) {
        *s = (*s).max(since);
    }
}

/// Whether a process that started at `start` (clock ticks) may belong to a
/// live job other than `except`: some other job's window began at or before
/// it. An escapee that carries nothing of its job (no marker, another
/// session) belongs to a job whose window began at or before its start; if
/// no other live job's did, its job is `except` or already over.
/// Call while holding [`LEADERS`] (so no new job can be forked meanwhile).
pub(crate) fn may_belong_to_another_job(start: u64, except: Pid) -> bool {
    lock_groups().as_ref().is_some_and(|g| {
        g.iter()
            .any(|(&pgid, &since)| pgid != except.raw() && since <= start)
    })
}

pub(crate) fn remove_group(pgid: Pid) {
    if let Some(g) = lock_groups().as_mut() {
        g.remove(&pgid.raw());
    }
}

pub(crate) fn set_subreaper() {
    SUBREAPER.store(true, Ordering::SeqCst);
}

pub(crate) fn is_subreaper() -> bool {
    SUBREAPER.load(Ordering::SeqCst)
}

/// Reaps zombie children of tsbridge that belong to a job: adopted orphans
/// whose process group is a job's, whose session is not tsbridge's (escapees
/// that called `setsid`: tsbridge starts no child in another session), or
/// whose pid `extra` names (descendants the tracker saw alive). Leaders are
/// skipped. Only the main thread's children are looked at: adopted orphans
/// are reparented there (see [`sys::main_thread_children`]). Returns how many
/// were reaped.
pub(crate) fn reap_orphans(extra: &HashSet<i32>) -> usize {
    let mut kids = Vec::new();
    sys::own_main_thread_children(&mut kids);
    if kids.is_empty() {
        return 0;
    }
    let groups: HashSet<i32> = lock_groups()
        .as_ref()
        .map(|g| g.keys().copied().collect())
        .unwrap_or_default();
    // Holding LEADERS keeps the spawner from adding a leader we could mistake
    // for an orphan between the check and the waitpid.
    let leaders = lock_leaders();
    let mut n = 0;
    for kid in kids {
        if leaders.as_ref().is_some_and(|l| l.contains(&kid.raw())) {
            continue;
        }
        let Some(st) = sys::read_stat(kid) else {
            continue;
        };
        if !st.is_zombie() {
            continue;
        }
        let ours = groups.contains(&st.pgrp)
            || extra.contains(&kid.raw())
            || st.session != sys::self_session();
        if ours && sys::reap_nohang(kid) {
            n += 1;
        }
    }
    n
}

/// Starts (once) the background orphan reaper: woken by SIGCHLD, it reaps
/// adopted zombies of live jobs. Needs a tokio runtime.
pub(crate) fn start_background_reaper() {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sig = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGCHLD stream; orphan reaper polls");
                None
            }
        };
        loop {
            match sig.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv()).await;
                }
                None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            }
            let n = tokio::task::spawn_blocking(move || reap_orphans(&HashSet::new()))
                .await
                .unwrap_or(0);
            if n > 0 {
                tracing::debug!(reaped = n, "reaped adopted orphans");
            }
        }
    });
}
