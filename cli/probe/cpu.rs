//! CPU: vendor, model, topology (sockets, cores, threads), frequency, vector features and
//! caches, from sysfs and /proc/cpuinfo, combined with live cpuid data when available.

use std::collections::{BTreeMap, BTreeSet};

use hy_planner::hardware::{CacheInfo, CpuFeatures, CpuSpec};

use super::sysfs::{parse_cpulist, parse_size_suffix, ProbeRoot};

const CPU_DIR: &str = "sys/devices/system/cpu";

/// What the cpuid instruction says about the CPU the probe runs on. Built by
/// [`super::cpuid::read_live`] on x86-64, or by hand in tests; `None` means "not read".
#[derive(Clone, Debug, Default)]
pub struct CpuidData {
    pub vendor: String,
    pub brand: String,
    pub features: CpuFeatures,
    pub caches: Vec<CacheInfo>,
    pub base_mhz: Option<f64>,
    pub max_mhz: Option<f64>,
}

/// One logical CPU's place in the machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogicalCpu {
    pub id: u32,
    pub package: u32,
    pub core: u32,
}

/// Logical CPUs with their packages; empty when the topology is unknown.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub cpus: Vec<LogicalCpu>,
}

impl Topology {
    pub fn package_of(&self, cpu: u32) -> Option<u32> {
        self.cpus.iter().find(|c| c.id == cpu).map(|c| c.package)
    }

    pub fn ids(&self) -> Vec<u32> {
        self.cpus.iter().map(|c| c.id).collect()
    }
}

/// /proc/cpuinfo as one key → value map per processor block.
pub fn read_cpuinfo(root: &ProbeRoot) -> Vec<BTreeMap<String, String>> {
    let Ok(text) = root.read_string("proc/cpuinfo") else {
        return Vec::new();
    };
    parse_cpuinfo(&text)
}

pub fn parse_cpuinfo(text: &str) -> Vec<BTreeMap<String, String>> {
    text.split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

pub fn probe(root: &ProbeRoot, cpuid: Option<&CpuidData>, notes: &mut Vec<String>) -> (CpuSpec, Topology) {
    let cpuinfo = read_cpuinfo(root);
    let first = cpuinfo.first();
    let field = |k: &str| first.and_then(|m| m.get(k)).cloned();
    let topology = topology(root, &cpuinfo, notes);
    let mut spec = CpuSpec {
        vendor: cpuid
            .map(|c| c.vendor.clone())
            .filter(|v| !v.is_empty())
            .or_else(|| field("vendor_id"))
            .unwrap_or_else(|| "unknown".into()),
        model_name: cpuid
            .map(|c| c.brand.clone())
            .filter(|b| !b.is_empty())
            .or_else(|| field("model name"))
            .unwrap_or_else(|| "unknown".into()),
        ..Default::default()
    };
    fill_counts(&mut spec, &topology, notes);
    fill_frequency(&mut spec, root, &topology, cpuid, notes);
    spec.features = match cpuid {
        Some(c) => c.features.clone(),
        None => match field("flags") {
            Some(flags) => features_from_flags(&flags),
            None => {
                notes.push(
                    "no cpuid and no flags line in /proc/cpuinfo: vector features unknown (shown as absent)".into(),
                );
                CpuFeatures::default()
            }
        },
    };
    spec.caches = sysfs_caches(root, &topology);
    if spec.caches.is_empty() {
        spec.caches = cpuid.map(|c| c.caches.clone()).unwrap_or_default();
    }
    (spec, topology)
}

/// sysfs topology (physical_package_id, core_id per online CPU), else cpuinfo's
/// "physical id"/"core id", else one socket with unknown SMT.
fn topology(root: &ProbeRoot, cpuinfo: &[BTreeMap<String, String>], notes: &mut Vec<String>) -> Topology {
    let ids = online_cpus(root);
    let from_sysfs: Vec<LogicalCpu> = ids
        .iter()
        .filter_map(|&id| {
            let dir = format!("{CPU_DIR}/cpu{id}/topology");
            // Some hypervisors report -1 for the package; treat as package 0.
            let package = root.read_i64(&format!("{dir}/physical_package_id"))?.max(0) as u32;
            let core = root.read_i64(&format!("{dir}/core_id"))?.max(0) as u32;
            Some(LogicalCpu { id, package, core })
        })
        .collect();
    if !from_sysfs.is_empty() && from_sysfs.len() == ids.len() {
        return Topology { cpus: from_sysfs };
    }
    let num = |m: &BTreeMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<u32>().ok());
    let from_cpuinfo: Option<Vec<LogicalCpu>> = cpuinfo
        .iter()
        .map(|m| {
            Some(LogicalCpu { id: num(m, "processor")?, package: num(m, "physical id")?, core: num(m, "core id")? })
        })
        .collect();
    if let Some(cpus) = from_cpuinfo.filter(|c| !c.is_empty()) {
        notes.push("topology from /proc/cpuinfo (sysfs topology not readable)".into());
        return Topology { cpus };
    }
    let count: Vec<u32> =
        if ids.is_empty() { cpuinfo.iter().filter_map(|m| num(m, "processor")).collect() } else { ids };
    notes.push(format!("CPU topology unknown; counting {} logical CPUs as cores of one socket", count.len()));
    Topology { cpus: count.iter().map(|&id| LogicalCpu { id, package: 0, core: id }).collect() }
}

