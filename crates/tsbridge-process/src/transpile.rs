//! The transpile cache: a TypeScript entry compiled once by esbuild into a
//! CommonJS bundle (local imports bundled, packages left external and found
//! through `NODE_PATH`), then run as plain `node <bundle>` (~50 ms) instead
//! of `node --import tsx` (~170 ms).
//!
//! Layout: `<cache dir>/<sha256(entry path, esbuild path)>/{bundle.cjs,
//! manifest.json}`. The manifest lists every input of the bundle (esbuild's
//! metafile inputs, plus every `tsconfig.json`/`package.json` from the
//! entry's directory up to the root) with size, mtime, ctime, inode and a
//! sha256 of its content.
//!
//! Validation on each use costs one read of the manifest and one `stat` per
//! input, and never runs esbuild. An input whose stat differs, or whose mtime
//! is too close to the build time to be trusted ("racy": a write in the same
//! timestamp tick as the build would leave the stat unchanged), is re-hashed;
//! a changed hash rebuilds. So a changed source never runs stale code.
//!
//! An input stamped (coarse clock, as the kernel stamps files) at or after
//! the tick the build started may have changed after esbuild read it: then
//! the bundle is used once but no manifest is written, so the next run
//! builds again.
//!
//! A bundle that uses `__dirname`, `__filename` or `import.meta` is not
//! cached (those would name the cache dir, not the source): the caller falls
//! back to tsx. Writes are atomic (temp file + rename), so concurrent jobs
//! never see half a bundle.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TranspileError;

/// Inputs modified less than this before the build are re-hashed on use.
const RACY_WINDOW: Duration = Duration::from_secs(2);
const MANIFEST_VERSION: u32 = 1;

/// A cache directory of compiled entries.
#[derive(Clone, Debug)]
pub struct TranspileCache {
    dir: PathBuf,
}

/// A compiled entry, ready to run with `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// The bundle to run.
    pub bundle: PathBuf,
    /// `node_modules` directories from the entry's directory up, for `NODE_PATH`
    /// (packages are external to the bundle).
    pub node_path: Vec<PathBuf>,
    /// Whether this use rebuilt the bundle.
    pub rebuilt: bool,
}

