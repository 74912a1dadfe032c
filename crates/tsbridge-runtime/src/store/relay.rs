//! Live events of jobs in a store shared by many nodes: a job's events are
//! written by whichever node runs it, and every node announces what it
//! committed ([`JobStore::watch_events`]: job id and event numbers, no
//! bodies). The [`Relay`] of a node turns the announcements of the jobs its
//! subscribers (or waiters) follow into reads of
//! [`JobStore::events_after`], and publishes what it read on a bus of its
//! own, in `seq` order, each event once. Jobs nobody here follows cost
//! nothing but the announcement.
//!
//! On a shared store every subscription of the runtime goes through the
//! relay, also for jobs running on this node (whose events then come back
//! from the store a moment after their commit): a job may move between
//! nodes (a retry, a takeover) while it is followed, and one source of
//! events for a subscription keeps its order and its deduplication simple.
//!
//! Announcements are not durable (a listener reconnecting loses some): every
//! [`RESYNC`] the relay also reads the followed jobs from the store, ends
//! those that are over and publishes what it missed. A subscriber sees at
//! worst a gap, which it fills from the store (the runtime's documented
//! "subscribe, read the store, skip what was seen").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tsbridge_proto::JobId;

use super::{EventsWritten, JobStore};
use crate::bus::{Bus, Subscription};

/// How often the followed jobs are also read from the store.
pub(crate) const RESYNC: Duration = Duration::from_secs(2);

/// Events read per `events_after` call.
const READ_BATCH: u32 = 1000;

/// A node's relay of the events of a shared store. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bus: Bus,
    jobs: Mutex<HashMap<JobId, Followed>>,
}

/// A job someone on this node follows.
#[derive(Debug)]
struct Followed {
    /// The last `seq` published; `None` until the first announcement heard
    /// with a subscriber present (see [`Inner::on_written`]).
    cursor: Option<u64>,
    /// Turns true when the job is over (or gone); for waiters.
    ended: watch::Sender<bool>,
}

impl Followed {
    fn new() -> Self {
        Self {
            cursor: None,
            ended: watch::channel(false).0,
        }
    }
}

impl Relay {
    /// The relay of `store`, reading the followed jobs from the store every
    /// `resync` ([`RESYNC`]; tests that must not race a resync, or be
    /// rescued by one, use a long one), or `None` when the store has one
    /// node (no announcements). Its task ends with the last clone of the
    /// relay, or when the store stops announcing.
    pub(crate) fn start(
        store: Arc<dyn JobStore>,
        buffer: Option<usize>,
        resync: Duration,
    ) -> Option<Relay> {
        let written = store.watch_events()?;
        let bus = match buffer {
            Some(n) => Bus::with_buffer(n),
            None => Bus::new(),
        };
        let inner = Arc::new(Inner {
            bus,
            jobs: Mutex::new(HashMap::new()),
        });
        tokio::spawn(run(Arc::downgrade(&inner), store, written, resync));
        Some(Relay { inner })
    }

    /// Live events of `id` from now on (the bus's bounded-buffer semantics:
    /// a subscriber that falls behind is dropped and catches up from the
    /// store). Ends after the job's terminal event.
    pub(crate) fn subscribe(&self, id: JobId) -> Subscription {
        let mut jobs = self.inner.lock();
        jobs.entry(id).or_insert_with(Followed::new);
        self.inner.bus.open(id);
        self.inner.bus.subscribe(id)
    }

