//! Property test over mutated real GGUF headers: whatever bytes the header holds, opening the
//! file returns a result (usually an error) and never panics or reads out of bounds.
//! The corpus is the fixture models' headers; mutations are seeded so failures reproduce.

use hy_engine::formats::GgufFile;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

fn corpus() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    ["tiny-llama/gguf/tiny-llama-Q4_K_M.gguf", "tiny-qwen3-moe/gguf/tiny-qwen3-moe-Q8_0.gguf"]
        .iter()
        .map(|p| root.join(p))
        .collect()
}

/// Header length: everything before the first tensor's data.
fn header_len(path: &std::path::Path) -> usize {
    let g = GgufFile::open(path).expect("fixture opens");
    g.tensors().iter().map(|t| t.offset).min().unwrap_or(0) as usize
}

#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    for (i, path) in corpus().iter().enumerate() {
        let original = std::fs::read(path).unwrap();
        let hlen = header_len(path);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42 + i as u64);
        for _ in 0..300 {
            let mut bytes = original.clone();
            for _ in 0..rng.gen_range(1..8) {
                let pos = rng.gen_range(0..hlen);
                bytes[pos] = match rng.gen_range(0..4) {
                    0 => 0xff,
                    1 => 0,
                    2 => bytes[pos].wrapping_add(1),
                    _ => rng.gen(),
                };
            }
            if rng.gen_bool(0.2) {
                bytes.truncate(rng.gen_range(0..bytes.len()));
            }
            std::fs::write(&out, &bytes).unwrap();
            if let Ok(g) = GgufFile::open(&out) {
                // A file that opens must hand out only in-bounds tensor data.
                for t in g.tensors() {
                    assert_eq!(g.tensor_bytes(t).len() as u64, t.n_bytes);
                }
            }
        }
    }
}

#[test]
fn truncated_real_file_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = &corpus()[0];
    let bytes = std::fs::read(path).unwrap();
    let out = dir.path().join("cut.gguf");
    std::fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
    let err = GgufFile::open(&out).unwrap_err().to_string();
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");
}
