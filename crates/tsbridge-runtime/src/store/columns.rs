//! What both stores keep in their columns the same way, and read back the
//! same way: times as Unix ms, JSON as text (a job's parameters, request,
//! progress, error and result; an event's data), and the paging of a job
//! list. Each store reads its own row type and hands the values here.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tsbridge_proto::api::ApiErrorBody;
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState, Progress};

use super::{Inserted, JobRecord, StoredRequest, encode_cursor};
use crate::errors::StoreError;

/// The `store_meta` row of the request-env key's fingerprint (sealed.rs).
pub(super) const ENV_KEY_FINGERPRINT: &str = "env_key_fingerprint";

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

pub(super) fn json_text<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain data types cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub(super) fn corrupt(id: &str, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        job: id.to_owned(),
        what: what.into(),
    }
}

/// The text columns of a `jobs` row, read: its id, state and end reason,
/// and its JSON.
pub(super) struct JobText {
    pub id: JobId,
    pub state: JobState,
    pub reason: Option<EndReason>,
    pub params: Value,
    pub request: StoredRequest,
    pub progress: Option<Progress>,
    pub error: Option<ApiErrorBody>,
    pub result: Option<Value>,
}

/// Reads the text columns of the `jobs` row of id `id_s`, given the text
/// of a column by name (`None`: SQL NULL).
pub(super) fn read_job_text(
    id_s: &str,
    text: impl Fn(&str) -> Result<Option<String>, StoreError>,
) -> Result<JobText, StoreError> {
    let id: JobId = id_s.parse().map_err(|_| corrupt(id_s, "id"))?;
    let state = text("state")?
        .and_then(|s| JobState::parse(&s))
        .ok_or_else(|| corrupt(id_s, "state"))?;
    let reason = text("reason")?
        .map(|r| EndReason::parse(&r).ok_or_else(|| corrupt(id_s, "reason")))
        .transpose()?;
    let json = |col: &str| -> Result<Option<Value>, StoreError> {
        text(col)?
            .map(|t| serde_json::from_str(&t).map_err(|_| corrupt(id_s, col.to_owned())))
            .transpose()
    };
    let params = json("params")?.unwrap_or(Value::Null);
    let request: StoredRequest = match json("request")? {
        Some(v) => serde_json::from_value(v).map_err(|_| corrupt(id_s, "request"))?,
        None => StoredRequest::default(),
    };
    let progress = match json("progress")? {
        Some(v) => Some(serde_json::from_value(v).map_err(|_| corrupt(id_s, "progress"))?),
        None => None,
    };
    let error: Option<ApiErrorBody> = match json("error")? {
        Some(v) => Some(serde_json::from_value(v).map_err(|_| corrupt(id_s, "error"))?),
        None => None,
    };
    let result = json("result")?;
    Ok(JobText {
        id,
        state,
        reason,
        params,
        request,
        progress,
        error,
        result,
    })
}

/// Event `seq` of job `id`, from its `ts` and `data` columns.
pub(super) fn read_event(id: JobId, seq: i64, ts: i64, data: &str) -> Result<JobEvent, StoreError> {
    let data: EventData =
        serde_json::from_str(data).map_err(|_| corrupt(&id.to_string(), format!("event {seq}")))?;
    Ok(JobEvent {
        seq: seq.max(0) as u64,
        job_id: id,
        timestamp: from_ms(ts),
        data,
    })
}

/// A list page's jobs, read `limit + 1` at most: cuts the extra one off,
/// and answers the cursor of the next page (there is one when it was there).
pub(super) fn next_page(jobs: &mut Vec<JobRecord>, limit: u32) -> Option<String> {
    if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| encode_cursor(j.id))
    } else {
        None
    }
}

/// What an insert that found its idempotency key taken answers: the job
/// holding the key, `found` by the key after the insert's commit.
pub(super) fn key_taken(id: JobId, found: Option<JobRecord>) -> Result<Inserted, StoreError> {
    match found {
        Some(existing) => Ok(Inserted::Existing(Box::new(existing))),
        None => Err(corrupt(
            &id.to_string(),
            "idempotency conflict without a job",
        )),
    }
}
