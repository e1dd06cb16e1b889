//! Synthetic models: GGUF files with the real shapes and metadata of a full-size model and
//! random weights, so speed can be measured at full size without downloading hundreds of GB.
//! Figures measured on them must always say "synthetic weights".
//!
//! Weights are random but valid: every block's scale fields hold small finite f16 values, so
//! activations stay finite and kernels do the same work as on real weights. The metadata
//! follows llama.cpp's `deepseek2` conventions (split `attn_k_b`/`attn_v_b`, MLA key lengths),
//! so the files load in llama.cpp too.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use crate::dtype::GgmlType;
use crate::formats::gguf::MetaValue;
use crate::formats::gguf_writer::{write_streaming, TensorSpec};

/// Shape of a DeepSeek-V3-family model (GGUF arch `deepseek2`).
#[derive(Clone, Debug, PartialEq)]
pub struct Deepseek2Shape {
    pub name: String,
    pub hidden: u64,
    pub n_layers: u64,
    pub n_dense_layers: u64,
    pub dense_intermediate: u64,
    pub n_experts: u64,
    pub n_experts_used: u64,
    pub n_shared_experts: u64,
    pub moe_intermediate: u64,
    pub n_group: u64,
    pub topk_group: u64,
    pub routed_scaling_factor: f64,
    pub n_heads: u64,
    pub q_lora_rank: u64,
    pub kv_lora_rank: u64,
    pub qk_nope_head_dim: u64,
    pub qk_rope_head_dim: u64,
    pub v_head_dim: u64,
    pub vocab: u64,
    pub context_length: u64,
    pub rope_theta: f64,
}

impl Deepseek2Shape {
    /// DeepSeek-V3 / R1 (671B): the values in DESIGN.md.
    pub fn deepseek_v3() -> Self {
        Deepseek2Shape {
            name: "DeepSeek-V3 (synthetic weights)".into(),
            hidden: 7168,
            n_layers: 61,
            n_dense_layers: 3,
            dense_intermediate: 18432,
            n_experts: 256,
            n_experts_used: 8,
            n_shared_experts: 1,
            moe_intermediate: 2048,
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
            n_heads: 128,
            q_lora_rank: 1536,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            vocab: 129280,
            context_length: 163840,
            rope_theta: 10000.0,
        }
    }

    /// Kimi-K2 (1T): DeepSeek-V3 layout with 384 experts, 64 heads, one dense layer.
    pub fn kimi_k2() -> Self {
        Deepseek2Shape {
            name: "Kimi-K2 (synthetic weights)".into(),
            n_experts: 384,
            n_heads: 64,
            n_dense_layers: 1,
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 2.827,
            vocab: 163840,
            context_length: 131072,
            rope_theta: 50000.0,
            ..Self::deepseek_v3()
        }
    }

    /// Looks a shape up by catalog-style name.
    pub fn by_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "deepseek-v3" | "deepseek-r1" | "deepseek" => Some(Self::deepseek_v3()),
            "kimi-k2" => Some(Self::kimi_k2()),
            _ => None,
        }
    }
}

/// Which GGML type each tensor gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthQuant {
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for `ffn_down`/`attn_v_b` on the layers where
    /// llama.cpp spends more bits (first and last eighth, every third in between) and for `output`.
    Q4KM,
    /// One type for every matrix (falling back to Q8_0 / Q5_0 where rows are not multiples of 256).
    Uniform(GgmlType),
}

impl SynthQuant {
    pub fn parse(s: &str) -> Option<Self> {
        let up = s.to_ascii_uppercase();
        if up == "Q4_K_M" {
            return Some(SynthQuant::Q4KM);
        }
        let ty = match up.as_str() {
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::BF16,
            "Q8_0" => GgmlType::Q8_0,
            "Q6_K" => GgmlType::Q6_K,
            "Q5_K" | "Q5_K_M" => GgmlType::Q5_K,
            "Q4_K" | "Q4_K_S" => GgmlType::Q4_K,
            "Q3_K" | "Q3_K_M" => GgmlType::Q3_K,
            "Q2_K" => GgmlType::Q2_K,
            _ => return None,
        };
        Some(SynthQuant::Uniform(ty))
    }

