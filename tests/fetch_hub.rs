//! `hy fetch` against a local server speaking the Hugging Face and ModelScope protocols and
//! plain file folders: selection, cache layout, re-runs, tokens and error messages.

mod fetch_server;

use fetch_server::*;

fn server_with_repo() -> (Server, Vec<File>) {
    let s = Server::start();
    let files = gguf_repo();
    s.add_repo(REPO, COMMIT, files.clone());
    (s, files)
}

#[test]
fn hf_quant_lands_in_cache_layout_and_rerun_transfers_nothing() {
    let (s, files) = server_with_repo();
    let tmp = tempfile::tempdir().unwrap();
    let out = hy(&s, tmp.path(), &[REPO, "--quant", "q4_k_m", "--jobs", "3"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let snap = snapshot(tmp.path());
    assert_eq!(stdout.trim(), snap.display().to_string());
    for f in &files[2..5] {
        assert_file(&snap, f);
        let link = std::fs::read_link(snap.join(&f.path)).expect("snapshot entry is a symlink");
        assert_eq!(link, std::path::PathBuf::from(format!("../../../blobs/{}", sha256_hex(&f.data))));
    }
    // Only the Q4_K_M shards: three links, three blobs, no partial files, refs/main = commit.
    assert_eq!(tree(&snap), vec![shard(1), shard(2), shard(3)]);
    assert_eq!(tree(&tmp.path().join("hub/models--org--model/blobs")).len(), 3);
    let refs = std::fs::read_to_string(tmp.path().join("hub/models--org--model/refs/main")).unwrap();
    assert_eq!(refs, COMMIT);
    assert_eq!(s.served("M-Q8_0.gguf"), 0);
    let first: u64 = (1..=3).map(|k| s.served(&shard(k))).sum();
    assert_eq!(first, 600_000, "each byte once");

    let again = hy(&s, tmp.path(), &[REPO, "--quant", "Q4_K_M", "--json"], &[]);
    let (stdout, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(0), "{stderr}");
    assert_eq!((1..=3).map(|k| s.served(&shard(k))).sum::<u64>(), first, "re-run downloaded again");
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["bytes_downloaded"], 0);
    assert_eq!(done["bytes_reused"], 600_000);
    let reused = events.iter().filter(|e| e["event"] == "file_done" && e["reused"] == true).count();
    assert_eq!(reused, 3);
}

#[test]
fn one_shard_pulls_siblings_into_a_plain_dir_with_git_checked_small_files() {
    let (s, files) = server_with_repo();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = hy(
        &s,
        tmp.path(),
        &[REPO, "--include", "*-00002-of-00003.GGUF", "--include", "config.json", "--dir", dir.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    for f in [&files[0], &files[2], &files[3], &files[4]] {
        assert_file(&dir, f);
    }
    let visible: Vec<String> = tree(&dir).into_iter().filter(|p| !p.starts_with(".hy-fetch")).collect();
    assert_eq!(
        visible,
        vec![
            "Q4_K_M/M-Q4_K_M-00001-of-00003.gguf",
            "Q4_K_M/M-Q4_K_M-00002-of-00003.gguf",
            "Q4_K_M/M-Q4_K_M-00003-of-00003.gguf",
            "config.json"
        ]
    );
    // A file changed behind hy's back is detected on the next run (size and mtime marker).
    std::fs::write(dir.join("config.json"), b"tampered").unwrap();
    let again = hy(&s, tmp.path(), &[REPO, "--include", "config.json", "--dir", dir.to_str().unwrap()], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again).1);
    assert_file(&dir, &files[0]);
}

#[test]
fn modelscope_and_plain_url_folders() {
    let s = Server::start();
    let files = vec![
        file("config.json", 11, 500, false),
        file("model-00001-of-00002.safetensors", 12, 150_000, true),
        file("model-00002-of-00002.safetensors", 13, 70_000, true),
        file("model.safetensors.index.json", 14, 200, false),
    ];
    s.add_repo("owner/st-model", "master", files.clone());
    s.add_repo(
        "plain/files",
        "-",
        vec![file("a.bin", 15, 90_000, false), file("sub/b.bin", 16, 1000, false), file("empty.txt", 17, 0, false)],
    );
    let tmp = tempfile::tempdir().unwrap();
    let ms = hy(&s, tmp.path(), &["owner/st-model", "--source", "modelscope", "--quant", "fp8"], &[]);
    assert_eq!(ms.status.code(), Some(0), "{}", text(&ms).1);
    let ms_dir = tmp.path().join("ms/models/owner/st-model");
    for f in &files {
        assert_file(&ms_dir, f);
    }
    let url = format!("{}/files/", s.addr);
    let dir = tmp.path().join("plain");
    let out = hy(&s, tmp.path(), &[&url, "--dir", dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_file(&dir, &file("a.bin", 15, 90_000, false));
    assert_file(&dir, &file("sub/b.bin", 16, 1000, false));
    assert_file(&dir, &file("empty.txt", 17, 0, false));
}

#[test]
fn token_is_sent_and_auth_errors_say_how_to_give_one() {
    let (s, _) = server_with_repo();
    let tmp = tempfile::tempdir().unwrap();
    let out = hy(&s, tmp.path(), &[REPO, "--include", "config.json"], &[("HF_TOKEN", "hf_secret")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(s.state.lock().unwrap().auth.iter().all(|a| a.as_deref() == Some("Bearer hf_secret")));

    s.rule("api", Fault::Status(401), 1);
    let out = hy(&s, tmp.path(), &[REPO, "--include", "config.json"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("HF_TOKEN") && stderr.contains("org/model"), "{stderr}");
}

#[test]
fn not_found_and_bad_selection_name_what_is_wrong() {
    let (s, _) = server_with_repo();
    let tmp = tempfile::tempdir().unwrap();
    let out = hy(&s, tmp.path(), &["org/missing"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("org/missing") && stderr.contains("not found"), "{stderr}");

    s.rule("config.json", Fault::Status(404), 1);
    let out = hy(&s, tmp.path(), &[REPO, "--include", "config.json"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("config.json") && stderr.contains("org/model") && stderr.contains(COMMIT), "{stderr}");

    let out = hy(&s, tmp.path(), &[REPO, "--quant", "Q5_K_M"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Q4_K_M") && stderr.contains("Q8_0"), "{stderr}");
}

#[test]
fn disk_space_is_checked_before_downloading() {
    let (s, _) = server_with_repo();
    s.state.lock().unwrap().fake_sizes.insert("M-Q8_0.gguf".into(), 1 << 60);
    let tmp = tempfile::tempdir().unwrap();
    let out = hy(&s, tmp.path(), &[REPO, "--quant", "Q8_0"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not enough disk space") && stderr.contains("short by"), "{stderr}");
    assert_eq!(s.served("M-Q8_0.gguf"), 0);
}

#[test]
fn catalog_names_and_saved_plans_pick_the_repo_and_quant() {
    let s = Server::start();
    let files = gguf_repo();
    s.add_repo("unsloth/DeepSeek-R1-GGUF", COMMIT, files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("by-name");
    let out = hy(&s, tmp.path(), &["deepseek-r1", "--quant", "Q4_K_M", "--dir", dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    for f in &files[2..5] {
        assert_file(&dir, f);
    }

    let plan = tmp.path().join("plan.toml");
    let hw = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/epyc9654-rtx4090.toml");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_hy"))
        .args(["plan", "deepseek-r1", "--hardware", hw, "--quant", "q4_k_m", "--save", plan.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "hy plan failed: {}", text(&made).1);
    let dir = tmp.path().join("by-plan");
    let out = hy(&s, tmp.path(), &["--plan", plan.to_str().unwrap(), "--dir", dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let visible: Vec<String> = tree(&dir).into_iter().filter(|p| !p.starts_with(".hy-fetch")).collect();
    assert_eq!(visible, vec![shard(1), shard(2), shard(3)]);
}

#[test]
fn token_stays_with_the_hub_when_redirected_to_a_cdn() {
    let (hub, files) = server_with_repo();
    let cdn = Server::start();
    cdn.add_repo(REPO, COMMIT, files.clone());
    hub.state.lock().unwrap().cdn_base = Some(cdn.addr.clone());
    let tmp = tempfile::tempdir().unwrap();
    let out =
        hy(&hub, tmp.path(), &[REPO, "--quant", "Q4_K_M", "--include", "config.json"], &[("HF_TOKEN", "hf_secret")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for f in [&files[0], &files[2], &files[3], &files[4]] {
        assert_file(&snapshot(tmp.path()), f);
    }
    assert_eq!(hub.served(&shard(1)), 0, "LFS bytes must come from the CDN");
    let cdn_auth = cdn.state.lock().unwrap().data_auth.clone();
    assert!(!cdn_auth.is_empty() && cdn_auth.iter().all(Option::is_none), "token leaked to the CDN: {cdn_auth:?}");
    // The small git file is served by the hub itself, with the token.
    assert!(hub.state.lock().unwrap().data_auth.iter().all(|a| a.as_deref() == Some("Bearer hf_secret")));
    // Plain lines on stderr when it is not a terminal.
    assert!(stderr.contains("hy fetch: hf org/model") && stderr.contains("downloaded: config.json"), "{stderr}");
}
