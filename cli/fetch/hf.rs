//! Hugging Face Hub protocol: revision → commit, recursive tree listing (paginated through
//! `Link: <…>; rel="next"`), downloads from `/{repo}/resolve/{commit}/{path}`.

use super::http::{bad_answer, next_link, Http};
use super::verify::Digest;
use super::{encode_path, encode_segment, validate_repo_id, Listing, RemoteFile};
use anyhow::Result;
use std::path::PathBuf;

/// `HF_ENDPOINT` (a mirror) or the public hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface")
}

/// `HF_HUB_CACHE` (or the legacy `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`.
pub fn hub_cache() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE")
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE").filter(|s| !s.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, or the file `$HF_HOME/token`.
pub fn token() -> Option<String> {
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Ok(t) = std::env::var(var) {
            if !t.trim().is_empty() {
                return Some(t.trim().to_string());
            }
        }
    }
    let t = std::fs::read_to_string(hf_home().join("token")).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The folder of a repo in the HF cache: `models--org--name`.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

pub async fn list(http: &Http, endpoint: &str, repo: &str, revision: &str) -> Result<Listing> {
    validate_repo_id(repo)?;
    let what = format!("Hugging Face repo {repo} at revision {revision}");
    let url = format!("{endpoint}/api/models/{repo}/revision/{}", encode_segment(revision));
    let (info, _) = http.get_json(&url, &what).await?;
    let commit = info
        .get("sha")
        .and_then(|v| v.as_str())
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad_answer(&what, "no 40-hex `sha` in the revision info"))?
        .to_ascii_lowercase();
    let mut files = Vec::new();
    let mut next = Some(format!("{endpoint}/api/models/{repo}/tree/{commit}?recursive=true"));
    let mut pages = 0;
    while let Some(page_url) = next {
        pages += 1;
        if pages > 10_000 {
            return Err(bad_answer(&what, "tree listing does not end (over 10000 pages)"));
        }
        let (page, headers) = http.get_json(&page_url, &format!("file list of {what}")).await?;
        let entries = page.as_array().ok_or_else(|| bad_answer(&what, "tree listing is not a JSON array"))?;
        for e in entries {
            if let Some(f) = tree_entry(e, endpoint, repo, &commit, &what)? {
                files.push(f);
            }
        }
        next = next_link(&headers).map(|n| absolutize(endpoint, &n));
    }
    Ok(Listing { source: "hf", repo: repo.into(), revision: revision.into(), commit, files })
}

fn absolutize(endpoint: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        link.to_string()
    } else {
        format!("{endpoint}/{}", link.trim_start_matches('/'))
    }
}

fn tree_entry(
    e: &serde_json::Value,
    endpoint: &str,
    repo: &str,
    commit: &str,
    what: &str,
) -> Result<Option<RemoteFile>> {
    if e.get("type").and_then(|t| t.as_str()) != Some("file") {
        return Ok(None);
    }
    let path = e.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad_answer(what, "tree entry without `path`"))?;
    let hexstr = |v: Option<&serde_json::Value>, len: usize| {
        v.and_then(|x| x.as_str())
            .filter(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
    };
    let (size, digest) = match e.get("lfs") {
        Some(lfs) if !lfs.is_null() => {
            let oid = hexstr(lfs.get("oid"), 64)
                .ok_or_else(|| bad_answer(what, format!("{path}: LFS entry without sha256 oid")))?;
            let size = lfs
                .get("size")
                .and_then(|s| s.as_u64())
                .ok_or_else(|| bad_answer(what, format!("{path}: LFS entry without size")))?;
            (size, Digest::Sha256(oid))
        }
        _ => {
            let oid =
                hexstr(e.get("oid"), 40).ok_or_else(|| bad_answer(what, format!("{path}: entry without git oid")))?;
            let size = e
                .get("size")
                .and_then(|s| s.as_u64())
                .ok_or_else(|| bad_answer(what, format!("{path}: entry without size")))?;
            (size, Digest::GitSha1(oid))
        }
    };
    let url = format!("{endpoint}/{repo}/resolve/{commit}/{}", encode_path(path));
    Ok(Some(RemoteFile { path: path.into(), size, digest, url }))
}
