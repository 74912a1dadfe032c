//! Metrics: installing the Prometheus recorder (once per process), the HTTP
//! request counters, and the runtime's point-in-time gauges. Job counters
//! (by state and workflow), durations and spawn failures are recorded by the
//! runtime through the same `metrics` facade.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::backend::Stats;
use crate::errors::MetricsError;

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Buckets (seconds) of every `*_duration_seconds` histogram.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the process-wide Prometheus recorder and returns its handle.
/// Idempotent: a second call returns the first handle.
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let mut slot = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".to_owned()),
            &DURATION_BUCKETS,
        )
        .map_err(MetricsError::Install)?
        .install_recorder()
        .map_err(MetricsError::Install)?;
    describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        "tsbridge_http_requests_total",
        "HTTP requests by method, route and status"
    );
    metrics::describe_histogram!(
        "tsbridge_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method and route (to the response head)"
    );
    metrics::describe_counter!(
        "tsbridge_ws_slow_disconnects_total",
        "WebSocket clients disconnected for not reading fast enough"
    );
    metrics::describe_gauge!("tsbridge_queue_depth", "Jobs waiting to run");
    metrics::describe_gauge!("tsbridge_jobs_running", "Jobs running now");
    metrics::describe_gauge!(
        "tsbridge_jobs_running_by_workflow",
        "Jobs running now, per workflow"
    );
    metrics::describe_gauge!(
        "tsbridge_pool_workers",
        "Workers of each pool workflow (starting, idle or busy)"
    );
    metrics::describe_gauge!(
        "tsbridge_pool_workers_by_state",
        "Workers of each pool workflow by state (idle, busy, starting)"
    );
    metrics::describe_gauge!(
        "tsbridge_pool_waiting",
        "Jobs waiting for a worker of each pool workflow"
    );
    metrics::describe_counter!(
        "tsbridge_pool_worker_starts_total",
        "Worker processes started per pool workflow"
    );
    metrics::describe_counter!(
        "tsbridge_pool_worker_recycles_total",
        "Workers retired on purpose (max_jobs, max_age, idle_timeout, RSS) per pool workflow"
    );
    metrics::describe_counter!(
        "tsbridge_pool_worker_crashes_total",
        "Workers that died without being asked to, per pool workflow"
    );
}

/// Sets the gauges that mirror the runtime's counters.
pub fn export_stats(stats: &Stats) {
    metrics::gauge!("tsbridge_queue_depth").set(stats.queued as f64);
    metrics::gauge!("tsbridge_jobs_running").set(stats.running as f64);
    for (workflow, n) in &stats.running_by_workflow {
        metrics::gauge!("tsbridge_jobs_running_by_workflow", "workflow" => workflow.clone())
            .set(*n as f64);
    }
    for (workflow, p) in &stats.pools {
        let wf = || workflow.clone();
        metrics::gauge!("tsbridge_pool_workers", "workflow" => wf()).set(p.workers as f64);
        for (state, n) in [("idle", p.idle), ("busy", p.busy), ("starting", p.starting)] {
            metrics::gauge!("tsbridge_pool_workers_by_state", "workflow" => wf(), "state" => state)
                .set(n as f64);
        }
        metrics::gauge!("tsbridge_pool_waiting", "workflow" => wf()).set(p.waiting as f64);
        // The pools own these totals; mirror them as counters.
        metrics::counter!("tsbridge_pool_worker_starts_total", "workflow" => wf())
            .absolute(p.started_total);
        metrics::counter!("tsbridge_pool_worker_recycles_total", "workflow" => wf())
            .absolute(p.recycled_total);
        metrics::counter!("tsbridge_pool_worker_crashes_total", "workflow" => wf())
            .absolute(p.crashed_total);
    }
}

/// Middleware: counts requests and times them, labelled by the matched route
/// (never the raw path, so job ids do not explode the label set). The
/// router counts with [`HttpTimer`] inside its outer middleware (one layer
/// less per request); this is the same as a layer of its own.
pub async fn track_http(req: Request, next: Next) -> Response {
    let timer = HttpTimer::start(&req);
    let resp = next.run(req).await;
    timer.record(resp.status());
    resp
}

/// One request's labels and start, recorded once its response is known.
pub(crate) struct HttpTimer {
    method: SharedString,
    route: SharedString,
    started: Instant,
}

impl HttpTimer {
    pub(crate) fn start(req: &Request) -> Self {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(SharedString::const_str("unmatched"), |p| {
                SharedString::from(p.as_str().to_owned())
            });
        Self {
            method: method_label(req.method()),
            route,
            started: Instant::now(),
        }
    }

    /// `tsbridge_http_requests_total` and `tsbridge_http_request_duration_seconds`.
    pub(crate) fn record(self, status: StatusCode) {
        metrics::counter!(
            "tsbridge_http_requests_total",
            "method" => self.method.clone(),
            "route" => self.route.clone(),
            "status" => status.as_u16().to_string()
        )
        .increment(1);
        metrics::histogram!(
            "tsbridge_http_request_duration_seconds",
            "method" => self.method,
            "route" => self.route
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}

/// The method as a label: the standard ones without an allocation.
fn method_label(m: &Method) -> SharedString {
    let name = match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => return SharedString::from(m.as_str().to_owned()),
    };
    SharedString::const_str(name)
}
