//! `HardwareSpec`: what a machine has. Produced by `hy probe`, saved as a versioned TOML
//! "hardware file", read by `hy plan --hardware FILE`, and used for a profile's nominal box.
//!
//! Units: bytes for sizes, decimal GB/s (1e9 bytes per second) for bandwidth, MHz, MT/s.
//! Fields that a probe may not be able to read are `Option`; `None` means "unknown".

use serde::{Deserialize, Serialize};

/// Current version of the hardware-file format (`format_version` key).
pub const HARDWARE_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HardwareSpec {
    pub format_version: u32,
    /// Free-form description (hostname, or "2 x EPYC 9355 + RTX 5090D").
    #[serde(default)]
    pub name: Option<String>,
    pub cpu: CpuSpec,
    #[serde(default)]
    pub numa_nodes: Vec<NumaNode>,
    pub memory: MemorySpec,
    #[serde(default)]
    pub gpus: Vec<GpuSpec>,
    /// Measured bandwidth (`hy probe --bench`), if any.
    #[serde(default)]
    pub measured: Option<MeasuredBandwidth>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CpuSpec {
    pub vendor: String,
    pub model_name: String,
    pub sockets: u32,
    pub cores_per_socket: u32,
    pub threads_per_socket: u32,
    #[serde(default)]
    pub base_mhz: Option<f64>,
    #[serde(default)]
    pub max_mhz: Option<f64>,
    #[serde(default)]
    pub features: CpuFeatures,
    #[serde(default)]
    pub caches: Vec<CacheInfo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub avx_vnni: bool,
    pub amx_tile: bool,
    pub amx_int8: bool,
    pub amx_bf16: bool,
    /// Whether the OS permits AMX use (Linux arch_prctl XCOMP_PERM); `None` if not checked.
    pub amx_permitted: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CacheInfo {
    pub level: u8,
    /// "data", "instruction" or "unified".
    pub kind: String,
    pub size_bytes: u64,
    /// How many logical CPUs share one instance of this cache.
    #[serde(default)]
    pub shared_by_cpus: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NumaNode {
    pub id: u32,
    /// Logical CPU ids on this node.
    pub cpus: Vec<u32>,
    pub memory_bytes: u64,
    /// Distances to every node, in node-id order (ACPI SLIT values; 10 = local).
    #[serde(default)]
    pub distances: Vec<u32>,
    /// Socket (physical package) the node belongs to, if known.
    #[serde(default)]
    pub socket: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MemorySpec {
    pub total_bytes: u64,
    /// Where the DIMM list came from: "smbios", "edac", "declared" (hand-written file) or "unknown".
    #[serde(default = "unknown")]
    pub dimm_source: String,
    #[serde(default)]
    pub dimms: Vec<Dimm>,
    /// Populated memory channels per socket.
    #[serde(default)]
    pub channels_per_socket: Option<u32>,
    /// Configured transfer rate (MT/s) of the populated DIMMs.
    #[serde(default)]
    pub mts: Option<u32>,
    /// channels × MT/s × 8 B, over all sockets, in GB/s.
    #[serde(default)]
    pub theoretical_bandwidth_gbps: Option<f64>,
}

fn unknown() -> String {
    "unknown".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Dimm {
    pub locator: String,
    #[serde(default)]
    pub bank_locator: Option<String>,
    pub size_bytes: u64,
    /// "DDR4", "DDR5", ...
    #[serde(default)]
    pub memory_type: Option<String>,
    #[serde(default)]
    pub speed_mts: Option<u32>,
    #[serde(default)]
    pub configured_mts: Option<u32>,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub part_number: Option<String>,
    #[serde(default)]
    pub socket: Option<u32>,
    #[serde(default)]
    pub channel: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GpuSpec {
    pub index: u32,
    pub name: String,
    pub vram_total_bytes: u64,
    #[serde(default)]
    pub vram_free_bytes: Option<u64>,
    #[serde(default)]
    pub memory_bus_width_bits: Option<u32>,
    #[serde(default)]
    pub memory_clock_mhz: Option<u32>,
    /// 2 × memory clock (MHz) × bus width (bits) / 8, in GB/s.
    #[serde(default)]
    pub bandwidth_gbps: Option<f64>,
    #[serde(default)]
    pub pcie_generation: Option<u32>,
    #[serde(default)]
    pub pcie_width: Option<u32>,
    /// "8.9", "12.0", ...
    #[serde(default)]
    pub compute_capability: Option<String>,
    #[serde(default)]
    pub driver_version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MeasuredBandwidth {
    /// Whole machine, all threads: read-only sum, GB/s.
    pub read_gbps: f64,
    /// Whole machine: triad a = b + s*c, GB/s (counting 3 streams).
    pub triad_gbps: f64,
    pub threads: u32,
    #[serde(default)]
    pub per_node: Vec<NodeBandwidth>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NodeBandwidth {
    pub node: u32,
    pub threads: u32,
    pub read_gbps: f64,
    pub triad_gbps: f64,
}