    /// A signal that turns true once the relay learns that `id` is over (or
    /// gone); read the store then. Taken before reading the store, it
    /// misses no end.
    pub(crate) fn ended(&self, id: JobId) -> watch::Receiver<bool> {
        let mut jobs = self.inner.lock();
        jobs.entry(id)
            .or_insert_with(Followed::new)
            .ended
            .subscribe()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Followed>> {
        // Every operation under this lock is a map update or a flag.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where to read `id` from for its subscribers: `None` when nobody
    /// follows its events (a job nobody follows at all is forgotten).
    fn read_from(&self, id: JobId, announced_first: Option<u64>) -> Option<u64> {
        let mut jobs = self.lock();
        let f = jobs.get_mut(&id)?;
        if self.bus.subscriber_count(id) == 0 {
            // Its cursor would go stale: a later subscriber starts afresh.
            f.cursor = None;
            if f.ended.receiver_count() == 0 {
                jobs.remove(&id);
                self.bus.close(id);
            }
            return None;
        }
        // The first announcement heard since the first subscriber came: its
        // events, and everything after, are new to that subscriber (it read
        // the store after subscribing, and commits are announced in order).
        f.cursor.or(announced_first.map(|f| f.saturating_sub(1)))
    }

    /// The job is over (or gone): waiters are told, subscribers get what is
    /// buffered, then the end.
    fn end(&self, id: JobId) {
        if let Some(f) = self.lock().remove(&id) {
            f.ended.send_replace(true);
        }
        self.bus.close(id);
    }

    /// An announcement: the events of a followed job are read and published.
    async fn on_written(&self, store: &dyn JobStore, w: EventsWritten) {
        if let Some(from) = self.read_from(w.job, Some(w.first))
            && w.last > from
        {
            self.relay(store, w.job, from).await;
        }
        if w.ended {
            self.end(w.job);
        }
    }

    /// Publishes the stored events of `id` after `from`, in order; ends the
    /// job at its terminal event.
    async fn relay(&self, store: &dyn JobStore, id: JobId, mut from: u64) {
        loop {
            let events = match store.events_after(id, from, READ_BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot read the events of a followed job");
                    return;
                }
            };
            let full = events.len() >= READ_BATCH as usize;
            for e in &events {
                if e.seq <= from {
                    continue;
                }
                from = e.seq;
                self.bus.publish(e);
                if e.data.is_terminal_state() {
                    self.end(id);
                    return;
                }
            }
            match self.lock().get_mut(&id) {
                Some(f) => f.cursor = Some(from),
                None => return,
            }
            if !full {
                return;
            }
        }
    }

    /// Reads every followed job from the store: those over (or gone) end,
    /// missed events are published.
    async fn resync(&self, store: &dyn JobStore) {
        let ids: Vec<JobId> = self.lock().keys().copied().collect();
        for id in ids {
            let rec = match store.get_job(id).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot read a followed job");
                    continue;
                }
            };
            let Some(rec) = rec else {
                self.end(id);
                continue;
            };
            // Without a cursor, what a subscriber has is unknown: its last
            // event is published, and a subscriber that lacks more sees the
            // gap and reads the store. A job that is over gets the events
            // after the cursor too, up to its terminal event, before the
            // end: a resync that comes between the runner's last commit and
            // its announcement used to end the stream without them.
            let latest = Some(rec.last_seq);
            if let Some(from) = self.read_from(id, latest)
                && rec.last_seq > from
            {
                self.relay(store, id, from).await;
            }
            if rec.state.is_terminal() {
                self.end(id);
            }
        }
    }
}

