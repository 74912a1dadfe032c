//! A tiny host for the engine, used by integration tests and benches that
//! need a clean process of their own: it runs one job and prints what
//! happened as one JSON line (with its own peak RSS, VmHWM).
//!
//! `tsbridge-engine-probe [--subreaper [--no-watchdog]] [--max-output BYTES] [--timeout-ms MS]
//!  [--kill-grace-ms MS] [--script [--no-cache]] [--pid-namespace] -- PROGRAM [ARGS...]`
//!
//! With `--pid-namespace`, the job runs in a PID namespace of its own under
//! the engine's init (a sandbox without cgroups, the default policy).
//!
//! With `--script`, PROGRAM is a script resolved by `runtime::resolve_for_spawn`
//! (by extension; TypeScript through the transpile cache in its default dir
//! unless `--no-cache`), as `tsbridge run` does.
//!
//! Prints `SPAWNED <pid>` as soon as the job runs, then the JSON summary:
//! `{exit_code, signal, reason, stdout_total, stdout_dropped, head_len,
//! tail_len, head_sha256, tail_sha256, vm_hwm_kib, wall_ms}`.

use std::io::Write;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tsbridge_process::{JobSpec, SupervisorOptions, init_supervisor_with, spawn};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn usage() -> ! {
    eprintln!(
        "usage: tsbridge-engine-probe [--subreaper [--no-watchdog]] [--max-output BYTES] [--timeout-ms MS] [--kill-grace-ms MS] -- PROGRAM [ARGS...]"
    );
    std::process::exit(2)
}

/// A sandbox without cgroups whose policy asks for a PID namespace.
fn pid_namespace_sandbox() -> Result<tsbridge_process::SandboxAttachment, String> {
    use std::sync::Arc;
    use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};
    let sb = Sandbox::new(SandboxConfig {
        use_cgroups: false,
        ..SandboxConfig::default()
    })
    .map_err(|e| e.to_string())?;
    if !sb.capabilities().pid_ns {
        return Err(format!("no PID namespaces: {:?}", sb.capabilities().notes));
    }
    let policy = SandboxPolicy {
        pid_namespace: true,
        ..SandboxPolicy::default()
    };
    let prepared = sb.prepare("probe", &policy).map_err(|e| e.to_string())?;
    Ok(tsbridge_process::SandboxAttachment {
        prepared: Arc::new(prepared),
        policy: Arc::new(policy),
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut subreaper = false;
    let mut watchdog = true;
    let mut max_output: Option<usize> = None;
    let mut timeout = None;
    let mut grace = None;
    let mut rest = Vec::new();
    let mut script = false;
    let mut cache = true;
    let mut pid_namespace = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--subreaper" => subreaper = true,
            "--no-watchdog" => watchdog = false,
            "--script" => script = true,
            "--no-cache" => cache = false,
            "--pid-namespace" => pid_namespace = true,
            "--max-output" => max_output = args.next().and_then(|v| v.parse().ok()),
            "--timeout-ms" => {
                timeout = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis)
            }
            "--kill-grace-ms" => {
                grace = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis)
            }
            "--" => {
                rest.extend(args.by_ref());
                break;
            }
            _ => usage(),
        }
    }
    let Some(program) = rest.first().cloned() else {
        usage()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1)
        }
    };
    let code = rt.block_on(async move {
        if subreaper && let Err(e) = init_supervisor_with(SupervisorOptions { watchdog }) {
            eprintln!("subreaper: {e}");
        }
        let mut b = if script {
            use tsbridge_process::runtime::{RuntimeSearch, resolve_for_spawn_async};
            use tsbridge_process::transpile::TranspileCache;
            let tc = if cache {
                TranspileCache::new(None).ok()
            } else {
                None
            };
            let inv =
                match resolve_for_spawn_async(program.into(), None, RuntimeSearch::default(), tc)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("resolve: {e}");
                        return 1;
                    }
                };
            eprintln!("via {:?}", inv.via);
            inv.builder()
        } else {
            JobSpec::builder(program)
        };
        b = b
            .args(rest.into_iter().skip(1))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .timeout(timeout);
        if let Some(m) = max_output {
            b = b.max_output(m);
        }
        if let Some(g) = grace {
            b = b.kill_grace(g);
        }
        if pid_namespace {
            match pid_namespace_sandbox() {
                Ok(a) => b = b.sandbox(Some(a)),
                Err(e) => {
                    eprintln!("sandbox: {e}");
                    return 1;
                }
            }
        }
        let spec = match b.build() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("invalid: {e}");
                return 1;
            }
        };
        let mut p = match spawn(spec).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("spawn: {e}: {}", e.source);
                return 1;
            }
        };
        println!("SPAWNED {}", p.pid());
        let _ = std::io::stdout().flush();
        drop(p.take_events());
        let o = p.wait().await;
        let summary = serde_json::json!({
            "exit_code": o.exit.code(),
            "signal": o.exit.signal(),
            "reason": o.reason.as_str(),
            "stdout_total": o.stdout.total,
            "stdout_dropped": o.stdout.dropped,
            "head_len": o.stdout.head.len(),
            "tail_len": o.stdout.tail.len(),
            "head_sha256": hex::encode(Sha256::digest(&o.stdout.head)),
            "tail_sha256": hex::encode(Sha256::digest(&o.stdout.tail)),
            "vm_hwm_kib": vm_hwm_kib(),
            "wall_ms": o.wall.as_millis() as u64,
            "cpu_ms": o.cpu.as_millis() as u64,
        });
        println!("{summary}");
        0
    });
    std::process::exit(code)
}