/// Online CPU ids from `cpu/online`, else the `cpuN` directories.
pub fn online_cpus(root: &ProbeRoot) -> Vec<u32> {
    root.read_trimmed(&format!("{CPU_DIR}/online"))
        .and_then(|t| parse_cpulist(&t).ok())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| root.indexed_entries(CPU_DIR, "cpu"))
}

fn fill_counts(spec: &mut CpuSpec, topo: &Topology, notes: &mut Vec<String>) {
    let mut per_socket: BTreeMap<u32, (BTreeSet<u32>, u32)> = BTreeMap::new();
    for c in &topo.cpus {
        let entry = per_socket.entry(c.package).or_default();
        entry.0.insert(c.core);
        entry.1 += 1;
    }
    spec.sockets = per_socket.len() as u32;
    spec.cores_per_socket = per_socket.values().map(|(cores, _)| cores.len() as u32).max().unwrap_or(0);
    spec.threads_per_socket = per_socket.values().map(|(_, t)| *t).max().unwrap_or(0);
    let shapes: BTreeSet<(usize, u32)> = per_socket.values().map(|(c, t)| (c.len(), *t)).collect();
    if shapes.len() > 1 {
        notes.push("sockets have different numbers of online cores; per-socket counts show the largest".into());
    }
}

/// cpufreq (base_frequency, cpuinfo_max_freq; kHz), else cpuid leaf 0x16, else the
/// "@ 2.10GHz" in an Intel brand string.
fn fill_frequency(
    spec: &mut CpuSpec,
    root: &ProbeRoot,
    topo: &Topology,
    cpuid: Option<&CpuidData>,
    notes: &mut Vec<String>,
) {
    let first = topo.cpus.first().map_or(0, |c| c.id);
    let khz = |name: &str| {
        root.read_u64(&format!("{CPU_DIR}/cpu{first}/cpufreq/{name}")).filter(|&v| v > 0).map(|v| v as f64 / 1000.0)
    };
    spec.base_mhz = khz("base_frequency")
        .or_else(|| cpuid.and_then(|c| c.base_mhz))
        .or_else(|| brand_ghz(&spec.model_name).map(|g| g * 1000.0));
    spec.max_mhz = khz("cpuinfo_max_freq").or_else(|| cpuid.and_then(|c| c.max_mhz));
    if spec.base_mhz.is_none() && spec.max_mhz.is_none() {
        notes.push("CPU frequency unknown (no cpufreq in sysfs, typical of VMs)".into());
    }
}

/// "Intel(R) Xeon(R) Gold 6454S @ 2.20GHz" → 2.2.
fn brand_ghz(brand: &str) -> Option<f64> {
    let (_, rest) = brand.rsplit_once('@')?;
    rest.trim().strip_suffix("GHz")?.trim().parse().ok()
}

