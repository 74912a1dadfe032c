//! Config parsing and validation: good files load; each bad file reports the
//! key and line of every problem.

use std::path::Path;
use std::time::Duration;

use super::node_pids::NODE_MIN_PIDS;
use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("schemas")).expect("mkdir");
        std::fs::write(app.join("main.js"), "console.log('hi')\n").expect("write");
        std::fs::write(
            app.join("schemas/s.json"),
            r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#,
        )
        .expect("write");
        std::fs::create_dir_all(dir.path().join("app-evil")).expect("mkdir");
        std::fs::write(dir.path().join("app-evil/x.js"), "").expect("write");
        Self { dir }
    }

    fn parse(&self, src: &str) -> Result<Config, Vec<ConfigIssue>> {
        Config::parse(src, self.dir.path())
    }

    fn issues(&self, src: &str) -> Vec<ConfigIssue> {
        match self.parse(src) {
            Ok(_) => panic!("config must be refused:\n{src}"),
            Err(e) => e,
        }
    }
}

fn has(issues: &[ConfigIssue], key: &str, line: usize) -> bool {
    issues.iter().any(|i| i.key == key && i.line == Some(line))
}

#[test]
fn minimal_config_gets_defaults() {
    let f = Fixture::new();
    let c = f
        .parse("[workflows.hello]\nroot = \"app\"\nscript = \"main.js\"\n")
        .expect("valid");
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:8787");
    assert_eq!(c.server.batch_concurrency, 4);
    assert_eq!(c.defaults.timeout, Duration::from_secs(300));
    assert_eq!(c.defaults.max_output.bytes(), 16 << 20);
    assert!(c.store.url.starts_with("sqlite:///"));
    assert!(c.store.url.ends_with("/tsbridge.db"));
    let w = &c.workflows["hello"];
    assert_eq!(w.runtime, RuntimeKind::Node);
    assert!(w.ipc);
    assert_eq!(w.mode, Mode::Spawn);
    assert_eq!(w.args, DEFAULT_ARGS.map(String::from).to_vec());
    assert_eq!(w.cwd, w.root);
    assert!(w.script.is_absolute());
    assert_eq!(w.retry.attempts, 1);
}

#[test]
fn full_config_is_read() {
    let f = Fixture::new();
    let c = f
        .parse(
            r#"
[server]
bind = "0.0.0.0:9000"
tokens = ["env:TSBRIDGE_TOKEN", "sha256:0000000000000000000000000000000000000000000000000000000000000000", "lit"]
max_body = "2MiB"
drain_timeout = "3s"
batch_concurrency = 2
dev = true

[store]
url = "sqlite://db/x.db"

[defaults]
timeout = "1m"
kill_grace = "2s"
max_output = "1MiB"
queue_limit = 5
concurrency = 3

[workflows.a]
root = "app"
script = "main.js"
runtime = "exec"
args = ["--p={params}", "{jobId}"]
params_schema = "schemas/s.json"
path_params = ["inputPath"]
env = { pass = ["LANG"], request = ["OMEGA_QUALITY"], set = { X = "1" } }
concurrency = 2
priority = 5
limits = { memory = "1GiB", cpu = 0.5, pids = 64, network = false, read = ["data"], write = ["/tmp/out"], timeout = "10s", degraded = true }
retry = { attempts = 3, backoff = "1s", multiplier = 2.0, jitter = 0.1, max_delay = "30s", retry_on = ["timeout", "exited"] }
timeout = "20s"

[workflows.b]
root = "app"
script = "main.js"
mode = "pool"
params_schema = { type = "object" }
pool = { min = 2, max = 8, max_age = "30m", idle_timeout = "5m", max_jobs = 1000, warmup = false }
"#,
        )
        .expect("valid");
    assert_eq!(c.server.tokens.len(), 3);
    assert_eq!(c.server.tokens[0], TokenSpec::Env("TSBRIDGE_TOKEN".into()));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(3));
    assert!(c.store.url.ends_with("/db/x.db"));
    assert_eq!(c.defaults.queue_limit, 5);
    let a = &c.workflows["a"];
    assert_eq!(a.runtime, RuntimeKind::Exec);
    assert!(!a.ipc, "exec runtimes get no IPC channel by default");
    assert_eq!(
        a.timeout,
        Duration::from_secs(10),
        "the lower of timeout and limits.timeout"
    );
    assert_eq!(a.kill_grace, Duration::from_secs(2));
    assert_eq!(a.limits.memory.map(|m| m.bytes()), Some(1 << 30));
    assert_eq!(a.limits.read, vec![a.root.join("data")]);
    assert_eq!(a.limits.write, vec![std::path::PathBuf::from("/tmp/out")]);
    assert_eq!(a.retry.retry_on, vec![RetryOn::Timeout, RetryOn::Exited]);
    assert_eq!(a.env.set["X"], "1");
    let schema = a.params_schema.as_ref().expect("schema");
    assert!(schema.violations(&serde_json::json!({"n": 1})).is_empty());
    assert_eq!(schema.violations(&serde_json::json!({"n": "x"})).len(), 1);
    let b = &c.workflows["b"];
    assert_eq!(b.mode, Mode::Pool);
    assert_eq!(b.pool.max, 8);
    assert!(!b.pool.warmup);
    assert_eq!(b.timeout, Duration::from_secs(60));
}

