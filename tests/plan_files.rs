//! `hy plan` on local files: a sharded GGUF written here, the tiny fixture models (GGUF and
//! HF folders). Sizes are checked against sums computed independently in this file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn hy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hy"));
    c.env("HY_PROFILE_DIR", "/nonexistent-hy-profiles");
    c
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `hy plan ARGS --profile HY90 --json` and returns (exit code, JSON).
fn plan_json(args: &[&str]) -> (i32, Value) {
    let out = hy().arg("plan").args(args).args(["--profile", "HY90", "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: stderr {stderr}"));
    (out.status.code().unwrap(), json)
}

fn component_bytes(plan: &Value) -> BTreeMap<String, u64> {
    plan["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["component"].as_str().unwrap().to_string(), c["bytes"].as_u64().unwrap()))
        .collect()
}

/// (weights per block, bytes per block) of the GGML types used here (ggml.c type traits).
fn block(ty: u32) -> (u64, u64) {
    match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        6 => (32, 22),    // Q5_0
        8 => (32, 34),    // Q8_0
        12 => (256, 144), // Q4_K
        14 => (256, 210), // Q6_K
        30 => (1, 2),     // BF16
        other => panic!("type {other} not in the test's table"),
    }
}

fn tensor_bytes(dims: &[u64], ty: u32) -> u64 {
    let (bs, bb) = block(ty);
    dims.iter().product::<u64>() / bs * bb
}

// ---- a minimal GGUF v3 writer -------------------------------------------------------------

enum Kv {
    U16(u16),
    U32(u32),
    I32(i32),
    Str(&'static str),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// One GGUF file: header, key-values, tensor infos, 32-byte aligned zeroed data.
fn gguf_bytes(kvs: &[(&str, Kv)], tensors: &[(String, Vec<u64>, u32)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        match v {
            Kv::U16(x) => {
                out.extend(2u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::I32(x) => {
                out.extend(5u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += tensor_bytes(dims, *ty).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.resize(out.len() + offset as usize, 0);
    out
}

/// A two-layer MoE model in GGUF names with a mix of types, plus an MTP tensor (excluded).
fn sharded_model() -> Vec<(String, Vec<u64>, u32)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![256, 512], 12),
        ("output.weight".to_string(), vec![256, 512], 14),
        ("output_norm.weight".to_string(), vec![256], 0),
    ];
    for l in 0..2 {
        let n = |s: &str| format!("blk.{l}.{s}");
        t.extend([
            (n("attn_norm.weight"), vec![256], 0),
            (n("attn_q.weight"), vec![256, 256], 12),
            (n("attn_k.weight"), vec![256, 128], 12),
            (n("attn_v.weight"), vec![256, 128], 14),
            (n("attn_output.weight"), vec![256, 256], 12),
            (n("ffn_norm.weight"), vec![256], 0),
            (n("ffn_gate_inp.weight"), vec![256, 4], 0),
            (n("ffn_gate_exps.weight"), vec![256, 256, 4], 12),
            (n("ffn_up_exps.weight"), vec![256, 256, 4], 12),
            (n("ffn_down_exps.weight"), vec![256, 256, 4], 14),
            (n("ffn_up_shexp.weight"), vec![256, 256], 8),
        ]);
    }
    t.push(("blk.2.nextn.eh_proj.weight".to_string(), vec![512, 256], 1));
    t
}

#[test]
fn sharded_gguf_bytes_are_exact_sums_per_component() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = sharded_model();
    let chunks: Vec<&[(String, Vec<u64>, u32)]> = vec![&tensors[..10], &tensors[10..20], &tensors[20..]];
    for (i, chunk) in chunks.iter().enumerate() {
        let mut kvs = vec![
            ("split.no", Kv::U16(i as u16)),
            ("split.count", Kv::U16(3)),
            ("split.tensors.count", Kv::I32(tensors.len() as i32)),
        ];
        if i == 0 {
            kvs.extend([
                ("general.architecture", Kv::Str("qwen3moe")),
                ("general.name", Kv::Str("test-moe")),
                ("general.file_type", Kv::U32(15)),
                ("qwen3moe.block_count", Kv::U32(2)),
                ("qwen3moe.context_length", Kv::U32(4096)),
                ("qwen3moe.embedding_length", Kv::U32(256)),
                ("qwen3moe.attention.head_count", Kv::U32(2)),
                ("qwen3moe.attention.head_count_kv", Kv::U32(1)),
                ("qwen3moe.attention.key_length", Kv::U32(128)),
                ("qwen3moe.expert_count", Kv::U32(4)),
                ("qwen3moe.expert_used_count", Kv::U32(2)),
                ("qwen3moe.expert_feed_forward_length", Kv::U32(256)),
                ("qwen3moe.vocab_size", Kv::U32(512)),
            ]);
        }
        let path = dir.path().join(format!("test-moe-{:05}-of-00003.gguf", i + 1));
        std::fs::write(path, gguf_bytes(&kvs, chunk)).unwrap();
    }
    let first = dir.path().join("test-moe-00001-of-00003.gguf");
    let (code, p) = plan_json(&[first.to_str().unwrap()]);
    assert_eq!(code, 0, "{p}");
    // Expected sums, by class, from the table above.
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, dims, ty) in &tensors {
        let class = if name.contains("nextn") {
            continue;
        } else if name.contains("_exps") {
            "routed_experts"
        } else if name.contains("_shexp") {
            "shared_experts"
        } else if name.contains("norm") || name.contains("gate_inp") {
            "norms_router_other"
        } else if name.contains("attn_") {
            "attention"
        } else if name.starts_with("token_embd") {
            "embeddings"
        } else {
            "lm_head"
        };
        *want.entry(class).or_default() += tensor_bytes(dims, *ty);
    }
    let got = component_bytes(&p);
    assert_eq!(got, want.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>());
    assert_eq!(p["weights_bytes"].as_u64().unwrap(), want.values().sum::<u64>());
    assert_eq!(p["exact_sizes"], true);
    assert_eq!(p["quant"], "q4_k_m");
    assert!(p["model_source"].as_str().unwrap().contains("3 files"), "{}", p["model_source"]);
    assert_eq!(p["excluded"][0]["bytes"].as_u64().unwrap(), 512 * 256 * 2);
    // GQA KV cache: 2 (K,V) × 1 KV head × 128 × 2 B × 2 layers.
    assert_eq!(p["kv_bytes_per_token"].as_u64().unwrap(), 2 * 128 * 2 * 2);
}

#[test]
fn a_missing_shard_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = sharded_model();
    let kvs =
        vec![("split.no", Kv::U16(0)), ("split.count", Kv::U16(2)), ("general.architecture", Kv::Str("qwen3moe"))];
    let first = dir.path().join("m-00001-of-00002.gguf");
    std::fs::write(&first, gguf_bytes(&kvs, &tensors[..4])).unwrap();
    let out = hy().args(["plan", first.to_str().unwrap(), "--profile", "HY90"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("m-00002-of-00002.gguf"));
}

// ---- an independent GGUF header reader for the fixtures -----------------------------------

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        self.p += n;
        &self.b[self.p - n..self.p]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.p += 1,
            2 | 3 => self.p += 2,
            4..=6 => self.p += 4,
            10..=12 => self.p += 8,
            8 => {
                self.string();
            }
            9 => {
                let inner = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.skip_value(inner);
                }
            }
            _ => panic!("bad GGUF value type {ty}"),
        }
    }
}