/// Linux /proc/cpuinfo flag names for the features the engine dispatches on.
pub fn features_from_flags(flags: &str) -> CpuFeatures {
    let set: BTreeSet<&str> = flags.split_whitespace().collect();
    let has = |f: &str| set.contains(f);
    CpuFeatures {
        avx2: has("avx2"),
        fma: has("fma"),
        f16c: has("f16c"),
        avx512f: has("avx512f"),
        avx512bw: has("avx512bw"),
        avx512vl: has("avx512vl"),
        avx512_vnni: has("avx512_vnni"),
        avx512_bf16: has("avx512_bf16"),
        avx_vnni: has("avx_vnni"),
        amx_tile: has("amx_tile"),
        amx_int8: has("amx_int8"),
        amx_bf16: has("amx_bf16"),
        amx_permitted: None,
    }
}

/// Caches of the first online CPU from sysfs `cache/index*`.
fn sysfs_caches(root: &ProbeRoot, topo: &Topology) -> Vec<CacheInfo> {
    let first = topo.cpus.first().map_or(0, |c| c.id);
    let dir = format!("{CPU_DIR}/cpu{first}/cache");
    root.indexed_entries(&dir, "index")
        .into_iter()
        .filter_map(|i| {
            let idx = format!("{dir}/index{i}");
            let level = root.read_u64(&format!("{idx}/level"))? as u8;
            let kind = root.read_trimmed(&format!("{idx}/type"))?.to_ascii_lowercase();
            let size_bytes = parse_size_suffix(&root.read_trimmed(&format!("{idx}/size"))?)?;
            let shared_by_cpus = root
                .read_trimmed(&format!("{idx}/shared_cpu_list"))
                .and_then(|l| parse_cpulist(&l).ok())
                .map(|c| c.len() as u32)
                .filter(|&n| n > 0);
            Some(CacheInfo { level, kind, size_bytes, shared_by_cpus })
        })
        .collect()
}

/// Total last-level cache of the machine: size × instances (logical CPUs ÷ CPUs sharing one).
pub fn total_llc_bytes(spec: &CpuSpec) -> Option<u64> {
    let llc = spec.caches.iter().filter(|c| c.kind != "instruction").max_by_key(|c| c.level)?;
    let threads = u64::from(spec.sockets * spec.threads_per_socket).max(1);
    let shared = u64::from(llc.shared_by_cpus.unwrap_or(1)).max(1);
    Some(llc.size_bytes * threads.div_ceil(shared).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_features() {
        let f = features_from_flags("fpu sse avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8");
        assert!(f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512_vnni);
        assert!(f.amx_tile && f.amx_int8 && !f.amx_bf16 && !f.avx512vl && !f.f16c);
    }

    #[test]
    fn brand_frequency() {
        assert_eq!(brand_ghz("Intel(R) Xeon(R) Gold 6454S @ 2.20GHz"), Some(2.2));
        assert_eq!(brand_ghz("AMD EPYC 9355 32-Core Processor"), None);
    }

    #[test]
    fn cpuinfo_blocks() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: a b\n\nprocessor\t: 1\n\n";
        let blocks = parse_cpuinfo(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["vendor_id"], "GenuineIntel");
        assert_eq!(blocks[1]["processor"], "1");
    }

    #[test]
    fn llc_total_counts_instances() {
        let spec = CpuSpec {
            sockets: 2,
            threads_per_socket: 64,
            caches: vec![
                CacheInfo { level: 1, kind: "data".into(), size_bytes: 48 << 10, shared_by_cpus: Some(2) },
                CacheInfo { level: 3, kind: "unified".into(), size_bytes: 32 << 20, shared_by_cpus: Some(16) },
            ],
            ..Default::default()
        };
        // 128 threads / 16 per L3 = 8 instances × 32 MiB.
        assert_eq!(total_llc_bytes(&spec), Some(256 << 20));
    }
}