#[test]
fn example_app_config_loads() {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/omega-workflow/tsbridge.toml");
    if !p.exists() {
        return;
    }
    let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.workflows.contains_key("data-analysis"));
    assert_eq!(c.workflows["data-analysis-pooled"].mode, Mode::Pool);
}

#[test]
fn unknown_keys_name_key_and_line() {
    let f = Fixture::new();
    let issues = f.issues(
        "[server]\nbind = \"127.0.0.1:1\"\nbogus = 1\n\n[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { memroy = \"1GiB\" }\n[nope]\n",
    );
    assert!(has(&issues, "server.bogus", 3), "{issues:?}");
    assert!(has(&issues, "workflows.a.limits.memroy", 8), "{issues:?}");
    assert!(has(&issues, "nope", 9), "{issues:?}");
}

#[test]
fn all_errors_are_listed_with_lines() {
    let f = Fixture::new();
    let src = r#"[defaults]
timeout = "soon"
max_output = "lots"
queue_limit = 0

[workflows.a]
root = "app"
script = "missing.js"
retry = { attempts = 0 }

[workflows.b]
root = "no-such-dir"
script = "main.js"

[workflows.c]
root = "app"
script = "../app-evil/x.js"
runtime = "python"
"#;
    let issues = f.issues(src);
    assert!(has(&issues, "defaults.timeout", 2), "{issues:?}");
    assert!(has(&issues, "defaults.max_output", 3), "{issues:?}");
    assert!(has(&issues, "defaults.queue_limit", 4), "{issues:?}");
    assert!(has(&issues, "workflows.a.script", 8), "{issues:?}");
    assert!(has(&issues, "workflows.a.retry.attempts", 9), "{issues:?}");
    assert!(has(&issues, "workflows.b.root", 12), "{issues:?}");
    assert!(has(&issues, "workflows.c.runtime", 18), "{issues:?}");
    // The error message shows each problem with its line.
    let e = ConfigError::Invalid {
        path: "t.toml".into(),
        issues: issues.clone(),
    };
    let msg = e.to_string();
    assert!(msg.contains("line 2: `defaults.timeout`"), "{msg}");
    assert!(msg.contains("line 12: `workflows.b.root`"), "{msg}");
}

#[test]
fn script_outside_root_is_refused() {
    let f = Fixture::new();
    let issues = f.issues("[workflows.c]\nroot = \"app\"\nscript = \"../app-evil/x.js\"\n");
    assert!(has(&issues, "workflows.c.script", 3), "{issues:?}");
    assert!(issues[0].message.contains("outside"), "{issues:?}");
    let issues = f.issues("[workflows.c]\nroot = \"app\"\nscript = \"main.js\"\ncwd = \"/\"\n");
    assert!(has(&issues, "workflows.c.cwd", 4), "{issues:?}");
}

#[test]
fn bad_schema_and_syntax_are_reported() {
    let f = Fixture::new();
    let issues = f.issues(
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nparams_schema = { type = 12 }\n",
    );
    assert!(has(&issues, "workflows.a.params_schema", 4), "{issues:?}");
    let issues = f.issues("[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nparams_schema = \"schemas/none.json\"\n");
    assert!(has(&issues, "workflows.a.params_schema", 4), "{issues:?}");
    let issues = f.issues("[server]\nbind = \n");
    assert!(issues.iter().any(|i| i.line == Some(2)), "{issues:?}");
    let issues = f.issues("[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nenv = { request = [\"NODE_OPTIONS\"] }\n");
    assert!(has(&issues, "workflows.a.env.request", 4), "{issues:?}");
    let issues = f.issues("[server]\ntokens = [\"sha256:abc\"]\n");
    assert!(has(&issues, "server.tokens", 2), "{issues:?}");
}

#[test]
fn a_bind_beyond_loopback_needs_a_token() {
    let f = Fixture::new();
    let issues = f.issues("[server]\nmax_body = \"1MiB\"\nbind = \"0.0.0.0:9000\"\n");
    assert!(has(&issues, "server.bind", 3), "{issues:?}");
    let issues = f.issues("[server]\nbind = \"[::]:9000\"\ntokens = []\n");
    assert!(has(&issues, "server.bind", 2), "{issues:?}");
    // One token, or loopback, is enough.
    f.parse("[server]\nbind = \"0.0.0.0:9000\"\ntokens = [\"lit\"]\n")
        .expect("valid");
    f.parse("[server]\nbind = \"[::1]:9000\"\n").expect("valid");
    f.parse("[server]\nbind = \"localhost:9000\"\n")
        .expect("valid");
}

#[test]
fn passing_a_secret_looking_host_variable_is_refused_not_ignored() {
    let f = Fixture::new();
    let wf = "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n";
    let issues = f.issues(&format!("{wf}env = {{ pass = [\"LANG\", \"API_KEY\"] }}\n"));
    assert!(has(&issues, "workflows.a.env.pass", 4), "{issues:?}");
    assert!(issues[0].message.contains("API_KEY"), "{issues:?}");
    // Set in the config or by a request, such a name is fine.
    f.parse(&format!(
        "{wf}env = {{ pass = [\"LANG\"], request = [\"API_KEY\"], set = {{ DB_PASSWORD = \"x\" }} }}\n"
    ))
    .expect("valid");
}

