//! TypeScript runs under tsx (single process, `node --import <loader>`) and
//! through the transpile cache (plain node on an esbuild bundle); a source
//! change — even one that keeps the file's size — invalidates the cache.

use crate::common;

use std::path::PathBuf;

use tsbridge_process::run;
use tsbridge_process::runtime::{RuntimeKind, Via, resolve, resolve_for_spawn};
use tsbridge_process::transpile::TranspileCache;

fn have_runners() -> bool {
    common::have_node_modules(&["tsx/dist/loader.mjs"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ts_runs_under_tsx() {
    if !have_runners() {
        return;
    }
    let script = common::fixture("ts/hello.ts");
    let inv = resolve(&script, None, &common::search()).unwrap();
    assert_eq!(inv.runtime, RuntimeKind::Tsx);
    assert_eq!(inv.program, common::node());
    assert_eq!(inv.args[0], "--import");
    assert!(
        inv.args[1]
            .to_string_lossy()
            .ends_with("tsx/dist/loader.mjs")
    );
    let spec = inv
        .builder()
        .arg("tsx")
        .envs(common::base_env())
        .cwd(common::fixture("ts"))
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert!(
        o.exit.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr.head)
    );
    assert_eq!(
        o.result,
        Some(serde_json::json!({"text": "hello, tsx", "n": 3, "version": 1}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transpile_cache_runs_plain_node_and_invalidates_on_change() {
    if !have_runners() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = TranspileCache::new(Some(work.path().join("cache"))).unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for f in ["hello.ts", "greet.ts"] {
        std::fs::copy(common::fixture("ts").join(f), src.join(f)).unwrap();
    }
    let script: PathBuf = src.join("hello.ts");

    // `Some(b)`: whether this run must rebuild; `None`: either (an input
    // edited in the same clock tick as the build is never trusted, so the
    // run after an edit may rebuild once more).
    let run_once = |expect_rebuilt: Option<bool>| {
        let script = script.clone();
        let cache = cache.clone();
        async move {
            let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
            match &inv.via {
                Via::TranspileCache { rebuilt, bundle } => {
                    if let Some(expect) = expect_rebuilt {
                        assert_eq!(*rebuilt, expect, "rebuilt");
                    }
                    assert!(bundle.starts_with(cache.dir()));
                }
                other => panic!("cache not used: {other:?}"),
            }
            assert_eq!(inv.program, common::node());
            let mut env = common::base_env();
            env.extend(inv.env.iter().cloned());
            let spec = inv
                .builder()
                .envs(env)
                .arg("cache")
                .cwd(src_dir(&script))
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
    };
    fn src_dir(p: &std::path::Path) -> PathBuf {
        p.parent().unwrap().to_path_buf()
    }

    let r = run_once(Some(true)).await;
    assert_eq!(
        r,
        serde_json::json!({"text": "hello, cache", "n": 5, "version": 1})
    );
    let r = run_once(None).await;
    assert_eq!(r["version"], 1);
    let r = run_once(Some(false)).await;
    assert_eq!(r["version"], 1);

    // Change the imported module right away, keeping its size: the cache
    // must notice (same-second mtime, so the content hash decides).
    let greet = src.join("greet.ts");
    let text = std::fs::read_to_string(&greet)
        .unwrap()
        .replace("hello, ", "howdy, ");
    std::fs::write(&greet, text).unwrap();
    let r = run_once(Some(true)).await;
    assert_eq!(r["text"], "howdy, cache");

    // Change the entry too.
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("VERSION: number = 1", "VERSION: number = 2");
    std::fs::write(&script, text).unwrap();
    let r = run_once(Some(true)).await;
    assert_eq!(r["version"], 2);
    let r = run_once(None).await;
    assert_eq!(r["version"], 2);
    let r = run_once(Some(false)).await;
    assert_eq!(r["version"], 2);
}

#[test]
fn bundle_using_import_meta_otherwise_falls_back_to_tsx() {
    if !have_runners() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = TranspileCache::new(Some(work.path().join("cache"))).unwrap();
    // __dirname is rewritten (tests in transpile_location.rs); a bare
    // import.meta cannot be.
    let script = work.path().join("where.ts");
    std::fs::write(&script, "const m: object = import.meta; console.log(m);\n").unwrap();
    let inv = resolve_for_spawn(&script, None, &common::search(), Some(&cache)).unwrap();
    assert!(matches!(inv.via, Via::TsxFallback { .. }), "{:?}", inv.via);
    assert_eq!(inv.args[0], "--import");
}

#[test]
fn ts_node_uses_the_register_hook() {
    if !have_runners() {
        return;
    }
    let script = common::fixture("ts/hello.ts");
    let inv = resolve(
        &script,
        Some(RuntimeKind::TsNode { type_check: false }),
        &common::search(),
    )
    .unwrap();
    assert_eq!(inv.args[0], "-r");
    assert!(
        inv.args[1]
            .to_string_lossy()
            .ends_with("ts-node/register/transpile-only.js")
    );
    let inv = resolve(
        &script,
        Some(RuntimeKind::TsNode { type_check: true }),
        &common::search(),
    )
    .unwrap();
    assert!(
        inv.args[1]
            .to_string_lossy()
            .ends_with("ts-node/register/type-check.js")
    );
}
