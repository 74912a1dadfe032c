//! The worker host script (`js/worker-host.mjs`), embedded in the binary and
//! materialized on disk for node to run: a directory of tsbridge's, 0755,
//! holding 0644 files, removed when the last pool using it is gone. Workers
//! that run as a workflow's own user read it and cannot change it (nor can
//! any other workflow's user: every worker loads it). Its content is the
//! public script shipped in the binary. A user may point at their own copy
//! instead ([`HostScript::Path`]).
//!
//! Beside the host go the two tiny TypeScript modules it transpiles while
//! it loads under tsx ([`WARMUP_FILES`]), so that tsx's esbuild services
//! start before the worker is ready (and are its own helpers, not a job's
//! strays). A user's copy may have them beside it; without them the host
//! skips the warm-up.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::errors::HostScriptError;

/// The worker host, as shipped (see js/README.md).
pub const WORKER_HOST_JS: &str = include_str!("../../../../js/worker-host.mjs");

/// The modules the host transpiles while it loads under tsx (file name,
/// content), written beside it: a CommonJS one (required and imported) and
/// an ES module, one for each of tsx's esbuild services.
pub(crate) const WARMUP_FILES: [(&str, &str); 2] = [
    (
        "worker-host-warm.cts",
        include_str!("../../../../js/worker-host-warm.cts"),
    ),
    (
        "worker-host-warm.mts",
        include_str!("../../../../js/worker-host-warm.mts"),
    ),
];

/// Where the worker host comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostScript {
    /// The embedded copy, written under this directory (default: the system
    /// temp dir) into a fresh private directory.
    #[default]
    Embedded,
    /// The embedded copy, written under this base directory.
    EmbeddedIn(PathBuf),
    /// A host script the user installed; used as is, never removed.
    Path(PathBuf),
}

/// The host script on disk, for as long as this value lives.
#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    /// The private directory to remove at drop (embedded copies only).
    owned_dir: Option<PathBuf>,
}

impl HostFile {
    /// Writes the embedded script (or checks the user's) and returns its path holder.
    pub fn materialize(source: &HostScript) -> Result<Self, HostScriptError> {
        match source {
            HostScript::Path(p) => {
                let path = fs::canonicalize(p).map_err(|source| HostScriptError::Missing {
                    path: p.clone(),
                    source,
                })?;
                Ok(Self {
                    path,
                    owned_dir: None,
                })
            }
            HostScript::Embedded => Self::write_embedded(&std::env::temp_dir()),
            HostScript::EmbeddedIn(base) => Self::write_embedded(base),
        }
    }

    fn write_embedded(base: &Path) -> Result<Self, HostScriptError> {
        // A private TMPDIR of this process (random key): the death watchdog
        // removes it if tsbridge is SIGKILLed, the next start's sweep if the
        // watchdog could not.
        let r: u64 = rand::random();
        let dir = tsbridge_process::make_private_tmp(base, &format!("pool-host-{r:016x}"))
            .map_err(|source| HostScriptError::CreateDir {
                base: base.to_owned(),
                source,
            })?;
        // Readable, not writable, by the workers' users (see the module doc).
        if let Err(source) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)) {
            let _ = fs::remove_dir_all(&dir);
            return Err(HostScriptError::CreateDir {
                base: base.to_owned(),
                source,
            });
        }
        let path = dir.join("worker-host.mjs");
        let files = std::iter::once(("worker-host.mjs", WORKER_HOST_JS)).chain(WARMUP_FILES);
        for (name, content) in files {
            let file = dir.join(name);
            let written = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&file)
                .and_then(|mut f| {
                    // The umask may have narrowed it.
                    f.set_permissions(fs::Permissions::from_mode(0o644))?;
                    f.write_all(content.as_bytes())
                });
            if let Err(source) = written {
                let _ = fs::remove_dir_all(&dir);
                return Err(HostScriptError::Write { path: file, source });
            }
        }
        Ok(Self {
            path,
            owned_dir: Some(dir),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        if let Some(dir) = self.owned_dir.take()
            && let Err(e) = fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the worker host's temp dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn embedded_copy_is_readable_not_writable_by_others_and_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let f = HostFile::materialize(&HostScript::EmbeddedIn(base.path().to_owned())).unwrap();
        let meta = fs::metadata(f.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let dir = f.path().parent().unwrap().to_owned();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read_to_string(f.path()).unwrap(), WORKER_HOST_JS);
        for (name, content) in WARMUP_FILES {
            let warm = dir.join(name);
            assert_eq!(fs::read_to_string(&warm).unwrap(), content, "{name}");
            assert_eq!(
                fs::metadata(&warm).unwrap().permissions().mode() & 0o777,
                0o644
            );
        }
        drop(f);
        assert!(!dir.exists());
    }

    #[test]
    fn user_path_is_kept() {
        let base = tempfile::tempdir().unwrap();
        let p = base.path().join("host.mjs");
        fs::write(&p, "x").unwrap();
        let f = HostFile::materialize(&HostScript::Path(p.clone())).unwrap();
        drop(f);
        assert!(p.exists());
        assert!(HostFile::materialize(&HostScript::Path(base.path().join("nope"))).is_err());
    }

    #[test]
    fn embedded_script_is_the_host() {
        assert!(WORKER_HOST_JS.contains("op: 'pong'"));
        for (name, _) in WARMUP_FILES {
            assert!(WORKER_HOST_JS.contains(name), "the host imports {name}");
        }
    }
}
