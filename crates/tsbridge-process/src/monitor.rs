//! The resource monitor of one job: at an interval it samples every process
//! of the job, keeps a bounded history of [`ResourceSample`]s and the peak
//! RSS, and says when the job's memory exceeds the fallback limit.
//!
//! - Source: the job's sandbox cgroup when it has one (`memory.current`,
//!   CPU usage); otherwise the sum over the job's processes (found by the
//!   engine's descendant tracker) of `/proc/<pid>/statm` resident pages and
//!   `/proc/<pid>/stat` utime+stime+cutime+cstime. The reaped children's
//!   times (cutime/cstime) keep the sum from dropping when a child of the job
//!   exits; a drop that still happens (a process of the job vanished with its
//!   CPU time) reads as 0 % for that interval.
//! - Cost: one tick per interval; each tick is one tree walk and two small
//!   `/proc` reads per process (or a few cgroup files). It runs inside the
//!   job's supervision task, which owns the descendant tracker, so no lock is
//!   needed and nothing blocks: the reads are plain `std::fs` on procfs.
//! - History: at most [`HISTORY_MAX`] samples. When it is full every other
//!   sample is dropped and from then on only every other tick is recorded
//!   (the stride doubles), so the history always covers the whole run at an
//!   even spacing. Peak RSS is tracked on every tick.
//! - Fallback memory limit: when set and the job has no cgroup memory limit,
//!   a tick whose RSS exceeds it is a breach; the engine then kills the tree
//!   at once (no SIGTERM grace) and the job ends with `MemoryLimit`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sys::{Pid, ProcRef};

/// The most samples kept in an outcome.
pub const HISTORY_MAX: usize = 120;

/// One sample of a job's resource usage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ResourceSample {
    /// Milliseconds since the job started.
    pub at_ms: u64,
    /// Resident memory of the whole job, in bytes.
    pub rss_bytes: u64,
    /// CPU use since the previous sample, in percent of one core (a job
    /// busy on two cores reads 200).
    pub cpu_percent: f64,
}

/// One raw reading: memory now and cumulative CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) rss_bytes: u64,
    pub(crate) cpu: Duration,
}

/// The monitor state of one job.
#[derive(Debug)]
pub(crate) struct Monitor {
    started: Instant,
    limit: Option<u64>,
    prev_at: Instant,
    prev_cpu: Duration,
    history: Vec<ResourceSample>,
    stride: u64,
    ticks: u64,
    peak: u64,
}

impl Monitor {
    /// `limit`: the fallback memory limit to enforce (already `None` when the
    /// job's cgroup enforces one).
    pub(crate) fn new(started: Instant, limit: Option<u64>) -> Self {
        Self {
            started,
            limit,
            prev_at: started,
            prev_cpu: Duration::ZERO,
            history: Vec::new(),
            stride: 1,
            ticks: 0,
            peak: 0,
        }
    }

    /// Records one reading taken at `now`. `true`: the fallback memory limit
    /// is exceeded.
    pub(crate) fn record(&mut self, now: Instant, r: Reading) -> bool {
        // No resident memory at all: every process of the job has exited (a
        // live process always has some). Such a tick, racing the job's end,
        // says nothing about the job: not recorded.
        if r.rss_bytes == 0 {
            return false;
        }
        let wall = now.saturating_duration_since(self.prev_at);
        let cpu = r.cpu.saturating_sub(self.prev_cpu);
        let cpu_percent = if wall.is_zero() {
            0.0
        } else {
            cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
        };
        self.prev_at = now;
        self.prev_cpu = r.cpu;
        self.peak = self.peak.max(r.rss_bytes);
        let breach = self.limit.is_some_and(|l| r.rss_bytes > l);
        let sample = ResourceSample {
            at_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            rss_bytes: r.rss_bytes,
            cpu_percent,
        };
        let on_stride = self.ticks.is_multiple_of(self.stride);
        self.ticks += 1;
        if on_stride || breach {
            if self.history.len() >= HISTORY_MAX {
                let mut i = 0;
                self.history.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride = self.stride.saturating_mul(2);
            }
            self.history.push(sample);
        }
        breach
    }

    /// The largest RSS seen, if any sample was taken.
    pub(crate) fn peak(&self) -> Option<u64> {
        (self.ticks > 0).then_some(self.peak)
    }

    pub(crate) fn into_samples(self) -> Vec<ResourceSample> {
        self.history
    }
}

/// Sums RSS and CPU time over these processes from /proc. A process that is
/// gone (or unreadable) counts as nothing.
pub(crate) fn read_procs(procs: &[ProcRef]) -> Reading {
    let page = rustix::param::page_size() as u64;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let mut rss_pages = 0u64;
    let mut ticks = 0u64;
    for p in procs {
        let Some((start, cpu_ticks)) = read_cpu_ticks(p.pid) else {
            continue;
        };
        // The pid may have been reused since the walk.
        if start != p.start {
            continue;
        }
        ticks = ticks.saturating_add(cpu_ticks);
        if let Some(pages) = read_resident_pages(p.pid) {
            rss_pages = rss_pages.saturating_add(pages);
        }
    }
    Reading {
        rss_bytes: rss_pages.saturating_mul(page),
        cpu: Duration::from_secs(ticks / hz)
            + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz),
    }
}

