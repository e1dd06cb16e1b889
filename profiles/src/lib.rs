//! Hardware profiles: HY90, HY70, HY50 (built in) and user TOML files from a directory
//! (`$HY_PROFILE_DIR`, else `~/.config/hy/profiles`). A profile states its nominal hardware
//! (a `HardwareSpec`, so plans can run as dry runs on it), the minimum a box must have to
//! match it, and deployment defaults (preferred quantization per model family, context,
//! engine tuning).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hy_planner::topology::{check_hardware, topology};
use hy_planner::{Efficiency, HardwareSpec, Quant};
use serde::{Deserialize, Serialize};

pub mod matching;

pub use matching::{match_profile, Check, MatchResult};

/// Version of the profile format (`format_version`).
pub const PROFILE_FORMAT_VERSION: u32 = 1;

const BUILTIN: [(&str, &str); 3] = [
    ("HY90.toml", include_str!("../HY90.toml")),
    ("HY70.toml", include_str!("../HY70.toml")),
    ("HY50.toml", include_str!("../HY50.toml")),
];

/// Model families a profile may state a preferred quantization for.
pub const FAMILIES: [&str; 6] = ["deepseek", "kimi", "qwen3_moe", "glm4_moe", "gpt_oss", "llama"];

/// CPU feature names `requirements.cpu_features` accepts.
pub const CPU_FEATURES: [&str; 12] = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// A hardware profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format_version: u32,
    pub name: String,
    pub title: String,
    /// Which model/quantization this box is built for.
    pub targets: String,
    pub description: String,
    pub requirements: Requirements,
    pub defaults: Defaults,
    /// The nominal box.
    pub hardware: HardwareSpec,
    /// "built-in" or the file it came from.
    #[serde(skip)]
    pub source: String,
}

/// The minimum a machine must have to match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    #[serde(default)]
    pub min_memory_gib: f64,
    /// Theoretical (channels × MT/s × 8 B), GB/s.
    #[serde(default)]
    pub min_memory_bandwidth_gbps: f64,
    #[serde(default)]
    pub min_cpu_cores: u32,
    #[serde(default)]
    pub min_gpus: u32,
    /// VRAM of the largest GPU, GiB.
    #[serde(default)]
    pub min_gpu_vram_gib: f64,
    #[serde(default)]
    pub cpu_features: Vec<String>,
}

/// Deployment defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub context: u64,
    #[serde(default = "one")]
    pub concurrency: u64,
    /// Model family → preferred quantization.
    #[serde(default)]
    pub quant: BTreeMap<String, String>,
    #[serde(default)]
    pub engine: Engine,
}

fn one() -> u64 {
    1
}

/// Engine tuning.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// Prefill micro-batch, tokens.
    #[serde(default = "default_ubatch")]
    pub ubatch: u64,
    /// "auto", "replicate" or "split".
    #[serde(default = "auto")]
    pub numa: String,
    /// Compute threads per NUMA node; 0 = all physical cores.
    #[serde(default)]
    pub threads_per_node: u32,
}

fn default_ubatch() -> u64 {
    512
}

fn auto() -> String {
    "auto".into()
}

impl Default for Engine {
    fn default() -> Self {
        Engine { ubatch: default_ubatch(), numa: auto(), threads_per_node: 0 }
    }
}

impl Profile {
    /// The preferred quantization for a model family, if the profile states one.
    pub fn preferred_quant(&self, family: &str) -> Option<Quant> {
        self.defaults.quant.get(family).and_then(|q| Quant::parse(q))
    }
}

/// A profile that could not be loaded: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{file}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ProfileError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl ProfileError {
    fn new(file: &str, key: Option<&str>, message: impl Into<String>) -> Self {
        ProfileError { file: file.to_string(), key: key.map(str::to_string), message: message.into() }
    }
}

/// Parses and validates one profile; `file` names it in errors, and a user file's `name`
/// must equal its file stem.
pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
    let mut p: Profile = toml::from_str(text).map_err(|e| ProfileError::new(file, None, e.to_string().trim_end()))?;
    p.source = file.to_string();
    validate(&p, file)?;
    if let Some(stem) = Path::new(file).file_stem().and_then(|s| s.to_str()) {
        if stem != p.name {
            return Err(ProfileError::new(
                file,
                Some("name"),
                format!("is \"{}\" but the file is named {stem}.toml; make them equal", p.name),
            ));
        }
    }
    Ok(p)
}

