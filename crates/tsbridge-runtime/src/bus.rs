//! The event bus: live events of each job, fanned out to subscribers. Every
//! subscriber has its own bounded buffer; one that falls behind is dropped
//! (its stream ends, flagged as lagged) so that it never slows a job. A job's
//! channel is opened when the job is accepted and closed after its terminal
//! event; subscribing to a closed or unknown job gives an ended stream.
//!
//! Publishers write to the store first, then publish, so "subscribe, then
//! read the store, then skip what was seen" never misses an event.
//!
//! A subscriber's buffer is a queue that allocates only when events arrive
//! (and gives its memory back once drained): an idle subscriber costs one
//! small allocation, not a preallocated channel block (tokio's mpsc
//! allocates 32 slots up front, whatever its bound). An event is shared
//! (`Arc`) by all the subscribers that buffer it.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use futures::Stream;
use tokio::sync::watch;
use tsbridge_proto::api::JobView;
use tsbridge_proto::{JobEvent, JobId};

/// Events buffered per subscriber before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// A drained queue keeps at most this capacity.
const KEEP_CAPACITY: usize = 8;

/// What one subscriber and the bus share.
#[derive(Debug, Default)]
struct Slot {
    queue: VecDeque<Arc<JobEvent>>,
    waker: Option<Waker>,
    /// No more events will be queued (the channel closed, or this
    /// subscriber was dropped).
    ended: bool,
    lagged: bool,
}

type SharedSlot = Arc<Mutex<Slot>>;

