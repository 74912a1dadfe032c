//! Script -> invocation: which program runs a script, with which leading
//! arguments.
//!
//! - `.ts`/`.mts`/`.cts`/`.tsx` and `.jsx` default to tsx, run in one process as
//!   `node --import <abs path of tsx's loader>` (never the tsx CLI, which
//!   starts a second node process);
//! - ts-node as `node -r <abs path of ts-node/register/transpile-only>` (or
//!   `register/type-check` when asked: about 1 s per job);
//! - `.js`/`.mjs`/`.cjs` default to node; anything else is exec'd directly.
//!
//! Runners are looked up in the workflow's own `node_modules` (walking up
//! from the script's directory), then in [`RuntimeSearch::extra_node_modules`].
//! [`resolve_for_spawn`] additionally uses the [`TranspileCache`] for tsx
//! entries: plain `node <bundle>` when esbuild is there and the program can
//! be bundled, `node --import tsx` otherwise (the reason is logged).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::ResolveError;
use crate::spec::{JobSpec, JobSpecBuilder};
use crate::transpile::{TranspileCache, ancestor_node_modules};

/// How a script is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// `node --import <tsx loader>`.
    Tsx,
    /// `node -r ts-node/register/transpile-only` (or type-check).
    TsNode { type_check: bool },
    /// `node <script>`.
    Node,
    /// The script itself is the program.
    Exec,
}

impl RuntimeKind {
    /// The default for a file name: by extension.
    pub fn for_path(script: &Path) -> Self {
        match script.extension().and_then(|e| e.to_str()) {
            // JSX needs a compiler as TypeScript does: `.jsx` goes the way of `.tsx`.
            Some("ts" | "mts" | "cts" | "tsx" | "jsx") => RuntimeKind::Tsx,
            Some("js" | "mjs" | "cjs") => RuntimeKind::Node,
            _ => RuntimeKind::Exec,
        }
    }

    /// Parses the config notation: `tsx`, `ts-node`, `ts-node-typecheck`, `node`, `exec`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tsx" => RuntimeKind::Tsx,
            "ts-node" => RuntimeKind::TsNode { type_check: false },
            // `ts-node-check` is what `tsbridge run --help` names it.
            "ts-node-typecheck" | "ts-node-check" => RuntimeKind::TsNode { type_check: true },
            "node" => RuntimeKind::Node,
            "exec" => RuntimeKind::Exec,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Tsx => "tsx",
            RuntimeKind::TsNode { type_check: false } => "ts-node",
            RuntimeKind::TsNode { type_check: true } => "ts-node-typecheck",
            RuntimeKind::Node => "node",
            RuntimeKind::Exec => "exec",
        }
    }

    /// Whether the program is Node (so the IPC channel applies).
    pub fn is_node(self) -> bool {
        !matches!(self, RuntimeKind::Exec)
    }
}

/// Where runners are looked for.
#[derive(Clone, Debug)]
pub struct RuntimeSearch {
    /// `node_modules` directories searched after the workflow's own.
    pub extra_node_modules: Vec<PathBuf>,
    /// The node executable.
    pub node: PathBuf,
}

impl Default for RuntimeSearch {
    fn default() -> Self {
        Self {
            extra_node_modules: Vec::new(),
            node: find_node().unwrap_or_else(|| PathBuf::from("/usr/bin/node")),
        }
    }
}

/// `node` on tsbridge's PATH.
pub fn find_node() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
}

/// How the script was turned into a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Run directly (node, exec, or a runner's loader).
    Direct,
    /// A cached esbuild bundle run by plain node.
    TranspileCache { bundle: PathBuf, rebuilt: bool },
    /// tsx, because the cache could not be used (why).
    TsxFallback { why: String },
}

/// A program and its leading arguments (the script included); the job's own
/// arguments go after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub runtime: RuntimeKind,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The canonical script path.
    pub script: PathBuf,
    /// Variables the invocation needs in the child's env (`NODE_PATH` for a
    /// cached bundle).
    pub env: Vec<(String, String)>,
    pub via: Via,
}

