//! The child's environment: built from an allowlist (never inheriting
//! secret-looking host variables) and validated request overrides (never a
//! loader or interpreter hook). Pure functions, used before anything runs.

use std::collections::BTreeMap;

use crate::error::SecurityError;

/// Host variables every child inherits (when set on the host).
pub const BASE_ALLOWLIST: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "NODE_ENV"];

/// Name fragments that mark a variable as secret (case-insensitive).
const SECRET_MARKERS: &[&str] = &["PASSWORD", "PASSWD", "SECRET", "KEY", "TOKEN", "CREDENTIAL"];

/// Whether `name` looks like it holds a secret (contains PASSWORD, PASSWD,
/// SECRET, KEY, TOKEN or CREDENTIAL, case-insensitive). Such host variables
/// are never inherited, even when listed.
pub fn is_secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| up.contains(m))
}

/// The child's environment: [`BASE_ALLOWLIST`] plus `allowlist_from_host`
/// taken from `host_env` (secret-looking names skipped), then `extra` (the
/// workflow's configured env and the validated request env) on top. `extra` is
/// trusted here: validate request values with [`validate_request_env`] first.
pub fn build_child_env<I, K, V>(
    allowlist_from_host: &[&str],
    host_env: I,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut env = BTreeMap::new();
    for (k, v) in host_env {
        let k = k.as_ref();
        let listed = BASE_ALLOWLIST.contains(&k) || allowlist_from_host.contains(&k);
        if listed && !is_secret_name(k) {
            env.insert(k.to_owned(), v.as_ref().to_owned());
        }
    }
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// Names a request may never set, whatever the workflow allows.
const FORBIDDEN_EXACT: &[&str] = &[
    "PATH",
    // shells: startup files and code run on expansion
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    // glibc loaders
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    // other interpreters' startup hooks
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Name prefixes a request may never set.
const FORBIDDEN_PREFIXES: &[&str] = &[
    "LD_",        // LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...
    "DYLD_",      // macOS loader
    "NODE_", // NODE_OPTIONS, NODE_PATH, NODE_EXTRA_CA_CERTS, NODE_TLS_REJECT_UNAUTHORIZED, NODE_REPL_EXTERNAL_MODULE...
    "PYTHON", // PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, PYTHONWARNINGS (imports modules)...
    "BASH_FUNC_", // exported shell functions
    "OPENSSL_", // OPENSSL_CONF loads engines/providers (code)
    // The TypeScript runners tsbridge itself starts:
    "TS_NODE_", // TS_NODE_COMPILER, TS_NODE_TRANSPILER, TS_NODE_PROJECT load modules
    "ESBUILD_", // ESBUILD_BINARY_PATH: esbuild executes that binary
    "TSX_",     // TSX_TSCONFIG_PATH: a tsconfig's `paths` redirect imports
];

/// `NODE_*` names that are plain settings, not hooks.
const NODE_HARMLESS: &[&str] = &["NODE_ENV", "NODE_NO_WARNINGS"];

/// Whether a request may never set `name`: loader and interpreter hooks that
/// turn an env var into code execution or a trust downgrade. `NODE_*` is
/// refused except `NODE_ENV` and `NODE_NO_WARNINGS` (so `NODE_PATH` is
/// refused: it changes which code `require` loads).
pub fn is_forbidden_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    if NODE_HARMLESS.contains(&up.as_str()) {
        return false;
    }
    FORBIDDEN_EXACT.contains(&up.as_str()) || FORBIDDEN_PREFIXES.iter().any(|p| up.starts_with(p))
}

/// Check a request's env: every name must be well-formed, never a forbidden
/// hook (checked first, so the error names the hook even when the workflow
/// lists it), and allowed by the workflow; values must not contain NUL.
pub fn validate_request_env<S: AsRef<str>>(
    allowed: &[S],
    requested: &BTreeMap<String, String>,
) -> Result<(), SecurityError> {
    for (name, value) in requested {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(SecurityError::InvalidEnvName { name: name.clone() });
        }
        if is_forbidden_name(name) {
            return Err(SecurityError::ForbiddenEnv { name: name.clone() });
        }
        if !allowed.iter().any(|a| a.as_ref() == name) {
            return Err(SecurityError::EnvNotAllowed { name: name.clone() });
        }
        if value.contains('\0') {
            return Err(SecurityError::InvalidEnvValue { name: name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secret_names_are_detected_case_insensitively() {
        for n in [
            "DB_PASSWORD",
            "api_key",
            "GithubToken",
            "AWS_SECRET_ACCESS_KEY",
            "my_credentials",
            "PASSWD",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PATH", "HOME", "LANG", "NODE_ENV"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn child_env_takes_only_allowlisted_non_secret_host_vars() {
        let host = vec![
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("NODE_EXTRA_CA_CERTS", "/etc/ssl/x.crt"),
            ("DATABASE_URL", "postgres://x"),
            ("API_TOKEN", "s3cr3t"),
            ("LC_ALL", "C.UTF-8"),
        ];
        let env = build_child_env(
            &["DATABASE_URL", "API_TOKEN"],
            host,
            &map(&[("JOB", "1"), ("PATH", "/opt/bin")]),
        );
        assert_eq!(
            env,
            map(&[
                ("PATH", "/opt/bin"),
                ("HOME", "/root"),
                ("DATABASE_URL", "postgres://x"),
                ("LC_ALL", "C.UTF-8"),
                ("JOB", "1"),
            ])
        );
    }

    #[test]
    fn request_env_must_be_allowed_by_the_workflow() {
        let allowed = ["REPORT_DATE", "NODE_OPTIONS"];
        assert_eq!(
            validate_request_env(&allowed, &map(&[("REPORT_DATE", "2024")])),
            Ok(())
        );
        assert_eq!(
            validate_request_env(&allowed, &map(&[("OTHER", "x")])),
            Err(SecurityError::EnvNotAllowed {
                name: "OTHER".into()
            })
        );
    }

    #[test]
    fn hooks_are_refused_even_when_allowed() {
        for name in [
            "LD_PRELOAD",
            "ld_library_path",
            "DYLD_INSERT_LIBRARIES",
            "NODE_OPTIONS",
            "NODE_PATH",
            "NODE_EXTRA_CA_CERTS",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "PATH",
            "BASH_ENV",
            "ENV",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "BASH_FUNC_x%%",
            "GCONV_PATH",
            "OPENSSL_CONF",
            "PERL5OPT",
            "JAVA_TOOL_OPTIONS",
            "GLIBC_TUNABLES",
            "TS_NODE_COMPILER",
            "ts_node_project",
            "ESBUILD_BINARY_PATH",
            "TSX_TSCONFIG_PATH",
        ] {
            let r = validate_request_env(&[name], &map(&[(name, "x")]));
            assert_eq!(
                r,
                Err(SecurityError::ForbiddenEnv { name: name.into() }),
                "{name}"
            );
            let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(name), "{msg}");
        }
        assert_eq!(
            validate_request_env(&["NODE_ENV"], &map(&[("NODE_ENV", "production")])),
            Ok(())
        );
    }

    #[test]
    fn malformed_names_and_values_are_refused() {
        assert!(matches!(
            validate_request_env(&["A=B"], &map(&[("A=B", "x")])),
            Err(SecurityError::InvalidEnvName { .. })
        ));
        assert!(matches!(
            validate_request_env(&["A"], &map(&[("A", "x\0y")])),
            Err(SecurityError::InvalidEnvValue { .. })
        ));
    }
}
