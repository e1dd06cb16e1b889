//! Checksums: sha256 for LFS / ModelScope / SHA256SUMS files, git blob SHA-1 for small git files.

use anyhow::{Context, Result};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::Path;

/// What a listing says a file's content hashes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digest {
    /// Lower-case hex sha256 of the content.
    Sha256(String),
    /// Lower-case hex SHA-1 of `"blob {len}\0" + content` (a git blob id).
    GitSha1(String),
    /// The source gives no checksum (plain file servers without SHA256SUMS): size only.
    None,
}

impl Digest {
    /// Human/JSON name of the check this digest allows.
    pub fn kind(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "sha256",
            Digest::GitSha1(_) => "git-sha1",
            Digest::None => "size-only",
        }
    }

    pub fn hex(&self) -> Option<&str> {
        match self {
            Digest::Sha256(h) | Digest::GitSha1(h) => Some(h),
            Digest::None => None,
        }
    }
}

/// Hashes of a file's content: sha256 always, the git blob id when asked for.
pub struct Hashes {
    pub sha256: String,
    pub git_sha1: Option<String>,
}

impl Hashes {
    /// Whether these hashes satisfy `expected`; returns the actual value on mismatch.
    pub fn check(&self, expected: &Digest) -> Result<(), String> {
        match expected {
            Digest::Sha256(h) if !h.eq_ignore_ascii_case(&self.sha256) => Err(self.sha256.clone()),
            Digest::GitSha1(h) => match &self.git_sha1 {
                Some(got) if got.eq_ignore_ascii_case(h) => Ok(()),
                Some(got) => Err(got.clone()),
                None => Err("<not computed>".into()),
            },
            _ => Ok(()),
        }
    }
}

/// Incremental sha256 (and git blob SHA-1, whose header needs the total length up front).
pub struct Hasher {
    sha256: Sha256,
    sha1: Option<Sha1>,
}

impl Hasher {
    pub fn new(len: u64, git: bool) -> Hasher {
        let sha1 = git.then(|| {
            let mut h = Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            h
        });
        Hasher { sha256: Sha256::new(), sha1 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = self.sha1.as_mut() {
            h.update(data);
        }
    }

    pub fn finish(self) -> Hashes {
        Hashes { sha256: hex::encode(self.sha256.finalize()), git_sha1: self.sha1.map(|h| hex::encode(h.finalize())) }
    }
}

/// Reads `path` once and computes its sha256 (and git blob SHA-1 when `git` is true).
/// Blocking; call from a blocking thread.
pub fn hash_file(path: &Path, git: bool) -> Result<Hashes> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {} to verify it", path.display()))?;
    let mut h = Hasher::new(f.metadata()?.len(), git);
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin` = ce013625030ba8dba906f756967f9e9ca394464a
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h");
        std::fs::write(&p, b"hello\n").unwrap();
        let h = hash_file(&p, true).unwrap();
        assert_eq!(h.git_sha1.as_deref(), Some("ce013625030ba8dba906f756967f9e9ca394464a"));
        // `printf 'hello\n' | sha256sum`
        assert_eq!(h.sha256, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        assert!(h.check(&Digest::GitSha1("ce013625030ba8dba906f756967f9e9ca394464a".into())).is_ok());
        assert!(h.check(&Digest::Sha256("00".into())).is_err());
    }
}
