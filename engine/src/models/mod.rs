//! models (being built).