fn lock_slot(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Every operation under this lock is a push, a pop or a flag.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bus's end of a subscriber. Dropping it (lagging, the channel
/// closing) ends the subscriber's stream after what it has buffered.
#[derive(Debug)]
struct Subscriber {
    slot: SharedSlot,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut s = lock_slot(&self.slot);
        s.ended = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct Channel {
    subscribers: Vec<Subscriber>,
    /// Turns `Closed` after the terminal event (or at shutdown).
    done: watch::Sender<Done>,
}

/// A job's channel, as the waiters of its end see it.
#[derive(Clone, Debug, Default)]
pub enum Done {
    #[default]
    Open,
    /// Closed: with the job's final view when its end was written by this
    /// node (which then knows what reading it back would give); without,
    /// at shutdown or when the write failed (read the store).
    Closed(Option<Arc<JobView>>),
}

impl Done {
    pub fn is_closed(&self) -> bool {
        matches!(self, Done::Closed(_))
    }

    /// The final view the channel closed with, if any.
    pub fn view(&self) -> Option<&Arc<JobView>> {
        match self {
            Done::Closed(v) => v.as_ref(),
            Done::Open => None,
        }
    }
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
            done: watch::channel(Done::Open).0,
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
        if ch.subscribers.is_empty() {
            return;
        }
        let capacity = self.buffer.unwrap_or(SUBSCRIBER_BUFFER);
        let event = Arc::new(event.clone());
        ch.subscribers.retain(|sub| {
            if Arc::strong_count(&sub.slot) == 1 {
                // Its Subscription was dropped.
                return false;
            }
            let mut s = lock_slot(&sub.slot);
            if s.queue.len() >= capacity {
                s.lagged = true;
                tracing::debug!(job = %event.job_id, "dropping a subscriber that fell behind");
                return false;
            }
            s.queue.push_back(event.clone());
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            true
        });
    }

    /// Closes a job's channel: subscribers get what is buffered, then the end.
    pub fn close(&self, id: JobId) {
        if let Some(ch) = self.lock().remove(&id) {
            ch.done.send_replace(Done::Closed(None));
        }
    }

    /// Closes a job's channel after its end was written, handing its
    /// waiters the job as the store now holds it.
    pub fn close_with(&self, id: JobId, view: JobView) {
        if let Some(ch) = self.lock().remove(&id) {
            ch.done.send_replace(Done::Closed(Some(Arc::new(view))));
        }
    }

    /// Closes every channel (shutdown).
    pub fn close_all(&self) {
        for (_, ch) in self.lock().drain() {
            ch.done.send_replace(Done::Closed(None));
        }
    }

    /// Live events of a job from now on.
    pub fn subscribe(&self, id: JobId) -> Subscription {
        let slot = SharedSlot::default();
        let mut jobs = self.lock();
        let bus = match jobs.get_mut(&id) {
            Some(ch) => {
                ch.subscribers.push(Subscriber { slot: slot.clone() });
                Some(self.jobs.clone())
            }
            None => {
                lock_slot(&slot).ended = true;
                None
            }
        };
        Subscription { slot, id, bus }
    }

    /// A signal that turns `Closed` when the job's channel closes; `None`
    /// when it is not open.
    pub fn done_signal(&self, id: JobId) -> Option<watch::Receiver<Done>> {
        self.lock().get(&id).map(|c| c.done.subscribe())
    }

    /// Subscribers across all jobs (for tests and stats).
    pub fn subscriber_count(&self, id: JobId) -> usize {
        self.lock().get(&id).map_or(0, |c| c.subscribers.len())
    }
}

/// Live events of one job, in `seq` order. Dropping it takes it off the
/// bus at once (an idle job publishes nothing that would notice), so that
/// nothing of it outlives its consumer.
pub struct Subscription {
    slot: SharedSlot,
    id: JobId,
    /// The bus it is on, if its job was open.
    bus: Option<Arc<Mutex<HashMap<JobId, Channel>>>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("on_bus", &self.bus.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(bus) = self.bus.take() else {
            return;
        };
        let mut jobs = bus.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = jobs.get_mut(&self.id) {
            if let Some(i) = ch
                .subscribers
                .iter()
                .position(|s| Arc::ptr_eq(&s.slot, &self.slot))
            {
                ch.subscribers.swap_remove(i);
            }
            if ch.subscribers.is_empty() {
                ch.subscribers = Vec::new();
            }
        }
    }
}

impl Subscription {
    /// The next event; `None` when the job's events are over or this
    /// subscriber fell behind and was dropped (see [`Subscription::lagged`]).
    pub async fn recv(&mut self) -> Option<JobEvent> {
        let event = poll_fn(|cx| {
            let mut s = lock_slot(&self.slot);
            if let Some(e) = s.queue.pop_front() {
                if s.queue.is_empty() && s.queue.capacity() > KEEP_CAPACITY {
                    // A burst is over: give its memory back.
                    s.queue = VecDeque::new();
                }
                return Poll::Ready(Some(e));
            }
            if s.ended {
                return Poll::Ready(None);
            }
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await?;
        Some(Arc::unwrap_or_clone(event))
    }

    /// Whether the stream ended because this subscriber fell behind.
    pub fn lagged(&self) -> bool {
        lock_slot(&self.slot).lagged
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
    async fn idle_subscribers_hold_no_buffer_and_dropped_ones_are_forgotten() {
        let bus = Bus::new();
        let id = JobId::new();
        bus.open(id);
        let mut sub = bus.subscribe(id);
        assert_eq!(
            lock_slot(&sub.slot).queue.capacity(),
            0,
            "nothing before events"
        );
        for seq in 1..=100 {
            bus.publish(&ev(id, seq));
        }
        for seq in 1..=100 {
            assert_eq!(sub.recv().await.expect("buffered").seq, seq);
        }
        assert_eq!(
            lock_slot(&sub.slot).queue.capacity(),
            0,
            "a drained burst gives its memory back"
        );
        // Dropped subscriptions leave the bus at once, even while the job
        // is silent; events are shared by subscribers, not copied.
        let others: Vec<Subscription> = (0..10).map(|_| bus.subscribe(id)).collect();
        assert_eq!(bus.subscriber_count(id), 11);
        drop(others);
        assert_eq!(bus.subscriber_count(id), 1);
        let other = bus.subscribe(id);
        assert_eq!(bus.subscriber_count(id), 2);
        bus.publish(&ev(id, 101));
        let a = lock_slot(&sub.slot).queue.front().cloned().expect("queued");
        let b = lock_slot(&other.slot)
            .queue
            .front()
            .cloned()
            .expect("queued");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        bus.close(id);
        assert_eq!(sub.recv().await.expect("buffered").seq, 101);
        assert!(sub.recv().await.is_none());
        assert!(!sub.lagged());
    }

    #[tokio::test]
    async fn closed_or_unknown_jobs_give_ended_streams() {
        let bus = Bus::new();
        let id = JobId::new();
        assert!(bus.subscribe(id).recv().await.is_none());
        bus.open(id);
        let mut done = bus.done_signal(id).expect("open");
        assert!(!done.borrow().is_closed());
        bus.close(id);
        done.changed().await.expect("signal");
        assert!(done.borrow().is_closed());
        assert!(bus.done_signal(id).is_none());
    }
}
