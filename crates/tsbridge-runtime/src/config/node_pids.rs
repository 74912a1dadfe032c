//! The fewest tasks a Node process needs under a `pids` limit, and whether
//! a program runs Node.
//!
//! A cgroup's `pids` limit counts threads. Before any JavaScript runs, Node
//! starts V8's four platform worker threads and their delayed-task
//! scheduler next to its main thread. Without room for them it aborts
//! (limit 1) or waits forever for a worker that was never created (limits
//! 2 to 5); from 6 it starts (measured with Node 20.20.2: `tsbridge run
//! --pids N node -e ...`, N = 1..12). So a limit below [`NODE_MIN_PIDS`]
//! for a Node program is refused where it is written (`limits.pids` of a
//! node, tsx or ts-node workflow; `tsbridge run --pids`): such a job would
//! hang until its timeout, and under `run`, which has none unless given,
//! for ever.

use std::io::Read;
use std::path::Path;

/// The fewest tasks Node starts with: its main thread, V8's 4 platform
/// workers and their scheduler.
pub const NODE_MIN_PIDS: u64 = 6;

/// Program names that are Node, or start it (the `tsx` and `ts-node` CLIs).
const NODE_PROGRAMS: [&str; 4] = ["node", "nodejs", "tsx", "ts-node"];

/// Why `pids` is too low for a Node program; `None` when it is enough.
pub fn node_pids_too_low(pids: u64) -> Option<String> {
    (pids < NODE_MIN_PIDS).then(|| {
        format!(
            "{pids} is too few for node, which cannot start with fewer than {NODE_MIN_PIDS} \
             tasks (its main thread, V8's 4 platform threads and their scheduler; a pids \
             limit counts threads): below that it aborts or hangs. Give at least \
             {NODE_MIN_PIDS}; a program that does file or DNS I/O needs 12 (libuv's thread \
             pool), and each further node process it starts 6 more"
        )
    })
}

/// Whether running `program` (exec'd as it is) starts Node: it is named
/// `node`, `nodejs`, `tsx` or `ts-node` (as given, or once its symlinks are
/// resolved), or it is a script whose `#!` line runs one of them (directly
/// or through `env`).
pub fn runs_node(program: &Path) -> bool {
    let named = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| NODE_PROGRAMS.contains(&n))
    };
    named(program)
        || std::fs::canonicalize(program).is_ok_and(|p| named(&p))
        || shebang_program(program).is_some_and(|p| NODE_PROGRAMS.contains(&p.as_str()))
}

/// The name of the program a `#!` line runs: the interpreter's file name,
/// or for `env` the first of its arguments that is not an option or an
/// assignment (`#!/usr/bin/env -S node --flag` is `node`).
fn shebang_program(script: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(script).ok()?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let interpreter = Path::new(words.next()?).file_name()?.to_str()?;
    if interpreter != "env" {
        return Some(interpreter.to_owned());
    }
    words
        .find(|w| !w.starts_with('-') && !w.contains('='))
        .and_then(|w| Path::new(w).file_name()?.to_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_programs_are_known_by_name_link_or_shebang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        assert!(runs_node(Path::new("/usr/bin/node")));
        assert!(runs_node(&write(
            "a",
            "#!/usr/bin/env node\nconsole.log(1)\n"
        )));
        assert!(runs_node(&write("b", "#!/usr/bin/env -S tsx --no-cache\n")));
        assert!(runs_node(&write(
            "c",
            "#!/opt/node/bin/node --max-old-space-size=64\n"
        )));
        let target = write("d", "#!/bin/sh\necho hi\n");
        assert!(!runs_node(&target));
        assert!(!runs_node(&write(
            "e",
            "#!/usr/bin/env NODE_ENV=x python3\n"
        )));
        assert!(!runs_node(&write("f", "no shebang\n")));
        let link = dir.path().join("node");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(runs_node(&link), "named node where it is run");
        assert!(node_pids_too_low(NODE_MIN_PIDS - 1).is_some());
        assert!(node_pids_too_low(NODE_MIN_PIDS).is_none());
    }
}
