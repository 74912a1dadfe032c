//! The event bus: live events of each job, fanned out to subscribers. Every
//! subscriber has its own bounded buffer; one that falls behind is dropped
//! (its stream ends, flagged as lagged) so that it never slows a job. A job's
//! channel is opened when the job is accepted and closed after its terminal
//! event; subscribing to a closed or unknown job gives an ended stream.
//!
//! Publishers write to the store first, then publish, so "subscribe, then
//! read the store, then skip what was seen" never misses an event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tsbridge_proto::{JobEvent, JobId};

/// Events buffered per subscriber before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1024;

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<JobEvent>,
    lagged: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Channel {
    subscribers: Vec<Subscriber>,
    /// Turns true after the terminal event (or at shutdown).
    done: watch::Sender<bool>,
}

/// Per-job broadcast of [`JobEvent`]s.
#[derive(Debug, Clone, Default)]
pub struct Bus {
    jobs: Arc<Mutex<HashMap<JobId, Channel>>>,
    buffer: Option<usize>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus whose subscribers buffer `n` events (tests use small values).
    pub fn with_buffer(n: usize) -> Self {
        Self {
            jobs: Arc::default(),
            buffer: Some(n.max(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Channel>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert/remove/retain).
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the channel of a job that is accepted and not finished.
    pub fn open(&self, id: JobId) {
        self.lock().entry(id).or_insert_with(|| Channel {
            subscribers: Vec::new(),
            done: watch::channel(false).0,
        });
    }

    /// Whether the job's channel is open.
    pub fn is_open(&self, id: JobId) -> bool {
        self.lock().contains_key(&id)
    }

    /// Sends an event to every subscriber of its job; drops those whose
    /// buffer is full.
    pub fn publish(&self, event: &JobEvent) {
        let mut jobs = self.lock();
        let Some(ch) = jobs.get_mut(&event.job_id) else {
            return;
        };
        ch.subscribers
            .retain(|s| match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Release);
                    tracing::debug!(job = %event.job_id, "dropping a subscriber that fell behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// Closes a job's channel: subscribers get what is buffered, then the end.
    pub fn close(&self, id: JobId) {
        if let Some(ch) = self.lock().remove(&id) {
            ch.done.send_replace(true);
        }
    }

    /// Closes every channel (shutdown).
    pub fn close_all(&self) {
        for (_, ch) in self.lock().drain() {
            ch.done.send_replace(true);
        }
    }

    /// Live events of a job from now on.
    pub fn subscribe(&self, id: JobId) -> Subscription {
        let lagged = Arc::new(AtomicBool::new(false));
        let mut jobs = self.lock();
        let Some(ch) = jobs.get_mut(&id) else {
            return Subscription { rx: None, lagged };
        };
        let (tx, rx) = mpsc::channel(self.buffer.unwrap_or(SUBSCRIBER_BUFFER));
        ch.subscribers.push(Subscriber {
            tx,
            lagged: lagged.clone(),
        });
        Subscription {
            rx: Some(rx),
            lagged,
        }
    }

    /// A signal that turns true when the job's channel closes; `None` when
    /// it is not open.
    pub fn done_signal(&self, id: JobId) -> Option<watch::Receiver<bool>> {
        self.lock().get(&id).map(|c| c.done.subscribe())
    }

    /// Subscribers across all jobs (for tests and stats).
    pub fn subscriber_count(&self, id: JobId) -> usize {
        self.lock().get(&id).map_or(0, |c| c.subscribers.len())
    }
}

/// Live events of one job, in `seq` order.
#[derive(Debug)]
pub struct Subscription {
    rx: Option<mpsc::Receiver<JobEvent>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event; `None` when the job's events are over or this
    /// subscriber fell behind and was dropped (see [`Subscription::lagged`]).
    pub async fn recv(&mut self) -> Option<JobEvent> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// Whether the stream ended because this subscriber fell behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// As a `Stream`.
    pub fn into_stream(self) -> impl Stream<Item = JobEvent> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.recv().await.map(|e| (e, s)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tsbridge_proto::EventData;

    fn ev(id: JobId, seq: u64) -> JobEvent {
        JobEvent {
            seq,
            job_id: id,
            timestamp: Utc::now(),
            data: EventData::Stdout {
                line: format!("{seq}"),
            },
        }
    }

    #[tokio::test]
    async fn slow_subscriber_is_dropped_others_continue() {
        let bus = Bus::with_buffer(4);
        let id = JobId::new();
        bus.open(id);
        let mut slow = bus.subscribe(id);
        let mut fast = bus.subscribe(id);
        let mut got = Vec::new();
        for seq in 1..=20 {
            bus.publish(&ev(id, seq));
            got.push(fast.recv().await.expect("fast gets every event").seq);
        }
        assert_eq!(got, (1..=20).collect::<Vec<_>>());
        assert_eq!(bus.subscriber_count(id), 1, "the slow one was dropped");
        let mut seen = Vec::new();
        while let Some(e) = slow.recv().await {
            seen.push(e.seq);
        }
        assert_eq!(seen, vec![1, 2, 3, 4], "it keeps what it had buffered");
        assert!(slow.lagged());
        bus.close(id);
        assert!(fast.recv().await.is_none());
        assert!(!fast.lagged());
    }

    #[tokio::test]
    async fn closed_or_unknown_jobs_give_ended_streams() {
        let bus = Bus::new();
        let id = JobId::new();
        assert!(bus.subscribe(id).recv().await.is_none());
        bus.open(id);
        let mut done = bus.done_signal(id).expect("open");
        assert!(!*done.borrow());
        bus.close(id);
        done.changed().await.expect("signal");
        assert!(*done.borrow());
        assert!(bus.done_signal(id).is_none());
    }
}