#[test]
fn a_zero_timeout_is_refused_where_it_is_written() {
    let f = Fixture::new();
    let wf = "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n";
    let issues = f.issues(&format!(
        "[defaults]\ntimeout = \"0s\"\n{wf}timeout = \"0ms\"\nlimits = {{ timeout = \"0s\" }}\n"
    ));
    assert!(has(&issues, "defaults.timeout", 2), "{issues:?}");
    assert!(has(&issues, "workflows.a.timeout", 6), "{issues:?}");
    assert!(has(&issues, "workflows.a.limits.timeout", 7), "{issues:?}");
    f.parse(&format!("{wf}timeout = \"1ms\"\n")).expect("valid");
}

#[test]
fn a_duration_written_as_a_bare_number_is_refused_with_key_line_and_what_to_write() {
    // Every duration key of the file, each on its own line, written as V.
    // A bare `timeout = 30` was read as 30 milliseconds.
    let template = "\
[server]
drain_timeout = V
[defaults]
timeout = V
kill_grace = V
[workflows.a]
root = \"app\"
script = \"main.js\"
timeout = V
kill_grace = V
[workflows.a.limits]
timeout = V
cpu_time = V
[workflows.a.retry]
backoff = V
max_delay = V
[workflows.b]
root = \"app\"
script = \"main.js\"
mode = \"pool\"
[workflows.b.pool]
max_age = V
idle_timeout = V
";
    let keys = [
        ("server.drain_timeout", 2),
        ("defaults.timeout", 4),
        ("defaults.kill_grace", 5),
        ("workflows.a.timeout", 9),
        ("workflows.a.kill_grace", 10),
        ("workflows.a.limits.timeout", 12),
        ("workflows.a.limits.cpu_time", 13),
        ("workflows.a.retry.backoff", 15),
        ("workflows.a.retry.max_delay", 16),
        ("workflows.b.pool.max_age", 22),
        ("workflows.b.pool.idle_timeout", 23),
    ];
    let f = Fixture::new();
    for (value, hint) in [
        ("30", "\"30s\" or \"30ms\""),
        ("2.5", "\"2.5s\" or \"2.5ms\""),
        ("\"30\"", "\"30s\" or \"30ms\""),
        ("-1", "\"30s\" or \"30ms\""),
    ] {
        let src = template.replace('V', value);
        let issues = f.issues(&src);
        assert_eq!(issues.len(), keys.len(), "{src}\n{issues:#?}");
        for (key, line) in keys {
            let issue = issues
                .iter()
                .find(|i| i.key == key && i.line == Some(line))
                .unwrap_or_else(|| panic!("no issue for {key} on line {line}: {issues:#?}"));
            assert!(
                issue.message.contains("write a duration string such as")
                    && issue.message.contains(hint),
                "{key} = {value}: {}",
                issue.message
            );
        }
    }
    // With a unit, the same keys load.
    let c = f
        .parse(&template.replace('V', "\"30s\""))
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.defaults.kill_grace, Duration::from_secs(30));
    assert_eq!(c.workflows["a"].retry.backoff, Duration::from_secs(30));
    assert_eq!(
        c.workflows["a"].limits.cpu_time,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        c.workflows["b"].pool.idle_timeout,
        Some(Duration::from_secs(30))
    );
}

/// A duration string the config cannot read is refused with what a config
/// accepts: durations with a unit. Regression: the message was the
/// request's (`... or a number of milliseconds`), advising what the config
/// refuses on the next try.
#[test]
fn a_bad_duration_string_is_refused_with_what_a_config_accepts() {
    let f = Fixture::new();
    let issues = f.issues("[defaults]\nkill_grace = \"5x\"\n");
    let issue = issues
        .iter()
        .find(|i| i.key == "defaults.kill_grace" && i.line == Some(2))
        .unwrap_or_else(|| panic!("{issues:#?}"));
    assert!(
        issue.message.contains("invalid duration \"5x\"")
            && issue.message.contains("\"500ms\", \"5s\""),
        "{}",
        issue.message
    );
    assert!(
        !issue.message.contains("number of milliseconds"),
        "{}",
        issue.message
    );
}

#[test]
fn a_pids_limit_node_cannot_start_in_is_refused_for_node_programs_only() {
    let f = Fixture::new();
    let app = f.dir.path().join("app");
    std::fs::write(app.join("cli.js"), "#!/usr/bin/env node\nconsole.log(1)\n").expect("write");
    std::fs::write(app.join("tool.sh"), "#!/bin/sh\necho hi\n").expect("write");
    let wf = |script: &str, runtime: &str, pids: u64| {
        format!(
            "[workflows.a]\nroot = \"app\"\nscript = \"{script}\"\n{runtime}limits = {{ pids = {pids} }}\n"
        )
    };
    // By extension, named, and an exec'd script whose #! runs node: Node
    // aborts (1) or hangs (2 to 5) below 6 tasks.
    for (script, runtime) in [
        ("main.js", ""),
        ("main.js", "runtime = \"tsx\"\n"),
        ("main.js", "runtime = \"ts-node\"\n"),
        ("cli.js", "runtime = \"exec\"\n"),
    ] {
        for pids in [1, NODE_MIN_PIDS - 1] {
            let src = wf(script, runtime, pids);
            let issues = f.issues(&src);
            let line = src.lines().count();
            assert!(
                has(&issues, "workflows.a.limits.pids", line),
                "{src}{issues:?}"
            );
            assert!(issues[0].message.contains("too few for node"), "{issues:?}");
        }
        f.parse(&wf(script, runtime, NODE_MIN_PIDS))
            .expect("enough for node");
    }
    // Not Node: any positive limit.
    f.parse(&wf("tool.sh", "runtime = \"exec\"\n", 1))
        .expect("valid");
}

