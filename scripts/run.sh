#!/usr/bin/env bash
# Set up kb and serve it in the embedded mode (SQLite + local index files under ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/kb migrate
exec .venv/bin/kb serve "$@"
