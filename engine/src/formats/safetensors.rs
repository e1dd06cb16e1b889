//! safetensors reader: a single file, or a folder of shards listed by
//! `model.safetensors.index.json` (else every `*.safetensors` in the folder).
//!
//! File layout: u64 little-endian header length N, N bytes of JSON
//! (`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`),
//! then the data; offsets are relative to the end of the header. Everything is checked
//! against the file size before use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{FormatError, TensorBytes};

/// Largest JSON header we accept (the format's reference implementation uses 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDtype {
    F64,
    F32,
    F16,
    BF16,
    F8E4M3,
    F8E5M2,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F64" => StDtype::F64,
            "F32" => StDtype::F32,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "F8_E4M3" => StDtype::F8E4M3,
            "F8_E5M2" => StDtype::F8E5M2,
            "I64" => StDtype::I64,
            "I32" => StDtype::I32,
            "I16" => StDtype::I16,
            "I8" => StDtype::I8,
            "U8" => StDtype::U8,
            "BOOL" => StDtype::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> u64 {
        match self {
            StDtype::F64 | StDtype::I64 => 8,
            StDtype::F32 | StDtype::I32 => 4,
            StDtype::F16 | StDtype::BF16 | StDtype::I16 => 2,
            StDtype::F8E4M3 | StDtype::F8E5M2 | StDtype::I8 | StDtype::U8 | StDtype::Bool => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    pub name: String,
    pub dtype: StDtype,
    /// Row-major; `shape[0]` is the number of rows of a matrix.
    pub shape: Vec<u64>,
    /// Index into [`SafeTensors::paths`].
    pub file: usize,
    /// Absolute byte offset in its file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl StTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

pub struct SafeTensors {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<memmap2::Mmap>>,
    tensors: BTreeMap<String, StTensor>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors").field("paths", &self.paths).field("tensors", &self.tensors.len()).finish()
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

impl SafeTensors {
    /// Opens a `.safetensors` file or a model folder.
    pub fn open(path: &Path) -> Result<SafeTensors, FormatError> {
        let files = if path.is_dir() { shard_files(path)? } else { vec![path.to_path_buf()] };
        let mut st = SafeTensors { paths: Vec::new(), maps: Vec::new(), tensors: BTreeMap::new() };
        for (i, file) in files.into_iter().enumerate() {
            let map = map_file(&file)?;
            for t in parse_header(&map, i).map_err(|m| FormatError::invalid(&file, m))? {
                if st.tensors.contains_key(&t.name) {
                    return Err(FormatError::invalid(&file, format!("tensor '{}' appears in two shards", t.name)));
                }
                st.tensors.insert(t.name.clone(), t);
            }
            st.paths.push(file);
            st.maps.push(Arc::new(map));
        }
        Ok(st)
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Tensors sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &StTensor> {
        self.tensors.values()
    }

    pub fn tensor(&self, name: &str) -> Option<&StTensor> {
        self.tensors.get(name)
    }

    pub fn tensor_bytes(&self, t: &StTensor) -> TensorBytes {
        TensorBytes::Mapped { map: Arc::clone(&self.maps[t.file]), start: t.offset as usize, len: t.n_bytes as usize }
    }

    /// Maps every page of every shard now (see [`super::prefault`]).
    pub fn prefault(&self) -> u64 {
        super::prefault(&self.maps)
    }

    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.n_bytes).sum()
    }
}

/// The shard files of a model folder: from the index if present, else all `*.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| FormatError::io(&index_path, e))?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| FormatError::invalid(&index_path, format!("not a safetensors index: {e}")))?;
        let mut names: Vec<&String> = index.weight_map.values().collect();
        names.sort();
        names.dedup();
        return names
            .into_iter()
            .map(|n| {
                let rel = Path::new(n);
                if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(FormatError::invalid(&index_path, format!("shard name '{n}' leaves the folder")));
                }
                Ok(dir.join(rel))
            })
            .collect();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| FormatError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(FormatError::invalid(dir, "no .safetensors files in this folder".to_string()));
    }
    Ok(files)
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: read-only private mapping of a model file that is not modified while in use.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))
}

fn parse_header(buf: &[u8], file: usize) -> Result<Vec<StTensor>, String> {
    let len_bytes: [u8; 8] =
        buf.get(..8).and_then(|s| s.try_into().ok()).ok_or("not a safetensors file: shorter than 8 bytes")?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER || 8 + n > buf.len() as u64 {
        return Err(format!(
            "header length {n} does not fit the file ({} bytes); truncated or not a safetensors file",
            buf.len()
        ));
    }
    let data_start = 8 + n;
    let json: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&buf[8..data_start as usize]).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let data_len = buf.len() as u64 - data_start;
    let mut out = Vec::with_capacity(json.len());
    for (name, value) in json {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawInfo = serde_json::from_value(value).map_err(|e| format!("tensor '{name}': {e}"))?;
        let dtype =
            StDtype::parse(&raw.dtype).ok_or_else(|| format!("tensor '{name}': unknown dtype {}", raw.dtype))?;
        let [begin, end] = raw.data_offsets;
        let expected = raw.shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if begin > end || end > data_len || expected != Some(end - begin) {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] do not match shape {:?} × {} B within {data_len} data \
                 bytes (truncated file?)",
                raw.shape,
                dtype.size()
            ));
        }
        out.push(StTensor { name, dtype, shape: raw.shape, file, offset: data_start + begin, n_bytes: end - begin });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let p = write(dir.path(), "m.safetensors", h, &[7u8; 12]);
        let st = SafeTensors::open(&p).unwrap();
        let w = st.tensor("w").unwrap();
        assert_eq!((w.dtype, w.shape.clone(), w.n_bytes), (StDtype::BF16, vec![2, 3], 12));
        assert_eq!(&*st.tensor_bytes(w), &[7u8; 12]);
    }

    #[test]
    fn rejects_truncation_and_bad_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let p = write(dir.path(), "t.safetensors", h, &[0u8; 15]);
        let err = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
        let p = write(dir.path(), "s.safetensors", h, &[0u8; 16]);
        assert!(SafeTensors::open(&p).is_err());
        let p = dir.path().join("short.safetensors");
        std::fs::write(&p, [1, 2, 3]).unwrap();
        assert!(SafeTensors::open(&p).is_err());
    }

    #[test]
    fn folder_with_index() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.safetensors", r#"{"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#, &[1, 2]);
        write(dir.path(), "b.safetensors", r#"{"y":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[3]);
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#,
        )
        .unwrap();
        let st = SafeTensors::open(dir.path()).unwrap();
        assert_eq!(st.tensor_data_bytes(), 3);
        assert_eq!(&*st.tensor_bytes(st.tensor("y").unwrap()), &[3]);
    }
}
