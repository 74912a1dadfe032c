//! The transpile cache with programs that name their own location:
//! `__dirname`, `__filename`, `import.meta.url` and `require.resolve` are
//! rewritten per source file to the original file's values (an entry and a
//! module in another directory each read a data file next to themselves),
//! and an entry the cache refuses is remembered: tsx runs it at once, with
//! no second esbuild run, until its sources change. Real node + esbuild +
//! tsx from the repo's `node_modules`.

use crate::common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tsbridge_process::run;
use tsbridge_process::runtime::{Invocation, Via, resolve, resolve_for_spawn};
use tsbridge_process::transpile::TranspileCache;

fn have_runners() -> bool {
    common::have_node_modules(&["tsx/dist/loader.mjs", "esbuild/lib/main.js"])
}

fn cache_in(dir: &Path) -> TranspileCache {
    TranspileCache::new(Some(dir.join("cache")))
        .unwrap()
        .with_node(common::node())
}

/// Lets the kernel's coarse file clock tick past the last write: an input
/// stamped in the tick a build starts in is not trusted (the build is used
/// once, not cached), which would make the counts below vary.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(50));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Runs an invocation (cwd `cwd`, extra args) and returns its result.
async fn run_inv(inv: &Invocation, cwd: &Path, args: &[&str]) -> Value {
    let mut env = common::base_env();
    env.extend(inv.env.iter().cloned());
    let spec = inv
        .builder()
        .args(args.iter().copied())
        .envs(env)
        .cwd(cwd)
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert!(
        o.exit.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr.head)
    );
    o.result.expect("result")
}

/// The manifests in the cache dir, with whether each is a refusal.
fn manifests(cache: &TranspileCache) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(cache.dir()).unwrap() {
        let p = e.unwrap().path().join("manifest.json");
        if let Ok(text) = std::fs::read(&p) {
            out.push((p, serde_json::from_slice(&text).unwrap()));
        }
    }
    out
}

