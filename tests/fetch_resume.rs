//! A `hy fetch` process SIGKILLed mid-download continues where it stopped when run again:
//! the result is correct and the bytes it already had are not transferred a second time.

mod fetch_server;

use fetch_server::*;
use std::time::{Duration, Instant};

/// Bytes the state file next to the partial blob says are on disk.
fn persisted(state: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read(state) else { return 0 };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else { return 0 };
    v["done"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).sum()).unwrap_or(0)
}

fn kill_and_resume(chunk: &str, jobs: &str, pause_after: usize, expect_persisted: u64) {
    let s = Server::start();
    let big = file("big.gguf", 42, 600_000, true);
    s.add_repo(REPO, COMMIT, vec![big.clone(), file("config.json", 1, 300, false)]);
    let tmp = tempfile::tempdir().unwrap();
    // The server sends `pause_after` bytes of the first request, then holds the connection.
    s.rule("big.gguf", Fault::PauseAfter(pause_after), 1);
    let env = [("HY_FETCH_CHUNK_BYTES", chunk), ("HY_FETCH_PERSIST_MS", "20"), ("HY_FETCH_IDLE_TIMEOUT_MS", "60000")];
    let args = [REPO, "--include", "big.gguf", "--jobs", jobs];
    let mut child = command(&s, tmp.path(), &args, &env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = tmp.path().join("hub/models--org--model/blobs").join(format!("{}.hy-state", sha256_hex(&big.data)));
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until hy has fsynced exactly what the server sent so far, then kill it hard.
    while persisted(&state) < expect_persisted {
        assert!(Instant::now() < deadline, "hy never persisted its progress ({} bytes)", persisted(&state));
        assert!(child.try_wait().unwrap().is_none(), "hy exited before it was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    s.release();
    let before = s.served("big.gguf");
    assert!(before >= expect_persisted);

    let out = hy(&s, tmp.path(), &args, &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_file(&snapshot(tmp.path()), &big);
    assert_eq!(
        s.served("big.gguf"),
        600_000 + (before - expect_persisted),
        "bytes already on disk were downloaded again"
    );
    assert!(!state.exists(), "state file left behind");
}

#[test]
fn killed_single_stream_download_resumes_without_refetching() {
    kill_and_resume("10000000", "1", 250_000, 250_000);
}

#[test]
fn killed_chunked_download_resumes_only_missing_ranges() {
    // Six 100 kB chunks over two connections: the first request is held after 30 kB while
    // the other connection completes the five other chunks; 530 kB are on disk at the kill,
    // and the re-run must fetch only the missing 70 kB.
    kill_and_resume("100000", "2", 30_000, 530_000);
}

#[test]
fn a_second_fetch_into_the_same_place_is_refused_while_the_first_runs() {
    let s = Server::start();
    let big = file("big.gguf", 42, 600_000, true);
    s.add_repo(REPO, COMMIT, vec![big.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    s.rule("big.gguf", Fault::PauseAfter(100_000), 1);
    let env = [("HY_FETCH_CHUNK_BYTES", "10000000"), ("HY_FETCH_PERSIST_MS", "20")];
    let mut first = command(&s, tmp.path(), &[REPO], &env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = tmp.path().join("hub/models--org--model/blobs").join(format!("{}.hy-state", sha256_hex(&big.data)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while persisted(&state) < 100_000 {
        assert!(Instant::now() < deadline && first.try_wait().unwrap().is_none(), "first fetch did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = hy(&s, tmp.path(), &[REPO], &env);
    let (_, stderr) = text(&second);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("another process"), "{stderr}");
    assert_eq!(persisted(&state), 100_000, "the second run touched the partial file");
    s.release(); // the first run's connection closes; it resumes and completes
    assert!(first.wait().unwrap().success());
    assert_file(&snapshot(tmp.path()), &big);
}