#[test]
fn a_syntax_error_names_the_key_it_is_about() {
    let f = Fixture::new();
    let wf = "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n";
    let issues = f.issues(&format!("{wf}script = \"main.js\"\n"));
    assert!(has(&issues, "workflows.a.script", 4), "{issues:?}");
    let issues = f.issues("[workflows.a]\nroot = \"app\"\nscript = main.js\n");
    assert!(has(&issues, "workflows.a.script", 3), "{issues:?}");
    let issues = f.issues("[server]\nbind = \"127.0.0.1:1\"\n[server]\n");
    assert!(has(&issues, "server", 3), "{issues:?}");
    let issues = f.issues(&format!(
        "{wf}limits.memory = \"1GiB\"\nlimits.memory = 2\n"
    ));
    assert!(has(&issues, "workflows.a.limits.memory", 5), "{issues:?}");
    // No key on the line: the line alone, and no empty key quoted.
    let issues = f.issues("[server]\ntokens = [\n  \"a\",\n  \"b\" \"c\"\n]\n");
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(
        issues.iter().all(|i| i.line.is_some()) && shown.iter().all(|s| !s.contains("``")),
        "{shown:?}"
    );
}

#[test]
fn load_reports_the_file() {
    let f = Fixture::new();
    let p = f.dir.path().join("t.toml");
    std::fs::write(
        &p,
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nretry = { attempts = \"x\" }\n",
    )
    .expect("write");
    let e = Config::load(&p).expect_err("invalid");
    assert_eq!(e.issues().len(), 1);
    assert_eq!(e.issues()[0].key, "workflows.a.retry.attempts");
    assert_eq!(e.issues()[0].line, Some(4));
    assert!(Config::load(&f.dir.path().join("absent.toml")).is_err());
}

#[test]
fn args_are_substituted_per_element_never_split() {
    let t: Vec<String> = [
        "--params",
        "{params}",
        "x{workflow}y",
        "{jobId}",
        "{unknown}",
        "--params-file={paramsFile}",
    ]
    .map(String::from)
    .to_vec();
    let params = r#"{"a":"$(rm -rf /) {params} {paramsFile}"}"#;
    let out = substitute_args(&t, "wf", params, "id1", Some("/tmp/x/p.json"));
    assert_eq!(
        out,
        vec![
            "--params".to_owned(),
            params.to_owned(),
            "xwfy".to_owned(),
            "id1".to_owned(),
            "{unknown}".to_owned(),
            "--params-file=/tmp/x/p.json".to_owned(),
        ]
    );
    // Without a file (the command line's size check), the placeholder stays.
    let out = substitute_args(&t, "wf", "{}", "id1", None);
    assert_eq!(out[5], "--params-file={paramsFile}");
}

#[test]
fn retry_delays_grow_and_cap() {
    let r = RetryConfig {
        backoff: Duration::from_millis(100),
        multiplier: 2.0,
        max_delay: Duration::from_millis(300),
        jitter: 0.0,
        ..RetryConfig::default()
    };
    assert_eq!(r.base_delay(2), Duration::from_millis(100));
    assert_eq!(r.base_delay(3), Duration::from_millis(200));
    assert_eq!(r.base_delay(4), Duration::from_millis(300));
    assert_eq!(r.delay(3), Duration::from_millis(200));
}

#[test]
fn degraded_at_workflow_level_in_defaults_or_in_limits() {
    let f = Fixture::new();
    let c = f
        .parse(
            r#"[defaults]
degraded = true

[workflows.d]
root = "app"
script = "main.js"

[workflows.top]
root = "app"
script = "main.js"
degraded = false

[workflows.lim]
root = "app"
script = "main.js"
limits = { degraded = false, memory = "1GiB" }

[workflows.both]
root = "app"
script = "main.js"
degraded = false
limits = { degraded = false }
"#,
        )
        .expect("valid");
    assert!(c.defaults.degraded);
    assert!(c.workflows["d"].limits.degraded, "from [defaults]");
    assert!(
        !c.workflows["top"].limits.degraded,
        "the workflow overrides"
    );
    assert!(
        !c.workflows["lim"].limits.degraded,
        "limits.degraded stays valid"
    );
    assert!(!c.workflows["both"].limits.degraded);
    let c = f
        .parse("[workflows.w]\nroot = \"app\"\nscript = \"main.js\"\ndegraded = true\n")
        .expect("valid");
    assert!(c.workflows["w"].limits.degraded);
    assert!(!c.defaults.degraded);
}

#[test]
fn contradicting_degraded_names_key_and_line() {
    let f = Fixture::new();
    let issues = f.issues(
        "[workflows.w]\nroot = \"app\"\nscript = \"main.js\"\ndegraded = true\nlimits = { degraded = false }\n",
    );
    assert!(has(&issues, "workflows.w.limits.degraded", 5), "{issues:?}");
    assert!(
        issues[0].message.contains("workflows.w.degraded") && issues[0].message.contains("line 4"),
        "{issues:?}"
    );
}

#[test]
fn root_defaults_to_the_config_folder() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("w.js"), "console.log(1)\n").expect("write");
    let c = f
        .parse("[workflows.x]\nscript = \"w.js\"\n")
        .expect("valid");
    let w = &c.workflows["x"];
    let dir = f.dir.path().canonicalize().expect("canonical");
    assert_eq!(w.root, dir);
    assert_eq!(w.cwd, dir);
    assert_eq!(w.script, dir.join("w.js"));
    // Through load(), too: the folder of the file.
    let p = f.dir.path().join("t.toml");
    std::fs::write(&p, "[workflows.x]\nscript = \"w.js\"\n").expect("write");
    let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.workflows["x"].root, dir);
}

