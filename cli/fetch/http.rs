//! HTTP plumbing: the client, retry policy (exponential backoff + jitter, Retry-After,
//! RateLimit), status classification and JSON API calls with retries.

use crate::exit;
use anyhow::{Context, Result};
use reqwest::header::{HeaderMap, AUTHORIZATION, LINK};
use reqwest::StatusCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tunables, from the environment so tests (and impatient users) can shorten them.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Attempts per request before giving up (HY_FETCH_RETRIES, default 8).
    pub max_attempts: u32,
    /// First backoff delay (HY_FETCH_RETRY_BASE_MS, default 500 ms), doubled per attempt.
    pub base: Duration,
    /// Longest single wait, also the cap on server-requested waits (HY_FETCH_MAX_WAIT_S, 300 s).
    pub max_wait: Duration,
    /// A body read that delivers nothing for this long is abandoned and resumed
    /// (HY_FETCH_IDLE_TIMEOUT_MS, default 60 s). Not a total timeout.
    pub idle: Duration,
    /// Range chunk size for large files (HY_FETCH_CHUNK_BYTES, default 64 MiB).
    pub chunk: u64,
    /// How often chunk progress is fsynced to the state file (HY_FETCH_PERSIST_MS, 2 s).
    pub persist: Duration,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

impl Tuning {
    pub fn from_env() -> Tuning {
        Tuning {
            max_attempts: env_u64("HY_FETCH_RETRIES", 8).clamp(1, 1000) as u32,
            base: Duration::from_millis(env_u64("HY_FETCH_RETRY_BASE_MS", 500)),
            max_wait: Duration::from_secs(env_u64("HY_FETCH_MAX_WAIT_S", 300)),
            idle: Duration::from_millis(env_u64("HY_FETCH_IDLE_TIMEOUT_MS", 60_000).max(1)),
            chunk: env_u64("HY_FETCH_CHUNK_BYTES", 64 << 20).max(4096),
            persist: Duration::from_millis(env_u64("HY_FETCH_PERSIST_MS", 2_000).max(10)),
        }
    }

    /// Backoff before retry number `attempt` (1-based): full jitter over base·2^(attempt-1),
    /// but never shorter than what the server asked for.
    pub fn backoff(&self, attempt: u32, server_wait: Option<Duration>) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_wait);
        let jittered = exp.mul_f64(0.5 + 0.5 * jitter());
        match server_wait {
            Some(w) => w.min(self.max_wait).max(jittered.min(self.base)),
            None => jittered,
        }
    }
}

/// A uniform-ish number in [0, 1) without a RNG dependency: the clock's nanoseconds mixed
/// through splitmix64 (jitter only has to decorrelate clients, not be cryptographic).
fn jitter() -> f64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait a server asks for: `Retry-After` (seconds or HTTP date), else the reset time of
/// `RateLimit` (`t=`/`reset=` parameter, IETF draft) or `RateLimit-Reset` / `X-RateLimit-Reset`.
pub fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(s) = v.parse::<u64>() {
            return Some(Duration::from_secs(s));
        }
        if let Some(at) = parse_http_date(v) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            return Some(Duration::from_secs(at.saturating_sub(now)));
        }
    }
    if let Some(v) = get("ratelimit") {
        for part in v.split([';', ',']) {
            let part = part.trim();
            for key in ["t=", "reset="] {
                if let Some(n) = part.strip_prefix(key).and_then(|n| n.trim().parse::<u64>().ok()) {
                    return Some(Duration::from_secs(n));
                }
            }
        }
    }
    for k in ["ratelimit-reset", "x-ratelimit-reset"] {
        if let Some(n) = get(k).and_then(|v| v.parse::<u64>().ok()) {
            // Some servers send an epoch timestamp here rather than a delta.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            return Some(Duration::from_secs(if n > 1_000_000_000 { n.saturating_sub(now) } else { n }));
        }
    }
    None
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == parts[2])? as u64 + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), valid for the Gregorian calendar.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(LINK)?.to_str().ok()?;
    v.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

