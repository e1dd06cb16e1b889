//! Which files of a repository to fetch: quantization, include/exclude globs, shard siblings.
//!
//! Rules (documented in README-section.md):
//! - `--quant Q` picks the weight files (`.gguf`, `.safetensors`) whose path contains `Q` as a
//!   whole token (case-insensitive; tokens are separated by anything but letters, digits and
//!   `_`), e.g. `Q4_K_M/DeepSeek-R1-Q4_K_M-00001-of-00009.gguf`. If no GGUF file matches and
//!   `Q` names a safetensors dtype (FP8, BF16, ...), the repo's safetensors set is taken.
//! - Without `--quant` or `--include`: the safetensors set, or the only GGUF quantization.
//! - `--include` globs add files (or, alone, are the whole selection); `--exclude` removes.
//! - Naming one shard (`-0000k-of-0000N.ext`) pulls in all its siblings.
//! - A safetensors selection always carries the config/tokenizer files next to it.

use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{BTreeSet, HashSet};

/// A selection request.
#[derive(Default, Clone, Debug)]
pub struct Selector {
    pub quant: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

const ST_DTYPES: &[&str] = &["fp8", "bf16", "fp16", "f16", "fp32", "f32", "safetensors"];
const META_EXT: &[&str] = &[".json", ".model", ".tiktoken", ".txt", ".py", ".jinja", ".md"];
const SKIP_META: &[&str] = &["readme.md", "license.md"];

/// Returns the indices of `paths` to fetch, sorted by path.
pub fn select(paths: &[&str], sel: &Selector) -> Result<Vec<usize>> {
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    if let Some(q) = &sel.quant {
        chosen.extend(by_quant(paths, q)?);
    }
    if !sel.include.is_empty() {
        let set = globs(&sel.include, "--include")?;
        let hits: Vec<usize> = (0..paths.len()).filter(|&i| set.is_match(paths[i])).collect();
        if hits.is_empty() {
            bail!("--include {:?} matches no file in the repository; {}", sel.include, inventory(paths));
        }
        chosen.extend(hits);
    }
    if sel.quant.is_none() && sel.include.is_empty() {
        chosen.extend(default_selection(paths)?);
    }
    expand_shards(paths, &mut chosen);
    if !sel.exclude.is_empty() {
        let set = globs(&sel.exclude, "--exclude")?;
        chosen.retain(|&i| !set.is_match(paths[i]));
    }
    if chosen.is_empty() {
        bail!("the selection is empty after --exclude; {}", inventory(paths));
    }
    let mut out: Vec<usize> = chosen.into_iter().collect();
    out.sort_by_key(|&i| paths[i]);
    Ok(out)
}

fn globs(patterns: &[String], flag: &str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .case_insensitive(true)
            .build()
            .with_context(|| format!("{flag} {p:?} is not a valid glob"))?;
        b.add(g);
    }
    Ok(b.build()?)
}

fn is_gguf(p: &str) -> bool {
    p.to_ascii_lowercase().ends_with(".gguf")
}

fn is_st(p: &str) -> bool {
    p.to_ascii_lowercase().ends_with(".safetensors")
}

