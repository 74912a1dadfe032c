//! The transpile cache: a TypeScript entry compiled once by esbuild into a
//! CommonJS bundle (local imports bundled, packages left external and found
//! through `NODE_PATH`), then run as plain `node <bundle>` (~50 ms) instead
//! of `node --import tsx` (~170 ms). docs/design/transpile-cache.md has the
//! full rules.
//!
//! Layout: `<cache dir>/<sha256(scheme, entry path, esbuild path, builder)>/
//! {bundle.cjs, manifest.json}`. The manifest lists every input of the bundle
//! (esbuild's metafile inputs, plus every `tsconfig.json`/`package.json` from
//! the entry's directory up to the root) with size, mtime, ctime, inode and a
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
//! Location values: the bundle lives in the cache dir, so everything that
//! names a file's own location is rewritten per source file, to the original
//! file's values, by an esbuild plugin (`transpile-helper.mjs`, run by node
//! through esbuild's JS API): `__dirname`, `__filename`, `import.meta.url`,
//! `import.meta.dirname`, `import.meta.filename`, and `require.resolve`
//! (resolved from the original file); `process.argv[1]` is the entry. What
//! would still resolve against the bundle's location is refused (see
//! [`refusal`]): any other use of `import.meta`, an `import()` esbuild left
//! unbundled (a non-literal specifier, or a package: ESM resolution ignores
//! `NODE_PATH`), `require(<not a string literal>)`. Without node or esbuild's
//! JS package, the esbuild CLI builds with no rewriting, and any location
//! use is refused.
//!
//! A refused entry is remembered: a negative manifest (same inputs, same
//! validation) makes the next use fail at once, with no esbuild run, until
//! an input changes. The caller falls back to tsx. esbuild errors (a syntax
//! error) are not remembered: esbuild gives no input list then.
//!
//! Writes are atomic (temp file + rename), so concurrent jobs never see half
//! a bundle or half a manifest.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TranspileError;

/// Inputs modified less than this before the build are re-hashed on use.
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// 2: location rewriting, `refused` entries, `builder`.
const MANIFEST_VERSION: u32 = 2;

/// The build script run by node (esbuild's JS API with the location plugin).
const HELPER_JS: &str = include_str!("transpile-helper.mjs");

/// A cache directory of compiled entries.
#[derive(Clone, Debug)]
pub struct TranspileCache {
    dir: PathBuf,
    /// The node that runs the build helper (`None`: found on `PATH` when needed).
    node: Option<PathBuf>,
    /// esbuild runs through this handle (and its clones).
    builds: Arc<AtomicU64>,
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
    /// How the bundle was built ([`Builder::describe`]).
    builder: String,
    /// Seconds since the epoch, as f64, when the build started.
    built_at: f64,
    inputs: Vec<Input>,
    /// A negative entry: why the bundle cannot be used (no bundle is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// What runs the build.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Builder {
    /// `node transpile-helper.mjs` with esbuild's JS package (`lib/main.js`):
    /// location values rewritten per file.
    Helper { node: PathBuf, main_js: PathBuf },
    /// The esbuild CLI: no rewriting, any location use refused.
    Cli,
}

impl Builder {
    /// Part of the slot key and the manifest: a different builder (or helper
    /// script) makes different bundles.
    fn describe(&self) -> String {
        match self {
            Builder::Helper { node, main_js } => format!(
                "helper {} node={} esbuild-js={}",
                &*HELPER_HASH,
                node.display(),
                main_js.display()
            ),
            Builder::Cli => "cli".into(),
        }
    }

    fn rewrites(&self) -> bool {
        matches!(self, Builder::Helper { .. })
    }
}