    fn file_type(self) -> u32 {
        match self {
            SynthQuant::Q4KM => 15,
            SynthQuant::Uniform(t) => match t {
                GgmlType::F16 => 1,
                GgmlType::Q8_0 => 7,
                GgmlType::Q2_K => 10,
                GgmlType::Q3_K => 12,
                GgmlType::Q4_K => 14,
                GgmlType::Q5_K => 16,
                GgmlType::Q6_K => 18,
                GgmlType::BF16 => 32,
                _ => 0,
            },
        }
    }
}

/// llama.cpp's `use_more_bits` rule for Q4_K_M.
fn more_bits(layer: u64, n_layers: u64) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The type for a matrix whose rows have `row_len` weights.
fn pick(quant: SynthQuant, kind: &str, layer: Option<u64>, n_layers: u64, row_len: u64) -> GgmlType {
    let wanted = match quant {
        SynthQuant::Uniform(t) => t,
        SynthQuant::Q4KM => {
            let heavy =
                (kind.starts_with("ffn_down") || kind == "attn_v_b") && layer.is_some_and(|l| more_bits(l, n_layers));
            if kind == "output" || heavy {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            }
        }
    };
    if row_len.is_multiple_of(wanted.block_size() as u64) {
        wanted
    } else if matches!(wanted, GgmlType::Q6_K | GgmlType::Q8_0) {
        GgmlType::Q8_0
    } else {
        GgmlType::Q5_0
    }
}

/// Tensor list (names, GGML dims, types) for `shape` with `quant`.
pub fn deepseek2_tensors(shape: &Deepseek2Shape, quant: SynthQuant) -> Vec<TensorSpec> {
    let s = shape;
    let n = s.n_layers;
    let mut out = Vec::new();
    let mut mat = |name: String, kind: &str, layer: Option<u64>, dims: Vec<u64>| {
        let ty = pick(quant, kind, layer, n, dims[0]);
        out.push(TensorSpec { name, dims, ggml_type: ty });
    };
    mat("token_embd.weight".into(), "token_embd", None, vec![s.hidden, s.vocab]);
    let mut norms = vec![("output_norm.weight".to_string(), s.hidden)];
    let qk_head = s.qk_nope_head_dim + s.qk_rope_head_dim;
    for l in 0..n {
        let b = |t: &str| format!("blk.{l}.{t}.weight");
        let ly = Some(l);
        norms.push((b("attn_norm"), s.hidden));
        norms.push((b("attn_q_a_norm"), s.q_lora_rank));
        norms.push((b("attn_kv_a_norm"), s.kv_lora_rank));
        norms.push((b("ffn_norm"), s.hidden));
        mat(b("attn_q_a"), "attn_q_a", ly, vec![s.hidden, s.q_lora_rank]);
        mat(b("attn_q_b"), "attn_q_b", ly, vec![s.q_lora_rank, s.n_heads * qk_head]);
        mat(b("attn_kv_a_mqa"), "attn_kv_a_mqa", ly, vec![s.hidden, s.kv_lora_rank + s.qk_rope_head_dim]);
        mat(b("attn_k_b"), "attn_k_b", ly, vec![s.qk_nope_head_dim, s.kv_lora_rank, s.n_heads]);
        mat(b("attn_v_b"), "attn_v_b", ly, vec![s.kv_lora_rank, s.v_head_dim, s.n_heads]);
        mat(b("attn_output"), "attn_output", ly, vec![s.n_heads * s.v_head_dim, s.hidden]);
        if l < s.n_dense_layers {
            mat(b("ffn_gate"), "ffn_gate", ly, vec![s.hidden, s.dense_intermediate]);
            mat(b("ffn_up"), "ffn_up", ly, vec![s.hidden, s.dense_intermediate]);
            mat(b("ffn_down"), "ffn_down", ly, vec![s.dense_intermediate, s.hidden]);
            continue;
        }
        let (e, f) = (s.n_experts, s.moe_intermediate);
        norms.push((format!("blk.{l}.exp_probs_b.bias"), e));
        mat(b("ffn_gate_inp"), "ffn_gate_inp_f32", ly, vec![s.hidden, e]);
        mat(b("ffn_gate_exps"), "ffn_gate_exps", ly, vec![s.hidden, f, e]);
        mat(b("ffn_up_exps"), "ffn_up_exps", ly, vec![s.hidden, f, e]);
        mat(b("ffn_down_exps"), "ffn_down_exps", ly, vec![f, s.hidden, e]);
        let fs = f * s.n_shared_experts;
        mat(b("ffn_gate_shexp"), "ffn_gate_shexp", ly, vec![s.hidden, fs]);
        mat(b("ffn_up_shexp"), "ffn_up_shexp", ly, vec![s.hidden, fs]);
        mat(b("ffn_down_shexp"), "ffn_down_shexp", ly, vec![fs, s.hidden]);
    }
    mat("output.weight".into(), "output", None, vec![s.hidden, s.vocab]);
    // The router and all norms/biases are F32, as llama.cpp keeps them.
    for t in out.iter_mut().filter(|t| t.name.contains("ffn_gate_inp")) {
        t.ggml_type = GgmlType::F32;
    }
    out.extend(norms.into_iter().map(|(name, n)| TensorSpec { name, dims: vec![n], ggml_type: GgmlType::F32 }));
    out
}

