#!/usr/bin/env bash
# Server end-to-end test with the official `openai` Python client (issue 4, "Must show").
# Builds `hy`, makes a venv with `openai` from PyPI (work-local/venv, git-ignored), starts
# `hy run` on the tiny Llama fixture and runs tests/openai_e2e.py against it. When
# HY_GEMMA_GGUF points at the Gemma 3 270M file (scripts/get-gemma.sh), it runs the same
# checks on Gemma too.
# Usage: .ci/server-e2e.sh            (from anywhere; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HY_E2E_VENV:-work-local/venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai
fi

cargo build --bin hy
HY="$PWD/target/debug/hy"

"$VENV/bin/python" tests/openai_e2e.py "$HY" tests/fixtures/tiny-llama/gguf/tiny-llama-Q8_0.gguf

if [ -n "${HY_GEMMA_GGUF:-}" ] && [ -f "$HY_GEMMA_GGUF" ]; then
  "$VENV/bin/python" tests/openai_e2e.py "$HY" "$HY_GEMMA_GGUF"
else
  echo "server-e2e: Gemma run skipped (set HY_GEMMA_GGUF; scripts/get-gemma.sh fetches it)" >&2
fi
