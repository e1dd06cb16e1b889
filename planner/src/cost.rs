//! Efficiency assumptions of the speed model. Every number is stated in the plan's output and
//! can be overridden by flags or by a calibration file (`hy bench` writes one).
//!
//! Defaults and where they come from:
//! - `stream_efficiency` 0.77: STREAM-like read bandwidth of a loaded DDR5 server over its
//!   theoretical channels × MT/s × 8 B; used only when the hardware file has no measurement.
//! - `cpu_bandwidth_efficiency` 0.91: the share of measured bandwidth that expert kernels
//!   turn into useful reads. DESIGN.md: the reference appliance does the MoE part of a Q4_K_M
//!   token in 18 ms where the bandwidth bound is 13 ms; the speed model adds the experts'
//!   arithmetic at `cpu_compute_efficiency` (≈ 4 ms of it on HY90) to their streaming time,
//!   and 13/0.91 + 4 ≈ 18. It may exceed 1 (up
//!   to [`MAX_CPU_BANDWIDTH_EFFICIENCY`]): the measurement is a plain read, and kernels with
//!   software prefetch stream faster than that on some CPUs (hy's expert pass reached 117% of
//!   it on the 16-core Xeon of issue 6).
//! - `gpu_bandwidth_efficiency` 0.80: decode GEMV kernels on current NVIDIA GPUs.
//! - `hybrid_sync_us` 160 and `gpu_layer_overhead_us` 20: per-layer costs of handing the hidden
//!   state between GPU and CPU and of launching a layer's kernels; together with the above
//!   they reproduce the HY90 vendor figure of 28 tok/s for DeepSeek-R1 Q4_K_M (one request).
//! - `cpu_layer_overhead_us` 100: thread-pool barriers of a layer whose attention and dense
//!   parts run on the CPU (about twenty operations of ~5 µs each).

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// The largest `cpu_bandwidth_efficiency` a calibration may set: kernels with software
/// prefetch can outrun the plain read that measures the bandwidth, but not by this much.
pub const MAX_CPU_BANDWIDTH_EFFICIENCY: f64 = 2.0;

/// Efficiency assumptions; see the module docs for the defaults' sources.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Efficiency {
    /// Measured / theoretical memory bandwidth, used when no measurement is available.
    pub stream_efficiency: f64,
    /// Expert kernels' streaming rate over the (measured, plain-read) CPU memory bandwidth.
    pub cpu_bandwidth_efficiency: f64,
    /// Share of the GPU memory bandwidth that decode kernels achieve.
    pub gpu_bandwidth_efficiency: f64,
    /// Share of the PCIe link rate achieved by host↔device copies.
    pub pcie_efficiency: f64,
    /// Share of peak CPU FLOP/s achieved by quantized matmuls (prefill).
    pub cpu_compute_efficiency: f64,
    /// Share of peak GPU tensor FLOP/s achieved (prefill, long-context attention).
    pub gpu_compute_efficiency: f64,
    /// Overrides the CPU peak (TFLOP/s, whole machine) derived from cores × clock × features.
    pub cpu_tflops: Option<f64>,
    /// Overrides the GPU peak (TFLOP/s) taken from the GPU model table.
    pub gpu_tflops: Option<f64>,
    /// Kernel-launch cost per layer on the GPU, microseconds.
    pub gpu_layer_overhead_us: f64,
    /// Barrier cost per layer whose attention path runs on the CPU, microseconds.
    pub cpu_layer_overhead_us: f64,
    /// CPU↔GPU hand-off per MoE layer whose experts run on the CPU, microseconds.
    pub hybrid_sync_us: f64,
    /// Cross-node reduction per MoE layer when experts are split across NUMA nodes, microseconds.
    pub numa_sync_us: f64,
    /// Memory kept for the OS and other processes: this fraction of RAM ...
    pub os_reserve_fraction: f64,
    /// ... but at least this many GiB.
    pub os_reserve_min_gib: f64,
    /// VRAM kept free for the CUDA context and fragmentation, GiB.
    pub gpu_reserve_gib: f64,
}

impl Default for Efficiency {
    fn default() -> Self {
        Efficiency {
            stream_efficiency: 0.77,
            cpu_bandwidth_efficiency: 0.91,
            gpu_bandwidth_efficiency: 0.80,
            pcie_efficiency: 0.80,
            cpu_compute_efficiency: 0.35,
            gpu_compute_efficiency: 0.50,
            cpu_tflops: None,
            gpu_tflops: None,
            gpu_layer_overhead_us: 20.0,
            cpu_layer_overhead_us: 100.0,
            hybrid_sync_us: 160.0,
            numa_sync_us: 10.0,
            os_reserve_fraction: 0.03,
            os_reserve_min_gib: 4.0,
            gpu_reserve_gib: 1.0,
        }
    }
}

