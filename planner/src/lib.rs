//! The hy planner: a pure library (no I/O) that takes a [`HardwareSpec`] and a model
//! description and decides placement and quantization, and predicts speed.
//!
//! - [`hardware`]: what a machine has (`HardwareSpec`), and [`topology`]: what follows from it.
//! - [`arch`], [`model`], [`quant`], [`wtype`], [`catalog`]: what a model is and weighs.
//! - [`cost`]: the efficiency assumptions and the speed model.
//! - [`plan`]: placement, memory per device, fit, and the saved `Plan`.

pub mod arch;
pub mod catalog;
pub mod cost;
pub mod hardware;
pub mod model;
pub mod plan;
pub mod quant;
pub mod topology;
pub mod wtype;

pub use arch::{ArchKind, Architecture, Mla};
pub use cost::{Efficiency, MAX_CPU_BANDWIDTH_EFFICIENCY};
pub use hardware::HardwareSpec;
pub use model::{Component, ModelSpec};
pub use plan::{plan, NumaChoice, Plan, PlanOptions, QuantChoice};
pub use quant::Quant;
pub use wtype::WType;

/// Errors of the planner. The CLI adds file names and exit codes.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid model description: {0}")]
    InvalidModel(String),
    #[error("{model} is not available as {quant}; available: {available}")]
    UnsupportedQuant { model: String, quant: String, available: String },
    #[error("invalid hardware description: {0}")]
    InvalidHardware(String),
    #[error("invalid plan file: {0}")]
    InvalidPlan(String),
    #[error("invalid calibration: {0}")]
    InvalidCalibration(String),
    #[error("invalid planning options: {0}")]
    InvalidOptions(String),
}
