//! Reading the kernel's text files (sysfs, procfs) through a root prefix, so that the whole
//! probe runs unchanged on a fixture tree in tests, plus the `cpulist` format ("0-3,8-11").

use std::path::{Path, PathBuf};

/// Where the probe reads `sys/...` and `proc/...` from: "/" on a live machine, a fixture
/// directory in tests (`hy probe --root DIR`).
#[derive(Clone, Debug)]
pub struct ProbeRoot {
    root: PathBuf,
}

impl ProbeRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProbeRoot { root: root.into() }
    }

    /// True when the root is the real file system, i.e. live sources (cpuid, NVML, the
    /// bandwidth benchmark) describe the same machine as the files.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `rel` is relative to the root ("sys/devices/system/cpu/online").
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn read_string(&self, rel: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(rel))
    }

    pub fn read_bytes(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(rel))
    }

    /// The file's content with surrounding whitespace removed; `None` if unreadable or empty.
    pub fn read_trimmed(&self, rel: &str) -> Option<String> {
        let text = self.read_string(rel).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    pub fn read_u64(&self, rel: &str) -> Option<u64> {
        self.read_trimmed(rel)?.parse().ok()
    }

    pub fn read_i64(&self, rel: &str) -> Option<i64> {
        self.read_trimmed(rel)?.parse().ok()
    }

    /// Numbered entries of a directory, e.g. `indexed_entries("sys/devices/system/node", "node")`
    /// gives `[0, 1]` for `node0/` and `node1/`. Sorted; other names are ignored.
    pub fn indexed_entries(&self, rel_dir: &str, prefix: &str) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.path(rel_dir)) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let rest = name.to_str()?.strip_prefix(prefix)?;
                if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                rest.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Largest CPU id accepted in a cpulist; guards against absurd ranges in a corrupt file.
const MAX_CPU_ID: u32 = 1 << 20;

/// Parses the kernel's cpulist format: comma-separated ids and inclusive ranges, e.g.
/// "0-3,8-11" or "0,2,4-5"; an empty string is an empty list. Returns sorted, unique ids.
pub fn parse_cpulist(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu_id(a, part)?, parse_cpu_id(b, part)?),
            None => {
                let id = parse_cpu_id(part, part)?;
                (id, id)
            }
        };
        if lo > hi {
            return Err(format!("range '{part}' runs backwards"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu_id(text: &str, part: &str) -> Result<u32, String> {
    let id: u32 = text.trim().parse().map_err(|_| format!("'{part}' is not a CPU id or range"))?;
    if id > MAX_CPU_ID {
        return Err(format!("CPU id {id} in '{part}' is implausibly large"));
    }
    Ok(id)
}

/// The inverse of [`parse_cpulist`]: sorted ids folded into ranges ("0-3,8-11").
pub fn format_cpulist(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// Parses sysfs cache sizes such as "48K", "1024K", "32768K", "32M" into bytes.
pub fn parse_size_suffix(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, mult) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 1024),
        'M' | 'm' => (&text[..text.len() - 1], 1024 * 1024),
        'G' | 'g' => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulist_ranges_and_singles() {
        assert_eq!(parse_cpulist("0-3,8-11").unwrap(), vec![0, 1, 2, 3, 8, 9, 10, 11]);
        assert_eq!(parse_cpulist("5").unwrap(), vec![5]);
        assert_eq!(parse_cpulist("0,2,4-5\n").unwrap(), vec![0, 2, 4, 5]);
        assert_eq!(parse_cpulist("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpulist("3,1-2,2").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn cpulist_rejects_garbage() {
        assert!(parse_cpulist("a-b").is_err());
        assert!(parse_cpulist("4-2").is_err());
        assert!(parse_cpulist("0-4294967295").is_err());
        assert!(parse_cpulist("1,,x").is_err());
    }

    #[test]
    fn cpulist_round_trip() {
        for text in ["0-3,8-11", "0", "0,2,4", "0-31,64-95", ""] {
            assert_eq!(format_cpulist(&parse_cpulist(text).unwrap()), text);
        }
    }

    #[test]
    fn size_suffixes() {
        assert_eq!(parse_size_suffix("48K"), Some(48 * 1024));
        assert_eq!(parse_size_suffix("32M"), Some(32 << 20));
        assert_eq!(parse_size_suffix("512"), Some(512));
        assert_eq!(parse_size_suffix("K"), None);
        assert_eq!(parse_size_suffix("x"), None);
    }
}
