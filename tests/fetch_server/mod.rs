//! A small HTTP/1.1 file server for `hy fetch` tests, on 127.0.0.1, speaking the Hugging Face
//! and ModelScope APIs plus plain files, with injectable faults. One thread per connection,
//! `Connection: close` on every answer. It counts the body bytes it serves per file, so tests
//! can check that resumed downloads do not fetch bytes twice.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// A file of a test repository.
#[derive(Clone)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    /// LFS files are listed with a sha256 and served through a redirect to `/cdn/`.
    pub lfs: bool,
}

/// Deterministic pseudo-random content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

pub fn git_sha1_hex(d: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", d.len()).as_bytes());
    h.update(d);
    hex::encode(h.finalize())
}

/// What goes wrong with a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (429 gets `Retry-After: 1`).
    Status(u16),
    /// 429 with a `RateLimit: "default";r=0;t=N` header instead of Retry-After.
    RateLimited(u64),
    /// Send the headers and this many body bytes, then close the connection.
    DropAfter(usize),
    /// Flip one byte of the body.
    Corrupt,
    /// Answer 200 with the whole file whatever the Range header says.
    IgnoreRange,
    /// Send this many body bytes, then go silent for `ms`, then close.
    StallAfter(usize, u64),
    /// Send this many body bytes, then wait until `Server::release` is called, then close.
    PauseAfter(usize),
}

/// A fault applied to the next `times` requests for a file path (`"api"` for API calls).
#[derive(Clone, Debug)]
pub struct Rule {
    pub path: String,
    pub fault: Fault,
    pub times: usize,
}

#[derive(Default)]
pub struct State {
    pub repos: HashMap<String, (String, Vec<File>)>,
    pub rules: Vec<Rule>,
    /// Body bytes written per file path.
    pub served: HashMap<String, u64>,
    /// Data requests per file path, with their Range header.
    pub requests: Vec<(String, Option<String>)>,
    /// Authorization headers seen on API calls.
    pub auth: Vec<Option<String>>,
    pub page_size: usize,
    /// Sizes to list instead of the real ones (for the disk-space check).
    pub fake_sizes: HashMap<String, u64>,
    /// Where LFS resolves redirect to (another origin, like a CDN); default this server.
    pub cdn_base: Option<String>,
    /// Authorization headers seen on file data requests.
    pub data_auth: Vec<Option<String>>,
}

