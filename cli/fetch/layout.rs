//! Where files land. `Hf`: the standard Hugging Face cache (`models--org--name/blobs/<sha256
//! or git sha1>`, `snapshots/<commit>/<path>` relative symlinks, `refs/<revision>`), shared
//! with Python tools. `Dir`: plain files under a folder, with bookkeeping in `.hy-fetch/`.
//!
//! "Already complete" (re-runs transfer nothing and do not re-hash): in the HF cache, a blob
//! named by its checksum with the listed size; in a folder, a file whose size and mtime match
//! the verification marker written when hy verified it. `--verify` re-hashes everything.

use super::paths::{blob_link_target, check_no_symlink_parents, safe_relative};
use super::verify::{hash_file, Digest};
use super::RemoteFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

pub enum Layout {
    Hf { repo_dir: PathBuf, commit: String, revision: String },
    Dir { root: PathBuf },
}

/// Paths for one file.
pub struct Placement {
    pub rel: PathBuf,
    /// Where the verified content goes (a blob, or the file itself).
    pub dest: PathBuf,
    pub tmp: PathBuf,
    pub state: PathBuf,
    /// HF: the snapshot symlink to create. Dir: the verification marker.
    pub extra: PathBuf,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Marker {
    path: String,
    size: u64,
    mtime_ns: u128,
    sha256: String,
    expected: String,
}

impl Layout {
    /// The folder a user should point tools at: the snapshot, or the plain folder.
    pub fn target(&self) -> PathBuf {
        match self {
            Layout::Hf { repo_dir, commit, .. } => repo_dir.join("snapshots").join(commit),
            Layout::Dir { root } => root.clone(),
        }
    }

    /// The filesystem that has to hold the data (for the disk-space check).
    pub fn data_dir(&self) -> PathBuf {
        match self {
            Layout::Hf { repo_dir, .. } => repo_dir.join("blobs"),
            Layout::Dir { root } => root.clone(),
        }
    }

    pub fn place(&self, f: &RemoteFile) -> Result<Placement> {
        let rel = safe_relative(&f.path)?;
        match self {
            Layout::Hf { repo_dir, .. } => {
                let blob = f
                    .digest
                    .hex()
                    .map(str::to_string)
                    .unwrap_or_else(|| hex::encode(sha2::Sha256::digest(f.url.as_bytes())));
                let blobs = repo_dir.join("blobs");
                let snapshot = self.target();
                check_no_symlink_parents(&snapshot, &rel)?;
                Ok(Placement {
                    dest: blobs.join(&blob),
                    tmp: blobs.join(format!("{blob}.hy-incomplete")),
                    state: blobs.join(format!("{blob}.hy-state")),
                    extra: snapshot.join(&rel),
                    rel,
                })
            }
            Layout::Dir { root } => {
                check_no_symlink_parents(root, &rel)?;
                let key = hex::encode(&sha2::Sha256::digest(f.path.as_bytes())[..16]);
                let book = root.join(".hy-fetch");
                Ok(Placement {
                    dest: root.join(&rel),
                    tmp: book.join(format!("{key}.incomplete")),
                    state: book.join(format!("{key}.state")),
                    extra: book.join(format!("{key}.ok")),
                    rel,
                })
            }
        }
    }

    /// Whether `p` already holds `f`'s verified content; returns its sha256 if known.
    /// Blocking (may hash).
    pub fn complete(&self, p: &Placement, f: &RemoteFile, rehash: bool) -> Result<Option<String>> {
        let Ok(meta) = std::fs::metadata(&p.dest) else { return Ok(None) };
        if !meta.is_file() || meta.len() != f.size {
            return Ok(None);
        }
        if !rehash {
            match self {
                // A blob named by its sha256 with the right size is trusted; small git
                // files (named by SHA-1) are cheap to re-hash, which also yields their sha256.
                Layout::Hf { .. } if matches!(f.digest, Digest::Sha256(_)) => {
                    return Ok(f.digest.hex().map(str::to_string))
                }
                Layout::Dir { .. } => {
                    if let Some(m) = read_marker(&p.extra) {
                        if m.size == f.size && Some(m.mtime_ns) == mtime_ns(&p.dest) && m.expected == expected(f) {
                            return Ok(Some(m.sha256));
                        }
                    }
                }
                _ => {}
            }
        }
        let hashes = hash_file(&p.dest, matches!(f.digest, Digest::GitSha1(_)))?;
        if hashes.check(&f.digest).is_err() {
            return Ok(None);
        }
        if let Layout::Dir { .. } = self {
            write_marker(p, f, &hashes.sha256)?;
        }
        Ok(Some(hashes.sha256))
    }

    /// After `dest` holds verified content: the snapshot link, or the marker.
    pub fn finish_file(&self, p: &Placement, f: &RemoteFile, sha256: &str) -> Result<()> {
        match self {
            Layout::Hf { .. } => {
                let blob = p.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                link(&p.extra, &blob_link_target(&p.rel, &blob))
            }
            Layout::Dir { .. } => write_marker(p, f, sha256),
        }
    }

    /// HF: `refs/<revision>` holds the commit, as the Python hub library does.
    pub fn finish_all(&self) -> Result<()> {
        if let Layout::Hf { repo_dir, commit, revision } = self {
            if revision != commit {
                let rel = safe_relative(revision)?;
                let path = repo_dir.join("refs").join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, commit).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn expected(f: &RemoteFile) -> String {
    format!("{}:{}", f.digest.kind(), f.digest.hex().unwrap_or(&f.url))
}

fn mtime_ns(p: &Path) -> Option<u128> {
    let m = std::fs::metadata(p).ok()?.modified().ok()?;
    Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
}

fn read_marker(p: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn write_marker(p: &Placement, f: &RemoteFile, sha256: &str) -> Result<()> {
    let m = Marker {
        path: f.path.clone(),
        size: f.size,
        mtime_ns: mtime_ns(&p.dest).unwrap_or(0),
        sha256: sha256.into(),
        expected: expected(f),
    };
    if let Some(parent) = p.extra.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p.extra, serde_json::to_vec(&m)?).with_context(|| format!("writing {}", p.extra.display()))
}

/// Creates (or fixes) a relative symlink `at -> target`.
fn link(at: &Path, target: &Path) -> Result<()> {
    if let Ok(existing) = std::fs::read_link(at) {
        if existing == target {
            return Ok(());
        }
    }
    if std::fs::symlink_metadata(at).is_ok() {
        std::fs::remove_file(at).with_context(|| format!("replacing {}", at.display()))?;
    }
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::os::unix::fs::symlink(target, at).with_context(|| format!("linking {} -> {}", at.display(), target.display()))
}
