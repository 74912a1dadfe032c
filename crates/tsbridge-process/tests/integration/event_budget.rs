//! A child flooding the event stream (long lines, large results) costs
//! tsbridge at most the event budget (the larger of `max_output` and 1 MiB)
//! in queued events, even when nobody reads them; the rest are dropped and
//! counted, and the job's result is still the last one.

use crate::common;

use tsbridge_process::engine::MIN_EVENT_BUDGET;
use tsbridge_process::spawn;
use tsbridge_proto::ChildEvent;

/// Runs `event-flood.js` with its events left unread until the child has
/// exited, then drains them: the bytes of text they carry, and the outcome.
async fn flood(mode: &str, count: usize, size: usize) -> (usize, usize, tsbridge_process::Outcome) {
    let spec = common::node_fixture("event-flood.js")
        .args([mode.to_owned(), count.to_string(), size.to_string()])
        .max_output(256 * 1024) // below the minimum budget: 1 MiB applies
        .max_line(128 * 1024)
        .event_capacity(8192)
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let mut rx = p.take_events().unwrap();
    let o = p.wait().await;
    let (mut n, mut bytes) = (0, 0);
    while let Some(e) = rx.recv().await {
        n += 1;
        bytes += match e {
            ChildEvent::Output { line, .. } => line.len(),
            ChildEvent::Result { value } => value["pad"].as_str().map_or(0, str::len),
            _ => 0,
        };
    }
    (n, bytes, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_nobody_reads_stay_within_the_budget() {
    // 400 lines of 60 KiB: 24 MiB of events, far below the count capacity.
    let (n, bytes, o) = flood("lines", 400, 60 * 1024).await;
    assert!(o.exit.success(), "{:?}", o.exit);
    assert!(
        bytes <= MIN_EVENT_BUDGET,
        "{bytes} bytes queued in {n} events"
    );
    assert!(n >= 8, "the budget's worth was kept: {n} events");
    assert_eq!(
        o.events_dropped as usize + n,
        400,
        "every other event is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_nobody_reads_stay_within_the_budget() {
    // 60 results of 100 KiB: 6 MiB of results.
    let (n, bytes, o) = flood("results", 60, 100 * 1024).await;
    assert!(o.exit.success(), "{:?}", o.exit);
    assert!(
        bytes <= MIN_EVENT_BUDGET,
        "{bytes} bytes queued in {n} events"
    );
    assert!(o.events_dropped > 0);
    // The job's result is the last one, whatever the stream dropped.
    assert_eq!(o.result.as_ref().map(|r| r["n"].clone()), Some(59.into()));
}
