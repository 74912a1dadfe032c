//! Path confinement for config paths and path parameters: a candidate,
//! relative to a root or absolute, must resolve (after symlinks) inside the
//! root. Component-wise, so `/srv/app-evil` is not inside `/srv/app`.
//!
//! A candidate that does not exist yet (an output file) is resolved through
//! its longest existing ancestor; the missing rest may not contain `..`.

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfineError {
    #[error("path is empty")]
    Empty,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path {0} resolves outside the allowed root")]
    Outside(String),
    #[error("path {0} cannot be resolved")]
    Unresolvable(String),
}

/// Resolves `candidate` against `root` (canonical) and checks it stays inside.
pub fn confine(root: &Path, candidate: &Path) -> Result<PathBuf, ConfineError> {
    let shown = candidate.display().to_string();
    if candidate.as_os_str().is_empty() {
        return Err(ConfineError::Empty);
    }
    if candidate.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(ConfineError::Nul);
    }
    let root = root
        .canonicalize()
        .map_err(|_| ConfineError::Unresolvable(root.display().to_string()))?;
    let joined = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        root.join(candidate)
    };
    // Longest existing ancestor, canonicalized; then the missing rest,
    // which may only hold plain names.
    let comps: Vec<Component<'_>> = joined.components().collect();
    let mut out = None;
    for i in (1..=comps.len()).rev() {
        let prefix: PathBuf = comps[..i].iter().collect();
        if let Ok(c) = prefix.canonicalize() {
            let mut o = c;
            for part in &comps[i..] {
                match part {
                    Component::Normal(n) => o.push(n),
                    _ => return Err(ConfineError::Outside(shown)),
                }
            }
            out = Some(o);
            break;
        }
    }
    let out = out.ok_or_else(|| ConfineError::Unresolvable(shown.clone()))?;
    if out.starts_with(&root) {
        Ok(out)
    } else {
        Err(ConfineError::Outside(shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_prefix_tricks_dotdot_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("app");
        let evil = dir.path().join("app-evil");
        std::fs::create_dir_all(root.join("data")).expect("mkdir");
        std::fs::create_dir_all(&evil).expect("mkdir");
        std::os::unix::fs::symlink(&evil, root.join("link")).expect("symlink");

        assert!(confine(&root, Path::new("data")).is_ok());
        assert!(confine(&root, Path::new("data/new/out.json")).is_ok());
        assert!(confine(&root, &root.join("data")).is_ok());
        for bad in ["../app-evil", "link", "link/x", "data/../../app-evil", "/etc/passwd", "nope/../../x"] {
            assert!(
                matches!(confine(&root, Path::new(bad)), Err(ConfineError::Outside(_))),
                "{bad} must be refused"
            );
        }
        assert_eq!(confine(&root, Path::new("")), Err(ConfineError::Empty));
    }
}
