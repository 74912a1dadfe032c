//! The few file operations the cgroup code does, so the same code runs against
//! the kernel's cgroupfs and against a fake cgroupfs in a tempdir (unit tests).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Which kind of file system the cgroup paths live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsKind {
    /// The kernel's cgroupfs: files appear on mkdir, rmdir removes a dir with its files.
    Kernel,
    /// A plain directory tree standing in for cgroupfs (tests): writes create
    /// files, removal deletes recursively.
    Plain,
}

impl FsKind {
    pub(crate) fn read(self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    /// One `write(2)` of `data` (cgroupfs parses each write on its own).
    pub(crate) fn write(self, path: &Path, data: &str) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(self == FsKind::Plain)
            .truncate(self == FsKind::Plain)
            .open(path)?;
        f.write_all(data.as_bytes())
    }

    pub(crate) fn exists(self, path: &Path) -> bool {
        path.exists()
    }

    pub(crate) fn mkdir(self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    /// Remove `dir` and every cgroup below it, deepest first. A missing dir is fine.
    pub(crate) fn remove_tree(self, dir: &Path) -> io::Result<()> {
        match self {
            FsKind::Plain => match fs::remove_dir_all(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
            FsKind::Kernel => {
                for sub in subdirs(dir) {
                    self.remove_tree(&sub)?;
                }
                match fs::remove_dir(dir) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
        }
    }
}

/// Direct subdirectories of `dir` (child cgroups); empty when unreadable.
pub(crate) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// `dir` and all cgroups below it.
pub(crate) fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let subs = subdirs(&out[i]);
        out.extend(subs);
        i += 1;
    }
    out
}

/// Parse a file of one integer or `max`.
pub(crate) fn read_u64(fs: FsKind, path: &Path) -> Option<u64> {
    fs.read(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines).
pub(crate) fn read_key(fs: FsKind, path: &Path, key: &str) -> Option<u64> {
    let text = fs.read(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}
