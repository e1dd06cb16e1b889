//! Weights as the models see them: a [`Weight`] is a zero-copy view of one tensor (bytes in the
//! memory-mapped file, its storage type, rows × cols) that yields a `kernels::QMatrix`.
//! A [`WeightSource`] hands out weights by their *internal* name — the llama.cpp GGUF tensor
//! names (`token_embd.weight`, `blk.3.attn_q.weight`, ...) — whatever the file format, so model
//! code is written once; the safetensors source maps internal names to HF names.

use std::sync::Arc;

use crate::dtype::GgmlType;
use crate::formats::{GgufFile, TensorBytes};
use crate::kernels::{self, QMatrix, WeightType};

use super::error::ModelError;

/// One weight tensor, viewed as a row-major matrix (`rows` × `cols`). Vectors are 1 × len.
/// Higher-dimensional tensors are flattened to rows of the innermost dimension (GGUF expert
/// stacks: rows = n_ff × n_expert; use [`Weight::slice_rows`] for one expert).
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub bytes: TensorBytes,
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    /// FP8 only: the f32 `scale_inv` tensor, [ceil(rows/128), ceil(cols/128)].
    pub block_scales: Option<TensorBytes>,
}

impl Weight {
    /// Checks that the byte length matches the type and shape (so kernels never read out of
    /// bounds) and builds the view.
    pub fn new(name: &str, bytes: TensorBytes, ty: WeightType, rows: usize, cols: usize) -> Result<Self, ModelError> {
        let w = Weight { name: name.to_string(), bytes, ty, rows, cols, block_scales: None };
        let want = w.row_bytes()? * rows;
        if want != w.bytes.len() {
            return Err(ModelError::tensor(
                name,
                format!("{} bytes for {rows}×{cols} {:?}, expected {want}", w.bytes.len(), ty),
            ));
        }
        Ok(w)
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> Result<usize, ModelError> {
        match self.ty {
            WeightType::Ggml(t) | WeightType::X16(t) => {
                t.bytes_for(self.cols as u64).map(|b| b as usize).ok_or_else(|| {
                    ModelError::tensor(
                        &self.name,
                        format!("row length {} is not a multiple of {}'s block of {}", self.cols, t, t.block_size()),
                    )
                })
            }
            WeightType::Fp8E4M3Block128 => Ok(self.cols),
        }
    }

    /// The kernels' view of this matrix.
    pub fn qmatrix(&self) -> QMatrix<'_> {
        QMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.bytes,
            block_scales: self.block_scales.as_deref().unwrap_or(&[]),
        }
    }

    /// The GGML type, if this is a GGML-typed weight.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        match self.ty {
            WeightType::Ggml(t) => Some(t),
            WeightType::X16(_) | WeightType::Fp8E4M3Block128 => None,
        }
    }

    /// Rows `start..start + n` as their own weight, sharing the bytes (no copy): one expert of a
    /// stacked GGUF expert tensor, or one head's slice. Not for FP8 (block scales span rows).
    pub fn slice_rows(&self, start: usize, n: usize) -> Result<Weight, ModelError> {
        if start + n > self.rows {
            return Err(ModelError::tensor(&self.name, format!("rows {start}..{} out of {}", start + n, self.rows)));
        }
        if self.block_scales.is_some() {
            return Err(ModelError::tensor(&self.name, "row slices of block-scaled FP8 weights are not supported"));
        }
        let rb = self.row_bytes()?;
        let bytes = match &self.bytes {
            TensorBytes::Mapped { map, start: s, .. } => {
                TensorBytes::Mapped { map: map.clone(), start: s + start * rb, len: n * rb }
            }
            TensorBytes::Owned(v) => TensorBytes::Owned(std::sync::Arc::new(v[start * rb..(start + n) * rb].to_vec())),
        };
        Ok(Weight { name: self.name.clone(), bytes, ty: self.ty, rows: n, cols: self.cols, block_scales: None })
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.rows * self.cols
    }
}

/// Where weights come from. Names are internal (llama.cpp GGUF) names; `Ok(None)` means the
/// tensor is absent (optional tensors: biases, tied output), `Err` that it is present but
/// unusable.
pub trait WeightSource: Send + Sync {
    fn weight(&self, name: &str) -> Result<Option<Weight>, ModelError>;

    /// A short description for error messages ("GGUF file x.gguf").
    fn describe(&self) -> String;
}

/// A required weight, with an error naming the tensor and the file when it is missing.
pub fn require(src: &dyn WeightSource, name: &str, arch: &str) -> Result<Weight, ModelError> {
    src.weight(name)?.ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
        source_desc: src.describe(),
        arch: arch.to_string(),
    })
}

/// A required weight with a checked shape.
pub fn require_shape(
    src: &dyn WeightSource,
    name: &str,
    arch: &str,
    rows: usize,
    cols: usize,
) -> Result<Weight, ModelError> {
    let w = require(src, name, arch)?;
    check_shape(&w, rows, cols)?;
    Ok(w)
}

/// Errors unless `w` is `rows × cols`.
pub fn check_shape(w: &Weight, rows: usize, cols: usize) -> Result<(), ModelError> {
    if w.rows != rows || w.cols != cols {
        return Err(ModelError::tensor(&w.name, format!("shape {}×{}, expected {rows}×{cols}", w.rows, w.cols)));
    }
    Ok(())
}

/// Weights of a GGUF file (internal names are its own tensor names).
pub struct GgufSource {
    pub file: Arc<GgufFile>,
}

