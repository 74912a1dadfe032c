//! `GET /v1/jobs/:id/events`: a job's events as Server-Sent Events. Each has
//! `id:` (its `seq`), `event:` (its type) and `data:` (the event as JSON).
//! A connection replays the stored events from the start, or after
//! `Last-Event-ID` (header, or `?lastEventId=`), then follows live ones and
//! ends after the terminal `state` event.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tsbridge_proto::JobEvent;
use tsbridge_proto::api::Failure;

use crate::errors::ApiError;
use crate::events::follow;
use crate::extract::job_id;
use crate::state::AppState;

/// The resume point: `Last-Event-ID` wins over `?lastEventId=`.
fn resume_after(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<u64, ApiError> {
    let raw = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or_else(|| query.get("lastEventId").cloned());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::validation(format!(
                "invalid Last-Event-ID {s:?}: expected an event number"
            ))
        }),
    }
}

fn sse_event(e: &JobEvent) -> Event {
    let ev = Event::default().id(e.seq.to_string()).event(e.data.kind());
    match serde_json::to_string(e) {
        Ok(json) => ev.data(json),
        Err(_) => ev.data("{}"),
    }
}

/// Stream a job's events (replay, then live).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "The job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event number"),
        ("lastEventId" = Option<String>, Query, description = "Same, for clients that cannot set headers"),
    ),
    responses(
        (status = 200, description = "text/event-stream of the job's events", content_type = "text/event-stream", body = tsbridge_proto::JobEvent),
        (status = 400, description = "Invalid Last-Event-ID", body = tsbridge_proto::api::Failure),
        (status = 404, description = "No such job", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    let after = resume_after(&headers, &query)?;
    // 404 before the stream starts.
    state.backend().get(id).await?;
    let stream = follow(
        state.backend_arc(),
        id,
        after,
        state.shutdown_token().child_token(),
    )
    .map(|item| {
        Ok(match item {
            Ok(e) => sse_event(&e),
            Err(err) => {
                let body = Failure {
                    success: false,
                    error: err.public_body(),
                };
                Event::default()
                    .event("error")
                    .data(serde_json::to_string(&body).unwrap_or_default())
            }
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.settings().keepalive)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resume_point() {
        let mut h = HeaderMap::new();
        let mut q = HashMap::new();
        assert_eq!(resume_after(&h, &q).unwrap(), 0);
        q.insert("lastEventId".to_owned(), "4".to_owned());
        assert_eq!(resume_after(&h, &q).unwrap(), 4);
        h.insert("last-event-id", "7".parse().unwrap());
        assert_eq!(resume_after(&h, &q).unwrap(), 7);
        h.insert("last-event-id", "x".parse().unwrap());
        assert!(resume_after(&h, &q).is_err());
    }
}
