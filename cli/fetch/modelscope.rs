//! ModelScope protocol: `/api/v1/models/{owner}/{name}/repo/files?Revision=…&Recursive=true`
//! lists files with `Sha256` and `Size`; `/api/v1/models/{id}/repo?Revision=…&FilePath=…`
//! serves them.

use super::http::{bad_answer, Http};
use super::verify::Digest;
use super::{encode_segment, validate_repo_id, Listing, RemoteFile};
use anyhow::Result;
use std::path::PathBuf;

pub fn endpoint() -> String {
    std::env::var("MODELSCOPE_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "https://www.modelscope.cn".into())
        .trim_end_matches('/')
        .to_string()
}

pub fn token() -> Option<String> {
    std::env::var("MODELSCOPE_API_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// `$MODELSCOPE_CACHE`, else `~/.cache/modelscope/hub`, then `models/{owner}/{name}`: the
/// folder the ModelScope SDK uses, as plain files.
pub fn default_dir(repo: &str) -> PathBuf {
    let base = std::env::var_os("MODELSCOPE_CACHE")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/modelscope/hub")))
        .unwrap_or_else(|| PathBuf::from(".cache/modelscope/hub"));
    base.join("models").join(repo)
}

pub async fn list(http: &Http, endpoint: &str, repo: &str, revision: &str) -> Result<Listing> {
    validate_repo_id(repo)?;
    let what = format!("ModelScope repo {repo} at revision {revision}");
    let rev = encode_segment(revision);
    let url = format!("{endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true");
    let (doc, _) = http.get_json(&url, &what).await?;
    if let Some(code) = doc.get("Code").and_then(|c| c.as_i64()) {
        if code != 200 && code != 0 {
            let msg = doc.get("Message").and_then(|m| m.as_str()).unwrap_or("");
            return Err(crate::exit::coded(
                crate::exit::DOWNLOAD_FAILED,
                format!("ModelScope refused listing {what}: code {code} {msg}; check the repo id and revision"),
            ));
        }
    }
    let entries = doc
        .pointer("/Data/Files")
        .and_then(|f| f.as_array())
        .ok_or_else(|| bad_answer(&what, "no Data.Files array"))?;
    let mut files = Vec::new();
    for e in entries {
        if e.get("Type").and_then(|t| t.as_str()) == Some("tree") {
            continue;
        }
        let path = e.get("Path").and_then(|p| p.as_str()).ok_or_else(|| bad_answer(&what, "file without Path"))?;
        let size =
            e.get("Size").and_then(|s| s.as_u64()).ok_or_else(|| bad_answer(&what, format!("{path}: no Size")))?;
        let digest = match e.get("Sha256").and_then(|s| s.as_str()) {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Digest::Sha256(h.to_ascii_lowercase())
            }
            _ => Digest::None,
        };
        let url = format!("{endpoint}/api/v1/models/{repo}/repo?Revision={rev}&FilePath={}", encode_segment(path));
        files.push(RemoteFile { path: path.into(), size, digest, url });
    }
    Ok(Listing { source: "modelscope", repo: repo.into(), revision: revision.into(), commit: revision.into(), files })
}
