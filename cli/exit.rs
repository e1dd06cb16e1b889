//! Documented exit codes. Commands return `Ok(code)` for outcomes that are not errors in the
//! program (e.g. "does not fit") and `Err` for failures; `report` maps an error to its code.

pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const USAGE: i32 = 2;
/// The model does not fit the hardware with the requested options.
pub const DOES_NOT_FIT: i32 = 3;
/// A download failed (network, HTTP status, disk full).
pub const DOWNLOAD_FAILED: i32 = 4;
/// A downloaded or local file failed checksum verification.
pub const VERIFICATION_FAILED: i32 = 5;
/// An input file (model, hardware file, profile, plan) is malformed.
pub const INVALID_INPUT: i32 = 6;

/// An error that carries its own exit code; attach with `anyhow::Error::new(Coded(..))` or
/// `.context(..)` on top of one.
#[derive(Debug)]
pub struct Coded {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// Builds an error with a specific exit code.
pub fn coded(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded { code, message: message.into() })
}

/// Prints `error: ...` with its causes to stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    err.chain().find_map(|e| e.downcast_ref::<Coded>().map(|c| c.code)).unwrap_or(ERROR)
}