fn expected(root: &Path) -> Value {
    let app = root.join("app");
    let lib = root.join("lib");
    let s = |p: PathBuf| p.to_str().unwrap().to_owned();
    json!({
        "main": {
            "dirname": s(app.clone()),
            "filename": s(app.join("main.ts")),
            "data": "app data",
            "url": format!("file://{}", s(app.join("main.ts"))),
            "metaData": "app data",
            "isMain": true,
        },
        "lib": {
            "dirname": s(lib.clone()),
            "filename": s(lib.join("where.ts")),
            "here": s(lib.clone()),
            "data": "lib data",
            "urlData": "lib data",
            "resolved": s(lib.join("data.txt")),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_values_are_the_original_files_from_the_cache() {
    if !have_runners() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().canonicalize().unwrap();
    let cache = cache_in(&work_path);
    let root = work_path.join("src");
    copy_tree(&common::fixture("ts/location"), &root);
    let script = root.join("app/main.ts");
    // A cwd that is neither source directory: relative reads must not
    // depend on it.
    let elsewhere = work_path.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    settle();

    // tsx is the reference.
    let tsx = resolve(&script, None, &common::search()).unwrap();
    let by_tsx = run_inv(&tsx, &elsewhere, &[]).await;
    assert_eq!(by_tsx, expected(&root), "under tsx");

    let use_cache = |expect_rebuilt: bool| {
        let script = script.clone();
        let cache = cache.clone();
        let elsewhere = elsewhere.clone();
        async move {
            let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
            match &inv.via {
                Via::TranspileCache { rebuilt, bundle } => {
                    assert_eq!(*rebuilt, expect_rebuilt, "rebuilt");
                    assert!(bundle.starts_with(cache.dir()));
                    assert!(bundle.is_file());
                }
                other => panic!("cache not used: {other:?}"),
            }
            assert_eq!(inv.args[0], "--enable-source-maps");
            run_inv(&inv, &elsewhere, &[]).await
        }
    };
    assert_eq!(use_cache(true).await, by_tsx);
    assert_eq!(cache.esbuild_runs(), 1);
    assert_eq!(use_cache(false).await, by_tsx);
    assert_eq!(use_cache(false).await, by_tsx);
    assert_eq!(cache.esbuild_runs(), 1, "a hit runs no esbuild");
    let m = manifests(&cache);
    assert_eq!(m.len(), 1);
    assert!(m[0].1.get("refused").is_none(), "{:?}", m[0].1);

    // The same sources elsewhere: their own slot, their own values.
    let moved = work_path.join("moved");
    copy_tree(&root, &moved);
    settle();
    let inv = resolve_for_spawn(
        &moved.join("app/main.ts"),
        None,
        &common::search(),
        Some(&cache),
    )
    .unwrap();
    assert!(
        matches!(inv.via, Via::TranspileCache { rebuilt: true, .. }),
        "{:?}",
        inv.via
    );
    assert_eq!(run_inv(&inv, &elsewhere, &[]).await, expected(&moved));
    assert_eq!(manifests(&cache).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_entry_falls_back_to_tsx_and_is_not_rebuilt_until_it_changes() {
    if !have_runners() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().canonicalize().unwrap();
    let cache = cache_in(&work_path);
    let src = work_path.join("src");
    std::fs::create_dir(&src).unwrap();
    for f in ["refused.ts", "refused-dep.ts"] {
        std::fs::copy(common::fixture("ts/location").join(f), src.join(f)).unwrap();
    }
    let script = src.join("refused.ts");
    settle();

    let fallback = |want: &'static str| {
        let script = script.clone();
        let cache = cache.clone();
        let src = src.clone();
        async move {
            let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
            match &inv.via {
                Via::TsxFallback { why } => assert!(why.contains(want), "{why}"),
                other => panic!("not refused: {other:?}"),
            }
            assert_eq!(inv.args[0], "--import");
            run_inv(&inv, &src, &[]).await
        }
    };

    let r = fallback("import()").await;
    assert_eq!(r, json!({"answer": 42, "version": 1}));
    assert_eq!(cache.esbuild_runs(), 1);
    let m = manifests(&cache);
    assert_eq!(m.len(), 1, "a negative entry");
    assert!(m[0].1["refused"].is_string(), "{:?}", m[0].1);
    assert!(
        !m[0].0.with_file_name("bundle.cjs").exists(),
        "no bundle is kept for a refused entry"
    );

    // Second and third spawns: remembered, no esbuild run.
    let r = fallback("remembered").await;
    assert_eq!(r["answer"], 42);
    let r = fallback("remembered").await;
    assert_eq!(r["answer"], 42);
    assert_eq!(cache.esbuild_runs(), 1, "the refusal is not re-transpiled");

    // An edit (same size) that keeps it refused: built once more, refused
    // again, then remembered again.
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("version: 1", "version: 2");
    std::fs::write(&script, text).unwrap();
    settle();
    let r = fallback("not cacheable").await;
    assert_eq!(r["version"], 2);
    assert_eq!(cache.esbuild_runs(), 2, "a changed source is built again");
    let r = fallback("remembered").await;
    assert_eq!(r["version"], 2);
    assert_eq!(cache.esbuild_runs(), 2);

    // An edit that makes it cacheable: the cache is used.
    std::fs::write(
        &script,
        "import { answer } from './refused-dep';\n\
         console.log(`RESULT: ${JSON.stringify({ answer, version: 3 })}`);\n",
    )
    .unwrap();
    settle();
    let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
    assert!(
        matches!(inv.via, Via::TranspileCache { rebuilt: true, .. }),
        "{:?}",
        inv.via
    );
    let r = run_inv(&inv, &src, &[]).await;
    assert_eq!(r, json!({"answer": 42, "version": 3}));
}

/// The example app's data-analysis workflow (its `src/paths.ts` finds the
/// app root through `__dirname`) runs from the cache, from another cwd, with
/// the same result as under tsx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_app_data_analysis_runs_from_the_cache() {
    let app = common::repo_root().join("examples/omega-workflow");
    if !have_runners() || !common::have_node_modules_in("examples/omega-workflow", &["pngjs"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().canonicalize().unwrap();
    let cache = cache_in(&work_path);
    let script = app.join("main.ts");
    let args = [
        "--workflow",
        "data-analysis",
        "--params",
        r#"{"inputPath":"data/sample.csv"}"#,
        "--output-format",
        "json",
    ];
    let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
    assert!(
        matches!(inv.via, Via::TranspileCache { .. }),
        "{:?}",
        inv.via
    );
    let cached = run_inv(&inv, &work_path, &args).await;
    let tsx = resolve(&script, None, &common::search()).unwrap();
    let by_tsx = run_inv(&tsx, &work_path, &args).await;
    assert_eq!(cached, by_tsx);
    assert!(cached["rows"].as_u64().unwrap() > 0, "{cached}");
}