#[test]
fn a_missing_key_is_reported_on_its_table_header() {
    let f = Fixture::new();
    let issues = f.issues("[server]\ndev = true\n\n[workflows.x]\nroot = \"app\"\n");
    assert!(has(&issues, "workflows.x.script", 4), "{issues:?}");
    let issues = f.issues("[workflows]\nx = { root = \"app\" }\n");
    assert!(has(&issues, "workflows.x.script", 2), "{issues:?}");
    let e = ConfigError::Invalid {
        path: "t.toml".into(),
        issues,
    };
    assert!(
        e.to_string().contains("line 2: `workflows.x.script`"),
        "{e}"
    );
}

#[test]
fn rlimit_keys_are_read_and_checked() {
    let f = Fixture::new();
    let c = f
        .parse(
            "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { open_files = 256, file_size = \"10MiB\", cpu_time = \"1500ms\" }\n\n[workflows.b]\nroot = \"app\"\nscript = \"main.js\"\n",
        )
        .expect("valid");
    let a = &c.workflows["a"].limits;
    assert_eq!(a.open_files, Some(256));
    assert_eq!(a.file_size.map(|s| s.bytes()), Some(10 << 20));
    assert_eq!(a.cpu_time, Some(Duration::from_millis(1500)));
    assert_eq!(a.cpu_seconds(), Some(2), "rounded up to whole seconds");
    assert!(a.any());
    let b = &c.workflows["b"].limits;
    assert_eq!((b.open_files, b.file_size, b.cpu_time), (None, None, None));
    assert!(!b.any());

    let issues = f.issues(
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { open_files = 3 }\n\n[workflows.b]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { file_size = \"lots\" }\n\n[workflows.c]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { cpu_time = \"0s\" }\n\n[workflows.p]\nroot = \"app\"\nscript = \"main.js\"\nmode = \"pool\"\nlimits = { cpu_time = \"5s\" }\n",
    );
    assert!(
        has(&issues, "workflows.a.limits.open_files", 4),
        "{issues:?}"
    );
    assert!(
        has(&issues, "workflows.b.limits.file_size", 9),
        "{issues:?}"
    );
    assert!(
        has(&issues, "workflows.c.limits.cpu_time", 14),
        "{issues:?}"
    );
    assert!(
        has(&issues, "workflows.p.limits.cpu_time", 20),
        "{issues:?}"
    );
}

#[test]
fn a_postgres_store_url_is_taken_as_written() {
    let f = Fixture::new();
    for url in [
        "postgres://tsbridge:pw@db.example:5432/tsbridge",
        "postgresql://db.example/tsbridge?sslmode=require",
    ] {
        let c = f
            .parse(&format!("[store]\nurl = \"{url}\"\n"))
            .unwrap_or_else(|e| panic!("{url} refused: {e:?}"));
        assert_eq!(c.store.url, url);
    }
}

#[test]
fn a_bad_postgres_url_is_refused_with_its_key_and_line() {
    let f = Fixture::new();
    let issues = f.issues("[store]\nurl = \"postgres://db.example:notaport/tsbridge\"\n");
    assert!(has(&issues, "store.url", 2), "{issues:?}");
    assert!(
        issues.iter().any(|i| i.message.contains("PostgreSQL")),
        "{issues:?}"
    );
    let issues = f.issues("[store]\nurl = \"mysql://db/x\"\n");
    assert!(has(&issues, "store.url", 2), "{issues:?}");
}

#[test]
fn a_postgres_store_needs_a_key_file_when_a_workflow_accepts_request_env() {
    let f = Fixture::new();
    let wf = "[workflows.w]\nroot = \"app\"\nscript = \"main.js\"\nruntime = \"node\"\nenv = { request = [\"MODE\"] }\n";
    let issues = f.issues(&format!("[store]\nurl = \"postgres://db/x\"\n{wf}"));
    assert!(
        issues.iter().any(|i| i.key == "store.key_file"),
        "{issues:?}"
    );
    let c = f
        .parse(&format!(
            "[store]\nurl = \"postgres://db/x\"\nkey_file = \"keys/env.key\"\n{wf}"
        ))
        .expect("with a key file");
    assert_eq!(
        c.store.key_file.as_deref(),
        Some(f.dir.path().join("keys/env.key").as_path()),
        "relative to the config's folder"
    );
    // SQLite: the default key file beside the store serves.
    f.parse(wf).expect("sqlite needs no key_file");
}

#[test]
fn pool_min_above_max_is_refused_but_min_alone_raises_the_default_max() {
    let f = Fixture::new();
    let wf = |pool: &str| {
        format!(
            "[workflows.p]\nroot = \"app\"\nscript = \"main.js\"\nmode = \"pool\"\npool = {pool}\n"
        )
    };
    let issues = f.issues(&wf("{ min = 5, max = 2 }"));
    assert!(has(&issues, "workflows.p.pool.min", 5), "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|i| i.message.contains("larger than max (2)")),
        "{issues:?}"
    );
    let c = f.parse(&wf("{ min = 8 }")).expect("min alone");
    assert_eq!(
        (c.workflows["p"].pool.min, c.workflows["p"].pool.max),
        (8, 8)
    );
    let c = f.parse(&wf("{ min = 3, max = 3 }")).expect("min = max");
    assert_eq!(
        (c.workflows["p"].pool.min, c.workflows["p"].pool.max),
        (3, 3)
    );
}

#[test]
fn store_wal_restart_is_a_size_within_bounds_for_sqlite_only() {
    let f = Fixture::new();
    let c = f
        .parse("[store]\nwal_restart = \"256MiB\"\n")
        .expect("a valid threshold");
    assert_eq!(c.store.wal_restart, Some(ByteSize(256 << 20)));
    assert_eq!(
        f.parse("").expect("default").store.wal_restart,
        None,
        "unset: the store's default"
    );
    for bad in ["\"512KiB\"", "\"8GiB\""] {
        let issues = f.issues(&format!("[store]\nwal_restart = {bad}\n"));
        assert!(has(&issues, "store.wal_restart", 2), "{bad}: {issues:?}");
        assert!(
            issues.iter().any(|i| i.message.contains("between")),
            "{issues:?}"
        );
    }
    let issues = f.issues("[store]\nwal_restart = \"lots\"\n");
    assert!(has(&issues, "store.wal_restart", 2), "{issues:?}");
    let issues = f.issues("[store]\nurl = \"postgres://db/x\"\nwal_restart = \"64MiB\"\n");
    assert!(has(&issues, "store.wal_restart", 3), "{issues:?}");
    assert!(
        issues.iter().any(|i| i.message.contains("SQLite")),
        "{issues:?}"
    );
}

#[test]
fn bind_takes_an_ip_or_localhost_with_a_port() {
    let f = Fixture::new();
    let wf = "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n";
    for (bind, want) in [
        ("127.0.0.1:9000", "127.0.0.1:9000"),
        ("[::1]:9000", "[::1]:9000"),
        ("localhost:9000", "127.0.0.1:9000"),
        ("LOCALHOST:9001", "127.0.0.1:9001"),
    ] {
        let c = f
            .parse(&format!("[server]\nbind = \"{bind}\"\n{wf}"))
            .unwrap_or_else(|e| panic!("{bind}: {e:?}"));
        assert_eq!(c.server.bind.to_string(), want);
    }
    for bind in ["localhost", "localhost:http", "example.com:80", "9000"] {
        let issues = f.issues(&format!("[server]\nbind = \"{bind}\"\n{wf}"));
        assert!(has(&issues, "server.bind", 2), "{bind}: {issues:?}");
    }
}

#[test]
fn an_unknown_args_placeholder_is_reported_with_its_line() {
    let f = Fixture::new();
    let issues = f.issues(
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nargs = [\"--params\", \"{param}\", \"--id={jobid}\"]\n",
    );
    assert!(has(&issues, "workflows.a.args", 4), "{issues:?}");
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(issues[0].message.contains("{param}"), "{issues:?}");
    // Known placeholders, and literal braces that are not names, are fine.
    let c = f
        .parse("[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nargs = [\"{workflow}\", \"--params={params}\", \"{jobId}\", \"{}\", \"{\\\"a\\\":1}\", \"{ x }\"]\n")
        .expect("valid");
    assert_eq!(c.workflows["a"].args.len(), 6);
}

/// `{paramsFile}` is a known placeholder in spawn mode; in a pool workflow
/// (whose jobs get their parameters over IPC) it is an error at `args`,
/// with its line.
#[test]
fn params_file_is_for_spawn_mode_only() {
    let f = Fixture::new();
    let wf = |extra: &str| {
        format!(
            "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n{extra}args = [\"--params-file\", \"{{paramsFile}}\"]\n"
        )
    };
    let c = f.parse(&wf("")).expect("valid in spawn mode");
    let a = &c.workflows["a"];
    assert!(a.uses_params_file() && !a.params_on_command_line());
    assert_eq!(
        a.render_job_args("{}", "id", "/t/p.json"),
        ["--params-file", "/t/p.json"]
    );
    let issues = f.issues(&wf("mode = \"pool\"\n"));
    assert!(has(&issues, "workflows.a.args", 5), "{issues:?}");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].message.contains("{paramsFile}"), "{issues:?}");
    // The default template passes the parameters themselves.
    let c = f
        .parse("[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n")
        .expect("valid");
    assert!(!c.workflows["a"].uses_params_file());
    assert!(c.workflows["a"].params_on_command_line());
}

