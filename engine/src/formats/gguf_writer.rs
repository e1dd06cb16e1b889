//! GGUF writer (v3). Used by tests that need GGUF files with known contents and by
//! `hy synth`, which writes full-size models with random weights.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::gguf::MetaValue;
use crate::dtype::GgmlType;

const ALIGNMENT: u64 = 32;

/// A tensor to write: header fields plus its data bytes.
pub struct WriterTensor {
    pub name: String,
    /// GGML order (`dims[0]` = row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

impl WriterTensor {
    pub fn new(name: &str, dims: Vec<u64>, ggml_type: GgmlType, data: Vec<u8>) -> Self {
        WriterTensor { name: name.to_string(), dims, ggml_type, data }
    }
}

/// Collects metadata and tensors, then serializes them.
#[derive(Default)]
pub struct GgufWriter {
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<WriterTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_meta(&mut self, key: &str, value: MetaValue) {
        self.meta.push((key.to_string(), value));
    }

    pub fn add_tensor(&mut self, t: WriterTensor) {
        self.tensors.push(t);
    }

    /// The whole file in memory (for small files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Streams the file to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let specs: Vec<TensorSpec> = self
            .tensors
            .iter()
            .map(|t| TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ggml_type: t.ggml_type })
            .collect();
        write_streaming(w, &self.meta, &specs, |i, buf| {
            buf.copy_from_slice(&self.tensors[i].data);
            Ok(())
        })
    }
}

/// A tensor's header fields, for streaming writes where the data is produced on the fly.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// Data bytes; panics only on a programming error (dims not whole blocks).
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        self.ggml_type
            .bytes_for(n)
            .unwrap_or_else(|| panic!("{}: {:?} not whole {} blocks", self.name, self.dims, self.ggml_type))
    }
}

/// Writes header and data; `fill(i, buf)` must fill tensor `i`'s data into `buf` (exactly
/// its size). Tensors are filled in order, one buffer at a time, so files larger than RAM
/// can be written.
pub fn write_streaming(
    w: &mut impl Write,
    meta: &[(String, MetaValue)],
    tensors: &[TensorSpec],
    mut fill: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut header, k);
        header.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut header, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&(t.ggml_type as u32).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.n_bytes()).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let header_len = header.len() as u64;
    pad(&mut header, header_len);
    w.write_all(&header)?;
    let mut buf = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        buf.clear();
        buf.resize(t.n_bytes() as usize, 0);
        fill(i, &mut buf)?;
        w.write_all(&buf)?;
        let mut p = Vec::new();
        pad(&mut p, t.n_bytes());
        w.write_all(&p)?;
    }
    Ok(())
}

fn pad(buf: &mut Vec<u8>, len: u64) {
    let padded = len.div_ceil(ALIGNMENT) * ALIGNMENT;
    buf.resize(buf.len() + (padded - len) as usize, 0);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(*x as u8),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(items) => {
            // An empty array is written as an array of u8.
            let elem = items.first().map(type_id).unwrap_or(0);
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item);
            }
        }
    }
}

/// Writes a split model `dir/{prefix}-0000k-of-0000N.gguf`, one shard per tensor group, with
/// the `split.*` keys llama.cpp writes; `meta` goes into the first shard. Returns the paths.
pub fn write_split(
    dir: &Path,
    prefix: &str,
    shards: Vec<Vec<WriterTensor>>,
    meta: Vec<(String, MetaValue)>,
) -> std::io::Result<Vec<PathBuf>> {
    let count = shards.len() as u16;
    let total: usize = shards.iter().map(Vec::len).sum();
    let mut paths = Vec::new();
    for (i, tensors) in shards.into_iter().enumerate() {
        let mut w = GgufWriter::new();
        if i == 0 {
            for (k, v) in &meta {
                w.add_meta(k, v.clone());
            }
        }
        w.add_meta("split.no", MetaValue::U16(i as u16));
        w.add_meta("split.count", MetaValue::U16(count));
        w.add_meta("split.tensors.count", MetaValue::I32(total as i32));
        for t in tensors {
            w.add_tensor(t);
        }
        let path = dir.join(format!("{prefix}-{:05}-of-{:05}.gguf", i + 1, count));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        w.write_to(&mut f)?;
        f.flush()?;
        paths.push(path);
    }
    Ok(paths)
}