impl GgufSource {
    pub fn new(file: Arc<GgufFile>) -> Self {
        GgufSource { file }
    }
}

impl WeightSource for GgufSource {
    fn weight(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        let Some(t) = self.file.tensor(name) else { return Ok(None) };
        let cols = t.row_len();
        let rows = t.n_rows();
        let ty = if self.file.is_repacked(t) { WeightType::X16(t.ggml_type) } else { WeightType::Ggml(t.ggml_type) };
        Weight::new(name, self.file.tensor_bytes(t), ty, rows, cols).map(Some)
    }

    fn describe(&self) -> String {
        match self.file.paths().first() {
            Some(p) => format!("GGUF file {}", p.display()),
            None => "GGUF file".to_string(),
        }
    }
}

/// Maps an internal (GGUF) tensor name to its HF transformers name for the tensors that all
/// llama-like architectures share; `None` for names it does not know (architectures add their
/// own on top).
pub fn hf_common_name(internal: &str) -> Option<String> {
    let fixed = match internal {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = internal.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf_tail = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_tail}"))
}

// ---------------------------------------------------------------------------------------------
// Compute through the kernels (one implementation of dequantization and matvec in the project)
// ---------------------------------------------------------------------------------------------

impl Weight {
    /// `y = x · Wᵀ` for `n` rows of `x` (each `cols` long) into `n` rows of `y` (each `rows`
    /// long): a matvec for one row, a matmul (weights read once) for several.
    pub fn linear(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), ModelError> {
        /// Below this many weight bytes a product stays on the kernels' path.
        const POOL_MIN_BYTES: usize = 1 << 20;
        if x.len() < n * self.cols || y.len() < n * self.rows {
            return Err(ModelError::Kernel {
                name: self.name.clone(),
                msg: format!(
                    "{n} rows: input {} / output {} values for a {}×{} matrix",
                    x.len(),
                    y.len(),
                    self.rows,
                    self.cols
                ),
            });
        }
        let (x, y) = (&x[..n * self.cols], &mut y[..n * self.rows]);
        let w = self.qmatrix();
        // Large products run on the runtime's pinned pool when it is free (no thread wake-ups,
        // each thread streams the same rows every call); small ones and callers already
        // inside parallel work use the kernels' threads.
        if w.data.len() >= POOL_MIN_BYTES {
            if let Some(pool) = crate::runtime::pool::global() {
                if let Ok(pool) = pool.try_lock() {
                    crate::runtime::experts::pool_matmul(&pool, &w, x, n, y);
                    return Ok(());
                }
            }
        }
        if n == 1 {
            kernels::matvec(&w, x, y);
        } else {
            kernels::matmul(&w, x, n, y);
        }
        Ok(())
    }

    /// Row `r` as f32 (an embedding lookup reads one row of a possibly quantized table).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let ty = self
            .ggml_type()
            .ok_or_else(|| ModelError::tensor(&self.name, "row lookup of an FP8 or repacked matrix"))?;
        if r >= self.rows || out.len() != self.cols {
            return Err(ModelError::tensor(
                &self.name,
                format!("row {r} of {} (output {} values)", self.rows, out.len()),
            ));
        }
        let rb = self.row_bytes()?;
        kernels::dequantize_row(ty, &self.bytes[r * rb..(r + 1) * rb], out)
            .map_err(|e| ModelError::Kernel { name: self.name.clone(), msg: e.to_string() })
    }

    /// The whole tensor as f32 (for small tensors: norm weights, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let mut v = vec![0.0; self.n_elements()];
        for (r, row) in v.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_f32(r, row)?;
        }
        Ok(v)
    }
}

/// A required vector (norm weight) of `len` values as f32.
pub fn require_vec(src: &dyn WeightSource, name: &str, arch: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let w = require(src, name, arch)?;
    vec_of_len(w, len)
}

/// An optional vector (bias, optional norm) of `len` values as f32.
pub fn optional_vec(src: &dyn WeightSource, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
    src.weight(name)?.map(|w| vec_of_len(w, len)).transpose()
}

fn vec_of_len(w: Weight, len: usize) -> Result<Vec<f32>, ModelError> {
    if w.n_elements() != len {
        return Err(ModelError::tensor(&w.name, format!("{} values, expected {len}", w.n_elements())));
    }
    w.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(n: usize) -> TensorBytes {
        TensorBytes::Owned(Arc::new((0..n).map(|i| i as u8).collect()))
    }

    #[test]
    fn new_rejects_wrong_byte_count() {
        let ok = Weight::new("w", owned(2 * 34), WeightType::Ggml(GgmlType::Q8_0), 2, 32);
        assert!(ok.is_ok());
        let bad = Weight::new("w", owned(2 * 34 - 1), WeightType::Ggml(GgmlType::Q8_0), 2, 32);
        assert!(bad.is_err());
        let not_blocks = Weight::new("w", owned(34), WeightType::Ggml(GgmlType::Q8_0), 1, 31);
        assert!(not_blocks.is_err());
    }

    #[test]
    fn slice_rows_views_the_right_bytes() {
        let w = Weight::new("w", owned(3 * 8), WeightType::Ggml(GgmlType::F32), 3, 2).unwrap();
        let s = w.slice_rows(1, 2).unwrap();
        assert_eq!(&s.bytes[..], &(8u8..24).collect::<Vec<_>>()[..]);
        assert!(w.slice_rows(2, 2).is_err());
    }

    #[test]
    fn hf_names() {
        assert_eq!(hf_common_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_common_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_common_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_common_name("blk.1.unknown.weight"), None);
    }
}
