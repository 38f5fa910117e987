#!/usr/bin/env bash
# Set up kb, make sure Redis and PostgreSQL run, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export KB_TEST_PG_URL=${KB_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