async fn run(
    inner: Weak<Inner>,
    store: Arc<dyn JobStore>,
    mut written: BoxStream<'static, EventsWritten>,
    every: Duration,
) {
    // The first resync one period from now (nothing is followed at start).
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            w = written.next() => {
                let (Some(w), Some(inner)) = (w, inner.upgrade()) else {
                    return;
                };
                inner.on_written(store.as_ref(), w).await;
            }
            _ = resync.tick() => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.resync(store.as_ref()).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The relay's logic on an embedded store whose announcements the test
    //! makes (the PostgreSQL path is tested end to end in
    //! `tests/integration/multi_node_pg.rs`).

    use chrono::Utc;
    use serde_json::json;
    use tokio::sync::mpsc;
    use tsbridge_proto::{EventData, JobEvent, JobId, JobState};

    use super::*;
    use crate::dispatcher::state_event;
    use crate::store::{DelegatingStore, Finish, NewJob, Overrides, SqliteStore, StoredRequest};

    /// Announces what the test sends (of a SQLite store).
    #[derive(Debug)]
    struct Announcing {
        announced: Mutex<Option<mpsc::Receiver<EventsWritten>>>,
    }

    impl Overrides for Announcing {
        fn watch_events(&self, _: &dyn JobStore) -> Option<BoxStream<'static, EventsWritten>> {
            let rx = self.announced.lock().unwrap().take()?;
            Some(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
        }
    }

    fn line(id: JobId, seq: u64) -> JobEvent {
        JobEvent {
            seq,
            job_id: id,
            timestamp: Utc::now(),
            data: EventData::Stdout {
                line: format!("line {seq}"),
            },
        }
    }

    type Store = DelegatingStore<Announcing>;

    async fn setup() -> (Arc<Store>, mpsc::Sender<EventsWritten>, Relay, JobId) {
        // No resync during a test: it would race the announcements the
        // test makes (a resync may publish or end on its own, by design).
        setup_with(Duration::from_secs(3600)).await
    }

    /// A store with one queued job and a relay that resyncs `every`.
    async fn setup_with(
        every: Duration,
    ) -> (Arc<Store>, mpsc::Sender<EventsWritten>, Relay, JobId) {
        let (tx, rx) = mpsc::channel(64);
        let store = Arc::new(DelegatingStore::new(
            Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
            Announcing {
                announced: Mutex::new(Some(rx)),
            },
        ));
        let id = JobId::new();
        store
            .insert_job(&NewJob {
                id,
                workflow: "wf".into(),
                priority: 0,
                params: json!({}),
                request: StoredRequest::default(),
                idempotency_key: None,
                max_attempts: 1,
                created_at: Utc::now(),
                event: state_event(id, 1, JobState::Queued, None, None),
            })
            .await
            .unwrap();
        let relay = Relay::start(store.clone(), None, every).expect("the store announces");
        (store, tx, relay, id)
    }

    fn written(job: JobId, first: u64, last: u64, ended: bool) -> EventsWritten {
        EventsWritten {
            job,
            first,
            last,
            ended,
        }
    }

    #[tokio::test]
    async fn announced_events_reach_subscribers_in_order_once_then_the_end() {
        let (store, tx, relay, id) = setup().await;
        let mut sub = relay.subscribe(id);
        let mut ended = relay.ended(id);
        store
            .append_events(id, &[line(id, 2), line(id, 3), line(id, 4)])
            .await
            .unwrap();
        // The same commit announced twice, and an overlapping one: read
        // and published once.
        tx.send(written(id, 2, 4, false)).await.unwrap();
        tx.send(written(id, 2, 4, false)).await.unwrap();
        store.append_events(id, &[line(id, 5)]).await.unwrap();
        tx.send(written(id, 3, 5, false)).await.unwrap();
        // Another job's announcement: nobody here follows it.
        tx.send(written(JobId::new(), 1, 9, true)).await.unwrap();
        let fin = Finish {
            state: JobState::Cancelled,
            reason: None,
            result: None,
            error: None,
            finished_at: Utc::now(),
        };
        let last = state_event(id, 6, JobState::Cancelled, None, None);
        store.finish_job(id, &fin, &last).await.unwrap();
        tx.send(written(id, 6, 6, true)).await.unwrap();
        let mut seqs = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("events in time")
        {
            seqs.push(e.seq);
        }
        assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
        assert!(!sub.lagged());
        tokio::time::timeout(Duration::from_secs(60), ended.wait_for(|d| *d))
            .await
            .expect("the end in time")
            .expect("signal");
        assert!(relay.inner.lock().is_empty(), "an ended job is forgotten");
    }

    /// A job that ended without its last commits being announced (the
    /// announcement not yet heard when a resync runs): the resync publishes
    /// the events after the subscriber's cursor, the terminal one last,
    /// then the end. It used to end the stream after the announced ones.
    #[tokio::test]
    async fn a_resync_of_a_finished_job_publishes_its_last_events_before_the_end() {
        let (store, tx, relay, id) = setup_with(Duration::from_millis(50)).await;
        let mut sub = relay.subscribe(id);
        store
            .append_events(id, &[line(id, 2), line(id, 3)])
            .await
            .unwrap();
        tx.send(written(id, 2, 3, false)).await.unwrap();
        // Up to 3, the cursor. A resync that runs between the commit and
        // its announcement finds no cursor and publishes only the last
        // event (3): 2 is then a gap the subscriber fills from the store,
        // as documented at the top, and the announcement adds nothing. So
        // 3 comes, 2 may not (a full test run under load took that path once:
        // the old test then waited for a second event that never came).
        let mut seqs = Vec::new();
        while seqs.last() != Some(&3) {
            let e = tokio::time::timeout(Duration::from_secs(60), sub.recv())
                .await
                .expect("events in time")
                .expect("the stream goes on");
            seqs.push(e.seq);
        }
        assert!(seqs == [2, 3] || seqs == [3], "{seqs:?}");
        // Never announced: only a resync can find them.
        store.append_events(id, &[line(id, 4)]).await.unwrap();
        let fin = Finish {
            state: JobState::Succeeded,
            reason: None,
            result: None,
            error: None,
            finished_at: Utc::now(),
        };
        let last = state_event(id, 5, JobState::Succeeded, None, None);
        store.finish_job(id, &fin, &last).await.unwrap();
        let mut after = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("events in time")
        {
            after.push(e.seq);
        }
        assert_eq!(
            after,
            vec![4, 5],
            "everything after the cursor, then the end"
        );
        assert!(!sub.lagged());
        drop(tx);
    }

    #[tokio::test]
    async fn a_job_nobody_follows_any_more_is_forgotten() {
        let (store, tx, relay, id) = setup().await;
        drop(relay.subscribe(id));
        assert_eq!(relay.inner.lock().len(), 1);
        store.append_events(id, &[line(id, 2)]).await.unwrap();
        tx.send(written(id, 2, 2, false)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !relay.inner.lock().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never forgotten");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!relay.inner.bus.is_open(id));
    }
}