impl Invocation {
    /// A spec builder with program, leading arguments and env set; add the
    /// job's args, cwd and the rest of its env.
    pub fn builder(&self) -> JobSpecBuilder {
        let mut b = JobSpec::builder(&self.program).args(self.args.iter().cloned());
        for (k, v) in &self.env {
            b = b.env(k.clone(), v.clone());
        }
        b
    }
}

/// Resolves `script` to an invocation (no transpile cache).
pub fn resolve(
    script: &Path,
    runtime: Option<RuntimeKind>,
    search: &RuntimeSearch,
) -> Result<Invocation, ResolveError> {
    let script = std::fs::canonicalize(script).map_err(|source| ResolveError::ScriptMissing {
        path: script.to_path_buf(),
        source,
    })?;
    let runtime = runtime.unwrap_or_else(|| RuntimeKind::for_path(&script));
    let node = || -> Result<PathBuf, ResolveError> {
        if search.node.is_file() {
            Ok(search.node.clone())
        } else {
            Err(ResolveError::NodeNotFound {
                looked_in: vec![search.node.clone()],
            })
        }
    };
    let (program, mut args): (PathBuf, Vec<OsString>) = match runtime {
        RuntimeKind::Exec => (script.clone(), Vec::new()),
        RuntimeKind::Node => (node()?, Vec::new()),
        RuntimeKind::Tsx => {
            let loader = find_in_node_modules(&script, search, &["tsx/dist/loader.mjs"]).map_err(
                |looked_in| ResolveError::RuntimeNotFound {
                    runtime: "tsx",
                    looked_in,
                    hint: "npm install --save-dev tsx",
                },
            )?;
            (node()?, vec!["--import".into(), file_url(&loader).into()])
        }
        RuntimeKind::TsNode { type_check } => {
            let rel = if type_check {
                "ts-node/register/type-check.js"
            } else {
                "ts-node/register/transpile-only.js"
            };
            let reg = find_in_node_modules(&script, search, &[rel]).map_err(|looked_in| {
                ResolveError::RuntimeNotFound {
                    runtime: "ts-node",
                    looked_in,
                    hint: "npm install --save-dev ts-node typescript@5",
                }
            })?;
            (node()?, vec!["-r".into(), reg.into_os_string()])
        }
    };
    if runtime != RuntimeKind::Exec {
        args.push(script.clone().into_os_string());
    }
    Ok(Invocation {
        runtime,
        program,
        args,
        script,
        env: Vec::new(),
        via: Via::Direct,
    })
}

/// Like [`resolve`], and for a tsx entry with a cache: the cached bundle run
/// by plain node when possible (see [`crate::transpile`]), else tsx.
/// Blocking on a cache miss (esbuild runs): from async code, use
/// [`resolve_for_spawn_async`].
pub fn resolve_for_spawn(
    script: &Path,
    runtime: Option<RuntimeKind>,
    search: &RuntimeSearch,
    cache: Option<&TranspileCache>,
) -> Result<Invocation, ResolveError> {
    let inv = resolve(script, runtime, search)?;
    let Some(cache) = cache else {
        return Ok(inv);
    };
    if inv.runtime != RuntimeKind::Tsx {
        return Ok(inv);
    }
    let compiled = TranspileCache::find_esbuild(&inv.script, &search.extra_node_modules)
        .and_then(|esbuild| cache.get_or_build(&inv.script, &esbuild));
    match compiled {
        Ok(c) => Ok(Invocation {
            runtime: inv.runtime,
            program: inv.program,
            args: vec![
                "--enable-source-maps".into(),
                c.bundle.clone().into_os_string(),
            ],
            script: inv.script,
            env: vec![(
                "NODE_PATH".into(),
                c.node_path_env().to_string_lossy().into_owned(),
            )],
            via: Via::TranspileCache {
                bundle: c.bundle,
                rebuilt: c.rebuilt,
            },
        }),
        Err(e) => {
            let why = format!("{e}");
            tracing::info!(script = %inv.script.display(), %why, "transpile cache not used; running through tsx");
            Ok(Invocation {
                via: Via::TsxFallback { why },
                ..inv
            })
        }
    }
}

