//! GGUF reader: memory-mapped, header parsed eagerly, tensor data never copied.
//!
//! Layout (v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, metadata key/value pairs, tensor infos (name, n_dims u32, dims u64 × n, type u32,
//! offset u64), padding to `general.alignment` (default 32), tensor data. Offsets in tensor
//! infos are relative to the start of the data section.
//!
//! Split models (`name-00001-of-00009.gguf`) carry `split.no`, `split.count` and
//! `split.tensors.count`; opening any shard opens all of them, and tensors from every shard
//! appear in one list.
//!
//! Every length and offset read from the file is checked against the file size before use,
//! so malformed or truncated files give a [`FormatError`], never a panic or an
//! out-of-bounds read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FormatError, TensorBytes};
use crate::dtype::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Upper bound on array/string lengths and counts, to fail fast on garbage headers instead of
/// trying to allocate terabytes.
const MAX_COUNT: u64 = 1 << 28;
const MAX_DIMS: u32 = 8;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// GGML order: `dims[0]` is the row length (innermost, contiguous).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Index into [`GgufFile::paths`].
    pub shard: usize,
    /// Absolute byte offset of the data in its shard file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl GgufTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of one row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

/// An opened GGUF model (one file, or every shard of a split model).
pub struct GgufFile {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<memmap2::Mmap>>,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
    index: HashMap<String, usize>,
    version: u32,
    /// Per tensor: its bytes were repacked for the kernels when copied into memory
    /// ([`GgufFile::load_into_memory_repacking`]).
    repacked: Vec<bool>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("paths", &self.paths).field("tensors", &self.tensors.len()).finish()
    }
}

/// The header of one file, parsed.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
}

