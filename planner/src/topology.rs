//! What follows from a `HardwareSpec` for planning: NUMA nodes with memory, cores and
//! bandwidth; GPUs with VRAM, bandwidth, PCIe and FLOP/s. Unknown values get stated
//! assumptions (returned in `notes`), never silent guesses.

use crate::cost::Efficiency;
use crate::hardware::{HardwareSpec, HARDWARE_FORMAT_VERSION};
use crate::PlanError;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One NUMA node as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuNode {
    pub id: u32,
    pub memory_bytes: u64,
    /// Physical cores on the node (one compute thread each).
    pub cores: u32,
    /// Theoretical bandwidth of the node's channels, GB/s.
    pub theoretical_gbps: f64,
    /// Measured read bandwidth, or theoretical × stream_efficiency, GB/s.
    pub bandwidth_gbps: f64,
}

/// One GPU as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub vram_bytes: u64,
    pub bandwidth_gbps: f64,
    /// Host link rate, GB/s (before pcie_efficiency).
    pub pcie_gbps: f64,
    /// Peak dense FP16/BF16 tensor TFLOP/s.
    pub tflops: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub nodes: Vec<CpuNode>,
    pub gpus: Vec<GpuInfo>,
    pub memory_total_bytes: u64,
    /// Whole-machine theoretical bandwidth, GB/s.
    pub theoretical_gbps: f64,
    /// Whether bandwidth figures are measured (`hy probe --bench`) or derived.
    pub bandwidth_measured: bool,
    /// Peak CPU TFLOP/s (cores × clock × FLOP/cycle from vector features).
    pub cpu_tflops: f64,
    /// Whether the engine keeps the attention and dense matrices in its 16-row layout here
    /// (AVX-512 VNNI without AMX: the loader repacks them, see `engine/src/kernels/x16`). Its
    /// kernels cost barely more for a few tokens than for one, so a small batch's products of
    /// those matrices hide under their streaming instead of adding to it.
    pub cpu_layer_matrices_repacked: bool,
    /// Assumptions made for unknown values, one sentence each.
    pub notes: Vec<String>,
}

impl Topology {
    pub fn cpu_bandwidth_gbps(&self) -> f64 {
        self.nodes.iter().map(|n| n.bandwidth_gbps).sum()
    }

    pub fn cores(&self) -> u32 {
        self.nodes.iter().map(|n| n.cores).sum()
    }
}

/// Parses and checks a hardware file (versioned TOML).
pub fn parse_hardware_toml(text: &str) -> Result<HardwareSpec, PlanError> {
    let hw: HardwareSpec = toml::from_str(text).map_err(|e| PlanError::InvalidHardware(e.to_string()))?;
    check_hardware(&hw)?;
    Ok(hw)
}

/// Semantic checks of a hardware description.
pub fn check_hardware(hw: &HardwareSpec) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::InvalidHardware(m));
    if hw.format_version != HARDWARE_FORMAT_VERSION {
        return bad(format!("format_version = {}: this hy reads version {HARDWARE_FORMAT_VERSION}", hw.format_version));
    }
    if hw.cpu.sockets == 0 || hw.cpu.cores_per_socket == 0 {
        return bad("cpu.sockets and cpu.cores_per_socket must be at least 1".into());
    }
    if hw.memory.total_bytes == 0 {
        return bad("memory.total_bytes must be greater than 0".into());
    }
    for g in &hw.gpus {
        if g.vram_total_bytes == 0 {
            return bad(format!("gpus[{}] ({}): vram_total_bytes must be greater than 0", g.index, g.name));
        }
    }
    Ok(())
}

