"""``kb engine bench-quality --json`` on a short slice of the shipped FAQ text."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from engine.cli import app
from engine.quant.evaluate import DATA, calib_texts, faq_answers


def test_shipped_text_has_license_header_and_disjoint_calibration() -> None:
    header = DATA.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("#") and "CC-BY-4.0" in header
    answers = faq_answers()
    assert len(answers) == 300 and not set(calib_texts()) & set(answers[:150])


def test_bench_quality_json_reports_each_mode() -> None:
    modes = "unquantized,int8,int4-g32-gguf"
    res = CliRunner().invoke(app, ["bench-quality", "--json", "--modes", modes, "--max-tokens", "96"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])  # progress bars go to stderr
    assert list(rows) == modes.split(",")
    for r in rows.values():
        assert r["perplexity"] > 1 and r["tokens"] == 96
        assert set(r["sparsity"]) == {"weights", "activations"}
    assert rows["int8"]["weight_bytes"] < rows["unquantized"]["weight_bytes"]
    assert abs(rows["int8"]["vs_unquantized"]) < 0.01
    assert rows["int4-g32-gguf"]["perplexity"] == rows["unquantized"]["perplexity"]  # exact blocks


def test_bench_quality_rejects_unknown_modes() -> None:
    res = CliRunner().invoke(app, ["bench-quality", "--modes", "int3"])
    assert res.exit_code == 2 and "unknown modes" in res.output
