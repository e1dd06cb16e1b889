//! Free-space check before a download starts.

use anyhow::{Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to an unprivileged user on the filesystem holding `path` (or its nearest
/// existing ancestor, since the target folder may not exist yet).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if probe == Path::new(".") {
            break;
        }
    }
    let c = CString::new(probe.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it and we read it only when it returned 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("checking free space on {}", probe.display()));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Formats a byte count in GB/MB for messages.
pub fn human(bytes: u64) -> String {
    const G: f64 = 1e9;
    const M: f64 = 1e6;
    let b = bytes as f64;
    if b >= G {
        format!("{:.2} GB", b / G)
    } else if b >= M {
        format!("{:.1} MB", b / M)
    } else {
        format!("{bytes} B")
    }
}
