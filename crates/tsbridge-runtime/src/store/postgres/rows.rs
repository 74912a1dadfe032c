//! Rows of the PostgreSQL store to records and back (the column types of
//! `migrations/postgres`: integers are BIGINT, times Unix ms, JSON text).

use sqlx::Row;
use sqlx::postgres::PgRow;
use tsbridge_proto::api::{AttemptView, OutputView, Resources};
use tsbridge_proto::{EndReason, JobEvent, JobId};

use super::super::JobRecord;
use super::super::columns::{self, from_ms, read_job_text};
use super::super::list_output::cut_listed_output;
use crate::errors::StoreError;

fn get_err(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// A `jobs` row; `cut_output` keeps that many last bytes per stream of a
/// row read with the store's `list_columns!` (which carry each stream's
/// last characters and its length in bytes).
pub(super) fn read_job(row: &PgRow, cut_output: Option<usize>) -> Result<JobRecord, StoreError> {
    let g = get_err("read job row");
    let id_s: String = row.try_get("id").map_err(&g)?;
    let t = read_job_text(&id_s, |col| row.try_get(col).map_err(&g))?;
    let int = |col: &str| -> Result<i64, StoreError> { row.try_get::<i64, _>(col).map_err(&g) };
    let opt = |col: &str| -> Result<Option<i64>, StoreError> {
        row.try_get::<Option<i64>, _>(col).map_err(&g)
    };
    let opt_u64 =
        |col: &str| -> Result<Option<u64>, StoreError> { Ok(opt(col)?.map(|v| v.max(0) as u64)) };
    let mut output = OutputView {
        stdout: row.try_get("stdout").map_err(&g)?,
        stderr: row.try_get("stderr").map_err(&g)?,
        stdout_truncated: row.try_get("stdout_truncated").map_err(&g)?,
        stderr_truncated: row.try_get("stderr_truncated").map_err(&g)?,
        stdout_dropped_bytes: int("stdout_dropped")?.max(0) as u64,
        stderr_dropped_bytes: int("stderr_dropped")?.max(0) as u64,
    };
    if let Some(max) = cut_output {
        // The row holds the streams' last characters (the store's
        // `list_columns!`) and their whole length in bytes.
        let len = |col: &str| -> Result<u64, StoreError> {
            Ok(row.try_get::<i64, _>(col).map_err(&g)?.max(0) as u64)
        };
        cut_listed_output(&mut output, max, len("stdout_len")?, len("stderr_len")?);
    }
    let not_before = row
        .try_get::<Option<i64>, _>("not_before")
        .map_err(&g)?
        .map(from_ms);
    Ok(JobRecord {
        not_before,
        id: t.id,
        workflow: row.try_get("workflow").map_err(&g)?,
        state: t.state,
        reason: t.reason,
        priority: int("priority")? as i32,
        params: t.params,
        request: t.request,
        idempotency_key: row.try_get("idempotency_key").map_err(&g)?,
        max_attempts: int("max_attempts")?.max(0) as u32,
        attempts_started: int("attempts")?.max(0) as u32,
        node: row.try_get("node").map_err(&g)?,
        created_at: from_ms(int("created_at")?),
        started_at: opt("started_at")?.map(from_ms),
        finished_at: opt("finished_at")?.map(from_ms),
        progress: t.progress,
        result: t.result,
        error: t.error,
        exit_code: opt("exit_code")?.map(|v| v as i32),
        signal: opt("signal")?.map(|v| v as i32),
        process_id: opt_u64("process_id")?.map(|p| p as u32),
        output,
        resources: Resources {
            peak_memory_bytes: opt_u64("peak_memory")?,
            cpu_time_ms: opt_u64("cpu_ms")?,
            wall_time_ms: opt_u64("wall_ms")?,
        },
        last_seq: int("last_seq")?.max(0) as u64,
        attempts: Vec::new(),
    })
}

/// An `attempts` row, with its job id.
pub(super) fn read_attempt(row: &PgRow) -> Result<(String, AttemptView), StoreError> {
    let g = get_err("read attempt row");
    let opt = |col: &str| -> Result<Option<i64>, StoreError> {
        row.try_get::<Option<i64>, _>(col).map_err(&g)
    };
    let job: String = row.try_get("job_id").map_err(&g)?;
    let reason = row
        .try_get::<Option<String>, _>("reason")
        .map_err(&g)?
        .and_then(|r| EndReason::parse(&r));
    Ok((
        job,
        AttemptView {
            n: row.try_get::<i64, _>("n").map_err(&g)?.max(0) as u32,
            started_at: from_ms(row.try_get("started_at").map_err(&g)?),
            finished_at: opt("finished_at")?.map(from_ms),
            reason,
            exit_code: opt("exit_code")?.map(|v| v as i32),
            signal: opt("signal")?.map(|v| v as i32),
            process_id: opt("process_id")?.map(|v| v as u32),
        },
    ))
}

/// An `events` row (`seq, ts, data`) of job `id`.
pub(super) fn read_event(row: &PgRow, id: JobId) -> Result<JobEvent, StoreError> {
    let g = get_err("read event row");
    let seq: i64 = row.try_get("seq").map_err(&g)?;
    let ts: i64 = row.try_get("ts").map_err(&g)?;
    let data: String = row.try_get("data").map_err(&g)?;
    columns::read_event(id, seq, ts, &data)
}