/// Derives the planner's view of a machine.
pub fn topology(hw: &HardwareSpec, eff: &Efficiency) -> Topology {
    let mut notes = Vec::new();
    let theoretical = theoretical_bandwidth(hw, &mut notes);
    let nodes = cpu_nodes(hw, eff, theoretical, &mut notes);
    let gpus = hw.gpus.iter().map(|g| gpu_info(g, &mut notes)).collect();
    let cpu_tflops = cpu_peak_tflops(hw, eff, &mut notes);
    Topology {
        bandwidth_measured: hw.measured.is_some(),
        nodes,
        gpus,
        memory_total_bytes: hw.memory.total_bytes,
        theoretical_gbps: theoretical,
        cpu_tflops,
        cpu_layer_matrices_repacked: layer_matrices_repacked(&hw.cpu.features),
        notes,
    }
}

/// The engine's rule for repacking layer matrices (`x16::prompt_tiles` false on a VNNI CPU):
/// with usable AMX tiles they stay row-major, for the tiles to take prompts.
fn layer_matrices_repacked(f: &crate::hardware::CpuFeatures) -> bool {
    let amx = f.amx_tile && f.amx_bf16 && f.avx512_bf16 && f.amx_permitted != Some(false);
    f.avx512f && f.avx512_vnni && f.avx512bw && f.avx512vl && !amx
}

/// channels × MT/s × 8 B over all sockets, from whatever the file states.
fn theoretical_bandwidth(hw: &HardwareSpec, notes: &mut Vec<String>) -> f64 {
    let m = &hw.memory;
    if let Some(bw) = m.theoretical_bandwidth_gbps.filter(|b| *b > 0.0) {
        return bw;
    }
    let sockets = hw.cpu.sockets.max(1) as f64;
    let dimm_mts = m.dimms.iter().filter_map(|d| d.configured_mts.or(d.speed_mts)).min();
    let mts = m.mts.or(dimm_mts);
    let channels = m.channels_per_socket.or_else(|| {
        // One DIMM per channel assumed when only the DIMM list is known (max 12 per socket).
        (!m.dimms.is_empty()).then(|| ((m.dimms.len() as f64 / sockets).ceil() as u32).min(12))
    });
    match (channels, mts) {
        (Some(c), Some(t)) => c as f64 * sockets * t as f64 * 8.0 / 1000.0,
        _ => {
            let bw = 8.0 * sockets * 3200.0 * 8.0 / 1000.0;
            notes.push(format!(
                "memory channels/speed unknown: assumed 8 channels of DDR4-3200 per socket ({bw:.1} GB/s); \
                 state them in the hardware file or run `hy probe --bench`"
            ));
            bw
        }
    }
}

fn cpu_nodes(hw: &HardwareSpec, eff: &Efficiency, theoretical: f64, notes: &mut Vec<String>) -> Vec<CpuNode> {
    let total_cores = hw.cpu.sockets.max(1) * hw.cpu.cores_per_socket.max(1);
    let described: Vec<(u32, u64)> =
        hw.numa_nodes.iter().filter(|n| n.memory_bytes > 0).map(|n| (n.id, n.memory_bytes)).collect();
    let layout: Vec<(u32, u64)> = if described.is_empty() {
        let s = hw.cpu.sockets.max(1) as u64;
        (0..s).map(|i| (i as u32, hw.memory.total_bytes / s)).collect()
    } else {
        described
    };
    let n = layout.len() as u32;
    let measured = hw.measured.as_ref();
    if measured.is_none() {
        notes.push(format!(
            "memory bandwidth not measured: using theoretical × stream_efficiency {:.2}",
            eff.stream_efficiency
        ));
    }
    let share = 1.0 / n as f64;
    layout
        .iter()
        .enumerate()
        .map(|(i, (id, mem))| {
            let node_theory = theoretical * share;
            let bw = match measured {
                Some(m) => {
                    m.per_node.iter().find(|x| x.node == *id).map(|x| x.read_gbps).unwrap_or(m.read_gbps * share)
                }
                None => node_theory * eff.stream_efficiency,
            };
            let cores = total_cores / n + u32::from((i as u32) < total_cores % n);
            CpuNode { id: *id, memory_bytes: *mem, cores, theoretical_gbps: node_theory, bandwidth_gbps: bw }
        })
        .collect()
}