/// (name, bytes) of every tensor in a GGUF file.
fn gguf_tensors(path: &Path) -> Vec<(String, u64)> {
    let b = std::fs::read(path).unwrap();
    let mut r = Reader { b: &b, p: 8 };
    let (nt, nkv) = (r.u64(), r.u64());
    for _ in 0..nkv {
        r.string();
        let ty = r.u32();
        r.skip_value(ty);
    }
    (0..nt)
        .map(|_| {
            let name = r.string();
            let nd = r.u32();
            let dims: Vec<u64> = (0..nd).map(|_| r.u64()).collect();
            let ty = r.u32();
            r.u64();
            (name, tensor_bytes(&dims, ty))
        })
        .collect()
}

#[test]
fn fixture_ggufs_report_exact_tensor_byte_sums() {
    for (model, file) in [
        ("tiny-deepseek-v3", "tiny-deepseek-v3-Q4_K_M.gguf"),
        ("tiny-deepseek-v3", "tiny-deepseek-v3-Q8_0.gguf"),
        ("tiny-qwen3-moe", "tiny-qwen3-moe-Q4_K_M.gguf"),
        ("tiny-qwen3-moe", "tiny-qwen3-moe-Q8_0.gguf"),
        ("tiny-llama", "tiny-llama-Q4_K_M.gguf"),
        ("tiny-llama", "tiny-llama-F16.gguf"),
    ] {
        let path = fixtures().join(model).join("gguf").join(file);
        let tensors = gguf_tensors(&path);
        let (code, p) = plan_json(&[path.to_str().unwrap()]);
        assert_eq!(code, 0, "{file}");
        let total: u64 = tensors.iter().map(|t| t.1).sum();
        assert_eq!(p["weights_bytes"].as_u64().unwrap(), total, "{file}");
        let routed: u64 = tensors.iter().filter(|t| t.0.contains("_exps")).map(|t| t.1).sum();
        assert_eq!(component_bytes(&p).get("routed_experts").copied().unwrap_or(0), routed, "{file}");
    }
}

