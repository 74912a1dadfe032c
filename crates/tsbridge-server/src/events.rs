//! Following one job's events for a streaming client (SSE and WebSocket):
//! stored events after a given `seq`, then live ones, in order, with no gap
//! and no duplicate, ending after the terminal `state` event. A consumer that
//! falls behind never slows a job: the live feed drops it, and it catches up
//! from the store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::{JobEvent, JobId};

use crate::backend::Backend;
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
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tx.closed() => {}
            r = pump(backend.as_ref(), id, after, &tx) => {
                if let Err(e) = r {
                    let _ = tx.send(Err(e)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// What happened to the consumer side.
enum Flow {
    Continue,
    Done,
}

async fn deliver(
    tx: &mpsc::Sender<Result<JobEvent, ApiError>>,
    last: &mut u64,
    e: JobEvent,
) -> Flow {
    *last = e.seq;
    let terminal = e.data.is_terminal_state();
    if tx.send(Ok(e)).await.is_err() || terminal {
        Flow::Done
    } else {
        Flow::Continue
    }
}

/// Delivers every stored event after `last`, batch by batch (a read
/// returns a bounded number), until the store has nothing newer.
async fn drain_store(
    backend: &dyn Backend,
    id: JobId,
    last: &mut u64,
    tx: &mpsc::Sender<Result<JobEvent, ApiError>>,
) -> Result<Flow, ApiError> {
    loop {
        let batch = backend.events_after(id, *last).await?;
        let mut progressed = false;
        for e in batch {
            if e.seq <= *last {
                continue;
            }
            progressed = true;
            if let Flow::Done = deliver(tx, last, e).await {
                return Ok(Flow::Done);
            }
        }
        if !progressed {
            return Ok(Flow::Continue);
        }
    }
}

async fn pump(
    backend: &dyn Backend,
    id: JobId,
    after: u64,
    tx: &mpsc::Sender<Result<JobEvent, ApiError>>,
) -> Result<(), ApiError> {
    let mut last = after;
    let mut idle_rounds = 0u32;
    loop {
        // Subscribe first, then read the store: nothing falls in between.
        let mut feed = backend.subscribe(id);
        let before = last;
        if let Flow::Done = drain_store(backend, id, &mut last, tx).await? {
            return Ok(());
        }
        while let Some(e) = feed.next().await {
            if e.seq <= last {
                continue;
            }
            if e.seq != last + 1 {
                // A gap: catch up from the store.
                break;
            }
            if let Flow::Done = deliver(tx, &mut last, e).await {
                return Ok(());
            }
        }
        // The feed ended (lagging, or the job's events are over) or had a gap.
        let view = backend.get(id).await?;
        if view.state.is_terminal() {
            // Whatever is stored is all there will be.
            drain_store(backend, id, &mut last, tx).await?;
            return Ok(());
        }
        if last == before {
            idle_rounds += 1;
            let pause = Duration::from_millis(20 * u64::from(idle_rounds.min(25)));
            tokio::time::sleep(pause).await;
        } else {
            idle_rounds = 0;
        }
    }
}
