//! `tsbridge check`: validates a config (every error with its key and line)
//! and reports which isolation mechanisms this host provides, and what each
//! workflow's limits would get here.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use tsbridge_runtime::Config;
use tsbridge_sandbox::{Sandbox, SandboxConfig};

use crate::cli::CheckArgs;

pub async fn main(args: CheckArgs) -> Result<ExitCode> {
    // A private parent cgroup: `check` must never sweep a running server's jobs.
    let sandbox = Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-check-{}", std::process::id()),
        ..SandboxConfig::default()
    });
    let caps = sandbox.as_ref().ok().map(|s| s.capabilities().clone());
    if let Ok(s) = &sandbox {
        // Best effort: the parent dir is empty, it was made for this probe.
        let _ = s.remove_parent();
    }

    let config = match &args.config {
        None => None,
        Some(path) => match Config::load(path) {
            Ok(c) => Some(Ok(c)),
            Err(e) => Some(Err(e)),
        },
    };

    let mut ok = true;
    if args.json {
        let mut out = json!({ "isolation": caps });
        if let Err(e) = &sandbox {
            out["isolation_error"] = json!(e.to_string());
        }
        match &config {
            None => {}
            Some(Ok(c)) => {
                let mut wf = serde_json::Map::new();
                for (name, w) in &c.workflows {
                    let report = caps.as_ref().map(|caps| {
                        caps.predict(&tsbridge_runtime::spawn::policy_for(
                            w,
                            std::path::Path::new("/tmp"),
                        ))
                    });
                    wf.insert(name.clone(), json!({ "mode": w.mode.as_str(), "runtime": w.runtime.as_str(), "isolation": report }));
                }
                out["config"] = json!({ "valid": true, "workflows": wf });
            }
            Some(Err(e)) => {
                ok = false;
                let issues: Vec<_> = e
                    .issues()
                    .iter()
                    .map(|i| json!({"key": i.key, "line": i.line, "message": i.message}))
                    .collect();
                out["config"] = json!({ "valid": false, "error": e.to_string(), "issues": issues });
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("Isolation on this host");
        match (&caps, &sandbox) {
            (Some(c), _) => println!("{c}"),
            (None, Err(e)) => println!("  unavailable: {e}"),
            (None, Ok(_)) => {}
        }
        match &config {
            None => {}
            Some(Ok(c)) => {
                println!(
                    "Config {}: valid, {} workflow(s)",
                    args.config
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    c.workflows.len()
                );
                for (name, w) in &c.workflows {
                    println!(
                        "  {name}: {} mode, runtime {}",
                        w.mode.as_str(),
                        w.runtime.as_str()
                    );
                    if let Some(caps) = &caps {
                        let report = caps.predict(&tsbridge_runtime::spawn::policy_for(
                            w,
                            std::path::Path::new("/tmp"),
                        ));
                        for (mech, e) in report.shortfalls() {
                            let degraded = if w.limits.degraded {
                                " (degraded mode allowed)"
                            } else {
                                " (workflow will be unavailable)"
                            };
                            println!("    {mech}: {e:?}{degraded}");
                        }
                    }
                }
            }
            Some(Err(e)) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
