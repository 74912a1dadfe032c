//! [`Backend`] for the real job runtime (`tsbridge_runtime::Runtime`), and
//! the server settings and state built from its config.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use tsbridge_proto::api::{JobList, JobOptions, JobView};
use tsbridge_proto::service::{Readiness, WorkflowInfo};
use tsbridge_proto::{JobEvent, JobId};
use tsbridge_runtime::config::{ServerConfig, TokenSpec};
use tsbridge_runtime::{Runtime, RuntimeError};

use crate::auth::TokenSource;
use crate::backend::{Backend, BackendError, EventFeed, ListQuery, PoolGauges, Stats, Submitted};
use crate::errors::AuthError;
use crate::state::{AppState, ServerSettings};

impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        let kind = e.error_type();
        // An internal error's message reaches the log (and, in dev mode,
        // the client) only: it carries its whole chain of causes, so that
        // "database or disk is full" is not lost behind "job store write
        // failed".
        let message = match kind {
            tsbridge_proto::ErrorType::InternalError => tsbridge_runtime::Causes(&e).to_string(),
            _ => e.to_string(),
        };
        BackendError {
            kind,
            message,
            details: e.details(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<&TokenSpec> for TokenSource {
    fn from(t: &TokenSpec) -> Self {
        match t {
            TokenSpec::Literal(s) => TokenSource::Literal(s.clone()),
            TokenSpec::Env(n) => TokenSource::Env(n.clone()),
            TokenSpec::Sha256(d) => TokenSource::Sha256(*d),
        }
    }
}

impl ServerSettings {
    /// The settings of a config's `[server]` table (the rest at defaults).
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            tokens: server.tokens.iter().map(TokenSource::from).collect(),
            max_body: usize::try_from(server.max_body.bytes()).unwrap_or(usize::MAX),
            drain_timeout: server.drain_timeout,
            batch_concurrency: server.batch_concurrency.max(1),
            dev: server.dev,
            ..Self::default()
        }
    }
}

impl AppState {
    /// The state of a server in front of `runtime`, with the settings of its
    /// config; `env:NAME` tokens are read now.
    pub fn from_runtime(runtime: Runtime) -> Result<Self, AuthError> {
        let settings = ServerSettings::from_config(&runtime.config().server);
        AppState::new(Arc::new(runtime), settings)
    }
}

#[async_trait]
impl Backend for Runtime {
    async fn submit(
        &self,
        workflow: &str,
        parameters: Value,
        options: JobOptions,
    ) -> Result<Submitted, BackendError> {
        let s = Runtime::submit(self, workflow, parameters, options).await?;
        Ok(Submitted {
            job_id: s.job_id,
            state: s.state,
            existing: s.existing,
        })
    }

    async fn get(&self, id: JobId) -> Result<JobView, BackendError> {
        Ok(Runtime::get(self, id).await?)
    }

    async fn list(&self, q: ListQuery) -> Result<JobList, BackendError> {
        Ok(Runtime::list(
            self,
            tsbridge_runtime::ListQuery {
                state: q.state,
                workflow: q.workflow,
                limit: q.limit,
                cursor: q.cursor,
            },
        )
        .await?)
    }

    async fn cancel(&self, id: JobId) -> Result<JobView, BackendError> {
        Ok(Runtime::cancel(self, id).await?)
    }

    async fn wait(&self, id: JobId) -> Result<JobView, BackendError> {
        Ok(Runtime::wait(self, id).await?)
    }

    async fn events_after(&self, id: JobId, after_seq: u64) -> Result<Vec<JobEvent>, BackendError> {
        Ok(Runtime::events_after(self, id, after_seq).await?)
    }

    fn subscribe(&self, id: JobId) -> EventFeed {
        Runtime::subscribe(self, id).into_stream().boxed()
    }

    fn workflows(&self) -> Vec<WorkflowInfo> {
        Runtime::workflows(self)
    }

    async fn readiness(&self) -> Readiness {
        Runtime::readiness(self).await
    }

    fn stats(&self) -> Stats {
        let s = Runtime::stats(self);
        Stats {
            queued: s.queued,
            running: s.running,
            running_by_workflow: s.running_by_workflow,
            pools: s
                .pools
                .into_iter()
                .map(|(name, p)| {
                    let gauges = PoolGauges {
                        workers: p.size as u64,
                        idle: p.idle as u64,
                        busy: p.busy as u64,
                        starting: p.starting as u64,
                        waiting: p.waiting as u64,
                        started_total: p.started_total,
                        recycled_total: p.recycled_total,
                        crashed_total: p.crashed_total,
                    };
                    (name, gauges)
                })
                .collect(),
        }
    }

    async fn shutdown(&self, drain: Duration) {
        Runtime::shutdown(self, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsbridge_runtime::StoreError;

    /// A store failure's message names the store's operation and its cause
    /// (the API hides it unless in dev mode; the log shows it).
    #[test]
    fn an_internal_error_carries_its_causes() {
        let e = RuntimeError::Store(StoreError::Query {
            op: "insert job",
            source: sqlx::Error::Protocol("database or disk is full".into()),
        });
        let b = BackendError::from(e);
        assert_eq!(b.kind, tsbridge_proto::ErrorType::InternalError);
        assert!(b.message.contains("insert job"), "{}", b.message);
        assert!(
            b.message.contains("database or disk is full"),
            "{}",
            b.message
        );
    }
}