impl GgufFile {
    /// Opens a GGUF file. If the name has the split form `-0000k-of-0000N.gguf`, every shard
    /// is opened (they must all exist) and their tensors are listed together; metadata comes
    /// from the first shard.
    pub fn open(path: &Path) -> Result<GgufFile, FormatError> {
        let paths = match split_siblings(path) {
            Some(paths) => paths,
            None => vec![path.to_path_buf()],
        };
        let mut maps = Vec::with_capacity(paths.len());
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::new();
        let mut version = 0;
        for (shard, p) in paths.iter().enumerate() {
            let map = map_file(p)?;
            let header = parse_header(&map, shard).map_err(|e| e.in_file(p))?;
            if shard == 0 {
                metadata = header.metadata;
                version = header.version;
            } else if let Some(no) = header.metadata.get("split.no").and_then(MetaValue::as_u64) {
                if no as usize != shard {
                    return Err(FormatError::invalid(
                        p,
                        format!("split.no is {no}, expected {shard} from the file name"),
                    ));
                }
            }
            tensors.extend(header.tensors);
            maps.push(Arc::new(map));
        }
        if let Some(count) = metadata.get("split.tensors.count").and_then(MetaValue::as_u64) {
            if count as usize != tensors.len() {
                return Err(FormatError::invalid(
                    &paths[0],
                    format!(
                        "split.tensors.count says {count} tensors, the {} shard(s) hold {}",
                        paths.len(),
                        tensors.len()
                    ),
                ));
            }
        }
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(FormatError::invalid(&paths[0], format!("duplicate tensor name '{}'", t.name)));
            }
        }
        let repacked = vec![false; tensors.len()];
        Ok(GgufFile { paths, maps, metadata, tensors, index, version, repacked })
    }

    /// The GGUF version of the first shard (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Total size of all shard files in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.len() as u64).sum()
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    /// An array of strings; `None` if missing or if any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(MetaValue::as_str).collect()
    }

    /// A numeric array as f32; `None` if missing or not numeric.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_f64().map(|x| x as f32)).collect()
    }

    /// An integer array as i64; `None` if missing or not all integers.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key)?.as_array()?.iter().map(MetaValue::as_i64).collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped key: `arch_u64("block_count")` reads `{arch}.block_count`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    /// An architecture-scoped float key (`{arch}.{suffix}`).
    pub fn arch_f64(&self, suffix: &str) -> Option<f64> {
        let arch = self.architecture()?;
        self.get_f64(&format!("{arch}.{suffix}"))
    }

    /// All tensors of all shards in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, zero-copy. Bounds were checked when the file was opened.
    pub fn tensor_bytes(&self, t: &GgufTensor) -> TensorBytes {
        TensorBytes::Mapped { map: Arc::clone(&self.maps[t.shard]), start: t.offset as usize, len: t.n_bytes as usize }
    }

    /// Maps every page of every shard now (see [`super::prefault`]); for the engine, not for
    /// header-only readers such as the planner.
    pub fn prefault(&self) -> u64 {
        super::prefault(&self.maps)
    }

    /// Moves every shard's bytes into anonymous memory with huge pages (see
    /// [`super::copy_to_anonymous`]); shards that cannot be copied stay mapped. Returns the
    /// bytes copied. Tensor views taken before this call keep the file mapping.
    pub fn load_into_memory(&mut self) -> u64 {
        self.load_into_memory_repacking(&|_, _| false)
    }

    /// [`GgufFile::load_into_memory`], and in the copy, every tensor for which
    /// `repack(tensor, bytes)` returns true has rewritten its bytes (same length) into a
    /// layout for the kernels; [`GgufFile::is_repacked`] then says so. A tensor of a shard that
    /// could not be copied keeps the file's layout.
    pub fn load_into_memory_repacking(&mut self, repack: &dyn Fn(&GgufTensor, &mut [u8]) -> bool) -> u64 {
        let mut rewritten = vec![false; self.tensors.len()];
        let tensors = &self.tensors;
        let copies = super::copy_to_anonymous(&self.maps, &mut |shard, bytes| {
            for (i, t) in tensors.iter().enumerate().filter(|(_, t)| t.shard == shard) {
                rewritten[i] = repack(t, &mut bytes[t.offset as usize..(t.offset + t.n_bytes) as usize]);
            }
        });
        let mut copied = 0;
        for (m, c) in self.maps.iter_mut().zip(&copies) {
            if let Some(c) = c {
                copied += c.len() as u64;
                *m = c.clone();
            }
        }
        for ((done, t), r) in self.repacked.iter_mut().zip(&self.tensors).zip(rewritten) {
            *done |= r && copies[t.shard].is_some();
        }
        copied
    }

    /// Whether `t`'s bytes were repacked at load ([`GgufFile::load_into_memory_repacking`]).
    pub fn is_repacked(&self, t: &GgufTensor) -> bool {
        self.index.get(&t.name).is_some_and(|&i| self.repacked[i])
    }

    /// Sum of all tensor data bytes.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the file is opened read-only and mapped privately read-only. The usual mmap
    // caveat applies: another process truncating the file while it is mapped would fault;
    // model files are not modified while in use.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))
}

/// For `dir/name-00002-of-00009.gguf`, the paths of all nine shards; `None` if the name does
/// not have the split form.
pub fn split_siblings(path: &Path) -> Option<Vec<PathBuf>> {
    let (prefix, _, count) = parse_split_name(path)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    Some((1..=count).map(|k| dir.join(format!("{prefix}-{k:05}-of-{count:05}.gguf"))).collect())
}

/// Splits `name-00002-of-00009.gguf` into ("name", 2, 9).
pub fn parse_split_name(path: &Path) -> Option<(String, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    let no: u32 = no.parse().ok()?;
    let count: u32 = count.parse().ok()?;
    (no >= 1 && no <= count).then(|| (prefix.to_string(), no, count))
}

/// A bounds-checked little-endian cursor over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Why the header could not be parsed, before a file name is attached.
#[derive(Debug)]
struct ParseError(String);

impl ParseError {
    fn in_file(self, path: &Path) -> FormatError {
        FormatError::invalid(path, self.0)
    }
}