#[test]
fn stdio_is_pipe_by_default_socket_on_request_and_refused_in_pool_mode() {
    let f = Fixture::new();
    let wf = |extra: &str| format!("[workflows.w]\nroot = \"app\"\nscript = \"main.js\"\n{extra}");
    let c = f.parse(&wf("")).expect("default");
    assert_eq!(c.workflows["w"].stdio, OutputChannel::Pipe);
    let c = f.parse(&wf("stdio = \"socket\"\n")).expect("socket");
    assert_eq!(c.workflows["w"].stdio, OutputChannel::Socket);
    let issues = f.issues(&wf("stdio = \"tty\"\n"));
    assert!(has(&issues, "workflows.w.stdio", 4), "{issues:?}");
    let issues = f.issues(&wf("mode = \"pool\"\nstdio = \"socket\"\n"));
    assert!(has(&issues, "workflows.w.stdio", 5), "{issues:?}");
    assert!(
        issues.iter().any(|i| i.message.contains("spawn mode")),
        "{issues:?}"
    );
}

#[test]
fn a_bind_override_is_judged_in_place_of_the_files_bind() {
    let f = Fixture::new();
    let open = "[server]\nbind = \"0.0.0.0:9000\"\n";
    let local = Overrides {
        bind: Some("127.0.0.1:9001".parse().unwrap()),
    };
    let c = Config::parse_with(open, f.dir.path(), &local).expect("overridden to loopback");
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:9001");
    let c = Config::parse_with("", f.dir.path(), &local).expect("no [server] table");
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:9001");
    // An open override is serve's to refuse, not a problem of the file's.
    let wide = Overrides {
        bind: Some("0.0.0.0:9002".parse().unwrap()),
    };
    let c = Config::parse_with("", f.dir.path(), &wide).expect("the file is fine");
    assert_eq!(c.server.bind.to_string(), "0.0.0.0:9002");
}

