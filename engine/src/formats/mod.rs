//! Model file formats: GGUF (`gguf`) and safetensors (`safetensors`). One reader of each in
//! the project; the planner reads headers through them, the engine maps tensors through them.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod gguf;
pub mod gguf_writer;
pub mod safetensors;

pub use gguf::{GgufFile, GgufTensor, MetaValue};
pub use safetensors::{SafeTensors, StDtype, StTensor};

/// Touches every page of `maps` from all rayon threads, so that page-table entries exist
/// before the first token: otherwise every first read of a weight page (an expert chosen for
/// the first time, hundreds of MB per token) takes a page fault in the middle of decode.
/// Reads from disk whatever is not cached yet. Returns the bytes covered.
pub fn prefault(maps: &[Arc<memmap2::Mmap>]) -> u64 {
    use rayon::prelude::*;
    const PAGE: usize = 4096;
    for m in maps {
        // Ask for read-ahead first; failure only costs speed.
        #[cfg(unix)]
        let _ = m.advise(memmap2::Advice::WillNeed);
        let sum: u64 = m.par_chunks(PAGE * 512).map(|c| c.iter().step_by(PAGE).map(|&b| b as u64).sum::<u64>()).sum();
        std::hint::black_box(sum);
    }
    maps.iter().map(|m| m.len() as u64).sum()
}

/// Copies every map into anonymous memory with transparent huge pages requested, in
/// parallel, and returns the copies (same bytes, same offsets). Weights in 2 MB pages stream
/// faster than the page cache's 4 KB pages: one TLB entry per 2 MB instead of 512, and the
/// hardware prefetchers, which stop at page boundaries, run on. Returns `None` for a map
/// that could not be allocated (the caller keeps the file mapping). `edit(i, bytes)` may
/// rewrite map `i`'s copy before it is made read-only (repacking weights for the kernels);
/// maps are copied one after the other, each in parallel chunks.
pub fn copy_to_anonymous(
    maps: &[Arc<memmap2::Mmap>],
    edit: &mut dyn FnMut(usize, &mut [u8]),
) -> Vec<Option<Arc<memmap2::Mmap>>> {
    use rayon::prelude::*;
    const CHUNK: usize = 16 << 20;
    maps.iter()
        .enumerate()
        .map(|(i, m)| {
            let mut anon = memmap2::MmapMut::map_anon(m.len().max(1)).ok()?;
            #[cfg(target_os = "linux")]
            let _ = anon.advise(memmap2::Advice::HugePage);
            anon[..m.len()].par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
            edit(i, &mut anon[..m.len()]);
            anon.make_read_only().ok().map(Arc::new)
        })
        .collect()
}

/// Why a model file could not be read. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io { path: path.to_path_buf(), source }
    }

    pub fn invalid(path: &Path, message: String) -> Self {
        FormatError::Invalid { path: path.to_path_buf(), message }
    }
}

/// Bytes of one tensor: a range of a memory-mapped file (no copy) or an owned buffer (made
/// only when a plan asks for it: NUMA-local placement, repacking). Cheap to clone.
#[derive(Clone)]
pub enum TensorBytes {
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl TensorBytes {
    pub fn len(&self) -> usize {
        match self {
            TensorBytes::Mapped { len, .. } => *len,
            TensorBytes::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { map, start, len } => &map[*start..*start + *len],
            TensorBytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBytes({} bytes)", self.len())
    }
}
