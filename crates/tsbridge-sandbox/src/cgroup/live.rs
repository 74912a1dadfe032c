//! How many job cgroups of one [`crate::Sandbox`] are still held: each
//! [`super::JobCgroup`] it made carries a [`LiveToken`], given back when the
//! handle is dropped, which [`super::JobCgroup::remove`] does after the
//! `rmdir`. A caller's shutdown waits for the count to reach zero, so that
//! "shutdown returned" means "no job cgroup of ours is left" (and the parent
//! can go).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The count, and a condition variable signalled when it drops.
#[derive(Debug, Default)]
pub(crate) struct LiveJobs {
    count: Mutex<usize>,
    released: Condvar,
}

impl LiveJobs {
    /// The job cgroups held now.
    pub(crate) fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until none is held or `timeout` passed; `true` if none is.
    pub(crate) fn wait_none(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .released
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// One held job cgroup: counted while it lives.
#[derive(Debug)]
pub(crate) struct LiveToken(Arc<LiveJobs>);

impl LiveToken {
    pub(crate) fn new(live: &Arc<LiveJobs>) -> Self {
        *live.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Self(Arc::clone(live))
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_ends_when_the_last_token_goes() {
        let live = Arc::new(LiveJobs::default());
        assert!(live.wait_none(Duration::ZERO));
        let a = LiveToken::new(&live);
        let b = LiveToken::new(&live);
        assert_eq!(live.count(), 2);
        assert!(!live.wait_none(Duration::from_millis(1)));
        drop(a);
        let t = std::thread::spawn(move || drop(b));
        assert!(live.wait_none(Duration::from_secs(60)));
        t.join().unwrap();
        assert_eq!(live.count(), 0);
    }
}