#[test]
fn user_names_resolve_or_name_their_key_and_line() {
    let f = Fixture::new();
    let issues = f.issues(
        "[defaults]\nuser = \"no-such-user-tsb\"\n\n\
         [workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nuser = \"1500:no-such-group-tsb\"\n\n\
         [workflows.b]\nroot = \"app\"\nscript = \"main.js\"\nuser = \"3999999999\"\n",
    );
    assert!(has(&issues, "defaults.user", 2), "{issues:?}");
    assert!(has(&issues, "workflows.a.user", 7), "{issues:?}");
    assert!(has(&issues, "workflows.b.user", 12), "{issues:?}");
    let text = |k: &str| {
        issues
            .iter()
            .find(|i| i.key == k)
            .map(|i| i.message.clone())
            .unwrap_or_default()
    };
    assert!(
        text("defaults.user").contains("no-such-user-tsb"),
        "{issues:?}"
    );
    assert!(text("workflows.a.user").contains("no group"), "{issues:?}");
    assert!(
        text("workflows.b.user").contains("give its group"),
        "{issues:?}"
    );
}

#[test]
fn a_workflow_takes_its_own_user_else_the_defaults_self_or_dynamic() {
    if tsbridge_sandbox::user::switch_refusal().is_some() {
        eprintln!("SKIP: this process cannot switch users, so `user` is refused");
        return;
    }
    let f = Fixture::new();
    let c = f
        .parse(
            "[defaults]\nuser = \"1500:1501\"\n\n\
             [workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n\n\
             [workflows.b]\nroot = \"app\"\nscript = \"main.js\"\nuser = \"1600:1601\"\n",
        )
        .expect("valid");
    let ids = |w: &str| {
        c.workflows[w]
            .user
            .map(|u| (u.judged_as().uid, u.judged_as().gid))
    };
    assert_eq!(ids("a"), Some((1500, 1501)));
    assert_eq!(ids("b"), Some((1600, 1601)));
    let c = f
        .parse("[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n")
        .expect("valid");
    assert_eq!(c.workflows["a"].user, None, "tsbridge's own uid by default");
    // `user = "self"` runs a workflow as tsbridge even when `defaults.user`
    // names a user; `"dynamic"` leases from `defaults.dynamic_uids`
    // (systemd's range unless given).
    let c = f
        .parse(
            "[defaults]\nuser = \"1500:1501\"\ndynamic_uids = \"3900000000-3900000009\"\n\n\
             [workflows.own]\nroot = \"app\"\nscript = \"main.js\"\nuser = \"self\"\n\n\
             [workflows.dyn]\nroot = \"app\"\nscript = \"main.js\"\nuser = \"dynamic\"\n\n\
             [workflows.dflt]\nroot = \"app\"\nscript = \"main.js\"\n",
        )
        .expect("valid");
    assert_eq!(c.workflows["own"].user, None, "self is tsbridge's own uid");
    let range = UidRange::new(3_900_000_000, 3_900_000_009).expect("range");
    assert_eq!(c.workflows["dyn"].user, Some(RunAs::Dynamic(range)));
    assert_eq!(
        c.workflows["dflt"].user,
        Some(RunAs::User(tsbridge_sandbox::JobUser {
            uid: 1500,
            gid: 1501
        }))
    );
    let c = f
        .parse("[defaults]\nuser = \"dynamic\"\n\n[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n")
        .expect("valid");
    assert_eq!(
        c.workflows["a"].user,
        Some(RunAs::Dynamic(
            tsbridge_sandbox::dynamic::DEFAULT_DYNAMIC_UIDS
        ))
    );
}