/// How to tell a user to supply credentials for a source.
#[derive(Clone, Debug)]
pub struct AuthHelp(pub &'static str);

pub const HF_AUTH: AuthHelp = AuthHelp(
    "set HF_TOKEN (create one at https://huggingface.co/settings/tokens) or save it in $HF_HOME/token \
(`huggingface-cli login` does that); for a gated model also accept its license on the model page",
);
pub const MS_AUTH: AuthHelp = AuthHelp("set MODELSCOPE_API_TOKEN (from https://modelscope.cn/my/myaccesstoken)");
pub const URL_AUTH: AuthHelp = AuthHelp("set HY_FETCH_TOKEN to a bearer token the server accepts");

/// What to do about a response status.
pub enum Verdict {
    Ok,
    Retry { reason: String, wait: Option<Duration> },
    Fail(anyhow::Error),
}

/// Classifies `status` for a request about `what` (e.g. "file x of repo y at revision z").
/// `redirected` is true when the response came from a URL we were redirected to (a CDN):
/// a 403 there means the signed URL expired, and re-requesting the resolve URL fixes it.
pub fn classify(status: StatusCode, headers: &HeaderMap, what: &str, redirected: bool, auth: &AuthHelp) -> Verdict {
    let code = status.as_u16();
    match code {
        200..=299 => Verdict::Ok,
        408 | 429 | 500..=599 => Verdict::Retry { reason: format!("HTTP {code}"), wait: server_wait(headers) },
        403 if redirected => {
            Verdict::Retry { reason: "HTTP 403 from the CDN (expired URL), re-resolving".into(), wait: None }
        }
        401 | 403 => Verdict::Fail(exit::coded(
            exit::DOWNLOAD_FAILED,
            format!(
                "HTTP {code} for {what}: a token is needed (the repo is private or gated, or it does not exist); {}",
                auth.0
            ),
        )),
        404 => Verdict::Fail(exit::coded(
            exit::DOWNLOAD_FAILED,
            format!("HTTP 404: {what} was not found; check the name and revision"),
        )),
        _ => Verdict::Fail(exit::coded(exit::DOWNLOAD_FAILED, format!("HTTP {code} for {what}"))),
    }
}

/// The shared client plus credentials and tuning.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub token: Option<String>,
    pub auth: AuthHelp,
    pub tuning: Tuning,
}

impl Http {
    pub fn new(token: Option<String>, auth: AuthHelp, tuning: Tuning) -> Result<Http> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("hy/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Http { client, token, auth, tuning })
    }

    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let rb = self.client.get(url);
        match &self.token {
            // reqwest drops Authorization when a redirect leaves the host, so CDNs never see it.
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// GETs a JSON document with retries; returns it with the response headers.
    pub async fn get_json(&self, url: &str, what: &str) -> Result<(serde_json::Value, HeaderMap)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (reason, wait) = match self.try_json(url, what).await? {
                Ok(found) => return Ok(found),
                Err(retry) => retry,
            };
            if attempt >= self.tuning.max_attempts {
                return Err(exit::coded(
                    exit::DOWNLOAD_FAILED,
                    format!("{what}: giving up after {attempt} attempts (last: {reason}) at {url}"),
                ));
            }
            tokio::time::sleep(self.tuning.backoff(attempt, wait)).await;
        }
    }

    /// One attempt: Ok(Ok(doc)), Ok(Err((reason, wait))) to retry, Err to fail.
    async fn try_json(
        &self,
        url: &str,
        what: &str,
    ) -> Result<Result<(serde_json::Value, HeaderMap), (String, Option<Duration>)>> {
        let resp = match self.get(url).send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err((format!("{e}"), None))),
        };
        let redirected = resp.url().as_str() != url;
        match classify(resp.status(), resp.headers(), what, redirected, &self.auth) {
            Verdict::Ok => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Retry { reason, wait } => return Ok(Err((reason, wait))),
        }
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(Err((format!("reading body: {e}"), None))),
        };
        let v = serde_json::from_slice(&body).map_err(|e| {
            exit::coded(exit::DOWNLOAD_FAILED, format!("{url} did not return valid JSON for {what}: {e}"))
        })?;
        Ok(Ok((v, headers)))
    }
}

/// Shortcut for malformed API answers.
pub fn bad_answer(what: &str, detail: impl std::fmt::Display) -> anyhow::Error {
    exit::coded(exit::DOWNLOAD_FAILED, format!("unexpected answer for {what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn http_date_parses() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
    }

    #[test]
    fn waits_come_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(server_wait(&h), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("ratelimit", HeaderValue::from_static("\"api\";r=0;t=42"));
        assert_eq!(server_wait(&h), Some(Duration::from_secs(42)));
        let mut h = HeaderMap::new();
        h.insert(LINK, HeaderValue::from_static("<http://x/a?cursor=2>; rel=\"next\""));
        assert_eq!(next_link(&h).as_deref(), Some("http://x/a?cursor=2"));
    }
}