static HELPER_HASH: LazyLock<String> =
    LazyLock::new(|| hex::encode(&Sha256::digest(HELPER_JS.as_bytes())[..8]));

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
        Ok(Self {
            dir,
            node: None,
            builds: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The node that runs the build helper (default: `node` on `PATH`).
    pub fn with_node(mut self, node: PathBuf) -> Self {
        self.node = Some(node);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times esbuild ran through this cache handle (and its
    /// clones): a hit, positive or negative, runs none.
    pub fn esbuild_runs(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The builder for `esbuild`: the helper when node and esbuild's JS
    /// package (next to the binary) are there, else the CLI.
    fn builder(&self, esbuild: &Path) -> Builder {
        let node = self
            .node
            .clone()
            .or_else(crate::runtime::find_node)
            .filter(|n| is_executable(n));
        let main_js = esbuild
            .ancestors()
            .find(|d| d.file_name().is_some_and(|n| n == "node_modules"))
            .map(|nm| nm.join("esbuild/lib/main.js"))
            .filter(|p| p.is_file());
        match (node, main_js) {
            (Some(node), Some(main_js)) => Builder::Helper { node, main_js },
            _ => Builder::Cli,
        }
    }

    /// The helper script, written once into the cache dir (named by its hash).
    fn helper_path(&self) -> io::Result<PathBuf> {
        let p = self
            .dir
            .join(format!("transpile-helper-{}.mjs", &*HELPER_HASH));
        if fs::read(&p).is_ok_and(|b| b == HELPER_JS.as_bytes()) {
            return Ok(p);
        }
        let tmp = self.dir.join(format!(
            "helper.{}-{:08x}.tmp.mjs",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::write(&tmp, HELPER_JS)?;
        fs::rename(&tmp, &p)?;
        Ok(p)
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
    /// An entry that cannot be cached fails (the caller runs tsx); a refusal
    /// is remembered until an input changes, so it fails at once next time.
    /// Blocking (stat calls; esbuild on a miss): from async code, run it in
    /// `spawn_blocking`.
    pub fn get_or_build(&self, entry: &Path, esbuild: &Path) -> Result<Compiled, TranspileError> {
        let entry = fs::canonicalize(entry).map_err(|source| TranspileError::Io {
            path: entry.to_path_buf(),
            source,
        })?;
        let builder = self.builder(esbuild);
        let described = builder.describe();
        let slot = self.dir.join(slot_key(&entry, esbuild, &described));
        let bundle = slot.join("bundle.cjs");
        let node_path = ancestor_node_modules(&entry);
        let manifest_path = slot.join("manifest.json");
        if let Some(mut m) = read_manifest(&manifest_path)
            && m.version == MANIFEST_VERSION
            && m.entry == entry
            && m.esbuild == esbuild
            && m.builder == described
            && (m.refused.is_some() || bundle.is_file())
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
            if let Some(why) = m.refused {
                return Err(not_cacheable(&entry, "not cacheable (remembered)", why));
            }
            return Ok(Compiled {
                bundle,
                node_path,
                rebuilt: false,
            });
        }
        self.build(&entry, esbuild, &builder, &slot)?;
        Ok(Compiled {
            bundle,
            node_path,
            rebuilt: true,
        })
    }

    fn build(
        &self,
        entry: &Path,
        esbuild: &Path,
        builder: &Builder,
        slot: &Path,
    ) -> Result<(), TranspileError> {
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
        let mut cmd = match builder {
            Builder::Helper { node, main_js } => {
                let helper = self.helper_path().map_err(io_err(&self.dir))?;
                let request = serde_json::json!({
                    "esbuild": main_js,
                    "entry": entry,
                    "outfile": tmp_bundle,
                    "metafile": tmp_meta,
                });
                let mut c = Command::new(node);
                c.arg(helper).arg(request.to_string());
                c
            }
            Builder::Cli => {
                let mut c = Command::new(esbuild);
                c.arg(entry)
                    .arg("--bundle")
                    .arg("--platform=node")
                    .arg("--format=cjs")
                    .arg("--packages=external")
                    .arg("--sourcemap=inline")
                    .arg("--log-level=warning")
                    .arg(format!("--outfile={}", tmp_bundle.display()))
                    .arg(format!("--metafile={}", tmp_meta.display()));
                c
            }
        };
        self.builds.fetch_add(1, Ordering::Relaxed);
        let out = cmd
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
        let refused = refusal(&code, builder.rewrites());
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
            match describe(&p) {
                Ok(i) => inputs.push(i),
                Err(e) => {
                    cleanup();
                    return Err(io_err(&p)(e));
                }
            }
        }
        let changed_during_build = inputs
            .iter()
            .any(|i| i.mtime_ns.max(i.ctime_ns) >= started_coarse_ns);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            entry: entry.to_path_buf(),
            esbuild: esbuild.to_path_buf(),
            builder: builder.describe(),
            built_at,
            inputs,
            refused: refused.clone(),
        };
        let _ = fs::remove_file(&tmp_meta);
        if let Some(why) = refused {
            let _ = fs::remove_file(&tmp_bundle);
            // Remember the refusal (unless an input changed during the
            // build: then the next use builds again).
            if changed_during_build {
                let _ = fs::remove_file(slot.join("manifest.json"));
            } else {
                write_atomic(slot, &slot.join("manifest.json"), &manifest).map_err(io_err(slot))?;
            }
            return Err(not_cacheable(entry, "not cacheable", why));
        }
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

fn not_cacheable(entry: &Path, status: &str, why: String) -> TranspileError {
    TranspileError::EsbuildFailed {
        entry: entry.to_path_buf(),
        status: status.into(),
        stderr: why,
    }
}

#[derive(Deserialize)]
struct Metafile {
    inputs: BTreeMap<String, serde_json::Value>,
}

/// The slot of an entry: what the bundle depends on besides its inputs'
/// content. The entry's path is in it, so a moved tree (whose location
/// values differ) gets its own slot; every other input is recorded in the
/// manifest by absolute path.
fn slot_key(entry: &Path, esbuild: &Path, builder: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("v{MANIFEST_VERSION}").as_bytes());
    h.update([0]);
    h.update(entry.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(esbuild.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(builder.as_bytes());
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

/// Why the bundle cannot run from the cache dir, if it cannot: what in its
/// code would still resolve against the bundle's own location. `rewritten`:
/// the helper rewrote the location values (so `__dirname`/`__filename` left
/// in the code are the program's own bindings). A false alarm (the words in
/// a string) only costs the fallback to tsx.
pub fn refusal(code: &[u8], rewritten: bool) -> Option<String> {
    static IMPORT_CALL: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
        regex::bytes::Regex::new(r"(?:^|[^\w$.])import\s*\(").expect("valid regex")
    });
    static REQUIRE_EXPR: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
        regex::bytes::Regex::new(r#"(?:^|[^\w$.])require\s*\(\s*[^"'\s]"#).expect("valid regex")
    });
    // The inline source map holds the original sources: only look at the code.
    let end = memchr::memmem::find(code, b"//# sourceMappingURL=").unwrap_or(code.len());
    let lines = code[..end]
        .split(|&b| b == b'\n')
        // esbuild's own comments (`// src/x.ts`, `// import("./dir/**") in ...`).
        .filter(|l| !l.trim_ascii_start().starts_with(b"//"));
    let has = |l: &[u8], w: &str| memchr::memmem::find(l, w.as_bytes()).is_some();
    for l in lines {
        if !rewritten && (has(l, "__dirname") || has(l, "__filename")) {
            return Some(
                "the program uses __dirname or __filename, which would name the cache dir".into(),
            );
        }
        if has(l, "import.meta") || has(l, "import_meta") {
            return Some(if rewritten {
                "the program uses import.meta other than .url, .dirname or .filename".into()
            } else {
                "the program uses import.meta, which would name the cache dir".into()
            });
        }
        if !rewritten && has(l, "require.resolve") {
            return Some(
                "the program uses require.resolve, which would resolve from the cache dir".into(),
            );
        }
        if IMPORT_CALL.is_match(l) {
            return Some(
                "the program keeps an import() esbuild could not bundle (a computed \
                 specifier or a package), which would resolve from the cache dir"
                    .into(),
            );
        }
        if REQUIRE_EXPR.is_match(l) {
            return Some(
                "the program calls require() with a computed specifier, which would \
                 resolve from the cache dir"
                    .into(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_use_is_detected_in_code_only() {
        assert!(refusal(b"var x = __dirname;", false).is_some());
        assert!(refusal(b"const import_meta = {};", false).is_some());
        assert!(
            refusal(
                b"console.log(1);\n//# sourceMappingURL=data:...__dirname",
                false
            )
            .is_none()
        );
        // Rewritten: what is left is the program's own binding.
        assert!(refusal(b"var __dirname2 = path.dirname(x);", true).is_none());
        assert!(refusal(b"var x = require.resolve('./a');", false).is_some());
        assert!(refusal(b"var x = __tsbridge_require.resolve('./a');", true).is_none());
        // import.meta used another way is refused either way.
        assert!(refusal(b"const m7 = import_meta.resolve('./x');", true).is_some());
    }

    #[test]
    fn unbundled_import_and_computed_require_are_refused() {
        assert!(refusal(b"const m = await import(name);", true).is_some());
        assert!(refusal(b"const m = await import(\"pngjs\");", true).is_some());
        assert!(refusal(b"try { require(name) } catch {}", true).is_some());
        assert!(refusal(b"var p = __toESM(require(\"node:path\"));", true).is_none());
        assert!(refusal(b"var p = require('x');", true).is_none());
        // Bundled dynamic imports, and esbuild's own comments, are fine.
        assert!(
            refusal(
                b"// import(\"./dir/**/*.ts\") in b/main.ts\nawait Promise.resolve().then(() => (init_x(), x_exports));",
                true
            )
            .is_none()
        );
        assert!(refusal(b"obj.import(x); my_require(x); x.require(y);", true).is_none());
    }

    #[test]
    fn slot_keys_differ_by_entry_esbuild_and_builder() {
        let a = slot_key(Path::new("/a.ts"), Path::new("/e"), "cli");
        let b = slot_key(Path::new("/b.ts"), Path::new("/e"), "cli");
        let c = slot_key(Path::new("/a.ts"), Path::new("/f"), "cli");
        let d = slot_key(Path::new("/a.ts"), Path::new("/e"), "helper x");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
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
