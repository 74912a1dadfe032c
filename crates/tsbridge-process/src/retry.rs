//! Retries of a job: [`RetryPolicy`] (how many attempts, how long between
//! them, which failures are worth another try) and [`run_with_retry`], which
//! never starts an attempt while any process of the previous one is alive:
//! an attempt's [`Outcome`] only exists once its whole tree is gone, and the
//! next attempt is spawned only after that.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::engine::{Outcome, ProcessControl, spawn};
use crate::error::{ErrorKind, JobError, SpawnError};
use crate::spec::JobSpec;

/// When and how often to try again.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt.
    pub backoff: Duration,
    /// Factor applied to the delay for each further attempt.
    pub multiplier: f64,
    /// 0..=1: each delay is drawn uniformly from `[d * (1 - jitter), d]`.
    pub jitter: f64,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Which failures are retried.
    pub retry_on: BTreeSet<ErrorKind>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
            max_delay: Duration::from_secs(300),
            retry_on: Self::default_retry_on(),
        }
    }
}

impl RetryPolicy {
    /// SPEC §4: spawn failures with EAGAIN-like causes, timeouts, deaths by signal.
    pub fn default_retry_on() -> BTreeSet<ErrorKind> {
        [
            ErrorKind::SpawnRetryable,
            ErrorKind::Timeout,
            ErrorKind::Signal,
        ]
        .into_iter()
        .collect()
    }

    /// The delay before attempt `attempt + 1`, given that `attempt` (1-based)
    /// just failed, without jitter: `backoff * multiplier^(attempt-1)`,
    /// capped at `max_delay`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let mult = if self.multiplier.is_finite() && self.multiplier >= 0.0 {
            self.multiplier
        } else {
            1.0
        };
        let secs = self.backoff.as_secs_f64() * mult.powi(exp);
        let cap = self.max_delay.as_secs_f64();
        if !secs.is_finite() || secs >= cap {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// [`Self::base_delay`] with jitter drawn from `sample` in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, sample: f64) -> Duration {
        let base = self.base_delay(attempt);
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - j * sample.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }

    /// The delay after failed attempt `attempt` (1-based), with random jitter.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// Whether attempt `attempt` (1-based), which failed with `error`, is
    /// followed by another.
    pub fn should_retry(&self, error: &JobError, attempt: u32) -> bool {
        attempt < self.attempts && self.retry_on.contains(&error.kind())
    }
}

/// One attempt: its outcome, or why it could not start.
#[derive(Debug)]
pub enum Attempt {
    Finished(Box<Outcome>),
    SpawnFailed(SpawnError),
}

impl Attempt {
    /// The error of this attempt (`None` when it succeeded).
    pub fn error(&self) -> Option<JobError> {
        match self {
            Attempt::Finished(o) => JobError::from_outcome(o),
            Attempt::SpawnFailed(e) => Some(JobError::Spawn(e.duplicate())),
        }
    }
}

/// The record of a retried job.
#[derive(Debug)]
pub struct RetryRun {
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Why the last attempt failed (`None`: it succeeded).
    pub error: Option<JobError>,
}

/// Runs attempts until one succeeds, the policy says stop, or `control` is
/// stopped (a cancel also stops the running attempt and prevents further
/// ones). `make_spec(n)` gives attempt `n`'s spec (1-based; e.g. a clone of
/// one validated spec with a fresh [`crate::spec::JobKey`]); `on_attempt`
/// sees each attempt as it ends. An attempt starts only after the previous
/// one's whole process tree is gone.
pub async fn run_with_retry<F, G>(
    mut make_spec: F,
    policy: &RetryPolicy,
    control: ProcessControl,
    mut on_attempt: G,
) -> RetryRun
where
    F: FnMut(u32) -> JobSpec,
    G: FnMut(u32, &Attempt),
{
    let mut attempts = Vec::new();
    let mut n = 1u32;
    loop {
        let mut spec = make_spec(n);
        spec.control = Some(control.clone());
        let attempt = match spawn(spec).await {
            Ok(mut p) => {
                drop(p.take_events());
                // Returns only once every process of the attempt is gone.
                Attempt::Finished(Box::new(p.wait().await))
            }
            Err(e) => Attempt::SpawnFailed(e),
        };
        on_attempt(n, &attempt);
        let error = attempt.error();
        attempts.push(attempt);
        let retry = match &error {
            Some(e) => !control.is_stopped() && policy.should_retry(e, n),
            None => false,
        };
        if !retry {
            return RetryRun { attempts, error };
        }
        let delay = policy.delay_for(n);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = control.stopped() => {
                return RetryRun { attempts, error };
            }
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResourceLimit;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            max_delay: Duration::from_secs(5),
            retry_on: RetryPolicy::default_retry_on(),
        }
    }

    #[test]
    fn exponential_schedule_capped() {
        let p = policy();
        let d: Vec<u64> = (1..=5)
            .map(|a| p.base_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn jitter_stays_in_range() {
        let p = policy();
        assert_eq!(p.delay_with(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay_with(2, 1.0), Duration::from_secs(1));
        for _ in 0..1000 {
            let d = p.delay_for(3);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn degenerate_multipliers() {
        let mut p = policy();
        p.multiplier = f64::NAN;
        assert_eq!(p.base_delay(4), Duration::from_secs(1));
        p.multiplier = 1e300;
        assert_eq!(p.base_delay(40), Duration::from_secs(5));
        p.multiplier = 0.0;
        assert_eq!(p.base_delay(1), Duration::from_secs(1));
        assert_eq!(p.base_delay(2), Duration::ZERO);
    }

    #[test]
    fn which_errors_retry() {
        let p = policy();
        let timeout = JobError::Timeout {
            after: Duration::from_secs(1),
        };
        assert!(p.should_retry(&timeout, 1));
        assert!(p.should_retry(&timeout, 4));
        assert!(!p.should_retry(&timeout, 5), "no attempt after the last");
        let sig = JobError::Execution {
            exit_code: None,
            signal: Some(9),
            stderr_tail: String::new(),
        };
        assert!(p.should_retry(&sig, 1));
        let exit = JobError::Execution {
            exit_code: Some(1),
            signal: None,
            stderr_tail: String::new(),
        };
        assert!(!p.should_retry(&exit, 1));
        assert!(!p.should_retry(&JobError::Cancelled, 1));
        assert!(!p.should_retry(
            &JobError::ResourceLimit {
                limit: ResourceLimit::Memory
            },
            1
        ));
        let default = RetryPolicy::default();
        assert_eq!(default.attempts, 1);
        assert!(!default.should_retry(&timeout, 1), "default: no retry");
    }
}
