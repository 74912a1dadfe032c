//! This process's instance tag, `<pid>.<start time>`: what names the things
//! one tsbridge makes for its jobs (the `TSBRIDGE_OWNER` entry of their
//! environment, their TMPDIRs, their cgroups), so that a reused pid never
//! makes another process's leftovers look like ours. The start time (clock
//! ticks since boot, field 22 of `/proc/self/stat`) tells two processes
//! that had the same pid apart.

use std::sync::OnceLock;

/// `<pid>.<start time>` of this process, computed once (`<pid>.0` if
/// `/proc/self/stat` cannot be read).
pub fn instance_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let start = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| start_time(&s))
            .unwrap_or(0);
        format!("{}.{}", std::process::id(), start)
    })
}

/// The start time of a `/proc/<pid>/stat` line: the 20th field after the
/// command name's closing parenthesis (the name may hold spaces and
/// parentheses itself, so the last `)` ends it).
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_after_the_last_parenthesis() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 10000 100 18446744073709551615";
        assert_eq!(start_time(line), Some(987_654));
        assert_eq!(start_time("12 (x) S 1"), None);
        assert_eq!(start_time("no parenthesis"), None);
    }

    #[test]
    fn the_tag_names_this_process_and_its_start() {
        let tag = instance_tag();
        let (pid, start) = tag.split_once('.').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(start.parse::<u64>().ok(), start_time(&own));
        assert_ne!(start, "0");
    }
}