impl Efficiency {
    /// Parses a calibration file (TOML with any subset of the keys; the rest keep defaults).
    pub fn from_toml_str(text: &str) -> Result<Efficiency, PlanError> {
        let e: Efficiency = toml::from_str(text).map_err(|e| PlanError::InvalidCalibration(e.to_string()))?;
        e.validate()?;
        Ok(e)
    }

    /// Fractions must lie in (0, 1] (`cpu_bandwidth_efficiency` in (0,
    /// [`MAX_CPU_BANDWIDTH_EFFICIENCY`]]), times and reserves must not be negative.
    pub fn validate(&self) -> Result<(), PlanError> {
        let cpu_bw = self.cpu_bandwidth_efficiency;
        if !(cpu_bw > 0.0 && cpu_bw <= MAX_CPU_BANDWIDTH_EFFICIENCY) {
            return Err(PlanError::InvalidCalibration(format!(
                "cpu_bandwidth_efficiency = {cpu_bw}: must be in (0, {MAX_CPU_BANDWIDTH_EFFICIENCY}]"
            )));
        }
        let fractions = [
            ("stream_efficiency", self.stream_efficiency),
            ("gpu_bandwidth_efficiency", self.gpu_bandwidth_efficiency),
            ("pcie_efficiency", self.pcie_efficiency),
            ("cpu_compute_efficiency", self.cpu_compute_efficiency),
            ("gpu_compute_efficiency", self.gpu_compute_efficiency),
        ];
        for (k, v) in fractions {
            if !(v > 0.0 && v <= 1.0) {
                return Err(PlanError::InvalidCalibration(format!("{k} = {v}: must be in (0, 1]")));
            }
        }
        let non_negative = [
            ("gpu_layer_overhead_us", self.gpu_layer_overhead_us),
            ("cpu_layer_overhead_us", self.cpu_layer_overhead_us),
            ("hybrid_sync_us", self.hybrid_sync_us),
            ("numa_sync_us", self.numa_sync_us),
            ("os_reserve_min_gib", self.os_reserve_min_gib),
            ("gpu_reserve_gib", self.gpu_reserve_gib),
        ];
        for (k, v) in non_negative {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(PlanError::InvalidCalibration(format!("{k} = {v}: must be >= 0")));
            }
        }
        if !(0.0..0.5).contains(&self.os_reserve_fraction) {
            return Err(PlanError::InvalidCalibration(format!(
                "os_reserve_fraction = {}: must be in [0, 0.5)",
                self.os_reserve_fraction
            )));
        }
        for (k, v) in [("cpu_tflops", self.cpu_tflops), ("gpu_tflops", self.gpu_tflops)] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(PlanError::InvalidCalibration(format!("{k} = {v}: must be > 0")));
                }
            }
        }
        Ok(())
    }
}

/// Expected number of distinct experts that `n` concurrent tokens touch in one layer when
/// each picks `k` of `e` uniformly: E·(1 − (1 − k/E)^N).
pub fn distinct_experts(e: u64, k: u64, n: u64) -> f64 {
    if e == 0 {
        return 0.0;
    }
    let e = e as f64;
    e * (1.0 - (1.0 - k as f64 / e).powf(n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_experts_hand_computed() {
        // One token reads exactly k experts.
        assert!((distinct_experts(256, 8, 1) - 8.0).abs() < 1e-9);
        // Two tokens: 256·(1 − (248/256)²) = 15.75.
        assert!((distinct_experts(256, 8, 2) - 15.75).abs() < 1e-9);
        // Many tokens approach all experts.
        assert!(distinct_experts(256, 8, 1000) > 255.9);
        assert_eq!(distinct_experts(0, 0, 4), 0.0);
    }

    #[test]
    fn calibration_file_overrides_some_keys_and_rejects_bad_values() {
        let e = Efficiency::from_toml_str("cpu_bandwidth_efficiency = 0.8\n").unwrap();
        assert_eq!(e.cpu_bandwidth_efficiency, 0.8);
        assert_eq!(e.gpu_bandwidth_efficiency, 0.80);
        // Above 1 is allowed (prefetching kernels outrun a plain read), up to 2.
        let e = Efficiency::from_toml_str("cpu_bandwidth_efficiency = 1.17\n").unwrap();
        assert_eq!(e.cpu_bandwidth_efficiency, 1.17);
        let err = Efficiency::from_toml_str("cpu_bandwidth_efficiency = 2.5\n").unwrap_err();
        assert!(err.to_string().contains("cpu_bandwidth_efficiency = 2.5"), "{err}");
        let err = Efficiency::from_toml_str("cpu_compute_efficiency = 1.5\n").unwrap_err();
        assert!(err.to_string().contains("cpu_compute_efficiency = 1.5"), "{err}");
        let err = Efficiency::from_toml_str("cpu_bandwith_efficiency = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
