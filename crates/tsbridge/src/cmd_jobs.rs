//! `tsbridge jobs ...`: a client of a running server (list as a status table,
//! the default; show, cancel, submit, logs with --follow). Output goes through
//! [`crate::output`]: a reader that goes away ends the command quietly.

use std::process::ExitCode;

use anyhow::{Context, Result};
use futures::StreamExt;
use tsbridge_client::{Client, ListParams};
use tsbridge_proto::api::{JobOptions, JobView, SubmitRequest};
use tsbridge_proto::{EventData, JobEvent, JobId, JobState};

use crate::cli::{JobsArgs, JobsCommand};
use crate::output::{err, errln, out, outln};

pub async fn main(mut args: JobsArgs) -> Result<ExitCode> {
    let client = Client::new(args.server.clone(), args.token.clone())
        .with_context(|| format!("invalid server URL {}", args.server))?;
    match args.command_or_list() {
        JobsCommand::List {
            state,
            workflow,
            limit,
            cursor,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(JobState::parse(s).with_context(|| {
                    format!("unknown state {s:?} (queued, running, succeeded, failed, cancelled, timed_out)")
                })?),
            };
            let list = client
                .list(&ListParams {
                    state,
                    workflow,
                    limit: Some(limit),
                    cursor,
                })
                .await?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out!("{}", table(&list.jobs))?;
                if let Some(c) = list.next_cursor {
                    errln!("(more: --cursor {c})")?;
                }
            }
        }
        JobsCommand::Show { id } => {
            let job = client.get(parse_id(&id)?).await?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&job)?)?;
            } else {
                out!("{}", details(&job))?;
            }
        }
        JobsCommand::Cancel { id } => {
            let job = client.cancel(parse_id(&id)?).await?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&job)?)?;
            } else {
                outln!("{} {}", job.job_id, job.state)?;
            }
        }
        JobsCommand::Submit {
            workflow,
            parameters,
            wait,
        } => {
            let parameters: serde_json::Value = serde_json::from_str(&parameters).context(
                "parameters must be a JSON value, e.g. '{\"inputPath\":\"data/a.csv\"}'",
            )?;
            let sub = client
                .submit(&SubmitRequest {
                    workflow,
                    parameters,
                    options: Some(JobOptions::default()),
                })
                .await?;
            if !wait {
                outln!("{} {}", sub.job_id, sub.state)?;
                return Ok(ExitCode::SUCCESS);
            }
            let events = client.follow_events(sub.job_id, None);
            print_events(events, args.json).await?;
            let job = client.get(sub.job_id).await?;
            outln!("{}", serde_json::to_string_pretty(&job.result)?)?;
            if job.state == JobState::Succeeded {
                return Ok(ExitCode::SUCCESS);
            }
            // Why, as `run` says it: the events above need not show it.
            if let Some(e) = &job.error {
                errln!(
                    "tsbridge: job {} {}: {}: {}",
                    job.job_id,
                    job.state,
                    e.kind,
                    e.message
                )?;
            }
            return Ok(ExitCode::from(1));
        }
        JobsCommand::Logs { id, follow } => {
            let id = parse_id(&id)?;
            if follow {
                print_events(client.follow_events(id, None), args.json).await?;
            } else {
                // Without --follow: what the job has said so far, then stop.
                let job = client.get(id).await?;
                if job.state.is_terminal() {
                    print_events(client.follow_events(id, None), args.json).await?;
                } else {
                    out!("{}", job.output.stdout)?;
                    err!("{}", job.output.stderr)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_id(s: &str) -> Result<JobId> {
    s.parse::<JobId>().map_err(anyhow::Error::from)
}

async fn print_events(
    events: impl futures::Stream<Item = Result<JobEvent, tsbridge_client::ClientError>>,
    json: bool,
) -> Result<()> {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if json {
            outln!("{}", serde_json::to_string(&ev)?)?;
            continue;
        }
        let ts = ev.timestamp.format("%H:%M:%S%.3f");
        match &ev.data {
            EventData::State { state, reason, .. } => match reason {
                Some(r) => outln!("{ts} state {state} ({r})")?,
                None => outln!("{ts} state {state}")?,
            },
            EventData::Log { level, message } => outln!("{ts} {} {message}", level.as_str())?,
            EventData::Progress(p) => outln!(
                "{ts} progress {}/{} ({:.0}%) {}",
                p.current,
                p.total,
                p.percentage,
                p.message
            )?,
            EventData::Result { value } => outln!("{ts} result {value}")?,
            EventData::Stdout { line } => outln!("{ts} | {line}")?,
            EventData::Stderr { line } => outln!("{ts} ! {line}")?,
        }
    }
    Ok(())
}

/// A status table like pueue's: one row per job, fixed columns.
fn table(jobs: &[JobView]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "WORKFLOW".to_owned(),
        "STATE".to_owned(),
        "REASON".to_owned(),
        "PROGRESS".to_owned(),
        "CREATED".to_owned(),
        "WALL".to_owned(),
    ]];
    for j in jobs {
        rows.push([
            j.job_id.to_string(),
            j.workflow.clone(),
            j.state.to_string(),
            j.reason.map(|r| r.to_string()).unwrap_or_default(),
            j.progress
                .as_ref()
                .map(|p| format!("{:.0}%", p.percentage))
                .unwrap_or_default(),
            j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            j.resources
                .wall_time_ms
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn details(j: &JobView) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<12} {v}\n"));
    kv("job", j.job_id.to_string());
    kv("workflow", j.workflow.clone());
    kv("state", j.state.to_string());
    if let Some(r) = j.reason {
        kv("reason", r.to_string());
    }
    if let Some(c) = j.exit_code {
        kv("exit code", c.to_string());
    }
    if let Some(sig) = j.signal {
        kv("signal", sig.to_string());
    }
    kv("created", j.created_at.to_rfc3339());
    if let Some(t) = j.started_at {
        kv("started", t.to_rfc3339());
    }
    if let Some(t) = j.finished_at {
        kv("finished", t.to_rfc3339());
    }
    kv("attempts", j.attempts.len().to_string());
    if let Some(p) = &j.progress {
        kv(
            "progress",
            format!("{}/{} {}", p.current, p.total, p.message),
        );
    }
    if let Some(m) = j.resources.peak_memory_bytes {
        kv(
            "peak memory",
            format!("{:.1} MiB", m as f64 / (1 << 20) as f64),
        );
    }
    if let Some(c) = j.resources.cpu_time_ms {
        kv("cpu time", format!("{c} ms"));
    }
    if let Some(e) = &j.error {
        kv("error", format!("{}: {}", e.kind, e.message));
    }
    if let Some(r) = &j.result {
        kv("result", r.to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[]);
        assert!(t.starts_with("ID"));
        assert_eq!(t.lines().count(), 1);
    }
}
