//! Command-line interface (SPEC §6).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tsbridge_proto::{ByteSize, DurationSpec};

#[derive(Debug, Parser)]
#[command(
    name = "tsbridge",
    version,
    about = "Run TypeScript (and any other) programs as managed, sandboxed subprocesses",
    propagate_version = true
)]
pub struct Cli {
    /// More log output (-v info, -vv debug). TSBRIDGE_LOG overrides (tracing filter syntax).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines on stderr.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job in the foreground: result JSON on stdout, logs and output on stderr.
    Run(RunArgs),
    /// Serve the HTTP/WebSocket API.
    Serve(ServeArgs),
    /// Validate a config and report what isolation this host provides.
    Check(CheckArgs),
    /// Talk to a running server: list (the default), show, cancel, follow logs.
    Jobs(JobsArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Wall-clock timeout: seconds (30, 0.5) or with a unit (30s, 500ms, 5m); exit code 124 when it expires.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<DurationSpec>,
    /// Time between SIGTERM and SIGKILL when the job is ended: seconds or with a unit.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: DurationSpec,
    /// Output kept per stream (head + tail), e.g. 16MiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_output: ByteSize,
    /// Extra environment variable for the child (repeatable): K=V.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Pass a variable of this environment through to the child (repeatable). Not a name that looks secret (PASSWORD, SECRET, KEY, TOKEN, CREDENTIAL): those are never passed; give one with --env.
    #[arg(long = "pass-env", value_name = "NAME", value_parser = parse_pass_env)]
    pub pass_env: Vec<String>,
    /// Working directory of the child (default: the current directory).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Retries after a retryable failure (spawn EAGAIN, timeout, death by signal).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Runtime: tsx, ts-node, ts-node-check, node or exec (default: by the file's extension).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Print the whole outcome (exit, reason, resources, result, output) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Memory limit, e.g. 512MiB (cgroup; kernel-enforced).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Maximum number of processes/threads. At least 6 for a Node program
    /// (node, tsx, ts-node, or a script whose #! runs node), which cannot start with fewer.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Run without network (own network namespace; no unix sockets either).
    #[arg(long)]
    pub no_network: bool,
    /// Refuse the job unix sockets even with the network (`socket(AF_UNIX)`
    /// fails with EACCES; socketpair and inherited sockets work): TCP and
    /// UDP only, none of the host's socket files.
    #[arg(long)]
    pub no_unix_sockets: bool,
    /// Run the job in a PID namespace of its own, under a tiny init, with a
    /// /proc that shows its own processes only (nothing of the host's, no
    /// other job's command line); nothing it starts outlives it. Needs
    /// CAP_SYS_ADMIN (see `tsbridge check`).
    #[arg(long)]
    pub pid_namespace: bool,
    /// Run even where this host cannot fully enforce the limits asked for
    /// (`--memory`, `--cpu`, `--pids`, `--no-network`, `--pid-namespace`, `--read`/`--write`):
    /// they are then best effort, and each shortfall is logged. Without it
    /// `run` refuses to start the job, as `serve` makes such a workflow
    /// unavailable unless its config says `degraded = true`.
    #[arg(long)]
    pub degraded: bool,
    /// Restrict the filesystem (Landlock): readable path (repeatable).
    #[arg(long = "read", value_name = "PATH")]
    pub read: Vec<PathBuf>,
    /// Restrict the filesystem (Landlock): writable path (repeatable).
    #[arg(long = "write", value_name = "PATH")]
    pub write: Vec<PathBuf>,
    /// Run the job as this user: a name or uid, optionally with :group
    /// (`nobody`, `1500:1500`); no supplementary groups. `dynamic`: a uid
    /// of its own for this run (gid = the same number), leased from
    /// systemd's dynamic range 61184-65519 and reserved for the host until
    /// the job's tree and TMPDIR are gone. Needs root (or CAP_SETUID,
    /// CAP_SETGID and CAP_CHOWN). The job's TMPDIR is given to it; folders
    /// of --write must be writable by it already.
    #[arg(long, value_name = "USER[:GROUP]|dynamic", value_parser = parse_user)]
    pub user: Option<tsbridge_sandbox::RunAs>,
    /// Do not open Node's IPC channel for Node runtimes.
    #[arg(long)]
    pub no_ipc: bool,
    /// The child's stdout and stderr: pipe, or socket (Unix socketpairs, as Node's
    /// child_process gives: less CPU per byte of a flood; opening /dev/stdout by path fails).
    #[arg(long, default_value = "pipe", value_name = "pipe|socket")]
    pub stdio: tsbridge_process::OutputChannel,
    /// The program or script, then its arguments. Everything from the script on
    /// is the child's, flags included; `--` before it is optional (needed only
    /// when the script's name starts with `-`).
    #[arg(
        value_name = "SCRIPT|PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, short, default_value = "tsbridge.toml", env = "TSBRIDGE_CONFIG")]
    pub config: PathBuf,
    /// Override [server] bind.
    #[arg(long)]
    pub bind: Option<String>,
    /// Development mode: error details and stacks in responses.
    #[arg(long)]
    pub dev: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file to validate (default: ./tsbridge.toml, as for serve; when
    /// there is none, only host capabilities are reported).
    #[arg(long, short, env = "TSBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "TSBRIDGE_URL",
        default_value = "http://127.0.0.1:8787"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "TSBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do (default: list).
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
}

impl JobsArgs {
    /// The subcommand, `list` with its defaults when none was given (like
    /// `pueue` alone showing the status).
    pub fn command_or_list(&mut self) -> JobsCommand {
        self.command.take().unwrap_or(JobsCommand::List {
            state: None,
            workflow: None,
            limit: DEFAULT_LIST_LIMIT,
            cursor: None,
        })
    }
}

/// Jobs `tsbridge jobs list` shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 20;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, succeeded, failed,
        /// cancelled, timed_out).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Jobs per page (1 to 500).
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: u32,
        /// The next page: the cursor a previous list printed (`nextCursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one job.
    Show { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// Print a job's events; --follow streams until the job ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Submit a job: `tsbridge jobs submit WORKFLOW '{"a":1}'`.
    Submit {
        workflow: String,
        #[arg(default_value = "{}")]
        parameters: String,
        /// Wait for the job to end and print it.
        #[arg(long)]
        wait: bool,
    },
}

/// A duration on the command line: a bare number is seconds, as for
/// timeout(1) (`30`, `0.5`); with a unit as in the config (`30s`, `500ms`,
/// `5m`, `1h30m`). HTTP requests keep their own notation (a bare number is
/// milliseconds there, SPEC §4), which is why this is not `DurationSpec`'s parser.
/// `--user`: `dynamic` (the default range; a uid is leased when the run
/// starts), else a user resolved through the user database now.
fn parse_user(s: &str) -> Result<tsbridge_sandbox::RunAs, String> {
    if s == "dynamic" {
        return Ok(tsbridge_sandbox::RunAs::Dynamic(
            tsbridge_sandbox::dynamic::DEFAULT_DYNAMIC_UIDS,
        ));
    }
    tsbridge_sandbox::JobUser::resolve(s)
        .map(tsbridge_sandbox::RunAs::User)
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<DurationSpec, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected seconds (30, 0.5) or a number with a unit (30s, 500ms, 5m, 1h30m)"
        )
    };
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| bad())?;
        // The config's ceiling too (~31,700 years): no deadline overflows.
        if !(0.0..=1e12).contains(&secs) {
            return Err(bad());
        }
        return std::time::Duration::try_from_secs_f64(secs)
            .map(DurationSpec)
            .map_err(|_| bad());
    }
    tsbridge_proto::units::parse_duration(t)
        .map(DurationSpec)
        .map_err(|_| bad())
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// `--pass-env NAME`: a name that looks secret is never passed (as for a
/// workflow's `env.pass`), so asking for one is a usage error, not a
/// variable silently missing in the child.
fn parse_pass_env(s: &str) -> Result<String, String> {
    if tsbridge_sandbox::env::is_secret_name(s) {
        return Err(format!(
            "{s} looks secret, and host variables with such names are never passed: give it with --env {s}=VALUE"
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_dashes_verbatim() {
        let cli = Cli::try_parse_from([
            "tsbridge",
            "run",
            "--timeout",
            "2s",
            "--env",
            "A=1",
            "--",
            "x.ts",
            "--timeout",
            "$(rm)",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.timeout.unwrap().0.as_secs(), 2);
        assert_eq!(r.env, vec![("A".to_owned(), "1".to_owned())]);
        assert_eq!(r.command, ["x.ts", "--timeout", "$(rm)"]);
    }

    fn run(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["tsbridge", "run"].iter().chain(args)).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        r
    }

    #[test]
    fn run_needs_no_dashes_and_the_script_starts_the_childs_args() {
        let r = run(&["--timeout", "5", "x.js", "--timeout", "9", "-v", "--json"]);
        assert_eq!(r.timeout.unwrap().0, Duration::from_secs(5));
        assert!(!r.json, "--json after the script is the child's");
        assert_eq!(r.command, ["x.js", "--timeout", "9", "-v", "--json"]);
        // A `--` after the script is the child's too, verbatim.
        assert_eq!(run(&["x.js", "--", "a"]).command, ["x.js", "--", "a"]);
        // With `--` first, as before.
        assert_eq!(run(&["--", "x.js", "-a"]).command, ["x.js", "-a"]);
        assert_eq!(run(&["--", "x.js", "--", "a"]).command, ["x.js", "--", "a"]);
        assert_eq!(run(&["--", "-odd-name.js"]).command, ["-odd-name.js"]);
        assert!(Cli::try_parse_from(["tsbridge", "run"]).is_err());
        assert!(Cli::try_parse_from(["tsbridge", "run", "--timeout", "5"]).is_err());
    }

    #[test]
    fn a_bare_number_on_the_command_line_is_seconds() {
        let d = |s: &str| parse_duration(s).unwrap().0;
        assert_eq!(d("30"), Duration::from_secs(30));
        assert_eq!(d("0.5"), Duration::from_millis(500));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("0"), Duration::ZERO);
        for bad in [
            "",
            "abc",
            "5q",
            "-1",
            "1.2.3",
            ".",
            "1e3",
            "99999999999999999",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("seconds"), "{bad}: {e}");
        }
        assert_eq!(
            run(&["--kill-grace", "2", "x"]).kill_grace.0,
            Duration::from_secs(2)
        );
        assert_eq!(run(&["x"]).kill_grace.0, Duration::from_secs(5));
    }

    #[test]
    fn jobs_alone_lists() {
        let cli = Cli::try_parse_from(["tsbridge", "jobs", "--json"]).unwrap();
        let Command::Jobs(mut j) = cli.command else {
            panic!("not jobs")
        };
        assert!(j.json);
        assert!(matches!(
            j.command_or_list(),
            JobsCommand::List {
                state: None,
                workflow: None,
                limit: DEFAULT_LIST_LIMIT,
                cursor: None
            }
        ));
        let cli = Cli::try_parse_from(["tsbridge", "jobs", "show", "x"]).unwrap();
        let Command::Jobs(mut j) = cli.command else {
            panic!("not jobs")
        };
        assert!(matches!(j.command_or_list(), JobsCommand::Show { id } if id == "x"));
    }
}
