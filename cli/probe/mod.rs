//! Machine probing: sysfs, cpuid, SMBIOS, NVML, bandwidth.
//!
//! Every file is read through a [`ProbeRoot`] ("/" live, a fixture tree in tests). The live
//! sources that do not come from files (cpuid, NVML) are switched by [`ProbeOptions`], so a
//! probe of a fixture tree is fully determined by the tree.

pub mod bandwidth;
pub mod cpu;
mod cpuid;
mod gpu;
pub mod memory;
mod numa;
pub mod render;
mod smbios;
pub mod sysfs;

use hy_planner::hardware::{HardwareSpec, HARDWARE_FORMAT_VERSION};

pub use sysfs::ProbeRoot;

pub struct ProbeOptions {
    pub root: ProbeRoot,
    /// Read cpuid on the running CPU (vendor, brand, features, AMX permission).
    pub cpuid: bool,
    /// Ask NVML for GPUs.
    pub gpu: bool,
}

impl ProbeOptions {
    /// Everything live, from "/".
    pub fn live() -> Self {
        ProbeOptions { root: ProbeRoot::new("/"), cpuid: true, gpu: true }
    }
}

/// Notes per report section: what is unknown, why, and what was assumed.
#[derive(Default, Debug)]
pub struct Notes {
    pub cpu: Vec<String>,
    pub numa: Vec<String>,
    pub memory: Vec<String>,
    pub gpu: Vec<String>,
    pub bandwidth: Vec<String>,
}

pub struct Probe {
    pub spec: HardwareSpec,
    pub notes: Notes,
}

/// Reads the machine. Never fails: whatever cannot be read is reported as unknown with a
/// note, because an incomplete description (a VM, no root) is a normal result.
pub fn probe(opts: &ProbeOptions) -> Probe {
    let mut notes = Notes::default();
    let live_cpuid = if opts.cpuid { cpuid::read_live() } else { None };
    let spec = probe_with(opts, live_cpuid.as_ref(), &mut notes);
    Probe { spec, notes }
}

/// The probe with an explicit cpuid source (tests inject one).
fn probe_with(opts: &ProbeOptions, cpuid: Option<&cpu::CpuidData>, notes: &mut Notes) -> HardwareSpec {
    let root = &opts.root;
    let (cpu, topo) = cpu::probe(root, cpuid, &mut notes.cpu);
    let memory = memory::probe(root, cpu.sockets, &mut notes.memory);
    let numa_nodes = numa::probe(root, &topo, memory.total_bytes, &mut notes.numa);
    let gpus = if opts.gpu {
        match gpu::probe() {
            gpu::GpuProbe::Found(gpus) => gpus,
            gpu::GpuProbe::None(why) => {
                notes.gpu.push(why);
                Vec::new()
            }
        }
    } else {
        notes.gpu.push("GPU probe skipped (--no-gpu, or --root without live sources)".into());
        Vec::new()
    };
    let name = describe(root, &cpu, &gpus);
    HardwareSpec {
        format_version: HARDWARE_FORMAT_VERSION,
        name: Some(name),
        cpu,
        numa_nodes,
        memory,
        gpus,
        measured: None,
    }
}

/// "host: 2 × AMD EPYC 9355 32-Core Processor + NVIDIA H200".
fn describe(root: &ProbeRoot, cpu: &hy_planner::hardware::CpuSpec, gpus: &[hy_planner::hardware::GpuSpec]) -> String {
    let mut text = format!("{} × {}", cpu.sockets, cpu.model_name);
    for g in gpus {
        text.push_str(&format!(" + {}", g.name));
    }
    match root.read_trimmed("proc/sys/kernel/hostname") {
        Some(host) => format!("{host}: {text}"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hy_planner::hardware::CpuFeatures;

    #[test]
    fn injected_cpuid_overrides_cpuinfo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fake\nflags\t: avx2\n",
        )
        .unwrap();
        let opts = ProbeOptions { root: ProbeRoot::new(dir.path()), cpuid: false, gpu: false };
        let injected = cpu::CpuidData {
            vendor: "AuthenticAMD".into(),
            brand: "Injected EPYC".into(),
            features: CpuFeatures { avx512f: true, ..Default::default() },
            base_mhz: Some(2000.0),
            ..Default::default()
        };
        let mut notes = Notes::default();
        let spec = probe_with(&opts, Some(&injected), &mut notes);
        assert_eq!(spec.cpu.vendor, "AuthenticAMD");
        assert_eq!(spec.cpu.model_name, "Injected EPYC");
        assert!(spec.cpu.features.avx512f && !spec.cpu.features.avx2);
        assert_eq!(spec.cpu.base_mhz, Some(2000.0));
        // No topology anywhere but the one cpuinfo block: one socket, one CPU.
        assert_eq!((spec.cpu.sockets, spec.cpu.threads_per_socket), (1, 1));
        assert_eq!(spec.numa_nodes.len(), 1);
        assert_eq!(spec.memory.dimm_source, "unknown");
    }
}