/// Known GPUs: (name fragment, bandwidth GB/s, dense FP16 tensor TFLOP/s, PCIe generation).
const GPU_TABLE: [(&str, f64, f64, u32); 12] = [
    ("5090", 1792.0, 209.0, 5),
    ("4090", 1008.0, 165.0, 4),
    ("3090", 936.0, 71.0, 4),
    ("RTX PRO 6000", 1792.0, 250.0, 5),
    ("RTX 6000 Ada", 960.0, 364.0, 4),
    ("L40S", 864.0, 362.0, 4),
    ("A100", 2039.0, 312.0, 4),
    ("H100", 3350.0, 989.0, 5),
    ("H200", 4800.0, 989.0, 5),
    ("A6000", 768.0, 155.0, 4),
    ("5080", 960.0, 113.0, 5),
    ("4080", 717.0, 97.0, 4),
];

fn gpu_info(g: &crate::hardware::GpuSpec, notes: &mut Vec<String>) -> GpuInfo {
    let known = GPU_TABLE.iter().find(|(frag, ..)| g.name.contains(frag));
    let bw = g
        .bandwidth_gbps
        .filter(|b| *b > 0.0)
        .or_else(|| match (g.memory_clock_mhz, g.memory_bus_width_bits) {
            (Some(c), Some(w)) if c > 0 && w > 0 => Some(2.0 * c as f64 * w as f64 / 8.0 / 1000.0),
            _ => None,
        })
        .or(known.map(|k| k.1))
        .unwrap_or_else(|| {
            notes.push(format!("GPU {} bandwidth unknown: assumed 500 GB/s", g.name));
            500.0
        });
    let tflops = known.map(|k| k.2).unwrap_or_else(|| {
        notes.push(format!("GPU {} FLOP/s unknown: assumed 100 TFLOP/s", g.name));
        100.0
    });
    let gen = g.pcie_generation.or(known.map(|k| k.3)).unwrap_or_else(|| {
        notes.push(format!("GPU {} PCIe generation unknown: assumed 4", g.name));
        4
    });
    let width = g.pcie_width.unwrap_or(16);
    let per_lane = match gen {
        0..=3 => 0.985,
        4 => 1.969,
        _ => 3.938,
    };
    GpuInfo {
        index: g.index,
        name: g.name.clone(),
        vram_bytes: g.vram_total_bytes,
        bandwidth_gbps: bw,
        pcie_gbps: per_lane * width as f64,
        tflops,
    }
}

/// cores × clock × FLOP per cycle of the widest vector unit (AVX-512 VNNI at most). AMX is
/// not counted, although the engine's prefill uses it: `cpu_compute_efficiency` (measured
/// against this peak by `hy bench decode --save`) then carries an AMX box's tile speed-up,
/// which over-predicts prefill for a box without AMX; counted, it would under-predict the
/// other way round, and most profiles' CPUs (EPYC) have none.
fn cpu_peak_tflops(hw: &HardwareSpec, eff: &Efficiency, notes: &mut Vec<String>) -> f64 {
    if let Some(t) = eff.cpu_tflops {
        return t;
    }
    let f = &hw.cpu.features;
    let per_cycle = if f.avx512_vnni || f.avx512_bf16 {
        128.0
    } else if f.avx512f {
        64.0
    } else if f.avx2 {
        32.0
    } else {
        16.0
    };
    let mhz = hw.cpu.base_mhz.or(hw.cpu.max_mhz.map(|m| m * 0.8)).unwrap_or_else(|| {
        notes.push("CPU clock unknown: assumed 2.5 GHz".into());
        2500.0
    });
    let cores = (hw.cpu.sockets.max(1) * hw.cpu.cores_per_socket.max(1)) as f64;
    cores * mhz * 1e6 * per_cycle / 1e12
}

