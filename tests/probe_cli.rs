//! End-to-end tests of `hy probe`: the built binary on fixture machines
//! (tests/fixtures/probe/, written by generate.py there) and on the machine running the tests.
//! Expected figures come from the fixtures' design (what generate.py put in), not from the
//! probe's code.

use std::path::PathBuf;
use std::process::{Command, Output};

use hy_planner::hardware::HardwareSpec;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe").join(name)
}

fn hy(args: &[&str]) -> Output {
    hy_env(args, &[])
}

fn hy_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hy"));
    cmd.args(args).env_remove("HY_PROBE_ROOT").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running hy")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn probe_json(name: &str) -> HardwareSpec {
    let root = fixture(name);
    let text = stdout(&hy(&["probe", "--root", root.to_str().unwrap(), "--json"]));
    serde_json::from_str(&text).expect("probe --json parses as HardwareSpec")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn dual_socket_epyc() {
    let hw = probe_json("dual-epyc");
    assert_eq!(hw.format_version, 1);
    assert_eq!(hw.name.as_deref(), Some("hy90-ref: 2 × AMD EPYC 9355 32-Core Processor"));
    let cpu = &hw.cpu;
    assert_eq!(cpu.vendor, "AuthenticAMD");
    assert_eq!(cpu.model_name, "AMD EPYC 9355 32-Core Processor");
    assert_eq!((cpu.sockets, cpu.cores_per_socket, cpu.threads_per_socket), (2, 32, 64));
    assert_eq!((cpu.base_mhz, cpu.max_mhz), (None, Some(4400.0)));
    let f = &cpu.features;
    assert!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl);
    assert!(f.avx512_vnni && f.avx512_bf16 && f.avx_vnni);
    assert!(!f.amx_tile && !f.amx_int8 && !f.amx_bf16 && f.amx_permitted.is_none());
    let l3 = cpu.caches.iter().find(|c| c.level == 3).expect("L3");
    assert_eq!((l3.size_bytes, l3.shared_by_cpus), (32 << 20, Some(16)));
    assert_eq!(cpu.caches.len(), 4);

    assert_eq!(hw.numa_nodes.len(), 2);
    let n1 = &hw.numa_nodes[1];
    assert_eq!(n1.cpus.len(), 64);
    assert!(n1.cpus.contains(&32) && n1.cpus.contains(&127) && !n1.cpus.contains(&64));
    assert_eq!(n1.socket, Some(1));
    assert_eq!(n1.distances, vec![32, 10]);
    assert_eq!(n1.memory_bytes, 593271808 * 1024);

    let m = &hw.memory;
    assert_eq!(m.total_bytes, 1186543616 * 1024);
    assert_eq!(m.dimm_source, "smbios");
    assert_eq!(m.dimms.len(), 24);
    assert!(m.dimms.iter().all(|d| d.size_bytes == 48 << 30
        && d.memory_type.as_deref() == Some("DDR5")
        && d.speed_mts == Some(6400)
        && d.configured_mts == Some(6400)
        && d.manufacturer.as_deref() == Some("Samsung")
        && d.part_number.as_deref() == Some("M321R6GA0PB2-CCPKC")));
    assert_eq!(m.dimms.iter().filter(|d| d.socket == Some(1)).count(), 12);
    assert_eq!(m.dimms[13].bank_locator.as_deref(), Some("P1 CHANNEL B"));
    assert_eq!(m.dimms[13].channel.as_deref(), Some("B"));
    assert_eq!(m.channels_per_socket, Some(12));
    assert_eq!(m.mts, Some(6400));
    // 24 channels × 6400 MT/s × 8 B (the DESIGN.md figure).
    assert!(close(m.theoretical_bandwidth_gbps.unwrap(), 1228.8));
    assert!(hw.gpus.is_empty());
    assert!(hw.measured.is_none());
}

