"""`kb engine-serve` runs on the GPU box, which need not carry the search and ingestion stack.

compose.yaml's engine service and the GPU benchmarks (bench/chat_gpu.py) start it without FAISS,
tantivy, SQLAlchemy or the parsers; an import added to the chat modules must not pull them back in.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = {"faiss", "tantivy", "sqlalchemy", "alembic", "celery", "redis", "pypdfium2", "docx", "pptx",
         "openpyxl", "sentence_transformers", "ingest", "storage"}  # fmt: skip


def test_engine_server_imports_no_search_stack() -> None:
    code = (
        "import sys, json\n"
        "import services.engine_server.app, services.chat.generators.engine_local, services.chat.prompt\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "fastapi" in loaded  # the check sees real imports
    assert not loaded & HEAVY, f"engine-serve pulled in {sorted(loaded & HEAVY)}"