/// A range that is malformed, holds root, or holds an account of the
/// user database is refused at its key and line.
#[test]
fn a_bad_dynamic_range_names_its_key_and_line() {
    let f = Fixture::new();
    let src = |range: &str| {
        format!(
            "[defaults]\nconcurrency = 2\ndynamic_uids = \"{range}\"\n\n\
             [workflows.a]\nroot = \"app\"\nscript = \"main.js\"\n"
        )
    };
    for (range, says) in [
        ("9-5", "first <= last"),
        ("lots", "first <= last"),
        ("0-100", "uid 0"),
    ] {
        let issues = f.issues(&src(range));
        assert!(has(&issues, "defaults.dynamic_uids", 3), "{issues:?}");
        assert!(
            issues.iter().any(|i| i.message.contains(says)),
            "{range}: {issues:?}"
        );
    }
    // Every user database has an account besides root: `daemon`, `nobody`.
    let taken = ["daemon", "nobody", "bin"]
        .into_iter()
        .find_map(|n| tsbridge_sandbox::JobUser::resolve(n).ok())
        .expect("an account");
    let issues = f.issues(&src(&format!("{}-{}", taken.uid, taken.uid)));
    assert!(has(&issues, "defaults.dynamic_uids", 3), "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|i| i.message.contains(&format!("user {}", taken.uid))),
        "{issues:?}"
    );
}

/// `limits.unix_sockets`: read into the limits, a refusal asks for the
/// sandbox on its own, it reaches the job's policy (overriding `network`
/// either way), and a value that is not a boolean names its key and line.
#[test]
fn unix_sockets_is_read_and_reaches_the_policy() {
    let f = Fixture::new();
    let cfg = f
        .parse(
            "[workflows.tcp]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { unix_sockets = false }\n\
             [workflows.local]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { network = false, unix_sockets = true }\n\
             [workflows.plain]\nroot = \"app\"\nscript = \"main.js\"\n",
        )
        .expect("valid");
    let tcp = &cfg.workflows["tcp"];
    assert_eq!(tcp.limits.unix_sockets, Some(false));
    assert!(
        tcp.limits.any(),
        "a refusal of unix sockets needs the sandbox"
    );
    let tmp = Path::new("/tmp");
    let p = crate::spawn::policy_for(tcp, tmp);
    assert!(p.network && p.refuses_unix_sockets());
    let p = crate::spawn::policy_for(&cfg.workflows["local"], tmp);
    assert!(!p.network && !p.refuses_unix_sockets());
    let p = crate::spawn::policy_for(&cfg.workflows["plain"], tmp);
    assert!(p.network && !p.refuses_unix_sockets());
    assert!(!cfg.workflows["plain"].limits.any());

    let issues = f.issues(
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { unix_sockets = \"no\" }\n",
    );
    assert!(
        has(&issues, "workflows.a.limits.unix_sockets", 4),
        "{issues:?}"
    );
}

/// `limits.pid_namespace`: read into the limits (default off), asks for
/// the sandbox, reaches the job's policy, in spawn and in pool mode (a
/// pool's workers run under an init each); a value that is not a boolean
/// names key and line.
#[test]
fn pid_namespace_is_read_and_reaches_the_policy() {
    let f = Fixture::new();
    let cfg = f
        .parse(
            "[workflows.own]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { pid_namespace = true }\n\
             [workflows.plain]\nroot = \"app\"\nscript = \"main.js\"\n\
             [workflows.pooled]\nroot = \"app\"\nscript = \"main.js\"\nmode = \"pool\"\nlimits = { pid_namespace = true }\n",
        )
        .expect("valid: pool mode with a PID namespace too");
    let own = &cfg.workflows["own"];
    assert!(own.limits.pid_namespace);
    assert!(own.limits.any(), "a PID namespace needs the sandbox");
    let tmp = Path::new("/tmp");
    assert!(crate::spawn::policy_for(own, tmp).pid_namespace);
    let plain = &cfg.workflows["plain"];
    assert!(!plain.limits.pid_namespace);
    assert!(!crate::spawn::policy_for(plain, tmp).pid_namespace);
    let pooled = &cfg.workflows["pooled"];
    assert!(pooled.limits.pid_namespace);
    assert!(crate::spawn::policy_for(pooled, tmp).pid_namespace);

    let issues = f.issues(
        "[workflows.a]\nroot = \"app\"\nscript = \"main.js\"\nlimits = { pid_namespace = \"yes\" }\n",
    );
    assert!(
        has(&issues, "workflows.a.limits.pid_namespace", 4),
        "{issues:?}"
    );
}
