//! NVIDIA GPUs through NVML (libnvidia-ml, loaded at run time). A machine without the
//! library or the driver simply has no NVIDIA GPU as far as hy is concerned.

use hy_planner::hardware::GpuSpec;
use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::Nvml;

/// Why no GPU list could be read (for the table's note).
pub enum GpuProbe {
    Found(Vec<GpuSpec>),
    None(String),
}

/// Driver-only installs ship `libnvidia-ml.so.1` without the unversioned development link
/// that nvml-wrapper looks for by default, so try the versioned name first.
const LIBRARY_NAMES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// `HY_NVML_LIBRARY` names the library to load instead (a path or soname), e.g. to test the
/// no-GPU path on a machine that has one.
pub fn probe() -> GpuProbe {
    let mut last_error = String::new();
    let names: Vec<String> = match std::env::var("HY_NVML_LIBRARY") {
        Ok(name) if !name.is_empty() => vec![name],
        _ => LIBRARY_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    for name in &names {
        match Nvml::builder().lib_path(std::ffi::OsStr::new(name)).init() {
            Ok(nvml) => return read_devices(&nvml),
            Err(e) => last_error = e.to_string(),
        }
    }
    GpuProbe::None(format!("no NVIDIA GPU detected (NVML unavailable: {last_error})"))
}

fn read_devices(nvml: &Nvml) -> GpuProbe {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => return GpuProbe::None(format!("no NVIDIA GPU detected (NVML: {e})")),
    };
    if count == 0 {
        return GpuProbe::None("no NVIDIA GPU detected (NVML reports 0 devices)".into());
    }
    let driver = nvml.sys_driver_version().ok();
    let gpus: Vec<GpuSpec> = (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok().map(|d| (i, d)))
        .map(|(index, d)| {
            let memory = d.memory_info().ok();
            let bus = d.memory_bus_width().ok();
            let clock = d.max_clock_info(Clock::Memory).ok();
            GpuSpec {
                index,
                name: d.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
                vram_total_bytes: memory.as_ref().map_or(0, |m| m.total),
                vram_free_bytes: memory.as_ref().map(|m| m.free),
                memory_bus_width_bits: bus,
                memory_clock_mhz: clock,
                bandwidth_gbps: bus.zip(clock).map(|(b, c)| gpu_bandwidth_gbps(c, b)),
                // The maximum link the GPU and slot support; the current link drops at idle.
                pcie_generation: d.max_pcie_link_gen().or_else(|_| d.current_pcie_link_gen()).ok(),
                pcie_width: d.max_pcie_link_width().or_else(|_| d.current_pcie_link_width()).ok(),
                compute_capability: d.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor)),
                driver_version: driver.clone(),
            }
        })
        .collect();
    GpuProbe::Found(gpus)
}

/// Double data rate: 2 transfers per memory clock, bus width in bits → bytes. GB/s.
pub fn gpu_bandwidth_gbps(memory_clock_mhz: u32, bus_width_bits: u32) -> f64 {
    2.0 * f64::from(memory_clock_mhz) * f64::from(bus_width_bits) / 8.0 / 1000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn bandwidth_formula() {
        // RTX 4090: 10501 MHz × 384 bit → 1008 GB/s (its published figure).
        assert!((super::gpu_bandwidth_gbps(10501, 384) - 1008.096).abs() < 1e-6);
    }
}