#[test]
fn tiny_deepseek_kv_cache_is_the_mla_latent() {
    let path = fixtures().join("tiny-deepseek-v3/gguf/tiny-deepseek-v3-Q8_0.gguf");
    let (_, p) = plan_json(&[path.to_str().unwrap()]);
    // (kv_lora_rank 256 + rope 64) × 2 B × 3 layers.
    assert_eq!(p["kv_bytes_per_token"].as_u64().unwrap(), (256 + 64) * 2 * 3);
}

/// Bytes of all tensors of a single-file safetensors: file size − 8 − header length.
fn safetensors_payload(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b.len() as u64 - 8 - n
}

#[test]
fn hf_folders_report_exact_safetensors_bytes() {
    for folder in ["tiny-deepseek-v3/hf", "tiny-deepseek-v3/hf-fp8", "tiny-qwen3-moe/hf"] {
        let dir = fixtures().join(folder);
        let (code, p) = plan_json(&[dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{folder}");
        assert_eq!(p["exact_sizes"], true);
        assert_eq!(
            p["weights_bytes"].as_u64().unwrap(),
            safetensors_payload(&dir.join("model.safetensors")),
            "{folder}"
        );
    }
    let (_, p) = plan_json(&[fixtures().join("tiny-deepseek-v3/hf-fp8").to_str().unwrap()]);
    assert_eq!(p["quant"], "fp8");
}

/// The llama.cpp recipes applied to config.json must reproduce what llama.cpp wrote.
#[test]
fn recipes_from_config_match_llama_cpp_files_per_component() {
    for (model, quant, file) in [
        ("tiny-deepseek-v3", "q4_k_m", "tiny-deepseek-v3-Q4_K_M.gguf"),
        ("tiny-deepseek-v3", "q8_0", "tiny-deepseek-v3-Q8_0.gguf"),
        ("tiny-qwen3-moe", "q4_k_m", "tiny-qwen3-moe-Q4_K_M.gguf"),
        ("tiny-qwen3-moe", "q8_0", "tiny-qwen3-moe-Q8_0.gguf"),
        ("tiny-llama", "q4_k_m", "tiny-llama-Q4_K_M.gguf"),
        ("tiny-llama", "q8_0", "tiny-llama-Q8_0.gguf"),
    ] {
        let hf = fixtures().join(model).join("hf");
        let gguf = fixtures().join(model).join("gguf").join(file);
        let (_, computed) = plan_json(&[hf.to_str().unwrap(), "--quant", quant]);
        let (_, stored) = plan_json(&[gguf.to_str().unwrap()]);
        assert_eq!(computed["exact_sizes"], false);
        assert_eq!(component_bytes(&computed), component_bytes(&stored), "{model} {quant}");
    }
}

#[test]
fn fp8_pricing_from_config_matches_the_fp8_release_layout() {
    let dir = fixtures().join("tiny-deepseek-v3/hf-fp8");
    let (_, computed) = plan_json(&[dir.to_str().unwrap(), "--from-config"]);
    let (_, stored) = plan_json(&[dir.to_str().unwrap()]);
    assert_eq!(computed["exact_sizes"], false);
    assert_eq!(component_bytes(&computed), component_bytes(&stored));
}

#[test]
fn a_folder_with_two_ggufs_asks_for_one() {
    let dir = fixtures().join("tiny-deepseek-v3/gguf");
    let out = hy().args(["plan", dir.to_str().unwrap(), "--profile", "HY90"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiny-deepseek-v3-Q4_K_M.gguf") && err.contains("pass one file"), "{err}");
}

#[test]
fn absurd_dimensions_in_a_gguf_are_an_input_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.gguf");
    let kvs = vec![
        ("general.architecture", Kv::Str("qwen3moe")),
        ("qwen3moe.embedding_length", Kv::U32(u32::MAX)),
        ("qwen3moe.block_count", Kv::U32(2)),
    ];
    std::fs::write(&path, gguf_bytes(&kvs, &sharded_model()[..3])).unwrap();
    let out = hy().args(["plan", path.to_str().unwrap(), "--profile", "HY90"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hidden_size = 4294967295"));
}
