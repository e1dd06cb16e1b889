use super::*;

fn hy90_text() -> &'static str {
    BUILTIN[0].1
}

#[test]
fn builtin_profiles_are_valid_and_named() {
    assert!(builtin_errors().is_empty(), "{:?}", builtin_errors());
    let names: Vec<String> = builtin().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["HY90", "HY70", "HY50"]);
}

#[test]
fn hy90_nominal_box_is_the_reference_appliance() {
    let p = builtin().into_iter().next().unwrap();
    let hw = &p.hardware;
    assert_eq!(hw.cpu.sockets, 2);
    assert_eq!(hw.cpu.cores_per_socket, 32);
    assert_eq!(hw.memory.total_bytes, 24 * 48 * (1u64 << 30));
    let (bw, assumed) = theoretical_bandwidth(hw);
    assert!((bw - 1228.8).abs() < 1e-9 && !assumed);
    assert_eq!(hw.gpus[0].bandwidth_gbps, Some(1792.0));
    assert_eq!(p.preferred_quant("deepseek"), Some(Quant::Fp8));
}

fn expect_error(text: &str, file: &str, key: Option<&str>, fragment: &str) {
    let e = parse(text, file).unwrap_err();
    assert_eq!(e.file, file);
    assert_eq!(e.key.as_deref(), key, "{e}");
    assert!(e.to_string().contains(fragment), "{e}");
}

#[test]
fn validation_names_file_key_and_problem() {
    let t = hy90_text();
    expect_error(
        &t.replace("format_version = 1\nname", "format_version = 2\nname"),
        "HY90.toml",
        Some("format_version"),
        "version 1",
    );
    expect_error(
        &t.replace("min_memory_gib = 1100", "min_memory_gib = -5"),
        "HY90.toml",
        Some("requirements.min_memory_gib"),
        "-5",
    );
    expect_error(
        &t.replace("deepseek = \"fp8\"", "deepseek = \"q9_z\""),
        "HY90.toml",
        Some("defaults.quant.deepseek"),
        "q9_z",
    );
    expect_error(
        &t.replace("deepseek = \"fp8\"", "llama3 = \"fp8\""),
        "HY90.toml",
        Some("defaults.quant.llama3"),
        "unknown model family",
    );
    expect_error(
        &t.replace("numa = \"auto\"", "numa = \"sometimes\""),
        "HY90.toml",
        Some("defaults.engine.numa"),
        "sometimes",
    );
    expect_error(
        &t.replace("\"avx512bw\"]", "\"avx1024\"]"),
        "HY90.toml",
        Some("requirements.cpu_features"),
        "avx1024",
    );
    expect_error(&t.replace("context = 131072", "context = 0"), "HY90.toml", Some("defaults.context"), "at least 1");
    // A nominal box that fails its own requirements.
    expect_error(
        &t.replace("min_cpu_cores = 64", "min_cpu_cores = 128"),
        "HY90.toml",
        Some("hardware"),
        "CPU cores: 64 cores < 128",
    );
    // The name must equal the file stem.
    expect_error(t, "mybox.toml", Some("name"), "mybox.toml");
    // Syntax and type errors come from the TOML parser with the location.
    expect_error(&t.replace("min_gpus = 1", "min_gpus = \"one\""), "HY90.toml", None, "min_gpus");
    expect_error(
        &t.replace("min_gpus = 1", "min_gpus = 1\nmax_noise = 3"),
        "HY90.toml",
        None,
        "unknown field `max_noise`",
    );
}

#[test]
fn user_directory_loads_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = hy90_text().replace("name = \"HY90\"", "name = \"lab\"");
    std::fs::write(dir.path().join("lab.toml"), good).unwrap();
    std::fs::write(dir.path().join("broken.toml"), "format_version = 1\nname = \"broken\"\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let (ok, bad) = load_dir(dir.path());
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].name, "lab");
    assert_eq!(bad.len(), 1);
    assert!(bad[0].file.ends_with("broken.toml"), "{}", bad[0]);
    assert!(bad[0].to_string().contains("missing field"), "{}", bad[0]);
    let (none, errs) = load_dir(&dir.path().join("absent"));
    assert!(none.is_empty() && errs.is_empty());
}

#[test]
fn matching_scores_and_explains_what_is_missing() {
    let profiles = builtin();
    let hy50 = profiles[2].hardware.clone();
    let m90 = match_profile(&profiles[0], &hy50);
    assert!(!m90.matches);
    let missing = m90.missing().join("; ");
    assert!(missing.contains("memory: 384 GiB < 1100 GiB"), "{missing}");
    assert!(missing.contains("memory bandwidth: 461 GB/s < 1100 GB/s"), "{missing}");
    assert!(missing.contains("GPU VRAM: 24 GiB < 31 GiB"), "{missing}");
    assert!(m90.score > 0.3 && m90.score < 1.0, "{}", m90.score);
    let m50 = match_profile(&profiles[2], &hy50);
    assert!(m50.matches && (m50.score - 1.0).abs() < 1e-12);
    // Every profile matches its own nominal box.
    for p in &profiles {
        assert!(match_profile(p, &p.hardware).matches, "{}", p.name);
    }
}
