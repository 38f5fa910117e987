"""What ``device="auto"`` and ``dtype="auto"`` resolve to (engine.devices)."""

from __future__ import annotations

import pytest
import torch

from engine import devices
from engine.config import EngineConfig
from engine.llm_engine import Engine
from tests.engine.quant.test_policy import tiny
from tests.threads import counts_in_fresh_process


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_cuda_and_fp32_on_any_cpu(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """fp32 on a CPU even where bf16 is native: restored turns must write what a recompute writes."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert devices.resolve_dtype("auto", cpu) == torch.float32
    assert devices.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert devices.resolve_dtype("bfloat16", cpu) == torch.bfloat16  # named dtypes win
    assert devices.resolve_dtype("float16", cpu) == torch.float16
    hint = devices.bf16_hint(cpu, torch.float32)
    assert (hint is not None and "KB_ENGINE_DTYPE" in hint) == native
    assert devices.bf16_hint(cpu, torch.bfloat16) is None


@pytest.mark.parametrize("name", ["int8", "long", "bf16x", "Size"])
def test_a_dtype_that_is_not_a_float_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="dtype must be"):
        devices.resolve_dtype(name, torch.device("cpu"))


def test_the_probe_matches_the_cpu_flags() -> None:
    with open("/proc/cpuinfo") as f:  # Linux, as everywhere kb is tested
        flags = {w for line in f if line.startswith("flags") for w in line.split()}
    assert devices.cpu_has_native_bf16() == bool(flags & {"amx_tile", "avx512_bf16"})


def test_an_in_memory_model_keeps_its_dtype_under_auto() -> None:
    model = tiny().to(torch.bfloat16)
    eng = Engine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=8), model=model, fingerprint="tiny")
    try:
        assert eng.dtype == torch.bfloat16 and eng.runner.kv.dtype == torch.bfloat16
    finally:
        eng.close()


def test_in_passing_thread_returns_and_raises_from_another_thread() -> None:
    import threading

    assert devices.in_passing_thread(lambda: threading.get_ident()) != threading.get_ident()
    with pytest.raises(KeyError, match="boom"):
        devices.in_passing_thread(lambda: {}["boom"])


def test_a_passing_thread_takes_its_openmp_pool_with_it() -> None:
    """The premise of `in_passing_thread`: a live thread that ran a parallel op keeps its pool's
    workers; a thread that ran it in passing keeps none."""
    passing, live, threads = counts_in_fresh_process(
        "import torch\n"
        "from engine.devices import in_passing_thread\n"
        "a = torch.randn(768, 768)\n"
        "print(kept_pool_workers(lambda: in_passing_thread(lambda: a @ a)),"
        " kept_pool_workers(lambda: a @ a), torch.get_num_threads())\n"
    )
    assert passing == 0
    assert live == threads - 1  # the live thread's pool workers


def test_a_cpu_engine_builds_off_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from engine import llm_engine

    seen: list[int] = []
    real = llm_engine.ModelRunner.__init__

    def spy(self, *a, **kw):
        seen.append(threading.get_ident())
        real(self, *a, **kw)

    monkeypatch.setattr(llm_engine.ModelRunner, "__init__", spy)
    eng = Engine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=8), model=tiny(), fingerprint="tiny")
    try:
        assert seen and seen[0] != threading.get_ident()
        with pytest.raises(ValueError, match="kv_dtype"):  # set-up errors still reach the caller
            Engine(EngineConfig(model="tiny", device="cpu", kv_dtype="fp8"), model=tiny(), fingerprint="tiny")
    finally:
        eng.close()
