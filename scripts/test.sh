#!/usr/bin/env bash
# Set up kb, make sure Redis and PostgreSQL run, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# The web UI's browser test drives Debian's chromium (no browser download through Playwright).
if [ ! -x /usr/bin/chromium ]; then
  sudo_=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_="sudo"; fi
  $sudo_ apt-get update -q && $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export KB_TEST_PG_URL=${KB_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
