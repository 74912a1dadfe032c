//! Finding tsbridge's own cgroup per hierarchy: pure parsers of
//! `/proc/self/cgroup` and `/proc/self/mountinfo`, and the decision v2 / v1 / none.

use std::path::{Path, PathBuf};

use super::Controller;

/// One line of `/proc/<pid>/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcCgroup {
    pub id: u32,
    /// Empty for the v2 line (`0::/path`); `name=...` entries are kept as they are.
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.trim().parse().ok()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some(ProcCgroup {
                id,
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// The path inside the hierarchy that is mounted (usually `/`).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// `cgroup2` or `cgroup`.
    pub v2: bool,
    /// Super options, e.g. `rw,memory` or `rw,cpu,cpuacct`.
    pub super_options: Vec<String>,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let fstype = *r.first()?;
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                root: PathBuf::from(unescape(l.get(3)?)),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                v2,
                super_options: r
                    .get(2)
                    .map(|s| s.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` = space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of the cgroup `cg_path` under a mount of its hierarchy.
fn dir_under_mount(mount: &CgroupMount, cg_path: &Path) -> Option<PathBuf> {
    let rel = cg_path.strip_prefix(&mount.root).ok()?;
    Some(mount.mount_point.join(rel))
}

/// Where tsbridge's own cgroups are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Discovered {
    /// Unified hierarchy with at least one of memory/pids/cpu available.
    V2 {
        own_dir: PathBuf,
        /// Of memory/pids/cpu, those not available in `own_dir` that a
        /// mounted v1 hierarchy of ours has: a host that splits the
        /// controllers between v1 and v2. tsbridge uses one version, so
        /// these are not used (a limit that needs one is a shortfall).
        on_v1: Vec<Controller>,
    },
    /// Legacy hierarchies: (controllers of the hierarchy, own dir in it).
    V1 {
        hierarchies: Vec<(Vec<Controller>, PathBuf)>,
    },
    None {
        reason: String,
    },
}

/// Decide from the two proc files; `v2_controllers` reads `cgroup.controllers`
/// of a candidate v2 dir (a closure so the decision is testable).
pub(crate) fn discover(
    proc_cgroup: &str,
    mountinfo: &str,
    v2_controllers: impl Fn(&Path) -> Option<String>,
) -> Discovered {
    let lines = parse_proc_cgroup(proc_cgroup);
    let mounts = parse_mountinfo(mountinfo);

    let hierarchies = v1_hierarchies(&lines, &mounts);
    if let Some(line) = lines.iter().find(|l| l.id == 0 && l.controllers.is_empty()) {
        for m in mounts.iter().filter(|m| m.v2) {
            if let Some(dir) = dir_under_mount(m, &line.path)
                && let Some(ctrls) = v2_controllers(&dir)
                && ctrls
                    .split_whitespace()
                    .any(|c| matches!(c, "memory" | "pids" | "cpu"))
            {
                let on_v1 = [Controller::Memory, Controller::Pids, Controller::Cpu]
                    .into_iter()
                    .filter(|c| {
                        !ctrls.split_whitespace().any(|n| n == c.name())
                            && hierarchies.iter().any(|(h, _)| h.contains(c))
                    })
                    .collect();
                return Discovered::V2 {
                    own_dir: dir,
                    on_v1,
                };
            }
        }
    }
    if hierarchies.is_empty() {
        Discovered::None {
            reason: "no cgroup v2 hierarchy with memory/pids/cpu controllers and no cgroup v1 \
                     memory/pids/cpu/freezer hierarchy is mounted"
                .to_owned(),
        }
    } else {
        Discovered::V1 { hierarchies }
    }
}

/// Our own directory in the first mounted cgroup2 hierarchy, whatever its
/// controllers (none on a hybrid host's `unified` mount).
pub(crate) fn own_v2_dir(proc_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let lines = parse_proc_cgroup(proc_cgroup);
    let line = lines
        .iter()
        .find(|l| l.id == 0 && l.controllers.is_empty())?;
    parse_mountinfo(mountinfo)
        .iter()
        .filter(|m| m.v2)
        .find_map(|m| dir_under_mount(m, &line.path))
}

/// Our own dir in each mounted v1 hierarchy of a controller tsbridge uses.
fn v1_hierarchies(lines: &[ProcCgroup], mounts: &[CgroupMount]) -> Vec<(Vec<Controller>, PathBuf)> {
    let mut hierarchies = Vec::new();
    for line in lines.iter().filter(|l| !l.controllers.is_empty()) {
        let ctrls: Vec<Controller> = line
            .controllers
            .iter()
            .filter_map(|c| Controller::from_v1_name(c))
            .collect();
        if ctrls.is_empty() {
            continue;
        }
        let mount = mounts.iter().find(|m| {
            !m.v2
                && line
                    .controllers
                    .iter()
                    .all(|c| m.super_options.iter().any(|o| o == c))
        });
        if let Some(m) = mount
            && let Some(dir) = dir_under_mount(m, &line.path)
        {
            hierarchies.push((ctrls, dir));
        }
    }
    hierarchies
}

#[cfg(test)]
mod tests {
    use super::*;

    const THIS_HOST_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
        4:memory:/process_api/49d4\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const THIS_HOST_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
35 30 0:31 / /sys/fs/cgroup/cpuacct rw,nosuid - cgroup cgroup rw,cpuacct
36 30 0:32 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn the_own_v2_dir_of_a_hybrid_host_is_on_its_controller_less_mount() {
        assert_eq!(
            own_v2_dir(THIS_HOST_CGROUP, THIS_HOST_MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified/"))
        );
        let v1_only: String = THIS_HOST_MOUNTS
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(own_v2_dir(THIS_HOST_CGROUP, &v1_only), None);
    }

    #[test]
    fn hybrid_host_without_v2_controllers_uses_v1_with_nested_memory_path() {
        let d = discover(THIS_HOST_CGROUP, THIS_HOST_MOUNTS, |_| Some(String::new()));
        let Discovered::V1 { hierarchies } = d else {
            panic!("expected v1, got {d:?}")
        };
        assert!(hierarchies.contains(&(
            vec![Controller::Memory],
            PathBuf::from("/sys/fs/cgroup/memory/process_api/49d4")
        )));
        assert!(hierarchies.contains(&(
            vec![Controller::Pids],
            PathBuf::from("/sys/fs/cgroup/pids/")
        )));
        assert!(hierarchies.contains(&(
            vec![Controller::Freezer],
            PathBuf::from("/sys/fs/cgroup/freezer/")
        )));
        assert_eq!(hierarchies.len(), 5, "{hierarchies:?}");
    }

    #[test]
    fn unified_host_with_controllers_uses_v2() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let d = discover("0::/system.slice/tsbridge.service\n", mounts, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/system.slice/tsbridge.service"));
            Some("cpu io memory pids".into())
        });
        assert_eq!(
            d,
            Discovered::V2 {
                own_dir: PathBuf::from("/sys/fs/cgroup/system.slice/tsbridge.service"),
                on_v1: vec![],
            }
        );
    }

    /// A host that moved pids and cpu to the unified hierarchy and left
    /// memory on v1 (this machine, after `+pids +cpu` in the unified root's
    /// `cgroup.subtree_control`): v2 is used, and memory is named as the
    /// controller left on v1, not as one missing.
    #[test]
    fn a_host_that_splits_controllers_uses_v2_and_names_those_left_on_v1() {
        let proc_cgroup = "8:pids:/
4:memory:/process_api/49d4
1:cpu:/
2:cpuacct:/
0::/
";
        let d = discover(proc_cgroup, THIS_HOST_MOUNTS, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/unified/"));
            Some("cpu pids".into())
        });
        assert_eq!(
            d,
            Discovered::V2 {
                own_dir: PathBuf::from("/sys/fs/cgroup/unified/"),
                on_v1: vec![Controller::Memory],
            }
        );
    }

    #[test]
    fn co_mounted_cpu_cpuacct_and_non_root_mount() {
        let mounts =
            "40 30 0:40 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let d = discover("3:cpu,cpuacct:/docker/abc/x\n", mounts, |_| None);
        assert_eq!(
            d,
            Discovered::V1 {
                hierarchies: vec![(
                    vec![Controller::Cpu, Controller::Cpuacct],
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x")
                )]
            }
        );
    }

    #[test]
    fn nothing_mounted_is_none() {
        assert!(matches!(
            discover("0::/\n", "", |_| None),
            Discovered::None { .. }
        ));
    }

    #[test]
    fn mountinfo_unescapes_spaces() {
        let m = parse_mountinfo("1 2 0:1 / /a\\040b rw - cgroup2 none rw\n");
        assert_eq!(m[0].mount_point, PathBuf::from("/a b"));
    }
}
