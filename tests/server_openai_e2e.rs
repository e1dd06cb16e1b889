//! Runs tests/openai_e2e.py (the official `openai` Python client against `hy run` on the tiny
//! Llama fixture) as part of `cargo test`. Needs a Python with `openai` installed, named by
//! HY_TEST_PYTHON (scripts/test and .ci/server-e2e.sh create work-local/venv for it); without
//! it the test says so and returns.

use std::process::Command;

#[test]
fn openai_python_client_drives_hy_run() {
    let Ok(python) = std::env::var("HY_TEST_PYTHON") else {
        eprintln!("skipped: set HY_TEST_PYTHON to a python with `openai` installed (scripts/test does)");
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(&python)
        .arg(format!("{root}/tests/openai_e2e.py"))
        .arg(env!("CARGO_BIN_EXE_hy"))
        .arg(format!("{root}/tests/fixtures/tiny-llama/gguf/tiny-llama-Q8_0.gguf"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(status.success(), "tests/openai_e2e.py failed ({status}); its output is above");
}
