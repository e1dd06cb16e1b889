//! Plain file servers. `URL/` (ending in a slash) is a folder: its `SHA256SUMS` (lines
//! `<sha256>  <path>`) lists the files and their checksums; without one, the `href`s of its
//! HTML index (files only, not recursive) are taken and verified by size only. A URL to a
//! single file is fetched alone, verified against `URL.sha256` when the server has one.

use super::http::{classify, Http, Verdict};
use super::verify::Digest;
use super::{encode_path, Listing, RemoteFile};
use crate::exit;
use anyhow::Result;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use std::path::PathBuf;

pub fn token() -> Option<String> {
    std::env::var("HY_FETCH_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// `~/.cache/hy/downloads/{host}/{path}` for URLs fetched without `--dir`.
pub fn default_dir(url: &str) -> PathBuf {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let clean: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .map(|s| s.replace(':', "_"))
        .collect();
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    let mut p = base.join("hy").join("downloads");
    let keep = if url.ends_with('/') { clean.len() } else { clean.len().saturating_sub(1) };
    for c in clean.iter().take(keep) {
        p.push(c);
    }
    p
}

pub async fn list(http: &Http, url: &str) -> Result<Listing> {
    let files = if url.ends_with('/') { list_folder(http, url).await? } else { vec![single(http, url).await?] };
    Ok(Listing { source: "url", repo: url.into(), revision: "-".into(), commit: "-".into(), files })
}

async fn single(http: &Http, url: &str) -> Result<RemoteFile> {
    let name = url.rsplit('/').next().unwrap_or_default();
    let name = name.split(['?', '#']).next().unwrap_or_default().to_string();
    let size = probe_size(http, url).await?;
    let digest = match fetch_text(http, &format!("{url}.sha256")).await? {
        Some(t) => parse_hex(t.split_whitespace().next().unwrap_or_default()),
        None => Digest::None,
    };
    Ok(RemoteFile { path: percent_decode(&name), size, digest, url: url.into() })
}

async fn list_folder(http: &Http, base: &str) -> Result<Vec<RemoteFile>> {
    let entries: Vec<(String, Digest)> = match fetch_text(http, &format!("{base}SHA256SUMS")).await? {
        Some(sums) => sums
            .lines()
            .filter_map(|l| {
                let (h, p) = l.trim().split_once(char::is_whitespace)?;
                Some((p.trim().trim_start_matches('*').to_string(), parse_hex(h)))
            })
            .collect(),
        None => {
            let index = fetch_text(http, base).await?.unwrap_or_default();
            hrefs(&index).into_iter().map(|h| (percent_decode(&h), Digest::None)).collect()
        }
    };
    if entries.is_empty() {
        return Err(exit::coded(
            exit::DOWNLOAD_FAILED,
            format!("{base} lists no files (no SHA256SUMS and no file links in its index)"),
        ));
    }
    let mut files = Vec::new();
    for (path, digest) in entries {
        let url = format!("{base}{}", encode_path(&path));
        let size = probe_size(http, &url).await?;
        files.push(RemoteFile { path, size, digest, url });
    }
    Ok(files)
}

fn parse_hex(h: &str) -> Digest {
    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        Digest::Sha256(h.to_ascii_lowercase())
    } else {
        Digest::None
    }
}

/// Relative file links of an HTML index (skips parents, folders, queries and absolute URLs).
fn hrefs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in html.split("href=\"").skip(1) {
        let Some(h) = part.split('"').next() else { continue };
        if h.is_empty()
            || h.ends_with('/')
            || h.contains("://")
            || h.starts_with(['/', '?', '#', '.'])
            || h.contains('?')
        {
            continue;
        }
        if !out.iter().any(|o| o == h) {
            out.push(h.to_string());
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            // Byte-wise, so a '%' followed by multi-byte UTF-8 cannot split a character.
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GETs a small text document; None on 404.
async fn fetch_text(http: &Http, url: &str) -> Result<Option<String>> {
    let resp = http.get(url).send().await.map_err(|e| exit::coded(exit::DOWNLOAD_FAILED, format!("GET {url}: {e}")))?;
    if resp.status().as_u16() == 404 {
        return Ok(None);
    }
    match classify(resp.status(), resp.headers(), url, false, &http.auth) {
        Verdict::Ok => {}
        Verdict::Fail(e) => return Err(e),
        Verdict::Retry { reason, .. } => {
            return Err(exit::coded(exit::DOWNLOAD_FAILED, format!("GET {url}: {reason}; retry later")))
        }
    }
    let text = resp.text().await.map_err(|e| exit::coded(exit::DOWNLOAD_FAILED, format!("reading {url}: {e}")))?;
    Ok(Some(text))
}

/// The size of a remote file: `Content-Range` total of a one-byte range request, else
/// `Content-Length` of the full answer (the body is not read).
async fn probe_size(http: &Http, url: &str) -> Result<u64> {
    let resp = http
        .get(url)
        .header(RANGE, "bytes=0-0")
        .send()
        .await
        .map_err(|e| exit::coded(exit::DOWNLOAD_FAILED, format!("GET {url}: {e}")))?;
    if let Verdict::Fail(e) = classify(resp.status(), resp.headers(), url, false, &http.auth) {
        return Err(e);
    }
    let header =
        |k| resp.headers().get(k).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_string);
    if resp.status().as_u16() == 206 {
        if let Some(total) = header(CONTENT_RANGE).and_then(|cr| cr.rsplit('/').next().and_then(|t| t.parse().ok())) {
            return Ok(total);
        }
    }
    if resp.status().as_u16() == 200 {
        if let Some(len) = header(CONTENT_LENGTH).and_then(|l| l.parse().ok()) {
            return Ok(len);
        }
    }
    Err(exit::coded(
        exit::DOWNLOAD_FAILED,
        format!("{url} answered HTTP {} without a usable size (Content-Range/Content-Length)", resp.status().as_u16()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_links_and_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc%zz%\u{e9}"), "a b/c%zz%\u{e9}");
        let html = r#"<a href="../">up</a><a href="x.gguf">x</a><a href="sub/">d</a><a href="https://e/y">y</a><a href="x.gguf">again</a><a href="?C=N">sort</a>"#;
        assert_eq!(hrefs(html), vec!["x.gguf"]);
        assert_eq!(default_dir("http://h:8/a/b/"), default_dir("http://h:8/a/b/f.bin"));
    }
}