#[test]
fn single_socket_xeon_with_amx_and_empty_slots() {
    let hw = probe_json("single-xeon");
    let cpu = &hw.cpu;
    assert_eq!(cpu.vendor, "GenuineIntel");
    assert_eq!((cpu.sockets, cpu.cores_per_socket, cpu.threads_per_socket), (1, 56, 112));
    assert_eq!((cpu.base_mhz, cpu.max_mhz), (Some(2000.0), Some(3800.0)));
    let f = &cpu.features;
    assert!(f.amx_tile && f.amx_int8 && f.amx_bf16 && f.avx512_bf16);
    // No live cpuid on a fixture: the kernel's permission cannot be checked.
    assert_eq!(f.amx_permitted, None);
    assert_eq!(hw.numa_nodes.len(), 1);
    assert_eq!(hw.numa_nodes[0].cpus.len(), 112);
    let m = &hw.memory;
    // SMBIOS wins over the EDAC entry that is also present; the 8 empty slots are skipped.
    assert_eq!(m.dimm_source, "smbios");
    assert_eq!(m.dimms.len(), 8);
    assert!(m.dimms.iter().all(|d| d.size_bytes == 64 << 30 && d.speed_mts == Some(5600)));
    let channels: Vec<&str> = m.dimms.iter().filter_map(|d| d.channel.as_deref()).collect();
    assert_eq!(channels, ["A", "B", "C", "D", "E", "F", "G", "H"]);
    // The configured rate (4800), not the DIMMs' rated 5600: 8 × 4800 × 8 B = 307.2 GB/s.
    assert_eq!((m.channels_per_socket, m.mts), (Some(8), Some(4800)));
    assert!(close(m.theoretical_bandwidth_gbps.unwrap(), 307.2));
}

#[test]
fn vm_without_dmi_reports_unknown_memory() {
    let hw = probe_json("vm-nodmi");
    assert_eq!((hw.cpu.sockets, hw.cpu.cores_per_socket, hw.cpu.threads_per_socket), (1, 8, 8));
    assert_eq!((hw.cpu.base_mhz, hw.cpu.max_mhz), (None, None));
    assert!(hw.cpu.features.avx512f && !hw.cpu.features.amx_tile);
    let m = &hw.memory;
    assert_eq!(m.total_bytes, 32857000 * 1024);
    assert_eq!(m.dimm_source, "unknown");
    assert!(m.dimms.is_empty());
    assert_eq!((m.channels_per_socket, m.mts, m.theoretical_bandwidth_gbps), (None, None, None));
    // No node directory: one node with every CPU and all memory.
    assert_eq!(hw.numa_nodes.len(), 1);
    assert_eq!(hw.numa_nodes[0].cpus, (0..8).collect::<Vec<u32>>());
    assert_eq!(hw.numa_nodes[0].memory_bytes, m.total_bytes);

    let root = fixture("vm-nodmi");
    // With --json the notes go to stderr, so scripts see why fields are null.
    let out = hy(&["probe", "--root", root.to_str().unwrap(), "--json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: DIMMs unknown"));
    let table = stdout(&hy(&["probe", "--root", root.to_str().unwrap()]));
    assert!(table.contains("no SMBIOS table"), "{table}");
    assert!(table.contains("hy plan"), "the note must say how planning is affected:\n{table}");
    assert!(table.contains("theoretical  unknown"), "{table}");
    assert!(table.contains("frequency  unknown"), "{table}");
}

#[test]
fn table_has_every_section_and_the_derived_figures() {
    let root = fixture("dual-epyc");
    let table = stdout(&hy(&["probe", "--root", root.to_str().unwrap()]));
    for section in ["CPU\n", "\nNUMA\n", "\nMemory\n", "\nGPUs\n", "\nBandwidth\n"] {
        assert!(table.contains(section), "missing {section:?}:\n{table}");
    }
    for text in [
        "2 × 32 cores, 64 threads per socket (128 threads)",
        "24 × 48 GiB DDR5 (from SMBIOS)",
        "12 populated per socket (2 sockets)",
        "1228.8 GB/s = 24 channels × 6400 MT/s × 8 B",
        "0-31,64-95",
        "L3 32 MiB ×8",
        "GPU probe skipped",
        "measured: not run",
    ] {
        assert!(table.contains(text), "missing {text:?}:\n{table}");
    }
}

