//! The child's environment is exactly the spec's (plus the job and owner
//! markers):
//! nothing is inherited from tsbridge's own environment.

use crate::common;

use tsbridge_process::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_is_exactly_the_spec() {
    // SAFETY: set before any other thread of this test reads the env.
    unsafe { std::env::set_var("FOO_SECRET", "hunter2") };
    let spec = common::node_fixture("env-argv.js")
        .env("ONLY_THIS", "yes")
        .build()
        .unwrap();
    let key = spec.key().to_string();
    let o = run(spec).await.unwrap();
    assert!(o.exit.success());
    let v = o.result.expect("json");
    let env = v["env"].as_object().unwrap();
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "HOME",
            "ONLY_THIS",
            "PATH",
            "TSBRIDGE_JOB",
            "TSBRIDGE_OWNER"
        ]
    );
    let owner = env["TSBRIDGE_OWNER"].as_str().unwrap();
    assert!(
        owner.starts_with(&format!("{}.", std::process::id())),
        "{owner}"
    );
    assert_eq!(env["TSBRIDGE_JOB"], key.as_str());
    assert!(env.get("FOO_SECRET").is_none());
    assert_eq!(
        v["cwd"].as_str().unwrap(),
        common::repo_root().join("fixtures").to_str().unwrap()
    );
}
