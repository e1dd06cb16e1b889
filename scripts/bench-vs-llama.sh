#!/usr/bin/env bash
# Same-run comparison of hy and llama.cpp on a synthetic DeepSeek-V3-shape model (1 dense +
# 4 MoE layers, Q4_K_M, 29.5 GB; synthetic weights), as reported in the README ("Speed").
#
#   scripts/bench-vs-llama.sh HY LLAMA_BENCH [THREADS] [DIR]
#
# HY: a release `hy` binary; LLAMA_BENCH: llama.cpp's llama-bench (CPU build). DIR (default
# /tmp) needs ~30 GB free (a tmpfs such as /dev/shm writes the file in seconds). Alternates
# llama.cpp and hy three times (a shared machine's bandwidth drifts; only ratios within a run
# mean anything), then runs the expert-pass and memory benchmarks and the HY90 plan with the
# calibration this run measured.
set -euo pipefail
HY=${1:?usage: bench-vs-llama.sh HY LLAMA_BENCH [THREADS] [DIR]}
LB=${2:?usage: bench-vs-llama.sh HY LLAMA_BENCH [THREADS] [DIR]}
T=${3:-$(nproc)}
DIR=${4:-/tmp}
F=$DIR/hy-ds5.gguf
test -f "$F" || "$HY" synth deepseek-v3 --layers 5 --dense-layers 1 --quant q4_k_m "$F"
for r in 1 2 3; do
  echo "== llama.cpp, pass $r"
  "$LB" -m "$F" -t "$T" -p 64,256 -n 32 -r 2 --repack 0   # its repacking path aborts on this file
  echo "== hy, pass $r"
  batches=$([ $r = 1 ] && echo 1,4,16 || echo 1,4)
  "$HY" bench decode "$F" --batch "$batches" --prompt 64 --gen 32 --threads "$T" --save "$DIR/hy-calibration-$r.toml"
  "$HY" bench decode "$F" --batch 1 --prompt 256 --gen 8 --threads "$T"
done
echo "== hy with the experts in the file's layout (HY_REPACK=0), for comparison"
HY_REPACK=0 "$HY" bench decode "$F" --batch 1 --prompt 64 --gen 32 --threads "$T"
HY_REPACK=0 "$HY" bench decode "$F" --batch 1 --prompt 256 --gen 8 --threads "$T"
echo "== where the time goes (HY_PROFILE): 64-token prefill and decode, then a 256-token prefill"
HY_PROFILE=1 "$HY" bench decode "$F" --batch 1 --prompt 64 --gen 32 --threads "$T" 2>&1 | grep -v "^bench decode"
HY_PROFILE=1 "$HY" bench decode "$F" --batch 1 --prompt 256 --gen 1 --threads "$T" 2>&1 | sed -n '/^prefill/,/^decode/p'
echo "== expert pass and memory"
"$HY" bench memory
for q in q4_k q8_0 fp8; do "$HY" bench moe --quant $q --batch 1,4,16 --layers 2 --steps 10 --threads "$T"; done
"$HY" bench moe --quant q4_k --batch 1 --layers 2 --steps 10 --threads "$T" --simulate-nodes 2
HY_REPACK=0 "$HY" bench moe --quant q4_k --batch 1,4,16 --layers 2 --steps 10 --threads "$T"
echo "== HY90 with this run's calibration"
"$HY" plan deepseek-r1 --profile HY90 --quant q4_k_m --calibration "$DIR/hy-calibration-1.toml" | grep -A6 "^Predicted"