/// Memory the OS and other processes keep.
pub fn os_reserve_bytes(total: u64, eff: &Efficiency) -> u64 {
    let frac = total as f64 * eff.os_reserve_fraction;
    frac.max(eff.os_reserve_min_gib * GIB) as u64
}

/// VRAM the driver and fragmentation keep.
pub fn gpu_reserve_bytes(eff: &Efficiency) -> u64 {
    (eff.gpu_reserve_gib * GIB) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::*;

    fn box_with(channels: Option<u32>, mts: Option<u32>) -> HardwareSpec {
        HardwareSpec {
            format_version: 1,
            name: None,
            cpu: CpuSpec {
                vendor: "AMD".into(),
                model_name: "x".into(),
                sockets: 2,
                cores_per_socket: 32,
                threads_per_socket: 64,
                ..Default::default()
            },
            numa_nodes: vec![],
            memory: MemorySpec {
                total_bytes: 1_152_000_000_000,
                channels_per_socket: channels,
                mts,
                ..Default::default()
            },
            gpus: vec![GpuSpec {
                index: 0,
                name: "NVIDIA GeForce RTX 4090".into(),
                vram_total_bytes: 24 << 30,
                memory_clock_mhz: Some(10501),
                memory_bus_width_bits: Some(384),
                ..Default::default()
            }],
            measured: None,
        }
    }

    /// The engine's rule: AVX-512 VNNI without usable AMX repacks the layer matrices.
    #[test]
    fn layer_matrices_are_repacked_on_vnni_cpus_without_usable_amx() {
        let avx512 = CpuFeatures { avx512f: true, avx512bw: true, avx512vl: true, ..Default::default() };
        let vnni = CpuFeatures { avx512_vnni: true, avx512_bf16: true, ..avx512.clone() };
        let amx = CpuFeatures { amx_tile: true, amx_int8: true, amx_bf16: true, ..vnni.clone() };
        assert!(layer_matrices_repacked(&vnni), "EPYC-like");
        assert!(!layer_matrices_repacked(&amx), "AMX takes the prompts");
        assert!(!layer_matrices_repacked(&CpuFeatures { amx_permitted: Some(true), ..amx.clone() }));
        assert!(layer_matrices_repacked(&CpuFeatures { amx_permitted: Some(false), ..amx }), "tiles refused");
        assert!(!layer_matrices_repacked(&avx512), "no VNNI: no 16-row kernels");
        assert!(!layer_matrices_repacked(&CpuFeatures { avx2: true, ..Default::default() }));
    }

    #[test]
    fn theoretical_bandwidth_is_channels_times_mts_times_8() {
        let t = topology(&box_with(Some(12), Some(6400)), &Efficiency::default());
        assert!((t.theoretical_gbps - 1228.8).abs() < 1e-9);
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].cores, 32);
        assert!((t.nodes[0].bandwidth_gbps - 614.4 * 0.77).abs() < 1e-9);
        // GPU: 2 × 10501 MHz × 384 bit / 8 = 1008.1 GB/s.
        assert!((t.gpus[0].bandwidth_gbps - 1008.096).abs() < 1e-6);
    }

    #[test]
    fn unknown_memory_speed_is_an_explicit_assumption() {
        let t = topology(&box_with(None, None), &Efficiency::default());
        assert!((t.theoretical_gbps - 409.6).abs() < 1e-9);
        assert!(t.notes.iter().any(|n| n.contains("unknown")));
    }

    #[test]
    fn measured_bandwidth_wins() {
        let mut hw = box_with(Some(12), Some(6400));
        hw.measured = Some(MeasuredBandwidth { read_gbps: 900.0, triad_gbps: 800.0, threads: 64, per_node: vec![] });
        let t = topology(&hw, &Efficiency::default());
        assert!((t.cpu_bandwidth_gbps() - 900.0).abs() < 1e-9);
        assert!(t.bandwidth_measured);
    }
}
