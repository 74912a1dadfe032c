//! A stand-in launcher for the integration tests while the engine's IPC
//! wiring is pending: node started with tokio::process and the IPC module's
//! channel (same host script, same protocol, same pool). Kill = SIGKILL of
//! the leader (the test handlers start no children).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tsbridge_process::ipc::{IpcChannel, IpcError, IpcHandle, IpcIncoming, attach_to_command};
use tsbridge_proto::event::Stream;
use tsbridge_proto::{ChildEvent, WorkerId};
use tsbridge_runtime::pool::{
    HostFile, HostLink, Launcher, LinkError, PoolConfig, WorkerExit, WorkerInput, WorkerIo, WorkerSpec,
    WorkerStartError,
};

#[derive(Debug)]
pub struct DirectLauncher {
    spec: WorkerSpec,
    host: HostFile,
    dev: bool,
}

impl DirectLauncher {
    pub fn new(spec: WorkerSpec, cfg: &PoolConfig) -> Self {
        let host = HostFile::materialize(&spec.host).unwrap();
        Self { spec, host, dev: cfg.dev_mode }
    }
}

#[derive(Debug)]
struct Link(IpcHandle);

#[async_trait::async_trait]
impl HostLink for Link {
    async fn request(&self, payload: Value, timeout: Duration) -> Result<Value, LinkError> {
        self.0.request(payload, timeout).await.map_err(|e| match e {
            IpcError::Timeout { timeout, .. } => LinkError::Timeout(timeout),
            IpcError::Remote { payload, .. } => LinkError::Remote(payload),
            _ => LinkError::Closed,
        })
    }
    async fn close(&self) {
        self.0.close().await;
    }
}

#[async_trait::async_trait]
impl Launcher for DirectLauncher {
    async fn launch(&self, _worker: WorkerId) -> Result<WorkerIo, WorkerStartError> {
        let s = &self.spec;
        let (parent, child_end) = IpcChannel::new().map_err(|e| WorkerStartError::Spawn(e.into()))?;
        let mut cmd = tokio::process::Command::new(&s.program);
        cmd.args(&s.node_args).arg(self.host.path()).arg(&s.module);
        if self.dev {
            cmd.arg("--dev");
        }
        cmd.current_dir(&s.cwd)
            .env_clear()
            .envs(&s.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        attach_to_command(cmd.as_std_mut(), &child_end);
        let mut child = cmd.spawn().map_err(|e| WorkerStartError::Spawn(e.into()))?;
        drop(child_end);
        let (handle, mut incoming) = parent.start().map_err(|e| WorkerStartError::Spawn(e.into()))?;
        let pid = child.id();
        let (tx, from_host) = mpsc::channel(1024);
        let kill = CancellationToken::new();
        let k = kill.clone();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            let mut err = BufReader::new(stderr).lines();
            let (mut out_open, mut err_open, mut ipc_open) = (true, true, true);
            let status = loop {
                tokio::select! {
                    l = out.next_line(), if out_open => match l {
                        Ok(Some(line)) => { let _ = tx.send(WorkerInput::Event(ChildEvent::Output { stream: Stream::Stdout, line })).await; }
                        _ => out_open = false,
                    },
                    l = err.next_line(), if err_open => match l {
                        Ok(Some(line)) => { let _ = tx.send(WorkerInput::Event(ChildEvent::Output { stream: Stream::Stderr, line })).await; }
                        _ => err_open = false,
                    },
                    m = incoming.recv(), if ipc_open => match m {
                        Some(IpcIncoming::Event(ev)) => { let _ = tx.send(WorkerInput::Event(ev)).await; }
                        Some(_) => {}
                        None => ipc_open = false,
                    },
                    _ = k.cancelled() => { let _ = child.start_kill(); }
                    st = child.wait(), if !out_open && !err_open => break st,
                }
            };
            while let Some(m) = incoming.recv().await {
                if let IpcIncoming::Event(ev) = m {
                    let _ = tx.send(WorkerInput::Event(ev)).await;
                }
            }
            use std::os::unix::process::ExitStatusExt;
            let exit = match status {
                Ok(st) => match (st.code(), st.signal()) {
                    (Some(c), _) => WorkerExit::Code(c),
                    (None, Some(s)) => WorkerExit::Signal(s),
                    _ => WorkerExit::Unknown,
                },
                Err(_) => WorkerExit::Unknown,
            };
            let _ = tx.send(WorkerInput::Exited(exit)).await;
        });
        Ok(WorkerIo { pid, link: Arc::new(Link(handle)), from_host, kill })
    }
}