/// Whether `token` occurs in `path` delimited by non-token characters (case-insensitive).
pub fn has_token(path: &str, token: &str) -> bool {
    let hay = path.to_ascii_lowercase();
    let needle = token.to_ascii_lowercase();
    if needle.is_empty() {
        return false;
    }
    let is_tok = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(pos) = hay[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before_ok = hay[..start].chars().next_back().is_none_or(|c| !is_tok(c));
        let after_ok = hay[end..].chars().next().is_none_or(|c| !is_tok(c));
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
        while !hay.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

fn by_quant(paths: &[&str], q: &str) -> Result<Vec<usize>> {
    let weights: Vec<usize> =
        (0..paths.len()).filter(|&i| (is_gguf(paths[i]) || is_st(paths[i])) && has_token(paths[i], q)).collect();
    if !weights.is_empty() {
        let mut out = weights.clone();
        if weights.iter().any(|&i| is_st(paths[i])) {
            out.extend(metadata_files(paths));
        }
        return Ok(out);
    }
    let has_st = paths.iter().any(|p| is_st(p));
    if has_st && ST_DTYPES.contains(&q.to_ascii_lowercase().as_str()) {
        return Ok(safetensors_set(paths));
    }
    bail!("no file in the repository matches quantization {q:?}; {}", inventory(paths))
}

/// Small config/tokenizer files at the top level, which every safetensors load needs.
fn metadata_files(paths: &[&str]) -> Vec<usize> {
    (0..paths.len())
        .filter(|&i| {
            let p = paths[i].to_ascii_lowercase();
            !p.contains('/') && META_EXT.iter().any(|e| p.ends_with(e)) && !SKIP_META.contains(&p.as_str())
        })
        .collect()
}

/// All safetensors shards (outside an `original/` folder, which holds other formats' copies)
/// plus the top-level metadata files.
fn safetensors_set(paths: &[&str]) -> Vec<usize> {
    let mut out: Vec<usize> = (0..paths.len())
        .filter(|&i| {
            let p = paths[i].to_ascii_lowercase();
            (p.ends_with(".safetensors") || p.ends_with(".safetensors.index.json")) && !p.starts_with("original/")
        })
        .collect();
    out.extend(metadata_files(paths));
    out
}

fn default_selection(paths: &[&str]) -> Result<Vec<usize>> {
    if paths.iter().any(|p| is_st(p)) {
        return Ok(safetensors_set(paths));
    }
    let quants = gguf_quants(paths);
    match quants.len() {
        0 => Ok((0..paths.len()).collect()),
        1 => Ok((0..paths.len()).filter(|&i| is_gguf(paths[i])).collect()),
        _ => bail!(
            "the repository holds several GGUF quantizations; pick one with --quant (available: {})",
            quants.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Adds every sibling of a selected shard `stem-0000k-of-0000N.ext`.
fn expand_shards(paths: &[&str], chosen: &mut BTreeSet<usize>) {
    let groups: HashSet<(String, String, String)> = chosen.iter().filter_map(|&i| shard_key(paths[i])).collect();
    if groups.is_empty() {
        return;
    }
    for (i, p) in paths.iter().enumerate() {
        if shard_key(p).is_some_and(|k| groups.contains(&k)) {
            chosen.insert(i);
        }
    }
}

/// `(stem, total, ext)` of a shard name `stem-00003-of-00009.ext`, or None.
pub fn shard_key(path: &str) -> Option<(String, String, String)> {
    let dot = path.rfind('.')?;
    let (base, ext) = path.split_at(dot);
    let of = base.rfind("-of-")?;
    let total = &base[of + 4..];
    let head = &base[..of];
    let dash = head.rfind('-')?;
    let index = &head[dash + 1..];
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(total) || !digits(index) {
        return None;
    }
    Some((head[..dash].to_string(), total.to_string(), ext.to_string()))
}

/// Quantization names found in GGUF file names (the last `-`-separated token before the
/// shard suffix, or the parent folder), for messages.
fn gguf_quants(paths: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in paths.iter().filter(|p| is_gguf(p)) {
        let name = p.rsplit('/').next().unwrap_or(p);
        let stem = match shard_key(name) {
            Some((stem, _, _)) => stem,
            None => name[..name.len() - 5].to_string(),
        };
        let q = match p.rfind('/') {
            Some(slash) if p[..slash].rsplit('/').next().is_some_and(|d| stem.contains(d)) => {
                p[..slash].rsplit('/').next().unwrap_or_default().to_string()
            }
            _ => stem.rsplit(['-', '.']).next().unwrap_or_default().to_string(),
        };
        out.insert(q);
    }
    out
}

fn inventory(paths: &[&str]) -> String {
    let quants = gguf_quants(paths);
    let n_st = paths.iter().filter(|p| is_st(p)).count();
    let mut parts = Vec::new();
    if !quants.is_empty() {
        parts.push(format!("GGUF quantizations: {}", quants.into_iter().collect::<Vec<_>>().join(", ")));
    }
    if n_st > 0 {
        parts.push(format!("{n_st} safetensors files (use --quant FP8/BF16 or no --quant)"));
    }
    if parts.is_empty() {
        parts.push(format!("{} files, none of them .gguf or .safetensors", paths.len()));
    }
    format!("the repository has {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GGUF_REPO: &[&str] = &[
        "README.md",
        "Q4_K_M/M-Q4_K_M-00001-of-00003.gguf",
        "Q4_K_M/M-Q4_K_M-00002-of-00003.gguf",
        "Q4_K_M/M-Q4_K_M-00003-of-00003.gguf",
        "Q4_K/M-Q4_K-00001-of-00001.gguf",
        "M-Q8_0.gguf",
        "UD-IQ1_S/M-UD-IQ1_S-00001-of-00002.gguf",
        "UD-IQ1_S/M-UD-IQ1_S-00002-of-00002.gguf",
    ];

    fn names(idx: &[usize], paths: &[&str]) -> Vec<String> {
        idx.iter().map(|&i| paths[i].to_string()).collect()
    }

    #[test]
    fn quant_is_a_whole_token_and_case_insensitive() {
        let s = Selector { quant: Some("q4_k_m".into()), ..Default::default() };
        let got = names(&select(GGUF_REPO, &s).unwrap(), GGUF_REPO);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|p| p.starts_with("Q4_K_M/")));
        let s = Selector { quant: Some("Q4_K".into()), ..Default::default() };
        assert_eq!(names(&select(GGUF_REPO, &s).unwrap(), GGUF_REPO), vec!["Q4_K/M-Q4_K-00001-of-00001.gguf"]);
    }

    #[test]
    fn one_shard_pulls_in_siblings() {
        let s = Selector { include: vec!["*IQ1_S-00002-of-00002.gguf".into()], ..Default::default() };
        assert_eq!(select(GGUF_REPO, &s).unwrap().len(), 2);
    }

    #[test]
    fn several_quants_need_a_choice() {
        let err = select(GGUF_REPO, &Selector::default()).unwrap_err().to_string();
        assert!(err.contains("Q4_K_M") && err.contains("Q8_0"), "{err}");
        let err = select(GGUF_REPO, &Selector { quant: Some("Q5_K_M".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("UD-IQ1_S"), "{err}");
    }

    #[test]
    fn fp8_repo_takes_shards_and_metadata() {
        let repo = [
            "config.json",
            "README.md",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "figures/x.png",
            "original/consolidated.safetensors",
        ];
        let s = Selector { quant: Some("FP8".into()), ..Default::default() };
        let got = names(&select(&repo, &s).unwrap(), &repo);
        assert_eq!(
            got,
            vec![
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json"
            ]
        );
        let s = Selector { exclude: vec!["*.json".into()], ..Default::default() };
        assert_eq!(select(&repo, &s).unwrap().len(), 2);
    }
}
