"""`engine.l2_prefetch`: which bytes a layer asks into L2 after its qkv GEMV, the machine code that asks,
and that decode steps give the same bits with it on. CI (CPU) checks the chunk tables and, compiled offline
for sm_90, the kernel's SASS; on a GPU (`bash bench/gpu_pending.sh l2`) the model test runs real decode
steps and CUDA graphs with the side stream."""

from __future__ import annotations

import re

import pytest
import torch

from engine import l2_prefetch
from engine.quant.gpu import prepare
from tests.engine.test_paged_attn_rope import engine_still, prefill_then_decode  # noqa: F401 (fixture)
from tests.engine.test_pdl import _sass
from tests.engine.test_prefill_graphs import CAPTURES, _tiny_runner
from tests.engine.test_split_kv import _interp


def test_byte_ranges_cover_each_tensors_share_aligned() -> None:
    a = torch.zeros(1000, dtype=torch.int32)  # 4000 bytes
    b = torch.zeros(64, 3, dtype=torch.float16)[1:]  # a view 6 bytes into its storage
    ranges = l2_prefetch.byte_ranges([a, b], 0.5)
    assert ranges[0] == (a.data_ptr(), 2000)  # an aligned start, a whole number of 16 bytes
    for (start, n), t in zip(ranges, [a, b], strict=True):
        assert start % 16 == 0 and n % 16 == 0
        assert start <= t.data_ptr() and start + n >= t.data_ptr() + t.numel() * t.element_size() // 2
        assert start > t.data_ptr() - 16 and start + n < t.data_ptr() + t.numel() * t.element_size() // 2 + 16
    assert l2_prefetch.byte_ranges([a], 0.0) == []
    assert l2_prefetch.byte_ranges([a], 2.0) == [(a.data_ptr(), 4000)]  # capped at the whole tensor
    with pytest.raises(ValueError, match="contiguous"):
        l2_prefetch.byte_ranges([torch.zeros(8, 8).t()], 1.0)


def test_chunks_cut_ranges_into_pieces_of_at_most_one_chunk() -> None:
    addrs, sizes = l2_prefetch.chunks([(4096, 100 * 16), (1 << 20, 48)], 512)
    assert sizes == [512, 512, 512, 64, 48]
    assert addrs == [4096, 4608, 5120, 5632, 1 << 20]
    with pytest.raises(ValueError, match="multiple of 16"):
        l2_prefetch.chunks([(0, 64)], 100)


def _quantized_runner():
    return _tiny_runner(True, quant="int4:g32", graph_tokens=None)


def test_every_layer_gets_a_table_of_o_and_the_first_share_of_gate_up(monkeypatch) -> None:
    r = _quantized_runner()
    layers = r.model.model.layers
    for layer in layers:  # packed as the engine packs them on a GPU (the runner attaches there only)
        prepare(layer.self_attn.o_proj), prepare(layer.mlp.gate_up_proj)
    assert l2_prefetch.attach(r.model) == len(layers)
    monkeypatch.setattr(l2_prefetch, "GATE_UP_SHARE", 0.5)
    monkeypatch.setattr(l2_prefetch, "CHUNK", 256)
    monkeypatch.setattr(l2_prefetch, "LINES", False)
    for layer in layers:
        plan = layer.self_attn.l2_next.current()
        o = list(layer.self_attn.o_proj.gpu.tensors.values())
        gu = list(layer.mlp.gate_up_proj.gpu.tensors.values())
        addrs, sizes = plan.addrs.tolist(), plan.sizes.tolist()
        assert max(sizes) <= 256 and all(s % 16 == 0 and s > 0 for s in sizes)
        covered = sorted(zip(addrs, sizes, strict=True))

        def bytes_in(t: torch.Tensor, covered=covered) -> int:
            lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
            return sum(max(0, min(hi, a + s) - max(lo, a)) for a, s in covered)

        for t in o:  # all of o's
            assert bytes_in(t) == t.numel() * t.element_size()
        for t in gu:  # the first half of each of gate_up's, not much more
            n = t.numel() * t.element_size()
            assert n // 2 <= bytes_in(t) <= n // 2 + 16
        assert plan.nbytes == sum(sizes)
        assert layer.self_attn.l2_next.current() is plan  # same settings: the same table
    monkeypatch.setattr(l2_prefetch, "GATE_UP_SHARE", 0.0)
    plan = layers[0].self_attn.l2_next.current()  # settings changed: rebuilt, o alone
    assert plan.nbytes == pytest.approx(
        sum(t.numel() * t.element_size() for t in layers[0].self_attn.o_proj.gpu.tensors.values()), abs=32
    )


def test_layers_without_packed_quantized_matmuls_get_none() -> None:
    r = _tiny_runner(True, graph_tokens=None)  # plain layers
    assert l2_prefetch.attach(r.model) == 0
    assert all(layer.self_attn.l2_next is None for layer in r.model.model.layers)


COMPILE = """
import sys
from bench.sass_count import sass
from engine.l2_prefetch import l2_prefetch_kernel as k
sig = {"addr_ptr": "*i64", "size_ptr": "*i32", "n": "i32"}
print(sass(k, eval(sys.argv[1]), 1, 1, sig=sig, div=("addr_ptr", "size_ptr")))
"""


@pytest.mark.parametrize(("lines", "steps", "want"), [(False, 1, r"UBLKPF\.L2"), (True, 16, r"CCTL\.E\.PF2")])
def test_the_kernel_only_reads_its_table_and_asks_for_lines(lines, steps, want) -> None:
    """Compiled for sm_90: bulk prefetches (one a chunk, lane by lane through the uniform datapath) or one
    line prefetch a 128 bytes, and no store: the kernel changes no memory, so it needs no ordering."""
    instrs = _sass({"LINES": lines, "STEPS": steps}, COMPILE)
    prefetches = [i for i in instrs if re.search(want, i)]
    assert len(prefetches) == (1 if not lines else steps)
    assert not [i for i in instrs if re.match(r"(@!?P\d+ )?(STG|ST\.|RED|ATOM)", i)]


def test_decode_steps_give_the_same_bits_with_the_prefetches(engine_still, monkeypatch) -> None:  # noqa: F811
    """Decode steps of an int4 model through the runner (on a GPU: the side stream forked in each layer and
    joined at the logits, inside captured graphs too) give the same logits and KV with prefetches as
    without; on the CPU the switch changes nothing, as it launches nothing. The session's engine is held
    still meanwhile, as in `test_paged_attn_rope` (the interpreter keeps kernel grids in one global)."""
    with engine_still:
        _same_bits(monkeypatch)


def _same_bits(monkeypatch) -> None:
    _interp(monkeypatch)
    monkeypatch.setattr("engine.model.FUSED", True)
    runs = []
    real = l2_prefetch.launch
    for on in (False, True):
        monkeypatch.setattr(l2_prefetch, "ENABLED", on)
        monkeypatch.setattr(l2_prefetch, "LINES", None)
        r = _quantized_runner()
        launched: list[bool] = []

        def counted(pf, x, launched=launched) -> bool:
            launched.append(real(pf, x))
            return launched[-1]

        monkeypatch.setattr(l2_prefetch, "launch", counted)
        runs.append((*prefill_then_decode(r, seed=3), launched))
    (want, kv_want, off), (got, kv_got, on) = runs
    assert torch.equal(got, want) and torch.equal(kv_got, kv_want)
    assert not any(off)
    if CAPTURES:  # each layer forked at the graph's two warm-ups and its capture; replays run no Python
        assert len(on) >= 2 * 3 and all(on) and any(st.get("graph") for st in r.graphs.values())
    else:
        assert not any(on)
