//! Path safety: no path that a server sends may escape the directory it is written into.

use anyhow::{bail, Result};
use std::path::{Component, Path, PathBuf};

/// Validates a repository-relative path from a server listing and returns it as a relative
/// `PathBuf`. Rejects absolute paths, `..`/`.` components, empty components, backslashes
/// (a Windows separator that would be a plain character here) and NUL bytes.
pub fn safe_relative(path: &str) -> Result<PathBuf> {
    let bad = |why: &str| -> Result<PathBuf> {
        bail!("refusing file path {path:?} from the server: {why}; the listing is malformed or hostile, nothing was written for it")
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("it contains a backslash or NUL byte");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("it has an empty component"),
            "." | ".." => return bad("it has a '.' or '..' component"),
            _ => {}
        }
    }
    let rel = PathBuf::from(path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return bad("it is not a plain relative path");
    }
    Ok(rel)
}

/// Refuses to write `root/rel` when any existing directory between `root` and the file is a
/// symlink: a planted link (e.g. `root/sub -> /etc`) would otherwise redirect the write.
pub fn check_no_symlink_parents(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for comp in parents.iter().take(parents.len().saturating_sub(1)) {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "refusing to write {}: {} is a symlink, which could point outside {}; remove it and retry",
                rel.display(),
                cur.display(),
                root.display()
            ),
            Ok(_) => {}
            Err(_) => return Ok(()), // does not exist yet: we create it as a real directory
        }
    }
    Ok(())
}

/// The relative symlink target from `snapshots/{commit}/{rel}` to `blobs/{blob}`.
pub fn blob_link_target(rel: &Path, blob: &str) -> PathBuf {
    let depth = rel.components().count(); // file name + its parent folders inside the snapshot
    let mut target = PathBuf::from("..");
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob);
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for p in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "a/."] {
            assert!(safe_relative(p).is_err(), "{p} must be rejected");
        }
        assert_eq!(safe_relative("a/b.gguf").unwrap(), PathBuf::from("a/b.gguf"));
    }

    #[test]
    fn link_targets_climb_out_of_the_snapshot() {
        assert_eq!(blob_link_target(Path::new("c.json"), "ab"), PathBuf::from("../../blobs/ab"));
        assert_eq!(blob_link_target(Path::new("Q4/x.gguf"), "ab"), PathBuf::from("../../../blobs/ab"));
    }
}