/// Semantic checks a TOML parse cannot make.
pub fn validate(p: &Profile, file: &str) -> Result<(), ProfileError> {
    let err = |key: &str, msg: String| Err(ProfileError::new(file, Some(key), msg));
    if p.format_version != PROFILE_FORMAT_VERSION {
        return err(
            "format_version",
            format!("is {}; this hy reads version {PROFILE_FORMAT_VERSION}", p.format_version),
        );
    }
    if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return err("name", format!("\"{}\" must be non-empty letters, digits, '-' or '_'", p.name));
    }
    check_hardware(&p.hardware).map_err(|e| ProfileError::new(file, Some("hardware"), e.to_string()))?;
    let r = &p.requirements;
    for (k, v) in [
        ("requirements.min_memory_gib", r.min_memory_gib),
        ("requirements.min_memory_bandwidth_gbps", r.min_memory_bandwidth_gbps),
        ("requirements.min_gpu_vram_gib", r.min_gpu_vram_gib),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return err(k, format!("is {v}; must be a number >= 0"));
        }
    }
    if r.min_gpu_vram_gib > 0.0 && r.min_gpus == 0 {
        return err("requirements.min_gpus", "is 0 but min_gpu_vram_gib asks for VRAM; set it to 1".into());
    }
    for f in &r.cpu_features {
        if !CPU_FEATURES.contains(&f.as_str()) {
            return err(
                "requirements.cpu_features",
                format!("unknown feature \"{f}\"; known: {}", CPU_FEATURES.join(", ")),
            );
        }
    }
    let d = &p.defaults;
    if d.context == 0 {
        return err("defaults.context", "must be at least 1".into());
    }
    if d.concurrency == 0 {
        return err("defaults.concurrency", "must be at least 1".into());
    }
    for (family, q) in &d.quant {
        let key = format!("defaults.quant.{family}");
        if !FAMILIES.contains(&family.as_str()) {
            return err(&key, format!("unknown model family; known: {}", FAMILIES.join(", ")));
        }
        if Quant::parse(q).is_none() {
            return err(&key, format!("unknown quantization \"{q}\"; known: {}", Quant::all_names()));
        }
    }
    if !["auto", "replicate", "split"].contains(&d.engine.numa.as_str()) {
        return err("defaults.engine.numa", format!("is \"{}\"; must be auto, replicate or split", d.engine.numa));
    }
    if d.engine.ubatch == 0 {
        return err("defaults.engine.ubatch", "must be at least 1".into());
    }
    // A profile whose own box does not match it is a contradiction worth catching early.
    let m = match_profile(p, &p.hardware);
    if !m.matches {
        return err(
            "hardware",
            format!("the nominal hardware does not meet the profile's requirements: {}", m.missing().join("; ")),
        );
    }
    Ok(())
}

/// The built-in profiles (HY90, HY70, HY50).
pub fn builtin() -> Vec<Profile> {
    BUILTIN
        .iter()
        .filter_map(|(file, text)| {
            let mut p = parse(text, file).ok()?;
            p.source = "built-in".into();
            Some(p)
        })
        .collect()
}

/// Errors of the built-in files (empty unless the tree is broken; a test keeps it so).
pub fn builtin_errors() -> Vec<ProfileError> {
    BUILTIN.iter().filter_map(|(file, text)| parse(text, file).err()).collect()
}

/// The user profile directory: `$HY_PROFILE_DIR`, else `~/.config/hy/profiles`.
pub fn user_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HY_PROFILE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/hy/profiles"))
}

/// Loads every `*.toml` in `dir` (sorted by name). A missing directory holds no profiles.
/// Returns the valid profiles and an error for each invalid file.
pub fn load_dir(dir: &Path) -> (Vec<Profile>, Vec<ProfileError>) {
    let shown = dir.display().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (vec![], vec![]),
        Err(e) => return (vec![], vec![ProfileError::new(&shown, None, format!("cannot read directory: {e}"))]),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for path in paths {
        match load_file(&path) {
            Ok(p) => ok.push(p),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

/// Loads one profile file.
pub fn load_file(path: &Path) -> Result<Profile, ProfileError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ProfileError::new(&shown, None, format!("cannot read: {e}")))?;
    parse(&text, &shown)
}

/// Built-in and user profiles; a user profile with a built-in's name replaces it.
pub fn all() -> (Vec<Profile>, Vec<ProfileError>) {
    let mut profiles = builtin();
    // A broken built-in (e.g. after a HardwareSpec change) is reported, never silently dropped.
    let mut errors = builtin_errors();
    let (user, user_errors) = user_dir().map(|d| load_dir(&d)).unwrap_or_default();
    errors.extend(user_errors);
    for u in user {
        match profiles.iter_mut().find(|p| p.name.eq_ignore_ascii_case(&u.name)) {
            Some(slot) => *slot = u,
            None => profiles.push(u),
        }
    }
    (profiles, errors)
}

/// Finds a profile by name (case-insensitive). An invalid user file of that name is an error.
pub fn find(name: &str) -> Result<Option<Profile>, ProfileError> {
    let (profiles, errors) = all();
    let stem_matches = |e: &ProfileError| {
        Path::new(&e.file).file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    if let Some(e) = errors.into_iter().find(stem_matches) {
        return Err(e);
    }
    Ok(profiles.into_iter().find(|p| p.name.eq_ignore_ascii_case(name)))
}

/// Theoretical memory bandwidth of a box as the planner derives it, GB/s, and whether it
/// had to be assumed.
pub fn theoretical_bandwidth(hw: &HardwareSpec) -> (f64, bool) {
    let t = topology(hw, &Efficiency::default());
    (t.theoretical_gbps, t.notes.iter().any(|n| n.starts_with("memory channels/speed unknown")))
}

#[cfg(test)]
mod tests;
