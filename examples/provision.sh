#!/usr/bin/env bash
# Provision a box: decide with `hy plan --json`, then launch `hy run --plan`.
#
#   examples/provision.sh MODEL HARDWARE_FILE [-- EXTRA hy run ARGS]
#
# MODEL is a catalog name, HF repo id, GGUF file or HF folder; HARDWARE_FILE comes from
# `hy probe --save hw.toml` (or see examples/*.toml). The plan asks for the best quantization
# that fits (--quant auto) at CONTEXT tokens and CONCURRENCY requests; when nothing fits it
# halves the context (not below MIN_CONTEXT) before giving up with hy's exit code 3. It then
# runs `hy run --plan plan.toml` (the model, context and concurrency come from the plan).
#
# Environment:
#   HY=path/to/hy        the binary (default: hy on PATH)
#   CONTEXT=32768 CONCURRENCY=1 MIN_CONTEXT=4096
#   PLAN=plan.toml       where the plan is saved
#   DRY_RUN=1            print the `hy run` command instead of running it
#
# Exit codes: 0 launched (or printed), 3 nothing fits, 2 usage, anything else: hy's error.
set -euo pipefail

HY=${HY:-hy}
CONTEXT=${CONTEXT:-32768}
CONCURRENCY=${CONCURRENCY:-1}
MIN_CONTEXT=${MIN_CONTEXT:-4096}
PLAN=${PLAN:-plan.toml}

if [[ $# -lt 2 ]]; then
    sed -n '2,20p' "$0" >&2
    exit 2
fi
model=$1
hardware=$2
shift 2
[[ ${1:-} == "--" ]] && shift

# Reads a top-level string/number/bool from hy's pretty-printed JSON (two-space indent).
json_field() {
    sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" <<<"$2" | head -n 1
}

context=$CONTEXT
while :; do
    code=0
    json=$("$HY" plan "$model" --hardware "$hardware" --quant auto --context "$context" \
        --concurrency "$CONCURRENCY" --json --save "$PLAN") || code=$?
    if [[ $code -eq 0 ]]; then
        break
    elif [[ $code -eq 3 && $((context / 2)) -ge $MIN_CONTEXT ]]; then
        echo "provision: $model does not fit at context $context; trying $((context / 2))" >&2
        context=$((context / 2))
    else
        [[ $code -eq 3 ]] && echo "provision: $model does not fit $hardware at any context >= $MIN_CONTEXT" >&2
        exit "$code"
    fi
done

quant=$(json_field quant "$json")
reference=$(json_field model_reference "$json")
tok_s=$(sed -n 's/^    "decode_tokens_per_s": \([0-9.]*\),$/\1/p' <<<"$json" | head -n 1)
echo "provision: $model at $quant, context $context x $CONCURRENCY, predicted ${tok_s%.*} tok/s; plan in $PLAN" >&2

# `hy run --plan` loads the plan's model; a catalog model is fetched at the planned quantization.
cmd=("$HY" run --plan "$PLAN")
[[ -e $reference ]] || cmd+=(--quant "$quant")
cmd+=(--context "$context" --max-concurrency "$CONCURRENCY" "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