pub struct Server {
    pub addr: String,
    pub state: Arc<Mutex<State>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State { page_size: 2, ..Default::default() }));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, g) = (state.clone(), gate.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, g) = (s.clone(), g.clone());
                thread::spawn(move || {
                    let _ = handle(conn, &s, &g);
                });
            }
        });
        Server { addr, state, gate }
    }

    /// Adds a repository `org/name` at `commit` (40 hex digits).
    pub fn add_repo(&self, id: &str, commit: &str, files: Vec<File>) {
        self.state.lock().unwrap().repos.insert(id.into(), (commit.into(), files));
    }

    pub fn rule(&self, path: &str, fault: Fault, times: usize) {
        self.state.lock().unwrap().rules.push(Rule { path: path.into(), fault, times });
    }

    pub fn served(&self, path: &str) -> u64 {
        *self.state.lock().unwrap().served.get(path).unwrap_or(&0)
    }

    pub fn requests_for(&self, path: &str) -> Vec<Option<String>> {
        self.state.lock().unwrap().requests.iter().filter(|(p, _)| p == path).map(|(_, r)| r.clone()).collect()
    }

    pub fn release(&self) {
        let (m, c) = &*self.gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

struct Req {
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(conn: &TcpStream) -> Option<Req> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect();
    Some(Req { path: decode(path), query, headers })
}

fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// All rules for `path` that still apply, each used up once. Faults combine: a status
/// fault wins; otherwise Range may be ignored, bytes corrupted and the body cut short together.
fn take_rules(state: &Mutex<State>, path: &str) -> Vec<Fault> {
    let mut st = state.lock().unwrap();
    let mut out = Vec::new();
    for rule in st.rules.iter_mut().filter(|r| r.path == path && r.times > 0) {
        rule.times -= 1;
        out.push(rule.fault.clone());
    }
    out
}

fn handle(mut conn: TcpStream, state: &Mutex<State>, gate: &(Mutex<bool>, Condvar)) -> std::io::Result<()> {
    let Some(req) = read_request(&conn) else { return Ok(()) };
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    if req.path.starts_with("/api/") {
        state.lock().unwrap().auth.push(req.headers.get("authorization").cloned());
        if let Some(f) = take_rules(state, "api").first() {
            return fault_status(&mut conn, f);
        }
    }
    match parts.as_slice() {
        ["api", "models", org, name, "revision", _rev] => {
            let repo = format!("{org}/{name}");
            match lookup(state, &repo) {
                Some((commit, _)) => {
                    respond(&mut conn, 200, &[], format!("{{\"id\":\"{repo}\",\"sha\":\"{commit}\"}}").as_bytes())
                }
                None => respond(&mut conn, 404, &[], b"{\"error\":\"Repository not found\"}"),
            }
        }
        ["api", "models", org, name, "tree", _commit] => hf_tree(&mut conn, state, &format!("{org}/{name}"), &req),
        ["api", "v1", "models", org, name, "repo", "files"] => ms_list(&mut conn, state, &format!("{org}/{name}")),
        ["api", "v1", "models", org, name, "repo"] => {
            let path = req.query.get("FilePath").cloned().unwrap_or_default();
            serve(&mut conn, state, gate, &format!("{org}/{name}"), &path, &req)
        }
        [org, name, "resolve", _commit, rest @ ..] => {
            let repo = format!("{org}/{name}");
            let path = rest.join("/");
            let lfs = lookup(state, &repo).and_then(|(_, fs)| fs.into_iter().find(|f| f.path == path)).map(|f| f.lfs);
            match lfs {
                Some(true) => {
                    let base = state.lock().unwrap().cdn_base.clone().unwrap_or_default();
                    respond(&mut conn, 302, &[("Location", format!("{base}/cdn/{repo}/{path}"))], b"")
                }
                Some(false) => serve(&mut conn, state, gate, &repo, &path, &req),
                None => respond(&mut conn, 404, &[], b"Entry not found"),
            }
        }
        ["cdn", org, name, rest @ ..] => serve(&mut conn, state, gate, &format!("{org}/{name}"), &rest.join("/"), &req),
        ["files", rest @ ..] => plain(&mut conn, state, gate, &rest.join("/"), &req),
        _ => respond(&mut conn, 404, &[], b"not found"),
    }
}

fn lookup(state: &Mutex<State>, repo: &str) -> Option<(String, Vec<File>)> {
    state.lock().unwrap().repos.get(repo).cloned()
}

fn fault_status(conn: &mut TcpStream, f: &Fault) -> std::io::Result<()> {
    match f {
        Fault::Status(429) => respond(conn, 429, &[("Retry-After", "1".into())], b"slow down"),
        Fault::Status(s) => respond(conn, *s, &[], b"fault"),
        Fault::RateLimited(t) => respond(conn, 429, &[("RateLimit", format!("\"default\";r=0;t={t}"))], b"slow down"),
        _ => respond(conn, 500, &[], b"fault"),
    }
}

fn hf_tree(conn: &mut TcpStream, state: &Mutex<State>, repo: &str, req: &Req) -> std::io::Result<()> {
    let Some((commit, files)) = lookup(state, repo) else { return respond(conn, 404, &[], b"{}") };
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for f in &files {
        if let Some((d, _)) = f.path.rsplit_once('/') {
            if !dirs.contains(&d.to_string()) {
                dirs.push(d.to_string());
                entries.push(serde_json::json!({"type":"directory","oid":"0".repeat(40),"size":0,"path":d}));
            }
        }
        let size = state.lock().unwrap().fake_sizes.get(&f.path).copied().unwrap_or(f.data.len() as u64);
        let mut e = serde_json::json!({"type":"file","oid":git_sha1_hex(&f.data),"size":size,"path":f.path});
        if f.lfs {
            e["lfs"] = serde_json::json!({"oid":sha256_hex(&f.data),"size":size,"pointerSize":134});
            e["oid"] = serde_json::json!(git_sha1_hex(b"pointer"));
        }
        entries.push(e);
    }
    let page = state.lock().unwrap().page_size.max(1);
    let cursor: usize = req.query.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let end = (cursor + page).min(entries.len());
    let body = serde_json::to_vec(&entries[cursor.min(end)..end]).unwrap();
    let mut headers = Vec::new();
    if end < entries.len() {
        let addr = conn.local_addr()?;
        headers.push((
            "Link",
            format!("<http://{addr}/api/models/{repo}/tree/{commit}?recursive=true&cursor={end}>; rel=\"next\""),
        ));
    }
    respond(conn, 200, &headers, &body)
}

fn ms_list(conn: &mut TcpStream, state: &Mutex<State>, repo: &str) -> std::io::Result<()> {
    let Some((_, files)) = lookup(state, repo) else {
        return respond(conn, 200, &[], b"{\"Code\":10010101,\"Message\":\"model not found\",\"Success\":false}");
    };
    let list: Vec<_> = files
        .iter()
        .map(|f| {
            serde_json::json!({"Name": f.path.rsplit('/').next(), "Path": f.path, "Type": "blob",
                                    "Size": f.data.len(), "Sha256": sha256_hex(&f.data)})
        })
        .collect();
    let body = serde_json::json!({"Code":200,"Data":{"Files":list},"Success":true});
    respond(conn, 200, &[], body.to_string().as_bytes())
}

fn plain(
    conn: &mut TcpStream,
    state: &Mutex<State>,
    gate: &(Mutex<bool>, Condvar),
    path: &str,
    req: &Req,
) -> std::io::Result<()> {
    let Some((_, files)) = lookup(state, "plain/files") else { return respond(conn, 404, &[], b"") };
    if path == "SHA256SUMS" {
        let sums: String = files.iter().map(|f| format!("{}  {}\n", sha256_hex(&f.data), f.path)).collect();
        return respond(conn, 200, &[], sums.as_bytes());
    }
    serve(conn, state, gate, "plain/files", path, req)
}

/// Serves a file's bytes, honouring Range unless a fault says otherwise.
fn serve(
    conn: &mut TcpStream,
    state: &Mutex<State>,
    gate: &(Mutex<bool>, Condvar),
    repo: &str,
    path: &str,
    req: &Req,
) -> std::io::Result<()> {
    let Some(file) = lookup(state, repo).and_then(|(_, fs)| fs.into_iter().find(|f| f.path == path)) else {
        return respond(conn, 404, &[], b"Entry not found");
    };
    let range = req.headers.get("range").cloned();
    {
        let mut st = state.lock().unwrap();
        st.requests.push((path.to_string(), range.clone()));
        st.data_auth.push(req.headers.get("authorization").cloned());
    }
    let faults = take_rules(state, path);
    if let Some(f) = faults.iter().find(|f| matches!(f, Fault::Status(_) | Fault::RateLimited(_))) {
        return fault_status(conn, f);
    }
    let len = file.data.len();
    let ignore_range = faults.iter().any(|f| matches!(f, Fault::IgnoreRange));
    let span = if ignore_range { None } else { range.as_deref().and_then(|r| parse_range(r, len)) };
    let (status, start, end) = match span {
        Some((a, b)) => (206, a, b),
        None => (200, 0, len),
    };
    let mut body = file.data[start..end].to_vec();
    if faults.iter().any(|f| matches!(f, Fault::Corrupt)) {
        if let Some(b) = body.get_mut((end - start) / 2) {
            *b ^= 0x5A;
        }
    }
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
        body.len()
    );
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    let cut = faults.iter().find_map(|f| match f {
        Fault::DropAfter(n) | Fault::StallAfter(n, _) | Fault::PauseAfter(n) => Some((*n, f.clone())),
        _ => None,
    });
    let limit = cut.as_ref().map_or(body.len(), |(n, _)| (*n).min(body.len()));
    write_counted(conn, state, path, &body[..limit])?;
    match cut.map(|(_, f)| f) {
        Some(Fault::StallAfter(_, ms)) => thread::sleep(Duration::from_millis(ms)),
        Some(Fault::PauseAfter(_)) => {
            let (m, c) = gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
        }
        Some(_) => {}
        None => {
            let _ = conn.shutdown(Shutdown::Write);
            let mut sink = [0u8; 64];
            let _ = conn.read(&mut sink);
            return Ok(());
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}
fn write_counted(conn: &mut TcpStream, state: &Mutex<State>, path: &str, body: &[u8]) -> std::io::Result<()> {
    for piece in body.chunks(16 * 1024) {
        conn.write_all(piece)?;
        *state.lock().unwrap().served.entry(path.to_string()).or_insert(0) += piece.len() as u64;
    }
    conn.flush()
}

fn parse_range(r: &str, len: usize) -> Option<(usize, usize)> {
    if len == 0 {
        return None;
    }
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() { len - 1 } else { b.parse::<usize>().ok()?.min(len - 1) };
    (a <= b && a < len).then_some((a, b + 1))
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const REPO: &str = "org/model";

pub fn file(path: &str, seed: u64, len: usize, lfs: bool) -> File {
    File { path: path.into(), data: content(seed, len), lfs }
}

/// A GGUF repo with a 3-shard Q4_K_M in a folder, a single-file Q8_0 and small git files.
pub fn gguf_repo() -> Vec<File> {
    vec![
        file("config.json", 1, 300, false),
        file("README.md", 2, 120, false),
        file("Q4_K_M/M-Q4_K_M-00001-of-00003.gguf", 3, 300_000, true),
        file("Q4_K_M/M-Q4_K_M-00002-of-00003.gguf", 4, 200_000, true),
        file("Q4_K_M/M-Q4_K_M-00003-of-00003.gguf", 5, 100_000, true),
        file("M-Q8_0.gguf", 6, 50_000, true),
    ]
}

pub fn shard(k: usize) -> String {
    format!("Q4_K_M/M-Q4_K_M-0000{k}-of-00003.gguf")
}

/// Runs `hy fetch ARGS` against `server` with caches under `tmp` and short timeouts.
pub fn hy(server: &Server, tmp: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    command(server, tmp, args, env).output().expect("run hy")
}

pub fn command(server: &Server, tmp: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hy"));
    c.arg("fetch").args(args);
    for v in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "HY_FETCH_TOKEN", "NO_COLOR"] {
        c.env_remove(v);
    }
    c.env("HF_ENDPOINT", &server.addr)
        .env("MODELSCOPE_ENDPOINT", &server.addr)
        .env("HOME", tmp)
        .env("XDG_CACHE_HOME", tmp.join("xdg"))
        .env("HF_HOME", tmp.join("hfhome"))
        .env("HF_HUB_CACHE", tmp.join("hub"))
        .env("MODELSCOPE_CACHE", tmp.join("ms"))
        .env("HY_FETCH_RETRY_BASE_MS", "20")
        .env("HY_FETCH_IDLE_TIMEOUT_MS", "5000")
        .env("HY_FETCH_CHUNK_BYTES", "65536");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub fn snapshot(tmp: &std::path::Path) -> std::path::PathBuf {
    tmp.join("hub/models--org--model/snapshots").join(COMMIT)
}

/// Asserts that `dir/path` holds exactly `f`'s bytes.
pub fn assert_file(dir: &std::path::Path, f: &File) {
    let got = std::fs::read(dir.join(&f.path)).unwrap_or_else(|e| panic!("{} missing: {e}", f.path));
    assert!(got == f.data, "{} has wrong content ({} bytes, expected {})", f.path, got.len(), f.data.len());
}

pub fn text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// All files (not folders) under `dir`, relative, sorted; symlinks included.
pub fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &std::path::Path, d: &std::path::Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
