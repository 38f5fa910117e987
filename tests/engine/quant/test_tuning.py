"""The shipped launch-config table: merged from a sweep, looked up by GPU and batch, and every config in it
runs the kernels correctly (Triton's interpreter here)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.quant import gpu, tuning
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8
from tests.engine.quant.test_gpu_kernels import DEVICE, K, N, _check, _interpreter, _on_device, _ref  # noqa: F401

SWEEP = {
    "gpu": "NVIDIA H200",
    "copy_gbps": 4230.0,
    "arch": "9.0",
    "tuning": {
        "int4k_g128|6144|4096|1": [64, 8, 4, 4, 0, 16],
        "int4k_g128|6144|4096|16": [128, 8, 8, 3, 16, 16],
        "int4k_g64|6144|4096|1": [64, 4, 4, 3, 0, 16],
        "int8|6144|4096|1": [128, 8, 4, 3, 16, 1, 0],
        "int4_24|6144|4096|1": [64, 1, 4, 3, 1, 1],  # a kind the table does not ship
    },
}
KINDS = {"int8": ("int8", 0), "int4k_g128": ("int4k", 128), "int4k_g64": ("int4k", 64)}


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "quant_tuning.json"
    monkeypatch.setattr(tuning, "TABLE", path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    tuning.shipped.cache_clear()
    tuning.lookup.cache_clear()
    yield path
    tuning.shipped.cache_clear()
    tuning.lookup.cache_clear()


def test_merge_maps_sweep_kinds_and_keeps_other_arches(table) -> None:
    table.write_text(json.dumps({"configs": {"8.9": {"int8|0|1|1|1": [64, 1, 4, 3]}}, "sources": {}}))
    merged = tuning.merge(SWEEP, "9.0", KINDS)
    assert merged["configs"]["8.9"] == {"int8|0|1|1|1": [64, 1, 4, 3]}
    hopper = merged["configs"]["9.0"]
    assert hopper["int4k|128|6144|4096|1"] == [64, 8, 4, 4, 0, 16]
    assert hopper["int4k|64|6144|4096|1"] == [64, 4, 4, 3, 0, 16]  # the group size keeps them apart
    assert not any(key.startswith("int4_24") for key in hopper)
    assert "NVIDIA H200" in merged["sources"]["9.0"]


def test_lookup_takes_the_smallest_measured_batch_at_or_above(table) -> None:
    table.write_text(json.dumps(tuning.merge(SWEEP, "9.0", KINDS)))
    assert tuning.lookup("int4k", 128, 6144, 4096, 1) == (64, 8, 4, 4, 0, 16)
    assert tuning.lookup("int4k", 128, 6144, 4096, 5) == (128, 8, 8, 3, 16, 16)
    assert tuning.lookup("int4k", 128, 6144, 4096, 40) == (128, 8, 8, 3, 16, 16)  # beyond: the largest
    assert tuning.lookup("int4k", 64, 6144, 4096, 1) == (64, 4, 4, 3, 0, 16)
    assert tuning.lookup("int4k", 128, 4096, 4096, 1) is None  # shape not measured: the heuristic
    assert tuning.lookup("int8", 0, 6144, 4096, 1) == (128, 8, 4, 3, 16, 1, 0)


def test_other_gpus_and_cpu_get_no_config(table, monkeypatch) -> None:
    table.write_text(json.dumps(tuning.merge(SWEEP, "9.0", KINDS)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    assert tuning.lookup("int4k", 128, 6144, 4096, 1) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tuning.lookup.cache_clear()
    assert tuning.lookup("int4k", 128, 6144, 4096, 1) is None


def _shipped_configs() -> list[tuple[str, int, tuple[int, ...]]]:
    data = json.loads(tuning.TABLE.read_text())
    seen = {}
    for configs in data["configs"].values():
        for key, cfg in configs.items():
            kind, group, *_ = key.split("|")
            seen[(kind, int(group), tuple(cfg))] = None
    return list(seen)


@pytest.mark.parametrize("kind, group, cfg", _shipped_configs())
def test_every_shipped_config_computes_the_right_product(kind: str, group: int, cfg: tuple[int, ...]) -> None:
    """A config changes only the speed: each one in the table gives the reference result (on a small
    shape, where its tile is wider than the matrix and its split-K is clipped). The packed-fp16 GEMV
    (modes 4, 5) gets a K its steps tile, so that it runs rather than its fallback, and the error bound of
    fp16 products (4e-3 of a row's largest output, as in test_gpu_h2); so does the one-token
    tensor-core GEMV (mode 6: x rounded to fp16), at one token (a batch takes another kernel)."""
    h2 = kind == "int4k" and cfg[4] in (4, 5, 6)
    k = 2048 if h2 else K  # K / 8 word rows that steps of up to 256 rows tile
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(9)) * 0.05
    if kind == "int4_24":  # a 2:4 weight, so that the 2:4 kernel runs the config
        mask = prune_2_4(w)
        q = quantize_int4(w * mask, group=group, mask=mask)  # carries the mask: packs as int4_24
    else:
        q = quantize_int8(w) if kind == "int8" else quantize_int4(w, group=group)
    want_w = q.dequantize(torch.float32) if kind == "int8" else _ref(q)
    teal = kind == "int4_teal"  # N-packed int4, run with an activation threshold (TEAL)
    gpu.TUNING[(kind, N, k)] = cfg
    try:
        for m in (1, 3):
            if not h2:
                gw = gpu.pack(q, n_major=teal)
                assert gw.kind + "_teal" * teal == kind
                _check(gw, want_w, m, 0.5 if teal else None)
                continue
            tiled, fp16 = gpu._int4k_config(gpu.pack(q), cfg, m)
            if cfg[4] == 6:
                assert (tiled[4] == 6) == (m == 1)  # its own kernel for one token, not a fallback
            else:
                assert fp16 is not None  # the fp16 GEMV, not a fallback
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
            got = gpu.matmul_small(_on_device(gpu.pack(q)), x.to(DEVICE)).cpu()
            want = x @ want_w.t()
            err = (got - want).abs().amax(1) / want.abs().amax(1)
            assert float(err.max()) < 4e-3, err
    finally:
        gpu.TUNING.pop((kind, N, k))


def test_a_gpu_models_own_configs_come_before_its_architectures(table, monkeypatch) -> None:
    """The H100 and the H200 share compute capability 9.0; configs keyed ``"9.0 H100"`` win on an H100
    for their shapes only, and an H200 keeps the architecture's table."""
    merged = tuning.merge(SWEEP, "9.0", KINDS)
    merged["configs"]["9.0 H100"] = {"int4k|128|6144|4096|1": [32, 4, 4, 2, 5, 64, 2, 2, 2]}
    table.write_text(json.dumps(merged))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert tuning.lookup("int4k", 128, 6144, 4096, 1) == (32, 4, 4, 2, 5, 64, 2, 2, 2)
    assert tuning.lookup("int4k", 128, 6144, 4096, 5) == (128, 8, 8, 3, 16, 16)  # not in the H100's own
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    tuning.lookup.cache_clear()
    assert tuning.lookup("int4k", 128, 6144, 4096, 1) == (64, 8, 4, 4, 0, 16)


def test_the_shipped_h100_table_takes_the_split_1_fp16_gemv_for_one_token_of_qkv_and_o(monkeypatch) -> None:
    """The shipped ``"9.0 H100"`` entries (bench/RESULTS.md, third session of 2026-12-07): the fp16 GEMV
    over all of K (split 1, no split-K sum) for one token of qkv and o on an H100; its batches, other
    shapes and an H200 keep the architecture's configs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    tuning.shipped.cache_clear()
    tuning.lookup.cache_clear()
    try:
        hopper = tuning.shipped("9.0")
        for n, k in ((6144, 4096), (4096, 4096)):
            one = tuning.lookup("int4k", 128, n, k, 1)
            assert (one[1], one[4]) == (1, 5)  # split 1, the fp16 GEMV
            assert tuning.lookup("int4k", 128, n, k, 4) == hopper[("int4k", 128, n, k)][4]
        assert tuning.lookup("int4k", 128, 28672, 4096, 1) == hopper[("int4k", 128, 28672, 4096)][1]
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
        tuning.lookup.cache_clear()
        assert tuning.lookup("int4k", 128, 6144, 4096, 1) == hopper[("int4k", 128, 6144, 4096)][1]
    finally:
        tuning.shipped.cache_clear()
        tuning.lookup.cache_clear()


def test_the_2_4_heuristic_unpacks_codes_by_reshape() -> None:
    """A 2:4 shape without a table entry gets GATHER off: per-value gathers took 4.7-9.0x longer at one
    token on an H100 (bench/RESULTS.md, third session of 2026-12-07), and it runs."""
    from engine.quant import launch_configs

    for m in (1, 16):
        cfg = launch_configs._config("int4_24", 4096, 4096, 128, m)
        assert len(cfg) == 6 and cfg[5] == 0, cfg
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(4)) * 0.05
    mask = prune_2_4(w)
    q = quantize_int4(w * mask, group=64, mask=mask)
    assert gpu.pack(q).kind == "int4_24"
    for m in (1, 3):
        _check(gpu.pack(q), _ref(q), m)


def test_the_teal_heuristic_unpacks_codes_by_reshape() -> None:
    """A TEAL (N-packed) shape without a table entry gets its kernels without per-value gathers: they took
    3.8-5.8x longer at one token on an H100 (bench/RESULTS.md, fourth session of 2026-12-07); and they run,
    skipping the rows of small activations, at one token and at a batch."""
    from engine.quant import launch_configs

    for m in (1, 16):
        cfg = launch_configs._config("int4_teal", 4096, 4096, 128, m)
        assert len(cfg) == 6 and cfg[4:] == (1, 0), cfg
    q = quantize_int4(torch.randn(N, K, generator=torch.Generator().manual_seed(5)) * 0.05, group=64)
    gw = gpu.pack(q, n_major=True)
    assert gw.kind == "int4"
    for m in (1, 3):
        _check(gw, _ref(q), m, thresh=0.5)