type PResult<T> = Result<T, ParseError>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            ParseError(format!(
                "truncated: needs {n} more bytes for {what} at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            ))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> PResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> PResult<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(ParseError(format!("{what} is {n}, which is not plausible (corrupt header?)")));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| ParseError(format!("{what}: length {len} too large")))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ParseError(format!("{what} is not valid UTF-8")))
    }
}

fn parse_header(buf: &[u8], shard: usize) -> PResult<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "magic").map_err(|_| ParseError("not a GGUF file: shorter than 4 bytes".into()))?;
    if magic != MAGIC {
        return Err(ParseError(format!("not a GGUF file: starts with {magic:02x?}, expected 'GGUF'")));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(ParseError(format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    let n_tensors = c.count("tensor count")?;
    let n_kv = c.count("metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of '{key}'"))?;
        let value = read_value(&mut c, ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        infos.push(read_tensor_info(&mut c, i)?);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(ParseError(format!("general.alignment {v:?} is not a power of two"))),
        },
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ty, rel) in infos {
        let n_elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let n_bytes = n_elements.and_then(|n| ty.bytes_for(n)).ok_or_else(|| {
            ParseError(format!(
                "tensor '{name}': dims {dims:?} are not a whole number of {ty} blocks ({} weights each)",
                ty.block_size()
            ))
        })?;
        if rel % alignment != 0 {
            return Err(ParseError(format!("tensor '{name}': offset {rel} is not aligned to {alignment}")));
        }
        let offset = data_start.checked_add(rel);
        let end = offset.and_then(|o| o.checked_add(n_bytes));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= file_len => {
                tensors.push(GgufTensor { name, dims, ggml_type: ty, shard, offset, n_bytes })
            }
            _ => {
                return Err(ParseError(format!(
                    "truncated: tensor '{name}' ({n_bytes} bytes at data offset {rel}) ends past the end of \
                     the file ({file_len} bytes); the download may be incomplete"
                )))
            }
        }
    }
    Ok(Header { version, metadata, tensors })
}

