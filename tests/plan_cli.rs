//! End-to-end `hy plan` on catalog models: the must-show numbers, JSON schema, exit codes,
//! --save, --compare, calibration, hardware files, no-GPU boxes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn hy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hy"));
    c.env("HY_PROFILE_DIR", "/nonexistent-hy-profiles");
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    hy().args(args).output().unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}\nstdout {}\nstderr {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn plan(args: &[&str]) -> (i32, Value) {
    let mut a = vec!["plan"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = run(&a);
    (out.status.code().unwrap(), json_of(&out))
}

fn example(name: &str) -> String {
    root().join("examples").join(name).to_str().unwrap().to_string()
}

#[test]
fn deepseek_r1_q4_k_m_fits_hy90_with_the_real_file_size() {
    let (code, p) = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m"]);
    assert_eq!(code, 0);
    assert_eq!(p["fits"], true);
    let w = p["weights_bytes"].as_u64().unwrap() as f64;
    assert!((w / 404.3e9 - 1.0).abs() < 0.02, "{w}");
    assert_eq!(p["kv_bytes_per_token"].as_u64().unwrap(), 70272);
    assert_eq!(p["quant"], "q4_k_m");
    assert_eq!(p["context"].as_u64().unwrap(), 131072, "HY90's default context");
    assert_eq!(p["concurrency"].as_u64().unwrap(), 1);
    // Experts replicated on both NUMA nodes (394 GB fits a 576 GiB node), attention on the GPU.
    assert_eq!(p["numa"]["policy"], "replicate");
    let placement = p["placement"].as_array().unwrap();
    let dev = |c: &str| placement.iter().find(|x| x["component"] == c).unwrap()["device"].as_str().unwrap().to_string();
    assert_eq!(dev("attention"), "gpu0");
    assert_eq!(dev("kv_cache"), "gpu0");
    assert!(placement.iter().any(|x| x["component"] == "routed_experts" && x["device"] == "cpu0+cpu1"));
    // The vendor reports 28 tok/s for one request at INT4; the model is calibrated to it.
    let tps = p["predicted"]["decode_tokens_per_s"].as_f64().unwrap();
    assert!((24.0..32.0).contains(&tps), "{tps}");
    assert!(p["predicted"]["bottleneck"].as_str().unwrap().ends_with('.'));
    // DESIGN.md: the MoE part of a Q4_K_M token takes 18 ms on the reference box where the
    // bandwidth bound is 13 ms.
    let step = &p["predicted"]["step"];
    let (ms, bound) = (step["cpu_experts_ms"].as_f64().unwrap(), step["cpu_experts_bound_ms"].as_f64().unwrap());
    assert!((16.5..19.5).contains(&ms) && (12.0..14.0).contains(&bound), "{ms} {bound}");
}

#[test]
fn json_schema_has_the_documented_keys() {
    let (_, p) = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m"]);
    for k in [
        "fits",
        "model",
        "quant",
        "context",
        "concurrency",
        "weights_bytes",
        "kv_bytes_per_token",
        "devices",
        "placement",
        "predicted",
        "warnings",
    ] {
        assert!(p.get(k).is_some(), "missing {k}");
    }
    for d in p["devices"].as_array().unwrap() {
        for k in ["name", "kind", "capacity_bytes", "weights_bytes", "kv_bytes", "other_bytes"] {
            assert!(d.get(k).is_some(), "device missing {k}: {d}");
        }
        assert!(d["kind"] == "cpu" || d["kind"] == "gpu");
        assert_eq!(d.get("numa_node").is_some(), d["kind"] == "cpu");
    }
    for k in ["decode_tokens_per_s", "prefill_tokens_per_s", "bottleneck"] {
        assert!(p["predicted"].get(k).is_some(), "predicted missing {k}");
    }
    // Device weights add up: every GPU byte plus one copy of the CPU bytes per node policy.
    let gpu_w: u64 = p["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "gpu")
        .map(|d| d["weights_bytes"].as_u64().unwrap())
        .sum();
    let cpu0_w = p["devices"][0]["weights_bytes"].as_u64().unwrap();
    let embeddings = p["components"].as_array().unwrap().iter().find(|c| c["component"] == "embeddings").unwrap()
        ["bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(gpu_w + cpu0_w + embeddings / 2, p["weights_bytes"].as_u64().unwrap());
}

#[test]
fn deepseek_r1_fp8_fits_hy90_at_the_release_size_minus_mtp() {
    let (code, p) = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "fp8"]);
    assert_eq!(code, 0);
    assert_eq!(p["fits"], true);
    let w = p["weights_bytes"].as_u64().unwrap() as f64;
    let mtp = p["excluded"][0]["bytes"].as_u64().unwrap() as f64;
    assert!(p["excluded"][0]["what"].as_str().unwrap().contains("multi-token-prediction"));
    assert!((w / (688.6e9 - mtp) - 1.0).abs() < 0.02, "{w} {mtp}");
    assert!(((w + mtp) / 688.6e9 - 1.0).abs() < 0.005);
    // 654 GB of experts cannot be copied to each 576 GiB node: split.
    assert_eq!(p["numa"]["policy"], "split");
    let tps = p["predicted"]["decode_tokens_per_s"].as_f64().unwrap();
    assert!((15.0..25.0).contains(&tps), "{tps}");
}

#[test]
fn fp8_on_hy50_does_not_fit_and_says_why_and_what_would() {
    let out = run(&["plan", "deepseek-r1", "--profile", "HY50", "--quant", "fp8"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not fit profile HY50: short by"), "{stderr}");
    assert!(stdout.contains("DOES NOT FIT"), "{stdout}");
    assert!(stdout.contains("--quant") && stdout.contains("q2_k"), "{stdout}");
    assert!(stdout.contains("--profile HY90"), "{stdout}");
    let (code, p) = plan(&["deepseek-r1", "--profile", "HY50", "--quant", "fp8"]);
    assert_eq!(code, 3);
    assert_eq!(p["fits"], false);
    // 673 GB of weights on a 384 GiB box: short by more than 250 GB.
    assert!(p["shortfall_bytes"].as_u64().unwrap() > 250_000_000_000);
    assert!(!p["suggestions"].as_array().unwrap().is_empty());
}

#[test]
fn auto_picks_the_highest_quality_that_fits() {
    let (code, auto) = plan(&["deepseek-r1", "--profile", "HY50", "--quant", "auto"]);
    assert_eq!(code, 0);
    let order = ["fp8", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"];
    let first_fit = order.iter().find(|q| plan(&["deepseek-r1", "--profile", "HY50", "--quant", q]).0 == 0).unwrap();
    assert_eq!(auto["quant"].as_str().unwrap(), *first_fit);
    assert_eq!(auto["quant_choice"], "auto");
}

#[test]
fn shorter_context_and_fewer_requests_are_suggested() {
    let args = ["deepseek-r1", "--profile", "HY50", "--quant", "q4_k_m"];
    let (code, p) = plan(&[&args[..], &["--context", "65536", "--concurrency", "4"]].concat());
    assert_eq!(code, 3, "{}", p["warnings"]);
    let s = p["suggestions"].to_string();
    assert!(s.contains("--context") && s.contains("--concurrency"), "{s}");
    // The suggested context really fits.
    let ctx = s.split("--context ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap();
    assert_eq!(plan(&[&args[..], &["--context", ctx, "--concurrency", "4"]].concat()).0, 0);
    let n = s.split("--concurrency ").last().unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap();
    assert_eq!(plan(&[&args[..], &["--context", "65536", "--concurrency", n]].concat()).0, 0);
}

#[test]
fn save_writes_a_versioned_plan_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.toml");
    let out = run(&["plan", "deepseek-v3", "--profile", "HY70", "--save", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json = json_of(&out);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("format_version = 1\n"));
    let loaded = hy_planner::Plan::from_toml_str(&text).unwrap();
    assert_eq!(loaded.weights_bytes, json["weights_bytes"].as_u64().unwrap());
    assert_eq!(loaded.quant, json["quant"].as_str().unwrap());
    assert_eq!(loaded.model_reference, "deepseek-v3");
    assert_eq!(loaded.devices.len(), json["devices"].as_array().unwrap().len());
    let bumped = text.replace("format_version = 1\n", "format_version = 9\n");
    assert!(hy_planner::Plan::from_toml_str(&bumped).unwrap_err().to_string().contains("version 1"));
}

#[test]
fn compare_prints_profiles_by_quantizations() {
    let out = run(&["plan", "deepseek-r1", "--compare"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["HY90", "HY70", "HY50"] {
        assert!(text.lines().any(|l| l.starts_with(row)), "{text}");
    }
    assert!(text.contains("q4_k_m") && text.contains("fp8"));
    let out = run(&["plan", "deepseek-r1", "--compare", "--json", "--hardware", &example("epyc9654-rtx4090.toml")]);
    let cells = json_of(&out);
    let cells = cells.as_array().unwrap();
    let cell = |t: &str, q: &str| cells.iter().find(|c| c["target"] == t && c["quant"] == q).unwrap().clone();
    assert_eq!(cell("HY50", "fp8")["fits"], false);
    assert_eq!(cell("HY90", "fp8")["fits"], true);
    assert_eq!(cell("epyc9654-rtx4090.toml", "q4_k_m")["fits"], true);
    // More bandwidth, more speed, same model and quantization.
    assert!(
        cell("HY90", "q4_k_m")["decode_tokens_per_s"].as_f64() > cell("HY70", "q4_k_m")["decode_tokens_per_s"].as_f64()
    );
}

#[test]
fn calibration_file_and_flags_change_the_prediction() {
    let base = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m"]).1;
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("cal.toml");
    std::fs::write(&cal, "cpu_bandwidth_efficiency = 0.36\n").unwrap();
    let slow =
        plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m", "--calibration", cal.to_str().unwrap()]).1;
    let ms = |p: &Value| p["predicted"]["step"]["cpu_experts_ms"].as_f64().unwrap();
    // The streaming part of the experts' time (bytes at full bandwidth over the efficiency)
    // grows by 0.91/0.36; their arithmetic part stays.
    let bound = base["predicted"]["step"]["cpu_experts_bound_ms"].as_f64().unwrap();
    let want = bound * (1.0 / 0.36 - 1.0 / 0.91);
    assert!((ms(&slow) - ms(&base) - want).abs() < 1e-9, "{} {} {want}", ms(&slow), ms(&base));
    assert_eq!(slow["assumptions"]["cpu_bandwidth_efficiency"].as_f64(), Some(0.36));
    assert!(slow["assumptions_source"].as_str().unwrap().contains("cal.toml"));
    let flag = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m", "--cpu-bandwidth-efficiency", "0.36"]).1;
    assert!((ms(&flag) - ms(&slow)).abs() < 1e-9);
    std::fs::write(&cal, "cpu_bandwidth_efficiency = 3\n").unwrap();
    let out = run(&["plan", "deepseek-r1", "--profile", "HY90", "--calibration", cal.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpu_bandwidth_efficiency = 3"));
}

#[test]
fn measured_bandwidth_replaces_the_stream_assumption() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("hw.toml");
    let text = std::fs::read_to_string(example("epyc9654-rtx4090.toml")).unwrap();
    std::fs::write(&hw, format!("{text}\n[measured]\nread_gbps = 400.0\ntriad_gbps = 380.0\nthreads = 96\n")).unwrap();
    let (_, p) = plan(&["deepseek-r1", "--hardware", hw.to_str().unwrap(), "--quant", "q4_k_m"]);
    let cpu = &p["devices"][0];
    assert!((cpu["bandwidth_gbps"].as_f64().unwrap() - 400.0 * 0.91).abs() < 1e-9);
    assert!(!p["warnings"].to_string().contains("not measured"));
}

#[test]
fn hardware_files_plan_with_numa_policies() {
    let xeon = example("2x-xeon6454s-rtx4090d.toml");
    let (code, q4) = plan(&["deepseek-r1", "--hardware", &xeon, "--quant", "q4_k_m"]);
    assert_eq!(code, 0);
    assert_eq!(q4["numa"]["policy"], "replicate");
    assert_eq!(q4["numa"]["threads_per_node"], serde_json::json!([32, 32]));
    let (code, fp8) = plan(&["deepseek-r1", "--hardware", &xeon, "--quant", "fp8"]);
    assert_eq!(code, 0);
    assert_eq!(fp8["numa"]["policy"], "split");
    let (code, single) = plan(&["deepseek-r1", "--hardware", &example("epyc9654-rtx4090.toml"), "--quant", "q4_k_m"]);
    assert_eq!(code, 0);
    assert_eq!(single["numa"]["policy"], "single");
    assert_eq!(single["context"].as_u64().unwrap(), 32768, "default context without a profile");
}

#[test]
fn spare_vram_takes_whole_expert_layers() {
    let (_, p) = plan(&["qwen3-235b-a22b", "--profile", "HY90", "--quant", "q4_k_m", "--context", "8192"]);
    let layers = p["gpu_expert_layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    let gpu = p["devices"].as_array().unwrap().iter().find(|d| d["kind"] == "gpu").unwrap().clone();
    assert!(gpu["free_bytes"].as_i64().unwrap() >= 0);
    // The last layers go first.
    assert_eq!(layers.last().unwrap().as_u64(), Some(93));
}

#[test]
fn small_models_run_entirely_on_the_gpu() {
    let (code, p) = plan(&["qwen3-30b-a3b", "--profile", "HY90", "--quant", "q4_k_m", "--context", "32768"]);
    assert_eq!(code, 0);
    assert_eq!(p["mode"], "gpu");
    assert!(p["placement"].as_array().unwrap().iter().all(|x| x["device"] == "gpu0"));
}

#[test]
fn without_a_gpu_everything_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("nogpu.toml");
    let text = std::fs::read_to_string(example("2x-xeon6454s-rtx4090d.toml")).unwrap();
    let cut = text.find("[[gpus]]").unwrap();
    std::fs::write(&hw, &text[..cut]).unwrap();
    let (code, p) = plan(&["glm-4.5-air", "--hardware", hw.to_str().unwrap(), "--quant", "q8_0"]);
    assert_eq!(code, 0);
    assert_eq!(p["mode"], "cpu");
    assert!(p["devices"].as_array().unwrap().iter().all(|d| d["kind"] == "cpu"));
    assert!(p["placement"].as_array().unwrap().iter().all(|x| x["device"] == "cpu0+cpu1"));
    let kv: u64 = p["devices"].as_array().unwrap().iter().map(|d| d["kv_bytes"].as_u64().unwrap()).sum();
    assert_eq!(kv, p["kv_bytes"].as_u64().unwrap());
}

#[test]
fn hf_repo_ids_resolve_to_the_catalog() {
    let (code, p) = plan(&["deepseek-ai/DeepSeek-R1", "--profile", "HY90", "--quant", "q4_k_m"]);
    assert_eq!(code, 0);
    assert_eq!(p["model"], "deepseek-r1");
    let out = run(&["plan", "--list-models"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for m in [
        "deepseek-v3",
        "deepseek-r1",
        "kimi-k2",
        "qwen3-235b-a22b",
        "qwen3-30b-a3b",
        "glm-4.5",
        "glm-4.5-air",
        "gpt-oss-120b",
    ] {
        assert!(text.lines().any(|l| l.starts_with(m)), "{m}");
    }
}

#[test]
fn usage_and_input_errors_have_their_exit_codes() {
    let cases: [(&[&str], i32, &str); 9] = [
        (&["plan", "no-such-model", "--profile", "HY90"], 2, "unknown model 'no-such-model'"),
        (&["plan", "deepseek-r1", "--profile", "HY99"], 2, "unknown profile 'HY99'"),
        (&["plan", "deepseek-r1", "--profile", "HY90", "--quant", "q9"], 2, "unknown quantization 'q9'"),
        (&["plan", "gpt-oss-120b", "--profile", "HY90", "--quant", "q4_k_m"], 2, "not available as q4_k_m"),
        (&["plan", "deepseek-r1", "--profile", "HY90", "--context", "0"], 2, "at least 1"),
        (&["plan", "deepseek-r1", "--hardware", "/nonexistent/hw.toml"], 6, "cannot read hardware file"),
        (&["plan", "./missing.gguf", "--profile", "HY90"], 6, "no such file"),
        (&["plan", "deepseek-r1", "--profile", "HY90", "--numa", "sometimes"], 2, "unknown --numa 'sometimes'"),
        (&["plan", "deepseek-r1", "--profile", "HY90", "--context", "18446744073709551615"], 2, "context at most"),
    ];
    for (args, code, msg) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(msg),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "format_version = 7\n").unwrap();
    let out = run(&["plan", "deepseek-r1", "--hardware", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

#[test]
fn the_text_form_states_assumptions_and_bottleneck() {
    let out = run(&["plan", "deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "FITS",
        "Memory per device",
        "NUMA: replicate",
        "bottleneck:",
        "cpu_bandwidth_efficiency 0.91",
        "stream_efficiency 0.77",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    assert!(Path::new(&example("provision.sh")).exists());
}

#[test]
fn without_profile_or_hardware_it_plans_for_the_probed_machine() {
    let root = root().join("tests/fixtures/probe/dual-epyc");
    let out =
        hy().args(["plan", "deepseek-r1", "--quant", "q4_k_m", "--json"]).env("HY_PROBE_ROOT", &root).output().unwrap();
    let p = json_of(&out);
    assert_eq!(p["hardware"], "this machine (probed)");
    // The fixture is a dual-socket EPYC without a GPU: two CPU devices, everything on them.
    let kinds: Vec<&str> = p["devices"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cpu", "cpu"]);
    assert_eq!(p["mode"], "cpu");
    assert_eq!(p["numa"]["nodes"], 2);
}

#[test]
fn a_kv_cache_too_big_for_vram_splits_layers_between_gpu_and_cpu() {
    // 128K × 4 requests of DeepSeek KV cache is 36.8 GB: more than the 32 GB card.
    let (code, p) = plan(&["deepseek-r1", "--profile", "HY90", "--quant", "q4_k_m", "--concurrency", "4"]);
    assert_eq!(code, 0);
    assert_eq!(p["mode"], "partial");
    let kv: Vec<&Value> = p["placement"].as_array().unwrap().iter().filter(|x| x["component"] == "kv_cache").collect();
    assert_eq!(kv.len(), 2);
    assert_eq!(kv[0]["device"], "gpu0");
    assert_eq!(kv[0]["bytes"].as_u64().unwrap() + kv[1]["bytes"].as_u64().unwrap(), p["kv_bytes"].as_u64().unwrap());
    let gpu = p["devices"].as_array().unwrap().iter().find(|d| d["kind"] == "gpu").unwrap().clone();
    assert!(gpu["free_bytes"].as_i64().unwrap() >= 0);
    // Device totals hold every weight byte once (experts replicated per node count once).
    let cpu_kv: u64 = p["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "cpu")
        .map(|d| d["kv_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(cpu_kv + gpu["kv_bytes"].as_u64().unwrap(), p["kv_bytes"].as_u64().unwrap());
    assert!(p["warnings"].to_string().contains("run attention on the GPU"));
}
