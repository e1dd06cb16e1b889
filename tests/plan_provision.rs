//! examples/provision.sh: decides with `hy plan --json`, then launches `hy run --plan`
//! (DRY_RUN=1 prints the command instead).

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn provision(args: &[&str], env: &[(&str, &str)], plan: &std::path::Path) -> Output {
    let mut c = Command::new("bash");
    c.arg(root().join("examples/provision.sh"))
        .args(args)
        .env("HY", env!("CARGO_BIN_EXE_hy"))
        .env("HY_PROFILE_DIR", "/nonexistent-hy-profiles")
        .env("DRY_RUN", "1")
        .env("PLAN", plan);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn example(name: &str) -> String {
    root().join("examples").join(name).to_str().unwrap().to_string()
}

#[test]
fn provisions_from_a_hardware_file() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let out = provision(&["deepseek-r1", &example("2x-xeon6454s-rtx4090d.toml"), "--", "--port", "9001"], &[], &plan);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let plan_arg = plan.to_str().unwrap();
    let saved = hy_planner::Plan::from_toml_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert!(saved.fits);
    assert_eq!(saved.model_reference, "deepseek-r1");
    // A catalog model is fetched at the planned quantization.
    let want = format!("run --plan {plan_arg} --quant {} --context 32768 --max-concurrency 1 --port 9001", saved.quant);
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stderr.contains(&format!("deepseek-r1 at {}", saved.quant)), "{stderr}");
}

#[test]
fn halves_the_context_until_the_model_fits() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    // 4M tokens × 2 requests of Qwen3-30B KV cache (825 GB) fit neither VRAM nor RAM; less does.
    let out = provision(
        &["qwen3-30b-a3b", &example("epyc9654-rtx4090.toml")],
        &[("CONTEXT", "4194304"), ("CONCURRENCY", "2")],
        &plan,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("does not fit at context 4194304; trying 2097152"), "{stderr}");
    let saved = hy_planner::Plan::from_toml_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert!(saved.context < 4194304 && saved.fits);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("--context {}", saved.context)));
}

#[test]
fn gives_up_with_exit_3_when_nothing_fits() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("small.toml");
    let text = std::fs::read_to_string(example("epyc9654-rtx4090.toml")).unwrap();
    std::fs::write(&hw, text.replace("total_bytes = 824633720832", "total_bytes = 68719476736")).unwrap();
    let out = provision(&["deepseek-r1", hw.to_str().unwrap()], &[], &dir.path().join("p.toml"));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
    assert!(out.stdout.is_empty(), "no run command is printed");
}

#[test]
fn usage_without_arguments() {
    let out = provision(&[], &[], &PathBuf::from("/tmp/unused.toml"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_local_model_is_run_from_its_plan_without_a_quant() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let gguf = root().join("tests/fixtures/tiny-qwen3-moe/gguf/tiny-qwen3-moe-Q8_0.gguf");
    let out = provision(&[gguf.to_str().unwrap(), &example("epyc9654-rtx4090.toml")], &[("CONTEXT", "4096")], &plan);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("run --plan {} --context 4096", plan.display())), "{stdout}");
    assert!(!stdout.contains("--quant"));
    let saved = hy_planner::Plan::from_toml_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(saved.model_reference, gguf.to_str().unwrap());
    assert!(saved.exact_sizes);
}
