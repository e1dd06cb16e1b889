//! `hy fetch` against injected faults. Each ends with exactly the right files or a clear error
//! (and then no file at all where the bad one would have been), never a wrong file.

mod fetch_server;

use fetch_server::*;
use std::path::Path;

fn setup() -> (Server, Vec<File>, tempfile::TempDir) {
    let s = Server::start();
    let files = gguf_repo();
    s.add_repo(REPO, COMMIT, files.clone());
    (s, files, tempfile::tempdir().unwrap())
}

fn fetch_q4(s: &Server, tmp: &Path, env: &[(&str, &str)]) -> std::process::Output {
    hy(s, tmp, &[REPO, "--quant", "Q4_K_M", "--json"], env)
}

fn assert_q4_ok(out: &std::process::Output, tmp: &Path, files: &[File]) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out).1);
    for f in &files[2..5] {
        assert_file(&snapshot(tmp), f);
    }
    let blobs = tree(&tmp.join("hub/models--org--model/blobs"));
    assert!(blobs.iter().all(|b| !b.contains("hy-")), "partial files left: {blobs:?}");
}

fn events(out: &std::process::Output, kind: &str) -> Vec<serde_json::Value> {
    text(out)
        .0
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == kind)
        .collect()
}

#[test]
fn connection_dropped_mid_file_resumes_where_it_stopped() {
    let (s, files, tmp) = setup();
    s.rule(&shard(1), Fault::DropAfter(3_000), 2);
    let out = fetch_q4(&s, tmp.path(), &[]);
    assert_q4_ok(&out, tmp.path(), &files);
    assert_eq!(s.served(&shard(1)), 300_000, "the dropped bytes were fetched again");
    assert!(!events(&out, "retry").is_empty());
}

#[test]
fn corrupted_bytes_are_detected_and_downloaded_once_more() {
    let (s, files, tmp) = setup();
    s.rule(&shard(2), Fault::Corrupt, 1);
    let out = fetch_q4(&s, tmp.path(), &[]);
    assert_q4_ok(&out, tmp.path(), &files);
    let failed = events(&out, "verify_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["path"], shard(2));
    assert_eq!(failed[0]["retrying"], true);
}

#[test]
fn persistent_corruption_fails_with_exit_5_and_keeps_no_file() {
    let (s, files, tmp) = setup();
    let dir = tmp.path().join("out");
    s.rule("config.json", Fault::Corrupt, 100);
    let out = hy(
        &s,
        tmp.path(),
        &[REPO, "--quant", "Q4_K_M", "--include", "config.json", "--dir", dir.to_str().unwrap()],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("config.json") && stderr.contains("git-sha1 mismatch"), "{stderr}");
    assert!(!dir.join("config.json").exists(), "a corrupt file became visible");
    for f in &files[2..5] {
        assert_file(&dir, f); // the healthy files still completed
    }
}

#[test]
fn rate_limits_are_waited_out() {
    let (s, files, tmp) = setup();
    s.rule(&shard(3), Fault::Status(429), 1);
    s.rule("api", Fault::RateLimited(1), 1);
    let out = fetch_q4(&s, tmp.path(), &[]);
    assert_q4_ok(&out, tmp.path(), &files);
    let retries = events(&out, "retry");
    assert!(retries.iter().any(|r| r["path"] == shard(3) && r["wait_ms"].as_u64() >= Some(1000)), "{retries:?}");
}

#[test]
fn server_ignoring_range_is_fetched_as_one_stream() {
    let (s, files, tmp) = setup();
    s.rule(&shard(1), Fault::IgnoreRange, 1000);
    let out = fetch_q4(&s, tmp.path(), &[]);
    assert_q4_ok(&out, tmp.path(), &files);
    let notes = events(&out, "note");
    assert!(notes.iter().any(|n| n["message"].as_str().unwrap_or("").contains("ignores HTTP Range")), "{notes:?}");
    // Also on resume: a single-stream download cut at 100 kB is asked to continue with a
    // Range request, gets the whole file (200) instead, and must start over from byte 0.
    let (s2, files2, tmp2) = setup();
    s2.rule(&shard(1), Fault::IgnoreRange, 1000);
    s2.rule(&shard(1), Fault::DropAfter(100_000), 1);
    let out = fetch_q4(&s2, tmp2.path(), &[("HY_FETCH_CHUNK_BYTES", "10000000")]);
    assert_q4_ok(&out, tmp2.path(), &files2);
    assert_eq!(s2.served(&shard(1)), 400_000);
    assert_eq!(s2.requests_for(&shard(1)), vec![Some("bytes=0-299999".into()), Some("bytes=100000-299999".into())]);
}

#[test]
fn expired_cdn_url_403_is_re_resolved() {
    let (s, files, tmp) = setup();
    s.rule(&shard(1), Fault::Status(403), 1);
    let out = fetch_q4(&s, tmp.path(), &[]);
    assert_q4_ok(&out, tmp.path(), &files);
    let retries = events(&out, "retry");
    assert!(retries.iter().any(|r| r["reason"].as_str().unwrap_or("").contains("403")), "{retries:?}");
}

#[test]
fn stalled_body_hits_the_idle_timeout_and_resumes() {
    let (s, files, tmp) = setup();
    s.rule(&shard(2), Fault::StallAfter(2_000, 3_000), 1);
    let out = fetch_q4(&s, tmp.path(), &[("HY_FETCH_IDLE_TIMEOUT_MS", "300")]);
    assert_q4_ok(&out, tmp.path(), &files);
    let retries = events(&out, "retry");
    assert!(
        retries.iter().any(|r| r["reason"].as_str().unwrap_or("").contains("idle timeout")),
        "{retries:?} {}",
        text(&out).0
    );
    assert_eq!(s.served(&shard(2)), 200_000);
}

#[test]
fn path_traversal_names_are_refused() {
    for bad in ["../evil.txt", "/tmp/evil-abs.txt", "a/../../evil.txt"] {
        let s = Server::start();
        s.add_repo(REPO, COMMIT, vec![file("ok.json", 1, 10, false), file(bad, 2, 10, false)]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/out");
        for args in [vec![REPO], vec![REPO, "--dir", dir.to_str().unwrap()]] {
            let out = hy(&s, tmp.path(), &args, &[]);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(4), "{bad}: {stderr}");
            assert!(stderr.contains("refusing") && stderr.contains(bad), "{stderr}");
        }
        let written: Vec<String> = tree(tmp.path()).into_iter().filter(|p| p.contains("evil")).collect();
        assert!(written.is_empty(), "{written:?}");
        assert_eq!(s.served(bad), 0);
    }
}

#[test]
fn symlinked_folder_in_target_is_refused() {
    let s = Server::start();
    s.add_repo(REPO, COMMIT, vec![file("sub/x.json", 1, 10, false)]);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, elsewhere) = (tmp.path().join("out"), tmp.path().join("elsewhere"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("sub")).unwrap();
    let out = hy(&s, tmp.path(), &[REPO, "--dir", dir.to_str().unwrap()], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert!(tree(&elsewhere).is_empty());
}