/// llama.cpp-compatible metadata for `shape`, including a placeholder byte-level vocabulary
/// of the right size (llama.cpp refuses a model without one).
pub fn deepseek2_metadata(shape: &Deepseek2Shape, quant: SynthQuant) -> Vec<(String, MetaValue)> {
    let s = shape;
    let a = |k: &str| format!("deepseek2.{k}");
    let u32v = |v: u64| MetaValue::U32(v as u32);
    let mut m = vec![
        ("general.architecture".to_string(), MetaValue::String("deepseek2".into())),
        ("general.name".into(), MetaValue::String(s.name.clone())),
        (a("block_count"), u32v(s.n_layers)),
        (a("context_length"), u32v(s.context_length)),
        (a("embedding_length"), u32v(s.hidden)),
        (a("feed_forward_length"), u32v(s.dense_intermediate)),
        (a("attention.head_count"), u32v(s.n_heads)),
        (a("attention.head_count_kv"), u32v(1)),
        (a("rope.freq_base"), MetaValue::F32(s.rope_theta as f32)),
        (a("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-6)),
        (a("expert_count"), u32v(s.n_experts)),
        (a("expert_used_count"), u32v(s.n_experts_used)),
        (a("expert_group_count"), u32v(s.n_group)),
        (a("expert_group_used_count"), u32v(s.topk_group)),
        (a("expert_gating_func"), u32v(2)),
        (a("attention.key_length"), u32v(s.kv_lora_rank + s.qk_rope_head_dim)),
        (a("attention.value_length"), u32v(s.kv_lora_rank)),
        (a("leading_dense_block_count"), u32v(s.n_dense_layers)),
        (a("vocab_size"), u32v(s.vocab)),
        (a("attention.q_lora_rank"), u32v(s.q_lora_rank)),
        (a("attention.kv_lora_rank"), u32v(s.kv_lora_rank)),
        (a("attention.key_length_mla"), u32v(s.qk_nope_head_dim + s.qk_rope_head_dim)),
        (a("attention.value_length_mla"), u32v(s.v_head_dim)),
        (a("expert_feed_forward_length"), u32v(s.moe_intermediate)),
        (a("expert_shared_count"), u32v(s.n_shared_experts)),
        (a("expert_weights_scale"), MetaValue::F32(s.routed_scaling_factor as f32)),
        (a("expert_weights_norm"), MetaValue::Bool(true)),
        (a("rope.dimension_count"), u32v(s.qk_rope_head_dim)),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        ("general.file_type".into(), MetaValue::U32(quant.file_type())),
    ];
    m.extend(placeholder_vocab(s.vocab));
    m
}

/// A byte-level BPE vocabulary: the 256 byte symbols GPT-2 style, then `<synthN>` fillers.
fn placeholder_vocab(n: u64) -> Vec<(String, MetaValue)> {
    let mut tokens: Vec<MetaValue> = (0u32..=255).map(|b| MetaValue::String(byte_symbol(b as u8))).collect();
    tokens.extend((256..n).map(|i| MetaValue::String(format!("<synth{i}>"))));
    let types = (0..n).map(|_| MetaValue::I32(1)).collect();
    vec![
        ("tokenizer.ggml.model".into(), MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::String("deepseek-v3".into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(types)),
        ("tokenizer.ggml.merges".into(), MetaValue::Array(vec![MetaValue::String("Ġ t".into())])),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(1)),
        ("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(false)),
    ]
}

/// GPT-2's printable stand-in for a byte.
fn byte_symbol(b: u8) -> String {
    let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable {
        char::from_u32(b as u32).map(String::from).unwrap_or_default()
    } else {
        // Non-printable bytes map to U+0100 + their rank among the non-printable ones.
        let rank = (0..b)
            .filter(|&c| !((b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c)))
            .count() as u32;
        char::from_u32(0x100 + rank).map(String::from).unwrap_or_default()
    }
}

/// Fills `buf` with random but valid data of type `ty` (finite, small block scales).
pub fn fill_random(ty: GgmlType, buf: &mut [u8], seed: u64) {
    let block = ty.type_size();
    const CHUNK_BLOCKS: usize = 4096;
    buf.par_chunks_mut(block * CHUNK_BLOCKS).enumerate().for_each(|(i, chunk)| {
        let mut rng = XorShift(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for word in chunk.chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            word.copy_from_slice(&r[..word.len()]);
        }
        for b in chunk.chunks_mut(block) {
            fix_block(ty, b, &mut rng);
        }
    });
}

/// As [`fill_random`], on the calling thread only (callers that place memory on the NUMA
/// node of the thread that first touches it must not hand the work to other threads).
pub fn fill_random_serial(ty: GgmlType, buf: &mut [u8], seed: u64) {
    let block = ty.type_size();
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for word in buf.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        word.copy_from_slice(&r[..word.len()]);
    }
    for b in buf.chunks_mut(block) {
        if b.len() == block {
            fix_block(ty, b, &mut rng);
        }
    }
}

/// Random float8 e4m3 bytes that are never NaN, on the calling thread (block scales are
/// separate; see the FP8 weight format).
pub fn fill_fp8_serial(buf: &mut [u8], seed: u64) {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for b in buf.iter_mut() {
        // Clearing bit 6 keeps the exponent below the NaN pattern (e4m3fn NaN = S.1111.111).
        *b = (rng.next() as u8) & 0b1011_1111;
    }
}

/// Overwrites the scale fields of one block (or the value of one float element) with small
/// finite numbers.
fn fix_block(ty: GgmlType, b: &mut [u8], rng: &mut XorShift) {
    let mut small = |scale: f32| half::f16::from_f32(scale * (0.5 + (rng.next() % 1000) as f32 / 1000.0)).to_le_bytes();
    match ty {
        GgmlType::F32 => b.copy_from_slice(&(0.02 * rng.unit()).to_le_bytes()),
        GgmlType::F16 => b.copy_from_slice(&half::f16::from_f32(0.02 * rng.unit()).to_le_bytes()),
        GgmlType::BF16 => b.copy_from_slice(&half::bf16::from_f32(0.02 * rng.unit()).to_le_bytes()),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => b[0..2].copy_from_slice(&small(2e-4)),
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            // w = d·q + m with unsigned q: m = −d·E[q] keeps the weights zero-mean.
            let d = half::f16::from_le_bytes(small(2e-4));
            let mean_q = if ty == GgmlType::Q4_1 { 7.5 } else { 15.5 };
            b[0..2].copy_from_slice(&d.to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(-d.to_f32() * mean_q).to_le_bytes());
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // Zero-mean weights, as trained ones are: a value is d·sc·q − dmin·m, so with each
            // sub-block's min equal to its scale and dmin = d·E[q] the mean is 0. (Random
            // mins would give every weight a positive mean; every matrix would then map all
            // tokens onto one direction, and the router would send all tokens to the same
            // experts.)
            let d = half::f16::from_le_bytes(small(2e-4));
            let mean_q = if ty == GgmlType::Q4_K { 7.5 } else { 15.5 };
            b[0..2].copy_from_slice(&d.to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(d.to_f32() * mean_q).to_le_bytes());
            let (sc, rest) = b[4..16].split_at_mut(4);
            rest[..4].copy_from_slice(sc); // m_j = sc_j for j < 4 (and the high bits of j ≥ 4)
            for v in &mut rest[4..8] {
                *v = (*v & 0x0F) | ((*v & 0x0F) << 4); // low nibble: sc_j, high nibble: m_j, j ≥ 4
            }
        }
        GgmlType::Q6_K => b[208..210].copy_from_slice(&small(1e-4)),
        GgmlType::Q3_K => b[108..110].copy_from_slice(&small(1e-4)),
        GgmlType::Q2_K => {
            // Zero-mean as for Q4_K: m = sc in every scale byte, dmin = d·E[q] (q in 0..=3).
            let d = half::f16::from_le_bytes(small(2e-4));
            b[80..82].copy_from_slice(&d.to_le_bytes());
            b[82..84].copy_from_slice(&half::f16::from_f32(d.to_f32() * 1.5).to_le_bytes());
            for v in &mut b[..16] {
                *v = (*v & 0x0F) | ((*v & 0x0F) << 4);
            }
        }
        _ => {}
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in [−1, 1] (steps of 0.001).
    fn unit(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// Writes a synthetic DeepSeek-family GGUF to `path`; `progress(done_bytes, total_bytes)` is
/// called after each tensor. Returns the tensor data bytes written.
pub fn write_deepseek2(
    path: &Path,
    shape: &Deepseek2Shape,
    quant: SynthQuant,
    seed: u64,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<u64> {
    let tensors = deepseek2_tensors(shape, quant);
    let meta = deepseek2_metadata(shape, quant);
    let total: u64 = tensors.iter().map(TensorSpec::n_bytes).sum();
    let tmp = path.with_extension("gguf.partial");
    let file = std::fs::File::create(&tmp)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
    let mut done = 0;
    write_streaming(&mut w, &meta, &tensors, |i, buf| {
        let t = &tensors[i];
        if t.name.ends_with("norm.weight") {
            // Norm weights of 1.0 keep activations at their natural scale.
            for v in buf.chunks_mut(4) {
                v.copy_from_slice(&1.0f32.to_le_bytes());
            }
        } else if t.name.ends_with("exp_probs_b.bias") {
            // A zero selection bias: the random router then spreads tokens over the experts as
            // a trained, load-balanced model does (the router sees RMS-normalised input, so its
            // ±0.02 weights give logits with a spread of ≈ 1 over 7168 inputs). A random bias
            // of the same ±0.02 would dominate those scores and send every token to the same
            // 8 experts, which makes prefill and batched decode read 8 experts per layer.
            buf.fill(0);
        } else {
            fill_random(t.ggml_type, buf, seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        }
        done += buf.len() as u64;
        progress(done, total);
        Ok(())
    })?;
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::GgufFile;

    fn small_shape() -> Deepseek2Shape {
        Deepseek2Shape {
            name: "small".into(),
            hidden: 256,
            n_layers: 3,
            n_dense_layers: 1,
            dense_intermediate: 512,
            n_experts: 8,
            n_experts_used: 2,
            moe_intermediate: 256,
            n_group: 2,
            topk_group: 1,
            n_heads: 2,
            q_lora_rank: 256,
            kv_lora_rank: 256,
            qk_nope_head_dim: 64,
            qk_rope_head_dim: 64,
            v_head_dim: 64,
            vocab: 300,
            ..Deepseek2Shape::deepseek_v3()
        }
    }

    #[test]
    fn written_file_reads_back_with_the_shapes_of_the_fixture_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        let bytes = write_deepseek2(&path, &small_shape(), SynthQuant::Q4KM, 7, |_, _| {}).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.tensor_data_bytes(), bytes);
        assert_eq!(g.architecture(), Some("deepseek2"));
        assert_eq!(g.arch_u64("leading_dense_block_count"), Some(1));
        let exps = g.tensor("blk.1.ffn_gate_exps.weight").unwrap();
        assert_eq!((exps.dims.clone(), exps.ggml_type), (vec![256, 256, 8], GgmlType::Q4_K));
        // attn_k_b rows are qk_nope (64) long: not a multiple of 256, so Q4_K falls back.
        assert_eq!(g.tensor("blk.0.attn_k_b.weight").unwrap().ggml_type, GgmlType::Q5_0);
        assert_eq!(g.tensor("output.weight").unwrap().ggml_type, GgmlType::Q6_K);
        assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 300);
    }

    /// The synthetic router must spread tokens over the experts (a trained model's routing is
    /// load-balanced); with a dominant random selection bias every token took the same experts.
    #[test]
    fn synthetic_routing_spreads_tokens_over_experts() {
        use crate::models::moe::{route, RouterConfig};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        let shape = Deepseek2Shape { n_experts: 32, n_experts_used: 4, n_group: 4, topk_group: 2, ..small_shape() };
        write_deepseek2(&path, &shape, SynthQuant::Q4KM, 7, |_, _| {}).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let f32s = |name: &str| -> Vec<f32> {
            let t = g.tensor(name).unwrap();
            g.tensor_bytes(t).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let bias = f32s("blk.1.exp_probs_b.bias");
        assert!(bias.iter().all(|&b| b == 0.0));
        let router = f32s("blk.1.ffn_gate_inp.weight"); // n_experts rows of `hidden`
        let cfg = RouterConfig::deepseek_v3_style(32, 4, 4, 2);
        let mut rng = XorShift(99);
        let mut chosen = std::collections::BTreeSet::new();
        for _ in 0..16 {
            // An RMS-normalised input, as the router sees after ffn_norm.
            let x: Vec<f32> = (0..shape.hidden as usize).map(|_| rng.unit()).collect();
            let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
            let logits: Vec<f32> = router
                .chunks_exact(shape.hidden as usize)
                .map(|w| w.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() / rms)
                .collect();
            chosen.extend(route(&cfg, &logits, Some(&bias)).experts);
        }
        assert!(chosen.len() >= 16, "16 tokens chose only {} distinct experts of 32", chosen.len());
    }

    #[test]
    fn random_weights_are_zero_mean() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q2_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::F16] {
            let n = 256 * 64;
            let mut buf = vec![0u8; n / ty.block_size() * ty.type_size()];
            fill_random(ty, &mut buf, 5);
            let mut v = vec![0f32; n];
            crate::kernels::dequantize_row(ty, &buf, &mut v).unwrap();
            let mean = v.iter().sum::<f32>() / n as f32;
            let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32).sqrt();
            assert!(mean.abs() < 0.05 * std, "{ty:?}: mean {mean}, std {std}");
        }
    }

    #[test]
    fn random_blocks_have_finite_small_scales() {
        let mut buf = vec![0u8; 144 * 64];
        fill_random(GgmlType::Q4_K, &mut buf, 1);
        for b in buf.chunks(144) {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            assert!(d.is_finite() && d > 0.0 && d < 1e-3, "{d}");
        }
    }

    #[test]
    fn full_deepseek_v3_q4_k_m_is_about_the_real_size() {
        // The real Q4_K_M GGUF is 404.3 GB (DESIGN.md); our mix should be close (same rule).
        let t = deepseek2_tensors(&Deepseek2Shape::deepseek_v3(), SynthQuant::Q4KM);
        let total: u64 = t.iter().map(TensorSpec::n_bytes).sum();
        let ratio = total as f64 / 404.3e9;
        assert!((0.95..1.05).contains(&ratio), "{total} bytes, ratio {ratio}");
    }

    #[test]
    fn fp8_fill_never_writes_nan() {
        let mut buf = vec![0u8; 4096];
        fill_fp8_serial(&mut buf, 3);
        assert!(buf.iter().all(|&b| b & 0x7f != 0x7f));
        assert!(buf.iter().any(|&b| b != buf[0]));
    }

    #[test]
    fn byte_symbols_are_unique() {
        let mut s: Vec<String> = (0..=255u8).map(byte_symbol).collect();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 256);
        assert_eq!(byte_symbol(b'\n'), "Ċ");
        assert_eq!(byte_symbol(b' '), "Ġ");
    }
}
