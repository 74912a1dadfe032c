//! `mode = "pool"` through the Runtime: jobs run on a warm worker (one
//! process serves several jobs), their progress becomes numbered events, a
//! thrown error fails only its job, a running pooled job can be cancelled,
//! and shutdown ends the pool.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, EventData, JobState};

fn pool_workflow() -> String {
    format!(
        "[workflows.pooled]\nroot = \"{}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n\
         pool = {{ min = 1, max = 1 }}\n",
        fixtures().display()
    )
}

#[tokio::test]
async fn pooled_jobs_reuse_a_warm_worker() {
    let h = start(&pool_workflow()).await;
    assert_eq!(h.rt.availability("pooled"), Some(Ok(())));
    let mut pids = Vec::new();
    for i in 0..3 {
        let id = h.submit("pooled", json!({"i": i, "progress": 2})).await;
        let v = h.wait(id).await;
        assert_eq!(v.state, JobState::Succeeded, "{v:?}");
        let result = v.result.expect("result");
        assert_eq!(result["params"]["i"], i);
        pids.push(result["pid"].as_u64().expect("pid"));
        let events = h.rt.events_after(id, 0).await.expect("events");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e.data, EventData::Progress(_)))
                .count(),
            2
        );
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one warm worker served all: {pids:?}"
    );
    // The pool's size is visible in the runtime's stats (/metrics).
    let stats = h.rt.stats();
    let pool = stats.pools.get("pooled").expect("the pool is in the stats");
    assert_eq!((pool.size, pool.started_total), (1, 1), "{pool:?}");

    let id = h.submit("pooled", json!({"throw": true})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");

    let id = h.submit("pooled", json!({"hang": true})).await;
    h.until_state(id, JobState::Running).await;
    let v = h.rt.cancel(id).await.expect("cancel");
    assert_eq!(v.state, JobState::Cancelled);
    assert_eq!(v.reason, Some(EndReason::Cancelled));

    // The worker survives its jobs' failures.
    let id = h.submit("pooled", json!({})).await;
    assert_eq!(h.wait(id).await.state, JobState::Succeeded);
    tokio::time::timeout(SOON, h.rt.shutdown(Duration::ZERO))
        .await
        .expect("shutdown ends");
}
