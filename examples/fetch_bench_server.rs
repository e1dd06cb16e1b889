//! A minimal static file server for measuring `hy fetch` throughput on loopback.
//!
//! `cargo run --release --example fetch_bench_server -- DIR [PORT]` serves the files in DIR
//! (flat) at `http://127.0.0.1:PORT/`, with HTTP Range support; if DIR holds a SHA256SUMS
//! file, `hy fetch http://127.0.0.1:PORT/ --dir OUT` fetches and verifies everything it lists.
//! One thread per connection; bodies are copied with pread in 1 MiB pieces.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fetch_bench_server DIR [PORT]");
        std::process::exit(2);
    };
    let port = args.next().unwrap_or_else(|| "8765".into());
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("serving {} at http://127.0.0.1:{port}/", dir.display());
    for conn in listener.incoming().flatten() {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, &dir);
        });
    }
}

fn handle(mut conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let name = target.trim_start_matches('/');
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let Ok(file) = std::fs::File::open(dir.join(name)) else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let len = file.metadata()?.len();
    let span = range.as_deref().and_then(|r| parse_range(r, len));
    let (start, end) = span.unwrap_or((0, len));
    let head = match span {
        Some(_) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nConnection: close\r\n\r\n",
            end - start,
            end - 1
        ),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"),
    };
    conn.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() { len.checked_sub(1)? } else { b.parse::<u64>().ok()?.min(len.checked_sub(1)?) };
    (a <= b).then_some((a, b + 1))
}