fn read_tensor_info(c: &mut Cursor, i: u64) -> PResult<(String, Vec<u64>, GgmlType, u64)> {
    let name = c.string(&format!("name of tensor #{i}"))?;
    let n_dims = c.u32(&format!("dimension count of '{name}'"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(ParseError(format!("tensor '{name}' has {n_dims} dimensions (1..={MAX_DIMS} allowed)")));
    }
    let dims = (0..n_dims).map(|_| c.u64(&format!("dims of '{name}'"))).collect::<PResult<Vec<_>>>()?;
    let raw = c.u32(&format!("type of '{name}'"))?;
    let ty =
        GgmlType::from_u32(raw).ok_or_else(|| ParseError(format!("tensor '{name}' has unknown GGML type {raw}")))?;
    let offset = c.u64(&format!("offset of '{name}'"))?;
    Ok((name, dims, ty, offset))
}

fn read_value(c: &mut Cursor, ty: u32, key: &str, depth: u32) -> PResult<MetaValue> {
    Ok(match ty {
        0 => MetaValue::U8(c.u8(key)?),
        1 => MetaValue::I8(c.u8(key)? as i8),
        2 => MetaValue::U16(c.u16(key)?),
        3 => MetaValue::I16(c.u16(key)? as i16),
        4 => MetaValue::U32(c.u32(key)?),
        5 => MetaValue::I32(c.u32(key)? as i32),
        6 => MetaValue::F32(f32::from_bits(c.u32(key)?)),
        7 => match c.u8(key)? {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return Err(ParseError(format!("'{key}': bool byte is {b}, expected 0 or 1"))),
        },
        8 => MetaValue::String(c.string(key)?),
        9 => {
            if depth > 2 {
                return Err(ParseError(format!("'{key}': arrays nested too deeply")));
            }
            let elem = c.u32(key)?;
            let n = c.count(&format!("length of array '{key}'"))?;
            // Every element takes at least one byte: reject lengths the file cannot hold
            // before allocating.
            if n > (c.buf.len() - c.pos) as u64 {
                return Err(ParseError(format!("truncated: array '{key}' claims {n} elements")));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(c.u64(key)?),
        11 => MetaValue::I64(c.u64(key)? as i64),
        12 => MetaValue::F64(f64::from_bits(c.u64(key)?)),
        other => return Err(ParseError(format!("'{key}' has unknown metadata type {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf_writer::{GgufWriter, WriterTensor};

    fn tiny_file(dir: &Path, name: &str) -> PathBuf {
        let mut w = GgufWriter::new();
        w.add_meta("general.architecture", MetaValue::String("llama".into()));
        w.add_meta("llama.block_count", MetaValue::U32(2));
        w.add_meta(
            "tokenizer.ggml.tokens",
            MetaValue::Array(vec![MetaValue::String("a".into()), MetaValue::String("b".into())]),
        );
        w.add_tensor(WriterTensor::new("a", vec![32, 2], GgmlType::Q8_0, vec![1u8; 68]));
        w.add_tensor(WriterTensor::new("b", vec![3], GgmlType::F32, vec![2u8; 12]));
        let path = dir.join(name);
        std::fs::write(&path, w.to_bytes()).unwrap();
        path
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let g = GgufFile::open(&tiny_file(dir.path(), "m.gguf")).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.arch_u64("block_count"), Some(2));
        assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "b"]);
        let a = g.tensor("a").unwrap();
        assert_eq!((a.row_len(), a.n_rows(), a.n_bytes), (32, 2, 68));
        assert!(g.tensor_bytes(a).iter().all(|&b| b == 1));
        let b = g.tensor("b").unwrap();
        assert_eq!(b.offset % 32, 0);
        assert!(g.tensor_bytes(b).iter().all(|&x| x == 2));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(dir.path(), "m.gguf");
        let bytes = std::fs::read(&path).unwrap();
        // Padding after the last tensor is optional, so cuts only count up to its end.
        let b = GgufFile::open(&path).unwrap().tensor("b").unwrap().clone();
        for cut in 0..(b.offset + b.n_bytes) as usize {
            let p = dir.path().join("cut.gguf");
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(GgufFile::open(&p).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn split_names() {
        assert_eq!(
            parse_split_name(Path::new("/m/DeepSeek-R1-Q4_K_M-00002-of-00009.gguf")),
            Some(("DeepSeek-R1-Q4_K_M".into(), 2, 9))
        );
        assert_eq!(parse_split_name(Path::new("x-00010-of-00009.gguf")), None);
        assert_eq!(parse_split_name(Path::new("model.gguf")), None);
        let s = split_siblings(Path::new("d/m-00001-of-00002.gguf")).unwrap();
        assert_eq!(s, vec![PathBuf::from("d/m-00001-of-00002.gguf"), PathBuf::from("d/m-00002-of-00002.gguf")]);
    }

    #[test]
    fn opens_all_shards_of_a_split_model() {
        let dir = tempfile::tempdir().unwrap();
        let shards = crate::formats::gguf_writer::write_split(
            dir.path(),
            "m",
            vec![
                vec![WriterTensor::new("x", vec![64], GgmlType::F16, vec![0; 128])],
                vec![WriterTensor::new("y", vec![256], GgmlType::Q4_K, vec![0; 144])],
            ],
            vec![("general.architecture".into(), MetaValue::String("llama".into()))],
        )
        .unwrap();
        let g = GgufFile::open(&shards[1]).unwrap();
        assert_eq!(g.paths().len(), 2);
        assert_eq!(g.tensor_data_bytes(), 128 + 144);
        assert_eq!(g.tensor("y").unwrap().shard, 1);
        std::fs::remove_file(&shards[1]).unwrap();
        assert!(GgufFile::open(&shards[0]).is_err());
    }
}
