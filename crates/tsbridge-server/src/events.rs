//! Following one job's events for a streaming client (SSE and WebSocket):
//! stored events after a given `seq`, then live ones, in order, with no gap
//! and no duplicate, ending after the terminal `state` event. A consumer that
//! falls behind never slows a job: the live feed drops it, and it catches up
//! from the store.
//!
//! [`Follower`] does this in its consumer's own task (the WebSocket keeps
//! one per subscription, idle ones cost a few hundred bytes); [`follow`]
//! runs one on a task of its own behind a channel (SSE).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::{JobEvent, JobId};

use crate::backend::{Backend, EventFeed};
use crate::errors::ApiError;

/// Events handed to a consumer before it is awaited again.
const FOLLOW_BUFFER: usize = 64;

/// Streams the events of `id` with `seq > after`, then live ones, until the
/// job's terminal state event, `stop`, or the consumer dropping the stream.
/// A backend failure is the last item.
pub fn follow(
    backend: Arc<dyn Backend>,
    id: JobId,
    after: u64,
    stop: CancellationToken,
) -> ReceiverStream<Result<JobEvent, ApiError>> {
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    tokio::spawn(async move {
        let mut follower = Follower::new(backend, id, after);
        let pump = async {
            while let Some(item) = follower.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tx.closed() => {}
            _ = pump => {}
        }
    });
    ReceiverStream::new(rx)
}

/// Where a [`Follower`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Subscribe to the live feed (then read the store).
    Subscribe,
    /// Read the store after `last`; `last_read` once the job is known
    /// terminal (what is stored is then all there will be).
    Store {
        last_read: bool,
    },
    /// Take live events.
    Live,
    /// The feed ended or had a gap: is the job over?
    Check,
    Done,
}

/// One job's events after a given `seq`, stored then live, pulled with
/// [`Follower::next`] by the task that consumes them (no task, no channel).
/// It holds the live subscription and, between reads, nothing else: a batch
/// read from the store is dropped once handed out.
pub struct Follower {
    backend: Arc<dyn Backend>,
    id: JobId,
    /// The last `seq` handed out.
    last: u64,
    /// `last` when the current subscription was taken.
    before: u64,
    idle_rounds: u32,
    step: Step,
    feed: Option<EventFeed>,
    /// Stored events read and not yet handed out.
    stored: Option<std::vec::IntoIter<JobEvent>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("id", &self.id)
            .field("last", &self.last)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Follows the events of `id` with `seq > after`.
    pub fn new(backend: Arc<dyn Backend>, id: JobId, after: u64) -> Self {
        Self {
            backend,
            id,
            last: after,
            before: after,
            idle_rounds: 0,
            step: Step::Subscribe,
            feed: None,
            stored: None,
        }
    }

    fn deliver(&mut self, e: JobEvent) -> Option<Result<JobEvent, ApiError>> {
        self.last = e.seq;
        if e.data.is_terminal_state() {
            self.finish();
        }
        Some(Ok(e))
    }

    fn finish(&mut self) {
        self.step = Step::Done;
        self.feed = None;
        self.stored = None;
    }

    fn fail(&mut self, e: impl Into<ApiError>) -> Option<Result<JobEvent, ApiError>> {
        self.finish();
        Some(Err(e.into()))
    }

    /// The next event; after the terminal state event, or a backend
    /// failure (the last item), `None`.
    pub async fn next(&mut self) -> Option<Result<JobEvent, ApiError>> {
        loop {
            if let Some(batch) = &mut self.stored {
                match batch.find(|e| e.seq > self.last) {
                    Some(e) => return self.deliver(e),
                    None => self.stored = None,
                }
            }
            match self.step {
                Step::Done => return None,
                Step::Subscribe => {
                    // Subscribe first, then read the store: nothing falls in between.
                    self.feed = Some(self.backend.subscribe(self.id));
                    self.before = self.last;
                    self.step = Step::Store { last_read: false };
                }
                Step::Store { last_read } => {
                    // Batch by batch: a read returns a bounded number of events.
                    let batch = match self.backend.events_after(self.id, self.last).await {
                        Ok(b) => b,
                        Err(e) => return self.fail(e),
                    };
                    if batch.iter().any(|e| e.seq > self.last) {
                        self.stored = Some(batch.into_iter());
                    } else if last_read {
                        self.finish();
                    } else {
                        self.step = Step::Live;
                    }
                }
                Step::Live => {
                    let Some(feed) = &mut self.feed else {
                        self.step = Step::Check;
                        continue;
                    };
                    match feed.next().await {
                        Some(e) if e.seq <= self.last => {}
                        Some(e) if e.seq == self.last + 1 => return self.deliver(e),
                        // A gap (catch up from the store), or the feed ended
                        // (lagging, or the job's events are over).
                        Some(_) | None => {
                            self.feed = None;
                            self.step = Step::Check;
                        }
                    }
                }
                Step::Check => {
                    let view = match self.backend.get(self.id).await {
                        Ok(v) => v,
                        Err(e) => return self.fail(e),
                    };
                    if view.state.is_terminal() {
                        self.step = Step::Store { last_read: true };
                        continue;
                    }
                    if self.last == self.before {
                        self.idle_rounds += 1;
                        let pause = Duration::from_millis(20 * u64::from(self.idle_rounds.min(25)));
                        tokio::time::sleep(pause).await;
                    } else {
                        self.idle_rounds = 0;
                    }
                    self.step = Step::Subscribe;
                }
            }
        }
    }
}
