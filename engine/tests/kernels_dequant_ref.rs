//! Dequantization against gguf-py (an independent implementation): real tensors from the
//! fixture GGUFs (Q4_K, Q6_K, Q5_0, Q8_0, F16) and random blocks of the other supported
//! types, as recorded in tests/data/dequant_ref.bin (see tests/data/README.md).

use hy_engine::kernels::{dequantize_row, matvec_with, set_precision, Isa, Precision, QMatrix};
use hy_engine::GgmlType;

struct Record {
    name: String,
    ty: GgmlType,
    rows: usize,
    row_len: usize,
    raw: Vec<u8>,
    values: Vec<f32>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> usize {
        let b = self.take(4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
}

fn records() -> Vec<Record> {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dequant_ref.bin")).unwrap();
    let mut r = Reader(&bytes);
    assert_eq!(r.take(4), b"HYDQ");
    let count = r.u32();
    let recs: Vec<Record> = (0..count)
        .map(|_| {
            let len = r.u32();
            let name = String::from_utf8(r.take(len).to_vec()).unwrap();
            let ty = GgmlType::from_u32(r.u32() as u32).unwrap();
            let (rows, row_len, n_raw) = (r.u32(), r.u32(), r.u32());
            let raw = r.take(n_raw).to_vec();
            let values = r
                .take(rows * row_len * 4)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Record { name, ty, rows, row_len, raw, values }
        })
        .collect();
    assert!(r.0.is_empty());
    recs
}

#[test]
fn kernels_dequantize_row_matches_gguf_py() {
    let recs = records();
    let mut seen: Vec<GgmlType> = recs.iter().map(|r| r.ty).collect();
    seen.sort_by_key(|t| *t as u32);
    seen.dedup();
    assert_eq!(seen.len(), 12, "types covered: {seen:?}");
    for rec in &recs {
        let rb = rec.raw.len() / rec.rows;
        for row in 0..rec.rows {
            let mut out = vec![0f32; rec.row_len];
            dequantize_row(rec.ty, &rec.raw[row * rb..(row + 1) * rb], &mut out).unwrap();
            let want = &rec.values[row * rec.row_len..(row + 1) * rec.row_len];
            for (i, (&g, &w)) in out.iter().zip(want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{} row {row} [{i}]: {g} vs gguf-py {w}", rec.name);
            }
        }
    }
}

#[test]
fn kernels_exact_matvec_on_real_tensors_matches_gguf_py_values() {
    set_precision(Precision::Exact);
    assert_eq!(hy_engine::kernels::precision(), Precision::Exact);
    for rec in records() {
        let w = QMatrix::new(rec.ty, rec.rows, rec.row_len, &rec.raw).unwrap();
        let x: Vec<f32> = (0..rec.row_len).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
        for isa in Isa::all_supported() {
            let mut y = vec![0f32; rec.rows];
            matvec_with(isa, &w, &x, &mut y);
            for (r, &yr) in y.iter().enumerate() {
                let row = &rec.values[r * rec.row_len..(r + 1) * rec.row_len];
                let want: f64 = row.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = row.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                assert!((yr as f64 - want).abs() <= 1e-5 * mag + 1e-7, "{} {isa:?} row {r}: {yr} vs {want}", rec.name);
            }
        }
    }
}

#[test]
fn kernels_fast_matvec_on_real_tensors_is_within_q8_rounding_of_gguf_py_values() {
    // Fast mode quantizes x to 8 bits per block; the error per output is bounded by
    // Σ|w|·(half a quantization step of x's block).
    for rec in records() {
        let w = QMatrix::new(rec.ty, rec.rows, rec.row_len, &rec.raw).unwrap();
        let x: Vec<f32> = (0..rec.row_len).map(|i| ((i * 104729) % 89) as f32 / 44.0 - 1.0).collect();
        let block = rec.ty.block_size().max(1);
        let step: Vec<f32> = x
            .chunks(if block == 1 { x.len() } else { block })
            .flat_map(|c| {
                let s = c.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                std::iter::repeat_n(if block == 1 { 0.0 } else { s }, c.len())
            })
            .collect();
        for isa in Isa::all_supported() {
            let p = hy_engine::kernels::prepare_with(w.ty, rec.row_len, &x, 1, Precision::Fast);
            let mut y = vec![0f32; rec.rows];
            hy_engine::kernels::matmul_rows(isa, &w, &p, 0..rec.rows, &mut y);
            for (r, &yr) in y.iter().enumerate() {
                let row = &rec.values[r * rec.row_len..(r + 1) * rec.row_len];
                let want: f64 = row.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let tol: f64 = row.iter().zip(&step).map(|(&a, &s)| (a.abs() * s * 0.5) as f64).sum::<f64>()
                    + 1e-5 * row.iter().zip(&x).map(|(&a, &b)| (a * b).abs() as f64).sum::<f64>()
                    + 1e-6;
                assert!((yr as f64 - want).abs() <= tol, "{} {isa:?} row {r}: {yr} vs {want} (tol {tol})", rec.name);
            }
        }
    }
}
