#!/usr/bin/env python3
"""Writes dequant_ref.bin: raw GGML blocks and their values as dequantized by gguf-py.

Run once from the repository root (needs `pip install gguf numpy`):
    python3 engine/tests/data/gen_dequant_ref.py
The Rust test engine/tests/kernels_dequant_ref.rs reads the result; it needs no Python.

Format (little-endian): b"HYDQ", u32 record count, then per record:
u32 name length, name (utf-8), u32 ggml type, u32 rows, u32 row length (weights),
u32 raw byte count, raw bytes, rows*row_len f32 values.
"""
import struct
import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as Q
from gguf.quants import dequantize

FIX = "tests/fixtures"
REAL = [  # (file, tensor, rows to keep)
    ("tiny-llama/gguf/tiny-llama-Q4_K_M.gguf", "blk.0.attn_q.weight", 2),        # Q4_K
    ("tiny-llama/gguf/tiny-llama-Q4_K_M.gguf", "output.weight", 2),              # Q6_K
    ("tiny-deepseek-v3/gguf/tiny-deepseek-v3-Q4_K_M.gguf", "blk.0.attn_k_b.weight", 4),  # Q5_0
    ("tiny-llama/gguf/tiny-llama-Q8_0.gguf", "blk.0.attn_q.weight", 2),          # Q8_0
    ("tiny-llama/gguf/tiny-llama-F16.gguf", "blk.0.attn_q.weight", 2),           # F16
]
# Types without a fixture tensor: random blocks with sane f16 scales, 256 weights each.
SYNTH = {Q.Q2_K: (84, [80, 82]), Q.Q3_K: (110, [108]), Q.Q5_K: (176, [0, 2]),
         Q.Q4_0: (18, [0]), Q.Q4_1: (20, [0, 2]), Q.Q5_1: (24, [0, 2])}


def record(name, qtype, rows, row_len, raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1)
    vals = dequantize(raw, qtype).astype("<f4").reshape(rows, row_len)
    nb = name.encode()
    return (struct.pack("<I", len(nb)) + nb + struct.pack("<IIII", int(qtype), rows, row_len, raw.size)
            + raw.tobytes() + vals.tobytes())


def main():
    recs = []
    for path, tname, rows in REAL:
        t = next(t for t in GGUFReader(f"{FIX}/{path}").tensors if t.name == tname)
        row_len = int(t.shape[0])
        raw = np.frombuffer(t.data.tobytes(), dtype=np.uint8)
        per_row = raw.size // int(np.prod(t.shape[1:]))
        recs.append(record(f"{path}:{tname}", t.tensor_type, rows, row_len, raw[: rows * per_row]))
    rng = np.random.default_rng(20261128)
    for qtype, (size, offs) in SYNTH.items():
        per_block = 256 // (32 if size < 30 else 256)
        raw = rng.integers(0, 256, size=(per_block, size), dtype=np.uint8)
        for o in offs:
            raw[:, o:o + 2] = np.frombuffer(
                rng.uniform(0.001, 0.05, per_block).astype("<f2").tobytes(), dtype=np.uint8).reshape(-1, 2)
        recs.append(record(f"synthetic:{qtype.name}", qtype, 1, 256, raw.reshape(1, -1)))
    bf = rng.uniform(-2, 2, 256).astype("<f4").view("<u4") >> 16
    recs.append(record("synthetic:BF16", Q.BF16, 1, 256, bf.astype("<u2").view(np.uint8)))
    with open("engine/tests/data/dequant_ref.bin", "wb") as f:
        f.write(b"HYDQ" + struct.pack("<I", len(recs)) + b"".join(recs))


if __name__ == "__main__":
    main()
