//! The hy planner: a pure library (no I/O) that takes a [`HardwareSpec`] and a model
//! description and decides placement and quantization, and predicts speed.

pub mod hardware;

pub use hardware::HardwareSpec;
