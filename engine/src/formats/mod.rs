//! Model file formats: GGUF (`gguf`) and safetensors (`safetensors`). One reader of each in
//! the project; the planner reads headers through them, the engine maps tensors through them.

use std::ops::Deref;
use std::sync::Arc;

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
