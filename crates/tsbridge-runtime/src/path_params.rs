//! Path parameters (a workflow's `path_params`): each must resolve, after
//! symlinks and component by component, inside the allowed roots (the
//! workflow's root, or one of its `limits.read`/`limits.write` entries). A
//! relative path is resolved against the root (SPEC §5).
//!
//! Checked twice: at submit, where a refusal is the client's 400/403 and
//! nothing is stored; and again right before each spawn, on the job's
//! stored parameters, whose checked *canonical* paths are what the child
//! gets. So the child never resolves a path itself (against its cwd, or
//! through a symlink swapped while the job was queued): it opens exactly
//! the file that was checked. The stored parameters and the API keep the
//! client's own strings (no host paths in answers).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::WorkflowConfig;
use crate::errors::RuntimeError;
use crate::executor::{AttemptOutcome, AttemptRequest};

/// The parameters an attempt's program gets (see [`resolve`]); a refusal
/// is the attempt's outcome (a spawn failure: nothing runs). Spawn and pool
/// executors both call it right before they start the job.
pub(crate) fn for_attempt(req: &AttemptRequest) -> Result<Cow<'_, Value>, Box<AttemptOutcome>> {
    resolve(&req.workflow, &req.params).map_err(|e| {
        tracing::warn!(job = %req.job_id, error = %e, "a path parameter is no longer allowed");
        Box::new(AttemptOutcome::spawn_failure(e.to_string(), false))
    })
}

/// The parameters with every path parameter replaced by its canonical
/// absolute path (strings; arrays element by element); borrowed when there
/// is none. `BadRequest` for a value that is not a path string, `Security`
/// for one outside the roots.
pub(crate) fn resolve<'a>(
    wf: &WorkflowConfig,
    params: &'a Value,
) -> Result<Cow<'a, Value>, RuntimeError> {
    if !wf.path_params.iter().any(|n| params.get(n).is_some()) {
        return Ok(Cow::Borrowed(params));
    }
    let mut out = params.clone();
    for name in &wf.path_params {
        let Some(v) = out.get_mut(name) else {
            continue;
        };
        match v {
            Value::String(s) => *s = resolve_one(wf, name, s)?,
            Value::Array(a) => {
                // Every element must be a path: a nested array or an object
                // would reach the program unchecked (`${p}` flattens it).
                for e in a.iter_mut() {
                    let Value::String(s) = e else {
                        return Err(RuntimeError::BadRequest(format!(
                            "parameter {name} must be a path string or an array of path strings"
                        )));
                    };
                    *s = resolve_one(wf, name, s)?;
                }
            }
            Value::Null => {}
            _ => {
                return Err(RuntimeError::BadRequest(format!(
                    "parameter {name} must be a path string"
                )));
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// The checked canonical targets in parameters [`resolve`]d for an
/// attempt (what its Landlock ruleset lets the job read).
pub(crate) fn targets(wf: &WorkflowConfig, resolved: &Value) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in &wf.path_params {
        match resolved.get(name) {
            Some(Value::String(s)) => out.push(PathBuf::from(s)),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(PathBuf::from))
            }
            _ => {}
        }
    }
    out
}

fn resolve_one(wf: &WorkflowConfig, name: &str, given: &str) -> Result<String, RuntimeError> {
    let canonical = confine_to_allowed(wf, Path::new(given)).map_err(|e| {
        RuntimeError::Security(format!(
            "parameter {name}: {}",
            safe_security_message(&e, given)
        ))
    })?;
    // A canonical path that is not UTF-8 (a symlink's target) cannot be a
    // JSON string: refused rather than passed in another form.
    canonical.into_os_string().into_string().map_err(|_| {
        RuntimeError::Security(format!(
            "parameter {name}: path {given:?} resolves to a name that is not UTF-8"
        ))
    })
}

/// `confine` to the root, else to the first `limits.read`/`limits.write`
/// entry that contains the path (an entry that does not exist contains
/// nothing). The root's refusal is the one reported.
fn confine_to_allowed(
    wf: &WorkflowConfig,
    candidate: &Path,
) -> Result<PathBuf, tsbridge_sandbox::SecurityError> {
    use tsbridge_sandbox::SecurityError as S;
    let err = match tsbridge_sandbox::paths::confine(&wf.root, candidate) {
        Ok(p) => return Ok(p),
        Err(e @ (S::NulInPath | S::EmptyPath)) => return Err(e),
        Err(e) => e,
    };
    // Relative paths mean the same file whichever root is tried.
    let absolute = wf.root.join(candidate);
    for allowed in wf.limits.read.iter().chain(&wf.limits.write) {
        if let Ok(p) = tsbridge_sandbox::paths::confine(allowed, &absolute) {
            return Ok(p);
        }
    }
    Err(err)
}

/// The sandbox's message names host paths (the root); say it with the
/// request's own path only.
fn safe_security_message(e: &tsbridge_sandbox::SecurityError, given: &str) -> String {
    use tsbridge_sandbox::SecurityError as S;
    match e {
        S::NulInPath => "path contains a NUL byte".into(),
        S::EmptyPath => "path is empty".into(),
        _ => format!("path {given:?} resolves outside the workflow's allowed roots"),
    }
}