impl Compiled {
    /// The `NODE_PATH` value for the child.
    pub fn node_path_env(&self) -> OsString {
        std::env::join_paths(&self.node_path).unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct Manifest {
    version: u32,
    entry: PathBuf,
    esbuild: PathBuf,
    /// Seconds since the epoch, as f64, when the build started.
    built_at: f64,
    inputs: Vec<Input>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Input {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    sha256: String,
}

impl TranspileCache {
    /// `$XDG_CACHE_HOME/tsbridge/transpile` (when set), else
    /// `/tmp/tsbridge-cache-<uid>/transpile`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_CACHE_HOME") {
            Some(x) if !x.is_empty() => PathBuf::from(x).join("tsbridge").join("transpile"),
            _ => {
                // SAFETY: getuid never fails and has no side effects.
                let uid = unsafe { libc::getuid() };
                PathBuf::from(format!("/tmp/tsbridge-cache-{uid}")).join("transpile")
            }
        }
    }

    /// Opens (creating with mode 0700) the cache at `dir`, or at
    /// [`Self::default_dir`]. Refused when the directory or its parent is
    /// owned by another user, is a symlink, or (the parent) is writable by
    /// others.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, TranspileError> {
        let dir = dir.unwrap_or_else(Self::default_dir);
        let err = |source| TranspileError::CacheDir {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        // SAFETY: getuid never fails and has no side effects.
        let uid = unsafe { libc::getuid() };
        // The dir and its parent (e.g. /tmp/tsbridge-cache-<uid>) must be
        // ours and closed to others: whoever can rename entries in them can
        // swap a bundle that tsbridge will run.
        let parent = dir.parent().filter(|p| p.file_name().is_some());
        let denied = |d: &Path, why: &str| {
            err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: {why}", d.display()),
            ))
        };
        let meta = fs::symlink_metadata(&dir).map_err(err)?;
        if meta.uid() != uid || !meta.is_dir() {
            return Err(denied(&dir, "not a directory owned by this user"));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        if let Some(p) = parent {
            let meta = fs::metadata(p).map_err(err)?;
            let mode = meta.permissions().mode();
            let owner_ok = meta.uid() == uid || meta.uid() == 0;
            let sticky = mode & 0o1000 != 0;
            if !owner_ok || (mode & 0o022 != 0 && !sticky) {
                return Err(denied(p, "parent is writable by other users"));
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The esbuild binary for `entry`: `node_modules/@esbuild/linux-x64/bin/esbuild`
    /// or `node_modules/esbuild/bin/esbuild`, walking up from the entry's
    /// directory, then in `extra_node_modules`.
    pub fn find_esbuild(
        entry: &Path,
        extra_node_modules: &[PathBuf],
    ) -> Result<PathBuf, TranspileError> {
        let mut looked_in = Vec::new();
        let dirs = ancestor_node_modules(entry)
            .into_iter()
            .chain(extra_node_modules.iter().cloned());
        for nm in dirs {
            for rel in ["@esbuild/linux-x64/bin/esbuild", "esbuild/bin/esbuild"] {
                let p = nm.join(rel);
                if is_executable(&p) {
                    return Ok(p);
                }
            }
            looked_in.push(nm);
        }
        Err(TranspileError::EsbuildNotFound { looked_in })
    }

    /// The compiled bundle for `entry`, rebuilt when any input changed.
    /// Blocking (stat calls; esbuild on a miss): from async code, run it in
    /// `spawn_blocking`.
    pub fn get_or_build(&self, entry: &Path, esbuild: &Path) -> Result<Compiled, TranspileError> {
        let entry = fs::canonicalize(entry).map_err(|source| TranspileError::Io {
            path: entry.to_path_buf(),
            source,
        })?;
        let slot = self.dir.join(slot_key(&entry, esbuild));
        let bundle = slot.join("bundle.cjs");
        let node_path = ancestor_node_modules(&entry);
        let manifest_path = slot.join("manifest.json");
        if let Some(mut m) = read_manifest(&manifest_path)
            && m.version == MANIFEST_VERSION
            && m.entry == entry
            && m.esbuild == esbuild
            && bundle.is_file()
            && let Check::Unchanged { rehashed } = check_inputs(&m)
        {
            if rehashed {
                // Content confirmed equal after the racy window: later writes
                // will show in the stat, so trust it from now on.
                let now = now_secs();
                let newest = m
                    .inputs
                    .iter()
                    .map(|i| (i.mtime_ns.max(i.ctime_ns) as f64) / 1e9)
                    .fold(0.0, f64::max);
                if now - newest > RACY_WINDOW.as_secs_f64() {
                    m.built_at = now;
                    let _ = write_atomic(&slot, &manifest_path, &m);
                }
            }
            return Ok(Compiled {
                bundle,
                node_path,
                rebuilt: false,
            });
        }
        self.build(&entry, esbuild, &slot)?;
        Ok(Compiled {
            bundle,
            node_path,
            rebuilt: true,
        })
    }

    fn build(&self, entry: &Path, esbuild: &Path, slot: &Path) -> Result<(), TranspileError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TranspileError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(slot)
            .map_err(io_err(slot))?;
        let built_at = now_secs();
        // File timestamps come from the coarse clock: an input stamped at or
        // after this tick may have changed after esbuild read it.
        let started_coarse_ns = coarse_now_ns();
        let tag = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let tmp_bundle = slot.join(format!("bundle.{tag}.tmp.cjs"));
        let tmp_meta = slot.join(format!("meta.{tag}.tmp.json"));
        let out = Command::new(esbuild)
            .arg(entry)
            .arg("--bundle")
            .arg("--platform=node")
            .arg("--format=cjs")
            .arg("--packages=external")
            .arg("--sourcemap=inline")
            .arg("--log-level=warning")
            .arg(format!("--outfile={}", tmp_bundle.display()))
            .arg(format!("--metafile={}", tmp_meta.display()))
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| TranspileError::EsbuildSpawn {
                esbuild: esbuild.to_path_buf(),
                source,
            })?;
        let cleanup = || {
            let _ = fs::remove_file(&tmp_bundle);
            let _ = fs::remove_file(&tmp_meta);
        };
        if !out.status.success() {
            cleanup();
            return Err(TranspileError::EsbuildFailed {
                entry: entry.to_path_buf(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr)
                    .chars()
                    .take(4000)
                    .collect(),
            });
        }
        let meta_text = fs::read(&tmp_meta).map_err(io_err(&tmp_meta))?;
        let meta: Metafile =
            serde_json::from_slice(&meta_text).map_err(|source| TranspileError::Metafile {
                path: tmp_meta.clone(),
                source,
            })?;
        let code = fs::read(&tmp_bundle).map_err(io_err(&tmp_bundle))?;
        if uses_location(&code) {
            cleanup();
            return Err(TranspileError::EsbuildFailed {
                entry: entry.to_path_buf(),
                status: "not cacheable".into(),
                stderr: "the program uses __dirname, __filename or import.meta, which would name the cache dir".into(),
            });
        }
        let mut paths: Vec<PathBuf> = meta
            .inputs
            .keys()
            .filter(|k| !k.contains(':'))
            .map(|k| Path::new("/").join(k))
            .collect();
        paths.extend(config_files(entry));
        paths.sort();
        paths.dedup();
        let mut inputs = Vec::with_capacity(paths.len());
        for p in paths {
            inputs.push(describe(&p).map_err(io_err(&p))?);
        }
        let changed_during_build = inputs
            .iter()
            .any(|i| i.mtime_ns.max(i.ctime_ns) >= started_coarse_ns);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            entry: entry.to_path_buf(),
            esbuild: esbuild.to_path_buf(),
            built_at,
            inputs,
        };
        let _ = fs::remove_file(&tmp_meta);
        fs::rename(&tmp_bundle, slot.join("bundle.cjs")).map_err(io_err(slot))?;
        if changed_during_build {
            // The bundle may hold older content than the hashes say: use it
            // for this run (the edit raced with it) but write no manifest, so
            // the next run builds again.
            let _ = fs::remove_file(slot.join("manifest.json"));
            tracing::debug!(entry = %entry.display(), "an input changed during the build; not cached");
            return Ok(());
        }
        write_atomic(slot, &slot.join("manifest.json"), &manifest).map_err(io_err(slot))?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Metafile {
    inputs: BTreeMap<String, serde_json::Value>,
}

fn slot_key(entry: &Path, esbuild: &Path) -> String {
    let mut h = Sha256::new();
    h.update(entry.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(esbuild.as_os_str().as_encoded_bytes());
    hex::encode(&h.finalize()[..16])
}

fn read_manifest(p: &Path) -> Option<Manifest> {
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

enum Check {
    Unchanged { rehashed: bool },
    Changed,
}

fn check_inputs(m: &Manifest) -> Check {
    let racy_before = m.built_at - RACY_WINDOW.as_secs_f64();
    let mut rehashed = false;
    let ok = m.inputs.iter().all(|i| {
        let Ok(md) = fs::metadata(&i.path) else {
            return false;
        };
        let same_stat = md.len() == i.size
            && mtime_ns(&md) == i.mtime_ns
            && ctime_ns(&md) == i.ctime_ns
            && md.ino() == i.ino;
        let racy =
            (i.mtime_ns as f64 / 1e9) >= racy_before || (i.ctime_ns as f64 / 1e9) >= racy_before;
        if same_stat && !racy {
            return true;
        }
        // Stat changed (touch, copy) or too recent to trust: compare content.
        if !same_stat {
            return false;
        }
        rehashed = true;
        matches!(hash_file(&i.path), Ok(h) if h == i.sha256)
    });
    if ok {
        Check::Unchanged { rehashed }
    } else {
        Check::Changed
    }
}

fn write_atomic(slot: &Path, dest: &Path, m: &Manifest) -> io::Result<()> {
    let tmp = slot.join(format!(
        "manifest.{}-{:08x}.tmp.json",
        std::process::id(),
        rand::random::<u32>()
    ));
    let text = serde_json::to_vec(m).map_err(io::Error::other)?;
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&text)?;
    }
    fs::rename(&tmp, dest)
}

fn describe(p: &Path) -> io::Result<Input> {
    let md = fs::metadata(p)?;
    Ok(Input {
        path: p.to_path_buf(),
        size: md.len(),
        mtime_ns: mtime_ns(&md),
        ctime_ns: ctime_ns(&md),
        ino: md.ino(),
        sha256: hash_file(p)?,
    })
}

fn hash_file(p: &Path) -> io::Result<String> {
    let data = fs::read(p)?;
    Ok(hex::encode(Sha256::digest(&data)))
}

fn mtime_ns(md: &fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

fn ctime_ns(md: &fs::Metadata) -> i128 {
    i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec())
}

/// CLOCK_REALTIME_COARSE in ns: the clock the kernel stamps files with.
fn coarse_now_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if r != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `node_modules` dirs from the entry's directory up to `/`, nearest first.
pub fn ancestor_node_modules(entry: &Path) -> Vec<PathBuf> {
    let start = entry.parent().unwrap_or(Path::new("/"));
    start
        .ancestors()
        .map(|d| d.join("node_modules"))
        .filter(|d| d.is_dir())
        .collect()
}

/// `tsconfig.json` and `package.json` files from the entry's directory up
/// (they change how esbuild compiles).
fn config_files(entry: &Path) -> Vec<PathBuf> {
    let start = entry.parent().unwrap_or(Path::new("/"));
    start
        .ancestors()
        .flat_map(|d| [d.join("tsconfig.json"), d.join("package.json")])
        .filter(|p| p.is_file())
        .collect()
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the bundle refers to its own location (which would be the cache's).
fn uses_location(code: &[u8]) -> bool {
    // The inline source map holds the original sources: only look at the code.
    let end = memchr::memmem::find(code, b"//# sourceMappingURL=").unwrap_or(code.len());
    let code = &code[..end];
    ["__dirname", "__filename", "import.meta", "import_meta"]
        .iter()
        .any(|w| memchr::memmem::find(code, w.as_bytes()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_use_is_detected_in_code_only() {
        assert!(uses_location(b"var x = __dirname;"));
        assert!(uses_location(b"const import_meta = {};"));
        assert!(!uses_location(
            b"console.log(1);\n//# sourceMappingURL=data:...__dirname"
        ));
    }

    #[test]
    fn slot_keys_differ_by_entry_and_esbuild() {
        let a = slot_key(Path::new("/a.ts"), Path::new("/e"));
        let b = slot_key(Path::new("/b.ts"), Path::new("/e"));
        let c = slot_key(Path::new("/a.ts"), Path::new("/f"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn cache_dir_under_a_parent_others_can_write_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(TranspileCache::new(Some(open.join("c"))).is_err());
        // Sticky (like /tmp): others cannot rename our entries.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(TranspileCache::new(Some(open.join("c"))).is_ok());
    }

    #[test]
    fn cache_dir_is_private() {
        let d = tempfile::tempdir().unwrap();
        let c = TranspileCache::new(Some(d.path().join("c"))).unwrap();
        let mode = fs::metadata(c.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
