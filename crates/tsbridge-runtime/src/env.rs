//! The environment of a child: a small allowlist inherited from tsbridge,
//! the workflow's `env.pass` and `env.set`, the request's own variables
//! (only names the workflow allows, never loader or interpreter hooks), and
//! the job's private `TMPDIR`. Names that look secret are never inherited.

use std::collections::BTreeMap;

use crate::config::EnvConfig;

/// Inherited from tsbridge's environment when set.
pub const BASE_ALLOWLIST: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "NODE_ENV"];

/// Whether a variable's name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "KEY", "TOKEN", "CREDENTIAL"]
        .iter()
        .any(|w| up.contains(w))
}

/// Names a request may never set: they load code into the child or change
/// what program runs.
pub fn is_hook_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    up.starts_with("LD_")
        || up.starts_with("DYLD_")
        || up.starts_with("NODE_")
        || up.starts_with("PYTHON")
        || up.starts_with("PERL5")
        || up.starts_with("RUBY")
        || up.starts_with("BASH_FUNC_")
        || matches!(
            up.as_str(),
            "PATH" | "BASH_ENV" | "ENV" | "GCONV_PATH" | "TMPDIR" | "HOME" | "IFS" | "SHELLOPTS"
        )
}

/// Checks a name a workflow lists in `env.request`.
pub fn check_request_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("invalid environment variable name {name:?}"));
    }
    if is_hook_name(name) {
        return Err(format!(
            "{name} can inject code into the child and cannot be set by requests"
        ));
    }
    Ok(())
}

/// A request's variable refused (403 `SecurityError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvRefused {
    #[error("environment variable {0} is forbidden: it can inject code into the child")]
    Forbidden(String),
    #[error("environment variable {0} is not allowed by this workflow")]
    NotAllowed(String),
    #[error("environment variable {0:?} has an invalid name or value")]
    Invalid(String),
}

/// Checks a request's variables against the workflow's `env.request`.
pub fn validate_request_env(
    cfg: &EnvConfig,
    request: &BTreeMap<String, String>,
) -> Result<(), EnvRefused> {
    for (k, v) in request {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(EnvRefused::Invalid(k.clone()));
        }
        if is_hook_name(k) {
            return Err(EnvRefused::Forbidden(k.clone()));
        }
        if !cfg.request.iter().any(|n| n == k) {
            return Err(EnvRefused::NotAllowed(k.clone()));
        }
    }
    Ok(())
}

/// The complete environment of one child.
pub fn build_child_env(
    cfg: &EnvConfig,
    request: &BTreeMap<String, String>,
    tmpdir: Option<&std::path::Path>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in BASE_ALLOWLIST.iter().copied().chain(cfg.pass.iter().map(String::as_str)) {
        if is_secret_name(name) && !cfg.pass.iter().any(|p| p == name) {
            continue;
        }
        if let Ok(v) = std::env::var(name) {
            env.insert(name.to_owned(), v);
        }
    }
    for (k, v) in &cfg.set {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in request {
        env.insert(k.clone(), v.clone());
    }
    if let Some(t) = tmpdir {
        let t = t.display().to_string();
        env.insert("TMPDIR".to_owned(), t.clone());
        env.insert("TMP".to_owned(), t.clone());
        env.insert("TEMP".to_owned(), t);
    }
    env
}

/// The values of the child's environment that must be masked in output:
/// those of variables with secret-looking names, and every request value.
pub fn secret_values(
    env: &BTreeMap<String, String>,
    request: &BTreeMap<String, String>,
) -> Vec<String> {
    env.iter()
        .filter(|(k, _)| is_secret_name(k))
        .map(|(_, v)| v.clone())
        .chain(request.values().cloned())
        .filter(|v| v.len() >= 4)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_env_is_filtered() {
        let cfg = EnvConfig {
            request: vec!["OMEGA_QUALITY".into()],
            ..EnvConfig::default()
        };
        let ok = BTreeMap::from([("OMEGA_QUALITY".to_owned(), "high".to_owned())]);
        assert!(validate_request_env(&cfg, &ok).is_ok());
        for bad in ["NODE_OPTIONS", "LD_PRELOAD", "PATH", "DYLD_INSERT_LIBRARIES"] {
            let r = BTreeMap::from([(bad.to_owned(), "x".to_owned())]);
            assert_eq!(validate_request_env(&cfg, &r), Err(EnvRefused::Forbidden(bad.into())));
        }
        let r = BTreeMap::from([("OTHER".to_owned(), "x".to_owned())]);
        assert_eq!(validate_request_env(&cfg, &r), Err(EnvRefused::NotAllowed("OTHER".into())));
        assert!(check_request_name("NODE_OPTIONS").is_err());
        assert!(is_secret_name("AWS_SECRET_ACCESS_KEY"));
        assert!(!is_secret_name("LANG"));
    }

    #[test]
    fn child_env_has_tmpdir_and_set_values() {
        let cfg = EnvConfig {
            set: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            ..EnvConfig::default()
        };
        let env = build_child_env(&cfg, &BTreeMap::new(), Some(std::path::Path::new("/tmp/x")));
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("TMPDIR").map(String::as_str), Some("/tmp/x"));
        assert!(env.keys().all(|k| !is_secret_name(k)));
    }
}
