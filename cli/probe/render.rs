//! The human-readable report: sections CPU / NUMA / Memory / GPUs / Bandwidth as aligned
//! key-value lines and tables, with notes saying what is unknown and why.

use std::fmt::Write as _;

use hy_planner::hardware::{CpuSpec, Dimm, HardwareSpec, MemorySpec};

use super::sysfs::format_cpulist;
use super::Notes;

pub fn report(spec: &HardwareSpec, notes: &Notes) -> String {
    let mut out = String::new();
    section(&mut out, "CPU", cpu_lines(&spec.cpu), &notes.cpu);
    out.push_str(&numa(spec, &notes.numa));
    out.push('\n');
    section(&mut out, "Memory", memory_lines(&spec.memory), &notes.memory);
    out.push_str(&dimm_table(&spec.memory.dimms));
    out.push_str(&gpus(spec, &notes.gpu));
    out.push_str(&bandwidth(spec, &notes.bandwidth));
    out
}

fn section(out: &mut String, title: &str, lines: Vec<(&str, String)>, notes: &[String]) {
    let _ = writeln!(out, "{title}");
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &lines {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    push_notes(out, notes);
}

fn push_notes(out: &mut String, notes: &[String]) {
    for n in notes {
        let _ = writeln!(out, "  note: {n}");
    }
}

/// Aligned columns, two spaces apart, indented by two.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut text = String::from(" ");
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(text, " {cell:<w$} ");
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn cpu_lines(cpu: &CpuSpec) -> Vec<(&'static str, String)> {
    let total_threads = cpu.sockets * cpu.threads_per_socket;
    let freq = match (cpu.base_mhz, cpu.max_mhz) {
        (None, None) => "unknown".to_string(),
        (b, m) => format!("base {}, max {}", mhz(b), mhz(m)),
    };
    vec![
        ("vendor", cpu.vendor.clone()),
        ("model", cpu.model_name.clone()),
        (
            "sockets",
            format!(
                "{} × {} cores, {} threads per socket ({} threads)",
                cpu.sockets, cpu.cores_per_socket, cpu.threads_per_socket, total_threads
            ),
        ),
        ("frequency", freq),
        ("vector", vector_features(cpu)),
        ("AMX", amx(cpu)),
        ("caches", caches(cpu)),
    ]
}

fn mhz(v: Option<f64>) -> String {
    v.map_or("unknown".into(), |v| format!("{v:.0} MHz"))
}

fn vector_features(cpu: &CpuSpec) -> String {
    let f = &cpu.features;
    let names = [
        (f.avx2, "AVX2"),
        (f.fma, "FMA"),
        (f.f16c, "F16C"),
        (f.avx_vnni, "AVX-VNNI"),
        (f.avx512f, "AVX-512F"),
        (f.avx512bw, "AVX-512BW"),
        (f.avx512vl, "AVX-512VL"),
        (f.avx512_vnni, "AVX-512VNNI"),
        (f.avx512_bf16, "AVX-512BF16"),
    ];
    let have: Vec<&str> = names.iter().filter(|(h, _)| *h).map(|(_, n)| *n).collect();
    if have.is_empty() {
        "none of AVX2/AVX-512 (scalar kernels only)".into()
    } else {
        have.join(" ")
    }
}

fn amx(cpu: &CpuSpec) -> String {
    let f = &cpu.features;
    let units: Vec<&str> = [(f.amx_tile, "tile"), (f.amx_int8, "int8"), (f.amx_bf16, "bf16")]
        .iter()
        .filter(|(h, _)| *h)
        .map(|(_, n)| *n)
        .collect();
    if units.is_empty() {
        return "none".into();
    }
    let permission = match f.amx_permitted {
        Some(true) => "permitted by the kernel",
        Some(false) => "NOT permitted by the kernel (needs Linux 5.16+ with XTILEDATA)",
        None => "kernel permission not checked",
    };
    format!("{}; {permission}", units.join(" "))
}

fn caches(cpu: &CpuSpec) -> String {
    if cpu.caches.is_empty() {
        return "unknown".into();
    }
    let threads = (cpu.sockets * cpu.threads_per_socket).max(1);
    cpu.caches
        .iter()
        .map(|c| {
            let suffix = match c.kind.as_str() {
                "data" => "d",
                "instruction" => "i",
                _ => "",
            };
            let count = c.shared_by_cpus.map(|s| threads.div_ceil(s.max(1)));
            let count = count.map_or(String::new(), |n| format!(" ×{n}"));
            format!("L{}{} {}{count}", c.level, suffix, bytes(c.size_bytes))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn numa(spec: &HardwareSpec, notes: &[String]) -> String {
    let mut out = String::from("\nNUMA\n");
    let rows: Vec<Vec<String>> = spec
        .numa_nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.socket.map_or("?".into(), |s| s.to_string()),
                format_cpulist(&n.cpus),
                bytes(n.memory_bytes),
                n.distances.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    out.push_str(&table(&["node", "socket", "cpus", "memory", "distances"], &rows));
    push_notes(&mut out, notes);
    out
}

fn memory_lines(m: &MemorySpec) -> Vec<(&'static str, String)> {
    let installed: u64 = m.dimms.iter().map(|d| d.size_bytes).sum();
    let mut total = format!("{} usable (/proc/meminfo)", bytes(m.total_bytes));
    if installed > 0 {
        let _ = write!(total, ", {} installed", bytes(installed));
    }
    let sockets = m.dimms.iter().filter_map(|d| d.socket).max().map_or(1, |s| s + 1);
    let channels = m.channels_per_socket.map_or("unknown".to_string(), |c| {
        format!("{c} populated per socket ({sockets} socket{})", if sockets == 1 { "" } else { "s" })
    });
    let theoretical = match (m.theoretical_bandwidth_gbps, m.mts) {
        (Some(gbps), Some(mts)) => {
            let ch = (gbps * 1000.0 / 8.0 / f64::from(mts)).round();
            format!("{gbps:.1} GB/s = {ch} channels × {mts} MT/s × 8 B")
        }
        _ => "unknown (needs channels and MT/s)".into(),
    };
    vec![
        ("total", total),
        ("DIMMs", dimm_summary(m)),
        ("channels", channels),
        ("speed", m.mts.map_or("unknown".into(), |v| format!("{v} MT/s"))),
        ("theoretical", theoretical),
    ]
}

/// "24 × 48 GiB DDR5 (from SMBIOS)"; groups of identical size and type.
fn dimm_summary(m: &MemorySpec) -> String {
    if m.dimms.is_empty() {
        return "unknown (see note)".into();
    }
    let mut groups: Vec<(u64, String, usize)> = Vec::new();
    for d in &m.dimms {
        let kind = d.memory_type.clone().unwrap_or_else(|| "type unknown".into());
        match groups.iter_mut().find(|(s, k, _)| *s == d.size_bytes && *k == kind) {
            Some(g) => g.2 += 1,
            None => groups.push((d.size_bytes, kind, 1)),
        }
    }
    let parts: Vec<String> = groups.iter().map(|(s, k, n)| format!("{n} × {} {k}", bytes(*s))).collect();
    format!("{} (from {})", parts.join(" + "), m.dimm_source.to_uppercase())
}

fn dimm_table(dimms: &[Dimm]) -> String {
    if dimms.is_empty() {
        return String::new();
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mts = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
    let rows: Vec<Vec<String>> = dimms
        .iter()
        .map(|d| {
            vec![
                d.locator.clone(),
                opt(&d.bank_locator),
                d.socket.map_or("?".into(), |s| s.to_string()),
                opt(&d.channel),
                bytes(d.size_bytes),
                opt(&d.memory_type),
                mts(d.speed_mts),
                mts(d.configured_mts),
                opt(&d.manufacturer),
                opt(&d.part_number),
            ]
        })
        .collect();
    let headers = ["slot", "bank", "socket", "channel", "size", "type", "MT/s", "configured", "maker", "part"];
    format!("\n{}", table(&headers, &rows))
}

fn gpus(spec: &HardwareSpec, notes: &[String]) -> String {
    let mut out = String::from("\nGPUs\n");
    if spec.gpus.is_empty() {
        if notes.is_empty() {
            out.push_str("  no NVIDIA GPU detected\n");
        }
        push_notes(&mut out, notes);
        return out;
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = spec
        .gpus
        .iter()
        .map(|g| {
            vec![
                g.index.to_string(),
                g.name.clone(),
                bytes(g.vram_total_bytes),
                g.vram_free_bytes.map_or_else(dash, bytes),
                g.memory_bus_width_bits.map_or_else(dash, |b| format!("{b} bit")),
                g.memory_clock_mhz.map_or_else(dash, |c| format!("{c} MHz")),
                g.bandwidth_gbps.map_or_else(dash, |b| format!("{b:.1} GB/s")),
                match (g.pcie_generation, g.pcie_width) {
                    (Some(gen), Some(w)) => format!("gen{gen} x{w}"),
                    _ => dash(),
                },
                g.compute_capability.clone().unwrap_or_else(dash),
                g.driver_version.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let headers = ["#", "name", "VRAM", "free", "bus", "mem clock", "bandwidth", "PCIe", "CC", "driver"];
    out.push_str(&table(&headers, &rows));
    push_notes(&mut out, notes);
    out
}

fn bandwidth(spec: &HardwareSpec, notes: &[String]) -> String {
    let mut out = String::from("\nBandwidth\n");
    let theory = spec.memory.theoretical_bandwidth_gbps;
    let Some(m) = &spec.measured else {
        let t = theory.map_or("unknown".into(), |t| format!("{t:.1} GB/s"));
        let _ = writeln!(out, "  theoretical {t}; measured: not run (use `hy probe --bench`)");
        push_notes(&mut out, notes);
        return out;
    };
    let nodes = spec.numa_nodes.len().max(1) as f64;
    let row = |scope: String, threads: u32, read: f64, triad: f64, theory: Option<f64>| {
        vec![
            scope,
            threads.to_string(),
            format!("{read:.1}"),
            format!("{triad:.1}"),
            theory.map_or("unknown".into(), |t| format!("{t:.1}")),
            theory.map_or("-".into(), |t| format!("{:.0}%", 100.0 * read / t)),
        ]
    };
    let mut rows: Vec<Vec<String>> = m
        .per_node
        .iter()
        .map(|n| row(format!("node {}", n.node), n.threads, n.read_gbps, n.triad_gbps, theory.map(|t| t / nodes)))
        .collect();
    rows.push(row("machine".into(), m.threads, m.read_gbps, m.triad_gbps, theory));
    let headers = ["scope", "threads", "read GB/s", "triad GB/s", "theoretical GB/s", "read/theoretical"];
    out.push_str(&table(&headers, &rows));
    push_notes(&mut out, notes);
    out
}

/// Binary units up to GiB: "48 GiB", "1152 GiB", "32 MiB" (DIMM totals stay exact).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(48 << 30), "48 GiB");
        assert_eq!(bytes(1152 << 30), "1152 GiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
    }

    #[test]
    fn bandwidth_rows_compare_with_theory_per_node() {
        use hy_planner::hardware::{MeasuredBandwidth, NodeBandwidth, NumaNode};
        let node = |id| NumaNode { id, cpus: vec![id], memory_bytes: 1, distances: vec![], socket: Some(id) };
        let spec = HardwareSpec {
            format_version: 1,
            name: None,
            cpu: CpuSpec::default(),
            numa_nodes: vec![node(0), node(1)],
            memory: MemorySpec { theoretical_bandwidth_gbps: Some(1228.8), mts: Some(6400), ..Default::default() },
            gpus: vec![],
            measured: Some(MeasuredBandwidth {
                read_gbps: 921.6,
                triad_gbps: 800.0,
                threads: 64,
                per_node: vec![NodeBandwidth { node: 1, threads: 32, read_gbps: 307.2, triad_gbps: 300.0 }],
            }),
        };
        let text = bandwidth(&spec, &[]);
        // Half the machine's theory per node: 614.4; 307.2 of it is 50%, 921.6 of 1228.8 is 75%.
        assert!(text.contains("node 1   32       307.2      300.0       614.4             50%"), "{text}");
        assert!(text.contains("machine  64       921.6      800.0       1228.8            75%"), "{text}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "  a    bb\n  xxx  y\n");
    }
}