/// [`resolve_for_spawn`] on tokio's blocking pool.
pub async fn resolve_for_spawn_async(
    script: PathBuf,
    runtime: Option<RuntimeKind>,
    search: RuntimeSearch,
    cache: Option<TranspileCache>,
) -> Result<Invocation, ResolveError> {
    let joined = tokio::task::spawn_blocking(move || {
        resolve_for_spawn(&script, runtime, &search, cache.as_ref())
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(ResolveError::ScriptMissing {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        }),
    }
}

/// The first `<node_modules>/<rel>` that exists, walking up from the script,
/// then in the extra dirs; `Err(looked_in)` when none does.
fn find_in_node_modules(
    script: &Path,
    search: &RuntimeSearch,
    rels: &[&str],
) -> Result<PathBuf, Vec<PathBuf>> {
    let mut looked_in = Vec::new();
    for nm in ancestor_node_modules(script)
        .into_iter()
        .chain(search.extra_node_modules.iter().cloned())
    {
        for rel in rels {
            let p = nm.join(rel);
            if p.is_file() {
                return Ok(p);
            }
        }
        looked_in.push(nm);
    }
    if looked_in.is_empty() {
        looked_in.push(
            script
                .parent()
                .unwrap_or(Path::new("/"))
                .join("node_modules"),
        );
    }
    Err(looked_in)
}

/// `file://` URL of an absolute path (percent-encoding what URLs need).
fn file_url(p: &Path) -> String {
    let mut s = String::from("file://");
    for b in p.as_os_str().as_encoded_bytes() {
        match *b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'/'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'@'
            | b'+' => s.push(*b as char),
            other => s.push_str(&format!("%{other:02X}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_extension() {
        assert_eq!(RuntimeKind::for_path(Path::new("a.ts")), RuntimeKind::Tsx);
        assert_eq!(RuntimeKind::for_path(Path::new("a.mts")), RuntimeKind::Tsx);
        assert_eq!(RuntimeKind::for_path(Path::new("a.tsx")), RuntimeKind::Tsx);
        assert_eq!(RuntimeKind::for_path(Path::new("a.jsx")), RuntimeKind::Tsx);
        assert_eq!(RuntimeKind::for_path(Path::new("a.cjs")), RuntimeKind::Node);
        assert_eq!(RuntimeKind::for_path(Path::new("a.sh")), RuntimeKind::Exec);
        assert_eq!(RuntimeKind::for_path(Path::new("a")), RuntimeKind::Exec);
        for k in ["tsx", "ts-node", "ts-node-typecheck", "node", "exec"] {
            assert_eq!(RuntimeKind::parse(k).map(RuntimeKind::as_str), Some(k));
        }
        assert_eq!(
            RuntimeKind::parse("ts-node-check"),
            Some(RuntimeKind::TsNode { type_check: true })
        );
    }

    #[test]
    fn file_urls_are_encoded() {
        assert_eq!(file_url(Path::new("/a b/c%.mjs")), "file:///a%20b/c%25.mjs");
    }

    #[test]
    fn missing_tsx_names_where_it_looked_and_how_to_fix() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("x.ts");
        std::fs::write(&script, "let a: number = 1;").unwrap();
        let search = RuntimeSearch {
            extra_node_modules: vec![d.path().join("runners")],
            node: PathBuf::from("/usr/bin/node"),
        };
        match resolve(&script, None, &search) {
            Err(ResolveError::RuntimeNotFound {
                runtime,
                looked_in,
                hint,
            }) => {
                assert_eq!(runtime, "tsx");
                assert!(hint.contains("npm install"));
                assert!(looked_in.contains(&d.path().join("runners")));
            }
            other => panic!("{other:?}"),
        }
        let inv = resolve(&script, Some(RuntimeKind::Exec), &search).unwrap();
        assert_eq!(inv.program, std::fs::canonicalize(&script).unwrap());
    }
}
