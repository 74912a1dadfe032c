//! Confining request paths to a root: symlink-aware, component-wise (never a
//! string prefix), for paths that exist and for outputs that do not yet.
//!
//! This is the early 403 check. It cannot stop a path from being swapped for
//! a symlink after the check (TOCTOU): Landlock is what enforces at run time.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::SecurityError;

/// Resolve `candidate` (relative = against `root`) to a canonical path and
/// require it to be `root` or beneath it.
///
/// Existing paths are canonicalized (all symlinks resolved). For a path that
/// does not exist yet, the deepest existing ancestor is canonicalized and the
/// rest re-appended; the rest may not contain `..`, and may not start with a
/// dangling symlink. Refuses NUL bytes, empty paths, and anything resolving
/// outside (`/srv/app-evil` is outside `/srv/app`).
pub fn confine(root: &Path, candidate: &Path) -> Result<PathBuf, SecurityError> {
    if candidate.as_os_str().as_bytes().contains(&0) || root.as_os_str().as_bytes().contains(&0) {
        return Err(SecurityError::NulInPath);
    }
    if candidate.as_os_str().is_empty() {
        return Err(SecurityError::EmptyPath);
    }
    let root = root.canonicalize().map_err(|e| SecurityError::BadRoot {
        root: root.to_path_buf(),
        reason: e.to_string(),
    })?;
    let joined = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        root.join(candidate)
    };
    let outside = || SecurityError::PathOutsideRoot {
        path: candidate.to_path_buf(),
    };

    // Split into the deepest existing ancestor and a remainder that does not exist.
    let mut existing = joined.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let resolved_base = loop {
        match existing.canonicalize() {
            Ok(p) => break p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink is "not found" by canonicalize, but exists:
                // writing through it would land wherever it points.
                if existing.symlink_metadata().is_ok() {
                    return Err(outside());
                }
                match existing.components().next_back() {
                    Some(Component::Normal(name)) => rest.push(name.to_os_string()),
                    Some(Component::CurDir) => {}
                    Some(Component::ParentDir) => return Err(outside()),
                    _ => return Err(outside()),
                }
                if !existing.pop() {
                    return Err(outside());
                }
            }
            Err(e) => {
                return Err(SecurityError::Unresolvable {
                    path: candidate.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
    };
    let mut resolved = resolved_base;
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(outside())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
        root: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().canonicalize().expect("canon");
        let root = base.join("app");
        std::fs::create_dir_all(root.join("data/sub")).expect("mkdir");
        std::fs::write(root.join("data/in.txt"), "x").expect("write");
        std::fs::create_dir_all(base.join("app-evil")).expect("mkdir");
        std::fs::write(base.join("secret.txt"), "s").expect("write");
        symlink(base.join("secret.txt"), root.join("link-out")).expect("symlink");
        symlink(root.join("data/in.txt"), root.join("link-in")).expect("symlink");
        symlink(base.join("app-evil"), root.join("dirlink-out")).expect("symlink");
        symlink(base.join("nowhere/new.txt"), root.join("dangling")).expect("symlink");
        Tree {
            _dir: dir,
            base,
            root,
        }
    }

    #[test]
    fn relative_and_absolute_paths_inside_are_resolved() {
        let t = tree();
        assert_eq!(
            confine(&t.root, Path::new("data/in.txt")),
            Ok(t.root.join("data/in.txt"))
        );
        assert_eq!(
            confine(&t.root, &t.root.join("data")),
            Ok(t.root.join("data"))
        );
        assert_eq!(confine(&t.root, Path::new(".")), Ok(t.root.clone()));
        assert_eq!(
            confine(&t.root, Path::new("data/sub/../in.txt")),
            Ok(t.root.join("data/in.txt"))
        );
        assert_eq!(
            confine(&t.root, Path::new("link-in")),
            Ok(t.root.join("data/in.txt"))
        );
    }

    #[test]
    fn not_yet_existing_outputs_are_resolved_against_their_existing_ancestor() {
        let t = tree();
        assert_eq!(
            confine(&t.root, Path::new("data/out/new.json")),
            Ok(t.root.join("data/out/new.json"))
        );
        assert_eq!(
            confine(&t.root, Path::new("./data/./x")),
            Ok(t.root.join("data/x"))
        );
    }

    #[test]
    fn escapes_are_refused() {
        let t = tree();
        let evil = t.base.join("app-evil/x");
        let cases: Vec<PathBuf> = vec![
            PathBuf::from("../secret.txt"),
            PathBuf::from("data/../../secret.txt"),
            PathBuf::from("link-out"),
            PathBuf::from("dirlink-out/new.txt"),
            PathBuf::from("dangling"),
            PathBuf::from("new/../../x"),
            PathBuf::from("/etc/passwd"),
            evil,
            t.base.join("app-evil"),
        ];
        for c in cases {
            assert!(
                matches!(
                    confine(&t.root, &c),
                    Err(SecurityError::PathOutsideRoot { .. })
                ),
                "{c:?} -> {:?}",
                confine(&t.root, &c)
            );
        }
    }

    #[test]
    fn nul_and_empty_are_refused() {
        let t = tree();
        use std::os::unix::ffi::OsStrExt as _;
        let nul = Path::new(std::ffi::OsStr::from_bytes(b"data/in\0.txt"));
        assert_eq!(confine(&t.root, nul), Err(SecurityError::NulInPath));
        assert_eq!(
            confine(&t.root, Path::new("")),
            Err(SecurityError::EmptyPath)
        );
        assert!(matches!(
            confine(&t.base.join("missing-root"), Path::new("x")),
            Err(SecurityError::BadRoot { .. })
        ));
    }
}
