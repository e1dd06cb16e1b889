//! Kernel bandwidth benchmark: how close `matvec`/`matmul` come to streaming the weights at
//! the speed a plain read loop reaches over the same bytes with the same threads.
//!
//!     cargo run --release -p hy-engine --example kernel_bench -- [--mb 1024] [--threads N]
//!         [--types Q4_K,Q4_K_X16,Q6_K,Q6_K_X16,Q8_0,...] [--batch 1,4,16] [--iters 10] [--cols 7168]
//!
//! Weights are random blocks with sane scales (the speed does not depend on the values).
//! Batches time the kernels alone (activations prepared beforehand, as the engine prepares
//! them once per layer). Prints one line per (type, ISA, batch; `amx` where the AMX tiles run
//! the product, which `HY_AMX=0` turns off): best and median time, GB/s of weights read, the
//! read loop's GB/s over the same bytes (measured just before) and the ratio of the two.

use std::time::Instant;

use hy_engine::kernels::bench::read_stream;
use hy_engine::kernels::{matmul_rows, matvec_with, prepare, runs_on_amx, Isa, QMatrix, WeightType};
use hy_engine::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

struct Opts {
    mb: usize,
    threads: usize,
    types: Vec<String>,
    batch: Vec<usize>,
    iters: usize,
    cols: usize,
    isas: Vec<Isa>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        mb: 1024,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        types: "Q4_K,Q6_K,Q8_0,Q5_0,Q2_K,Q3_K,Q5_K,BF16,FP8".split(',').map(String::from).collect(),
        batch: vec![1],
        iters: 10,
        cols: 7168,
        isas: Isa::all_supported(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| s.split(',').map(|v| v.trim().to_string()).collect::<Vec<_>>();
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("bad number {s:?}: {e}"));
    for pair in args.chunks(2) {
        let v = pair.get(1).ok_or(format!("{} needs a value", pair[0]))?;
        match pair[0].as_str() {
            "--mb" => o.mb = num(v)?,
            "--threads" => o.threads = num(v)?,
            "--types" => o.types = list(v),
            "--batch" => o.batch = list(v).iter().map(|s| num(s)).collect::<Result<_, _>>()?,
            "--iters" => o.iters = num(v)?.max(1),
            "--cols" => o.cols = num(v)?,
            "--isa" => {
                o.isas =
                    list(v).iter().filter_map(|s| Isa::all_supported().into_iter().find(|i| i.name() == s)).collect()
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Offsets of f16 scale fields per block (random bytes there could be inf/NaN).
fn scale_offsets(t: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match t {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

fn fill(t: Option<GgmlType>, data: &mut [u8]) {
    data.par_chunks_mut(1 << 20).enumerate().for_each(|(i, c)| {
        let mut rng = StdRng::seed_from_u64(i as u64);
        rng.fill(c);
        match t {
            Some(GgmlType::F16) | Some(GgmlType::BF16) => {
                for h in c.chunks_exact_mut(2) {
                    h[1] = 0x3C | (h[1] & 0x80); // small normal numbers, both formats
                }
            }
            Some(t) => {
                for blk in c.chunks_exact_mut(t.type_size()) {
                    for &o in scale_offsets(t) {
                        blk[o..o + 2].copy_from_slice(&f16_bytes(0.01));
                    }
                }
            }
            None => {
                for b in c.iter_mut() {
                    *b &= 0xF7; // FP8: no NaN
                }
            }
        }
    });
}

/// The plain read loop over contiguous per-thread chunks: the bytes/s the same threads can read.
fn read_loop(data: &[u8], threads: usize) -> u64 {
    let chunk = data.len().div_ceil(threads).next_multiple_of(256);
    data.par_chunks(chunk).map(read_stream).reduce(|| 0, |a, b| a.wrapping_add(b))
}

/// Best and median seconds of `iters` runs.
fn time(iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up: page faults, thread wake-up
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[0], t[t.len() / 2])
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kernel_bench: {e}");
            std::process::exit(2);
        }
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(o.threads).build().expect("thread pool");
    pool.install(|| run(&o));
}

fn run(o: &Opts) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    eprintln!("cpu: {cpu}; threads {}; ISAs {:?}; best {:?}", o.threads, o.isas, Isa::best());
    let target = o.mb << 20;
    println!(
        "{:<6} {:<7} {:>5} {:>9} {:>9} {:>8} {:>8} {:>6}",
        "type", "isa", "batch", "best_ms", "med_ms", "GB/s", "read", "ratio"
    );
    for name in &o.types {
        bench_type(o, name, target);
    }
}

fn bench_type(o: &Opts, name: &str, target: usize) {
    // `Q4_K_X16` etc.: the type repacked 16 rows at a time (`kernels::x16`).
    let (base, repacked) = name.strip_suffix("_X16").map_or((name, false), |b| (b, true));
    let (ty, wt) = if name == "FP8" {
        (None, WeightType::Fp8E4M3Block128)
    } else {
        match (0..64).filter_map(GgmlType::from_u32).find(|t| t.name() == base) {
            Some(t) if repacked => (Some(t), WeightType::X16(t)),
            Some(t) => (Some(t), WeightType::Ggml(t)),
            None => {
                eprintln!("kernel_bench: unknown type {name}");
                return;
            }
        }
    };
    let cols = o.cols;
    let row_bytes = ty.map_or(cols, |t| t.bytes_for(cols as u64).unwrap_or(0) as usize);
    if row_bytes == 0 {
        eprintln!("kernel_bench: {cols} columns is not a whole number of {name} blocks");
        return;
    }
    // Whole 16-row groups (AMX tiles, the repacked Q4_K layout).
    let rows = (target / row_bytes / 16 * 16).max(16);
    let mut data = vec![0u8; rows * row_bytes];
    fill(ty, &mut data);
    if let WeightType::X16(t) = wt {
        if !hy_engine::kernels::x16::fits(t, rows, cols) {
            eprintln!("kernel_bench: {name} has no 16-row layout for {cols} columns");
            return;
        }
        hy_engine::kernels::x16::repack_in_place(t, &mut data, cols);
    }
    let scales: Vec<u8> = (0..rows.div_ceil(128) * cols.div_ceil(128)).flat_map(|_| 0.01f32.to_le_bytes()).collect();
    let w = QMatrix { ty: wt, rows, cols, data: &data, block_scales: if ty.is_none() { &scales } else { &[] } };
    if let Err(e) = w.validate() {
        eprintln!("kernel_bench: {name}: {e}");
        return;
    }
    // The baseline: a plain read of these very bytes by the same threads, just before.
    let (rb, _) = time(o.iters, || {
        std::hint::black_box(read_loop(&data, o.threads));
    });
    let read_gbs = data.len() as f64 / rb / 1e9;
    let mut rng = StdRng::seed_from_u64(1);
    for &isa in &o.isas {
        for &n in &o.batch {
            let x: Vec<f32> = (0..cols * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![0f32; rows * n];
            // Batches: the activations are prepared once, outside the timing, and each thread
            // writes its rows' results as the kernels give them (rows × n), as the expert
            // pass does: the kernels alone are timed.
            let prepared = prepare(w.ty, cols, &x, n);
            let chunk = rows.div_ceil(o.threads).next_multiple_of(16);
            let (b, m) = time(o.iters, || {
                if n == 1 {
                    matvec_with(isa, &w, &x, &mut y)
                } else {
                    y.par_chunks_mut(chunk * n).enumerate().for_each(|(c, out)| {
                        matmul_rows(isa, &w, &prepared, c * chunk..c * chunk + out.len() / n, out)
                    });
                }
            });
            let gbs = data.len() as f64 / b / 1e9;
            println!(
                "{:<6} {:<7} {:>5} {:>9.2} {:>9.2} {:>8.1} {:>8.1} {:>6.2}",
                name,
                label(isa, &w, n),
                n,
                b * 1e3,
                m * 1e3,
                gbs,
                read_gbs,
                gbs / read_gbs
            );
        }
    }
}

/// The ISA's name, or `amx` where the product of `n` rows runs on the AMX tiles.
fn label(isa: Isa, w: &QMatrix, n: usize) -> &'static str {
    if runs_on_amx(isa, w.ty, n) {
        "amx"
    } else {
        isa.name()
    }
}