#[test]
fn env_root_works_like_the_flag() {
    let root = fixture("single-xeon");
    let out = hy_env(&["probe", "--json"], &[("HY_PROBE_ROOT", root.to_str().unwrap())]);
    let hw: HardwareSpec = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(hw.cpu.cores_per_socket, 56);
}

#[test]
fn saved_hardware_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["dual-epyc", "single-xeon", "vm-nodmi"] {
        let file = dir.path().join(format!("{name}.toml"));
        let root = fixture(name);
        let out = hy(&["probe", "--root", root.to_str().unwrap(), "--json", "--save", file.to_str().unwrap()]);
        let from_json: HardwareSpec = serde_json::from_str(&stdout(&out)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# hy hardware file"), "{text}");
        assert!(text.contains("format_version = 1"), "{text}");
        let from_toml: HardwareSpec = toml::from_str(&text).expect("saved file parses");
        assert_eq!(from_toml, from_json, "{name}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let root = fixture("dual-epyc");
    let root = root.to_str().unwrap();
    for args in [
        vec!["probe", "--bogus"],
        vec!["probe", "--root", "/nonexistent/hy-probe-root"],
        vec!["probe", "--root", root, "--bench"],
        vec!["probe", "--bench", "--bench-threads", "0"],
        vec!["probe", "--bench-threads", "2"],
    ] {
        let out = hy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty(), "{args:?} must explain itself on stderr");
    }
}

#[test]
fn unwritable_save_path_is_an_error_not_a_panic() {
    let root = fixture("vm-nodmi");
    let out = hy(&["probe", "--root", root.to_str().unwrap(), "--save", "/nonexistent-dir/hw.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-dir/hw.toml"), "{err}");
}

#[cfg(target_os = "linux")]
mod live {
    use super::*;

    fn meminfo_total() -> u64 {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    #[test]
    fn probes_this_machine() {
        let out = hy(&["probe", "--json", "--no-gpu"]);
        let hw: HardwareSpec = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(hw.memory.total_bytes, meminfo_total());
        let threads = hw.cpu.sockets * hw.cpu.threads_per_socket;
        let cpus: usize = hw.numa_nodes.iter().map(|n| n.cpus.len()).sum();
        assert!(threads >= 1 && cpus as u32 >= threads, "{threads} threads, {cpus} node CPUs");
    }

    #[test]
    fn missing_nvml_means_no_gpu_not_an_error() {
        let env = [("HY_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1")];
        let table = stdout(&hy_env(&["probe"], &env));
        assert!(table.contains("no NVIDIA GPU detected"), "{table}");
        let hw: HardwareSpec = serde_json::from_str(&stdout(&hy_env(&["probe", "--json"], &env))).unwrap();
        assert!(hw.gpus.is_empty());
    }

    #[test]
    fn bench_reports_per_node_and_machine_bandwidth() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hw.toml");
        let args = [
            "probe",
            "--json",
            "--no-gpu",
            "--bench",
            "--bench-mib",
            "4",
            "--bench-reps",
            "1",
            "--bench-threads",
            "1",
            "--save",
            file.to_str().unwrap(),
        ];
        let hw: HardwareSpec = serde_json::from_str(&stdout(&hy(&args))).unwrap();
        let m = hw.measured.clone().expect("--bench fills measured");
        assert_eq!(m.per_node.len(), hw.numa_nodes.iter().filter(|n| !n.cpus.is_empty()).count());
        assert!(m.per_node.iter().all(|n| n.threads == 1 && n.read_gbps > 0.0 && n.triad_gbps > 0.0));
        assert!(m.read_gbps > 0.0 && m.triad_gbps > 0.0);
        assert_eq!(m.threads as usize, m.per_node.len());
        // The measured section survives the TOML hardware file too.
        let saved: HardwareSpec = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(saved, hw);
    }
}