/// `/proc/<pid>/stat`: (start time, utime + stime + cutime + cstime) in
/// clock ticks. `None` when the process is gone.
fn read_cpu_ticks(pid: Pid) -> Option<(u64, u64)> {
    let buf = std::fs::read(format!("/proc/{}/stat", pid.raw())).ok()?;
    parse_cpu_ticks(&buf)
}

fn parse_cpu_ticks(buf: &[u8]) -> Option<(u64, u64)> {
    // comm may contain spaces and ')': fields start after the last ')'.
    let close = memchr::memrchr(b')', buf)?;
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    // Field 3 (state) is the first after the ')'; utime is field 14.
    let f: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    let cpu = [14, 15, 16, 17]
        .iter()
        .map(|&i| num(i))
        .try_fold(0u64, |acc, v| v.map(|v| acc.saturating_add(v)))?;
    let start = num(22)?;
    Some((start, cpu))
}

/// `/proc/<pid>/statm` field 2: resident pages.
fn read_resident_pages(pid: Pid) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/statm", pid.raw())).ok()?;
    s.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Fills the reading from the job's cgroup; fields the cgroup does not give
/// come from `fallback` (the /proc reading), called only when needed.
pub(crate) fn read_cgroup(
    cg: &tsbridge_sandbox::JobCgroup,
    fallback: impl FnOnce() -> Reading,
) -> Reading {
    let stats = cg.stats();
    match (stats.memory_current, stats.cpu_usage_ns) {
        (Some(mem), Some(ns)) => Reading {
            rss_bytes: mem,
            cpu: Duration::from_nanos(ns),
        },
        (mem, ns) => {
            let f = fallback();
            Reading {
                rss_bytes: mem.unwrap_or(f.rss_bytes),
                cpu: ns.map(Duration::from_nanos).unwrap_or(f.cpu),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn reading(rss: u64, cpu_ms: u64) -> Reading {
        Reading {
            rss_bytes: rss,
            cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn cpu_percent_and_peak_and_breach() {
        let t0 = Instant::now();
        let mut m = Monitor::new(t0, Some(100 * MIB));
        assert!(!m.record(t0 + Duration::from_secs(1), reading(50 * MIB, 500)));
        assert!(!m.record(t0 + Duration::from_secs(2), reading(80 * MIB, 1500)));
        // CPU time went down (a process vanished): 0 %, not negative.
        assert!(!m.record(t0 + Duration::from_secs(3), reading(10 * MIB, 100)));
        assert!(m.record(t0 + Duration::from_secs(4), reading(101 * MIB, 100)));
        assert_eq!(m.peak(), Some(101 * MIB));
        let s = m.into_samples();
        assert_eq!(s.len(), 4);
        assert!((s[0].cpu_percent - 50.0).abs() < 1e-6);
        assert!((s[1].cpu_percent - 100.0).abs() < 1e-6);
        assert_eq!(s[2].cpu_percent, 0.0);
        assert_eq!(s[3].at_ms, 4000);
    }

    #[test]
    fn history_is_bounded_and_covers_the_run() {
        let t0 = Instant::now();
        let mut m = Monitor::new(t0, None);
        assert_eq!(m.peak(), None);
        let n = 1000u64;
        for i in 1..=n {
            m.record(t0 + Duration::from_millis(i * 100), reading(i, 0));
        }
        let s = m.into_samples();
        assert!(s.len() <= HISTORY_MAX, "{}", s.len());
        assert!(s.len() >= HISTORY_MAX / 2, "{}", s.len());
        assert_eq!(s[0].at_ms, 100, "the start stays covered");
        let last = s.last().map(|x| x.at_ms).unwrap_or(0);
        assert!(last >= (n - 16) * 100, "the end is covered: {last}");
        // Evenly spaced.
        let gaps: Vec<u64> = s.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
        assert!(gaps.windows(2).all(|g| g[0] == g[1]), "{gaps:?}");
    }

    #[test]
    fn a_tick_after_every_process_exited_is_not_recorded() {
        let t0 = Instant::now();
        let mut m = Monitor::new(t0, Some(1));
        assert!(!m.record(t0 + Duration::from_millis(100), reading(0, 0)));
        assert_eq!(m.peak(), None);
        assert!(m.into_samples().is_empty());
    }

    #[test]
    fn parses_stat_times() {
        let line =
            b"123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 7 8 20 0 1 0 777 1000 10";
        assert_eq!(parse_cpu_ticks(line), Some((777, 26)));
    }

    #[test]
    fn reads_own_process() {
        let me = crate::sys::self_pid();
        let st = crate::sys::read_stat(me).unwrap();
        let r = read_procs(&[ProcRef {
            pid: me,
            start: st.start,
        }]);
        assert!(r.rss_bytes > 0);
        // A wrong start time (a reused pid) counts as nothing.
        let r = read_procs(&[ProcRef {
            pid: me,
            start: st.start + 1,
        }]);
        assert_eq!(r.rss_bytes, 0);
    }
}
