//! `hy run REPO_ID --quant Q` resolves the model through the hub (same code as `hy fetch`),
//! then serves it: the tiny-llama Q8_0 GGUF is published on a local HF-protocol server.

mod fetch_server;

use fetch_server::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)).unwrap()
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_fetches_a_repo_id_then_serves_it() {
    let s = Server::start();
    let gguf = fixture("tiny-llama/gguf/tiny-llama-Q8_0.gguf");
    s.add_repo(
        REPO,
        COMMIT,
        vec![
            File { path: "README.md".into(), data: b"tiny".to_vec(), lfs: false },
            File { path: "tiny-llama-Q8_0.gguf".into(), data: gguf.clone(), lfs: true },
            File {
                path: "tiny-llama-Q4_K_M.gguf".into(),
                data: fixture("tiny-llama/gguf/tiny-llama-Q4_K_M.gguf"),
                lfs: true,
            },
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    // `command` prepares `hy fetch` with the hub environment; reuse its environment for `hy run`.
    let cmd = command(&s, tmp.path(), &[], &[]);
    let mut c = std::process::Command::new(cmd.get_program());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut child = c
        .args(["run", REPO, "--quant", "q8_0", "--port", "0", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).map(str::to_string);
    let models = addr.as_deref().map(|a| get(a, "/v1/models"));
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let models = models.unwrap_or_else(|| panic!("no ready line: {line:?}\n{err}"));
    assert!(models.starts_with("HTTP/1.1 200"), "{models}");
    // Only the Q8_0 file was downloaded, byte for byte.
    assert_eq!(s.served("tiny-llama-Q8_0.gguf"), gguf.len() as u64);
    assert_eq!(s.served("tiny-llama-Q4_K_M.gguf"), 0);
    assert_eq!(std::fs::read(snapshot(tmp.path()).join("tiny-llama-Q8_0.gguf")).unwrap(), gguf);
}

#[test]
fn run_with_an_unknown_name_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hy")).args(["run", "no-such-model"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a local file"));
}
