"""Split-KV attention and the prefill readers on CPU: the split math in torch (`split_reference`) against
plain causal SDPA, the Triton kernel (interpreted) with forced splits and multi-block tiles against the
gather path, the dense and gather+flash readers, and the runner's choice of reader."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from engine.attention import (
    AttnBatch,
    attend_dense,
    attend_gather,
    attend_prefix_flash,
    pack_meta,
    split_reference,
)
from engine.model_runner import prefill_mode
from tests.engine.test_attention import _fill, _interpreter_scalar_fix


def _sdpa_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """fp64 causal attention of the last ``q_len`` positions (bottom-right aligned), GQA expanded."""
    q_len, nh, _ = q.shape
    ctx, kvh, _ = k.shape
    kk = k.double().repeat_interleave(nh // kvh, 1).transpose(0, 1)
    vv = v.double().repeat_interleave(nh // kvh, 1).transpose(0, 1)
    mask = torch.arange(ctx)[None, :] <= torch.arange(ctx - q_len, ctx)[:, None]
    return F.scaled_dot_product_attention(q.double().transpose(0, 1), kk, vv, attn_mask=mask).transpose(0, 1)


@pytest.mark.parametrize(
    ("q_len", "ctx", "splits", "block_n", "block_m"),
    [
        (5, 70, 1, 16, 8),  # no split: the plain flash loop
        (5, 70, 3, 16, 8),  # uneven slices
        (1, 37, 4, 8, 16),  # decode row, short context
        (9, 40, 8, 8, 8),  # more splits than some tiles' slices: empty splits weigh 0
        (16, 16, 2, 8, 8),  # fresh prefill: rows with no visible key in their first masked tile
    ],
)
def test_split_reference_matches_causal_attention(q_len, ctx, splits, block_n, block_m):
    g = torch.Generator().manual_seed(q_len * 100 + splits)
    q = torch.randn(q_len, 4, 16, generator=g)
    k = torch.randn(ctx, 2, 16, generator=g)
    v = torch.randn(ctx, 2, 16, generator=g)
    got = split_reference(q, k, v, splits, block_n, group=2, block_m=block_m)
    torch.testing.assert_close(got.double(), _sdpa_ref(q, k, v), atol=1e-5, rtol=1e-5)


def _interp(monkeypatch) -> str:
    pytest.importorskip("triton")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreted:
        _interpreter_scalar_fix(monkeypatch)
    return "cpu" if interpreted else "cuda"


@pytest.mark.parametrize(
    ("override", "int8"),
    [({"splits": 3}, False), ({"splits": 4, "block_n": 32}, True), ({"block_n": 32}, False)],
)
def test_triton_split_kv_matches_gather(override, int8, monkeypatch):
    """Forced splits (with the combine pass), tiles spanning two cache blocks, int8 scales per key; the
    first tile's K/V loaded ahead of the rest (`PRE_WAIT`, where all its keys are older than the new
    tokens: the prefix of the first sequence, every decode row) gives the same bits as loaded in turn."""
    import engine.paged_attn_triton as pat

    def attention(*args, **kw):
        monkeypatch.setattr(pat, "PRE_WAIT", False)
        in_turn = pat.paged_attention(*args, **kw)
        monkeypatch.setattr(pat, "PRE_WAIT", True)
        out = pat.paged_attention(*args, **kw)
        assert torch.equal(out, in_turn)
        return out

    device = _interp(monkeypatch)
    tol = {"atol": 2e-5, "rtol": 1e-4} if device == "cpu" else {"atol": 2e-2, "rtol": 2e-2}
    monkeypatch.setattr(pat, "OVERRIDE", override)
    q, kc, vc, ks, vs, seqs = _fill([(20, 90), (33, 33), (1, 70)], int8=int8, seed=3)
    ab = AttnBatch(
        torch.zeros(0, dtype=torch.long), [(a, b, c, torch.tensor(t)) for a, b, c, t in seqs], [], []
    )
    want = attend_gather(q, kc, vc, ks, vs, ab, 4, 2)
    moved = [x.to(device) if x is not None else None for x in (q, kc, vc, ks, vs)]
    got = attention(*moved, pack_meta(seqs, torch.device(device)), decode=False).cpu()
    torch.testing.assert_close(got, want, **tol)
    dq = q[[19, 52, 53]]
    dseqs = [(i, 1, c, t) for i, (_, _, c, t) in enumerate(seqs)]
    ab = AttnBatch(
        torch.zeros(0, dtype=torch.long), [(a, b, c, torch.tensor(t)) for a, b, c, t in dseqs], [], []
    )
    want = attend_gather(dq, kc, vc, ks, vs, ab, 4, 2)
    moved[0] = dq.to(device)
    got = attention(*moved, pack_meta(dseqs, torch.device(device)), decode=True).cpu()
    torch.testing.assert_close(got, want, **tol)


def test_decode_with_a_tile_a_split_matches_gather(monkeypatch):
    """One sequence's decode row with `DECODE_TILES_PER_SPLIT` 1 (the default): the plan splits a short
    context (here 4 splits of its 6 tiles, where 4 tiles a split keeps 1), so splits get 1-2 tiles or
    none, and the combine pass still gives the gather path's result."""
    import engine.paged_attn_triton as pat

    device = _interp(monkeypatch)
    tol = {"atol": 2e-5, "rtol": 1e-4} if device == "cpu" else {"atol": 2e-2, "rtol": 2e-2}
    q, kc, vc, ks, vs, seqs = _fill([(20, 90)], int8=False, seed=5)
    dseqs = [(0, 1, c, t) for _, _, c, t in seqs]
    ab = AttnBatch(
        torch.zeros(0, dtype=torch.long), [(a, b, c, torch.tensor(t)) for a, b, c, t in dseqs], [], []
    )
    want = attend_gather(q[[19]], kc, vc, ks, vs, ab, 4, 2)
    meta = pack_meta(dseqs, torch.device(device))
    moved = [x.to(device) for x in (q[[19]], kc, vc)]
    plans = []
    for per in (4, 1):
        monkeypatch.setattr(pat, "DECODE_TILES_PER_SPLIT", per)
        plans.append(pat.plan(2, meta["max_ctx"], 1, 2, kc.shape[1], True, torch.device(device))["splits"])
        got = pat.paged_attention(*moved, None, None, meta, decode=True).cpu()
        torch.testing.assert_close(got, want, **tol)
    assert plans[0] == 1 and plans[1] > 1, plans


def test_plan_splits_only_small_grids(monkeypatch):
    """Few programs over many KV tiles get split; a full grid or a short context does not."""
    from engine.paged_attn_triton import plan

    cuda = torch.device("cuda")
    import engine.paged_attn_triton as pat

    pat._num_sms.cache_clear()
    orig = pat._num_sms
    pat._num_sms = lambda d: 132  # an H100
    try:
        assert plan(256 * 4, 15_400, 1, 8, 64, False, cuda)["splits"] > 1  # 64 programs, 241 tiles
        # a turn of 257 tokens: 72 programs of 128 x 64 tiles, two an SM, 3 splits (timed best on an H100)
        turn = plan(257 * 4, 15_620, 1, 8, 64, False, cuda)
        assert (turn["block_n"], turn["num_warps"], turn["splits"]) == (64, 4, 3)
        full = plan(2048 * 4, 16_384, 1, 8, 64, False, cuda)  # a full grid keeps the wide tiles
        assert (full["block_n"], full["num_warps"]) == (128, 8)
        assert plan(2048 * 4, 16_384, 1, 8, 64, False, cuda)["splits"] == 1  # 512 programs
        # one sequence's decode: a tile a program (`DECODE_TILES_PER_SPLIT`), up to 2 waves and 32 splits
        assert plan(4, 192, 1, 8, 64, True, cuda)["splits"] == 3  # 3 tiles
        assert plan(4, 2048, 1, 8, 64, True, cuda)["splits"] == 32
        assert plan(4, 16_384, 1, 8, 64, True, cuda)["splits"] == 32  # long context
        assert plan(4, 448, 16, 8, 64, True, cuda)["splits"] == 1  # 16 sequences keep 4 tiles a split
        assert plan(4, 4096, 16, 8, 64, True, cuda)["splits"] == 3  # ... 128 programs, 2 waves
        monkeypatch.setattr(pat, "DECODE_TILES_PER_SPLIT", 4)  # the rule every grid had before
        assert plan(4, 192, 1, 8, 64, True, cuda)["splits"] == 1
        assert plan(4, 2048, 1, 8, 64, True, cuda)["splits"] == 8
        assert plan(257 * 4, 15_620, 1, 8, 64, False, cuda) == turn  # prefill keeps its rule either way
        # K/V tiles by TMA: 128 x 64 tiles, 4 warps at every prefill size; one to three waves split in two
        t1536 = plan(1536 * 4, 14_080, 1, 8, 64, False, cuda, tma=True)  # 384 programs
        assert (t1536["block_n"], t1536["num_warps"], t1536["splits"]) == (64, 4, 2)
        t2048 = plan(2048 * 4, 16_384, 1, 8, 64, False, cuda, tma=True)  # 512 programs
        assert (t2048["block_n"], t2048["num_warps"], t2048["splits"]) == (64, 4, 1)
        assert plan(257 * 4, 15_620, 1, 8, 64, False, cuda, tma=True) == turn  # under a wave: as before
        assert plan(4, 16_384, 1, 8, 64, True, cuda, tma=True) == plan(4, 16_384, 1, 8, 64, True, cuda)
        # other block sizes keep the plan without TMA (a TMA tile is one 64-token block)
        assert plan(1536 * 4, 14_080, 1, 8, 16, False, cuda, tma=True) == plan(
            1536 * 4, 14_080, 1, 8, 16, False, cuda
        )
    finally:
        pat._num_sms = orig


def test_dense_and_prefix_flash_readers_match_gather():
    q, kc, vc, ks, vs, seqs = _fill([(40, 40)], seed=5)
    _, q_len, ctx, table = seqs[0]
    ab = AttnBatch(torch.zeros(0, dtype=torch.long), [(0, q_len, ctx, torch.tensor(table))], [], [])
    want = attend_gather(q, kc, vc, None, None, ab, 4, 2)
    kk = kc[torch.tensor(table)].flatten(0, 1)[:ctx]
    vv = vc[torch.tensor(table)].flatten(0, 1)[:ctx]
    torch.testing.assert_close(attend_dense(q, kk, vv), want, atol=1e-5, rtol=1e-5)
    q, kc, vc, ks, vs, seqs = _fill([(12, 75)], seed=6)
    _, q_len, ctx, table = seqs[0]
    ab = AttnBatch(torch.zeros(0, dtype=torch.long), [(0, q_len, ctx, torch.tensor(table))], [], [])
    want = attend_gather(q, kc, vc, None, None, ab, 4, 2)
    got = attend_prefix_flash(q, kc, vc, torch.tensor(table), ctx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prefill_mode(monkeypatch):
    import engine.model_runner as mr

    fresh, prefix = [(0, 300, 300, [0])], [(0, 256, 15_000, [0])]
    assert prefill_mode(fresh, int8=False, decode=False) == "dense"
    assert prefill_mode(fresh, int8=True, decode=False) == "paged"  # int8: same values as a later reuse
    assert prefill_mode(fresh + fresh, int8=False, decode=False) == "paged"
    assert prefill_mode(prefix, int8=False, decode=False) == "paged"
    monkeypatch.setitem(mr.PREFILL_POLICY, "prefix_flash_min_q", 128)
    assert prefill_mode(prefix, int8=False, decode=False) == "prefix_flash"
    assert prefill_mode([(0, 1, 15_000, [0])], int8=False, decode=True) == "paged"


def test_triton_reader_with_tma_tiles_matches_gather(monkeypatch):
    """`TMA`: a prefill's tile of one cache block comes through a tensor descriptor over the pool (block
    ``table[t]``'s rows, head ``kvh``'s columns) instead of per-thread loads: the same bits as those loads,
    with a cached prefix and with forced splits (decode steps keep the loads: the same bits trivially). A
    wrong block or head in the descriptor's offsets fails it. 64-token blocks, as on a GPU: the only size
    whose tiles the GPU plan fetches by TMA, so the compiled run checks the bulk copies too."""
    import engine.paged_attn_triton as pat

    device = _interp(monkeypatch)
    q, kc, vc, _, _, seqs = _fill([(20, 150), (33, 33), (1, 70)], bs=64, int8=False, seed=5)
    moved = [x.to(device) for x in (q, kc, vc)]
    for decode, rows in ((False, None), (True, [19, 52, 53])):
        part = seqs if not decode else [(i, 1, c, t) for i, (_, _, c, t) in enumerate(seqs)]
        qq = moved[0] if rows is None else moved[0][rows]
        meta = pack_meta(part, torch.device(device))
        for override in ({}, {"splits": 3}):
            monkeypatch.setattr(pat, "OVERRIDE", override)
            monkeypatch.setattr(pat, "TMA", False)
            loads = pat.paged_attention(qq, moved[1], moved[2], None, None, meta, decode=decode)
            monkeypatch.setattr(pat, "TMA", True)
            got = pat.paged_attention(qq, moved[1], moved[2], None, None, meta, decode=decode)
            assert torch.equal(got, loads)
    ab = AttnBatch(
        torch.zeros(0, dtype=torch.long), [(a, b, c, torch.tensor(t)) for a, b, c, t in seqs], [], []
    )
    want = attend_gather(q, kc, vc, None, None, ab, 4, 2)
    monkeypatch.setattr(pat, "OVERRIDE", {})
    got = pat.paged_attention(*moved, None, None, pack_meta(seqs, torch.device(device)), decode=False).cpu()
    tol = {"atol": 2e-5, "rtol": 1e-4} if device == "cpu" else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)


def test_tma_launch_sets_the_descriptor_allocator_in_the_launching_thread(monkeypatch):
    """Triton asks a context-variable allocator for the descriptors' scratch, and a new thread starts
    without it: the engine's loop thread must get it at its own launches, not only the thread that ran
    the first one (on the H100 the loop's first prefill failed when the start-up capture had set it)."""
    import threading

    import triton.runtime._allocation as alloc

    import engine.paged_attn_triton as pat

    device = _interp(monkeypatch)
    q, kc, vc, _, _, seqs = _fill([(20, 150)], bs=64, int8=False, seed=7)
    meta = pack_meta(seqs, torch.device(device))
    moved = [x.to(device) for x in (q, kc, vc)]
    monkeypatch.setattr(pat, "TMA", True)
    pat.paged_attention(*moved, None, None, meta, decode=False)  # this thread first, as at start-up
    seen = {}

    def loop_thread():
        seen["before"] = alloc._allocator.get()
        seen["out"] = pat.paged_attention(*moved, None, None, meta, decode=False)
        seen["after"] = alloc._allocator.get()

    t = threading.Thread(target=loop_thread)
    t.start()
    t.join()
    assert seen["before"] is alloc._NULL_ALLOCATOR  # what a fresh thread has
    assert seen["after"] is pat._scratch
    assert torch.equal(seen["out"], pat.paged_attention(*moved, None, None, meta, decode=False))


TMA_SASS = """
import json, re
from bench.sass_count import sass
import engine.paged_attn_triton as pat
fn = pat._paged_attn_kernel
sig = dict.fromkeys(["Q", "K", "V", "KS", "VS", "Out"], "*bf16") | dict.fromkeys(["PO", "PM", "PL"], "*fp32")
sig |= dict.fromkeys(["TABLES", "Q_STARTS", "Q_LENS", "CTX_LENS"], "*i32") | {"sm_scale": "fp32"}
ints = [a for a in fn.arg_names if a.startswith("stride_")] + ["splits", "t_total", "n_rows"]
sig |= dict.fromkeys(ints, "i32")
div = ("Q", "K", "V", "Out", "PO", "TABLES", "stride_qt", "stride_kb", "stride_kt", "stride_ot")
out = {}
for tma in (False, True):
    consts = {"NH": 32, "GROUP": 4, "HD": 128, "BS": 64, "BLOCK_M": 128, "BLOCK_N": 64, "INT8": False,
              "SPLIT": True, "PDL": True, "PRE": True, "FOLD": False, "TMA": tma}
    ins = re.findall(r"/\\*[0-9a-f]+\\*/\\s+(.*?)\\s*;", sass(fn, consts, 4, 3, sig, div))
    out[str(tma)] = {p: sum(bool(re.search(r, i)) for i in ins)
                     for p, r in (("tma", r"UTMALDG"), ("local", r"\\b(STL|LDL)\\b"), ("wgmma", r"\\bHGMMA"))}
print(json.dumps(out))
"""


def test_tma_reader_compiles_for_hopper_with_bulk_copies_and_fewer_spills() -> None:
    """The chat turn's plan (128 x 64 tiles, 4 warps, 3 stages) compiled for sm_90 with Triton's bundled
    ptxas, no GPU needed: with `TMA` the K/V tiles are bulk copies (``UTMALDG``) and the spills the
    per-thread loads cause at this plan (~970 local loads and stores) mostly go; both use wgmma."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", TMA_SASS], capture_output=True, text=True, env=env, cwd=root,
                          check=True)  # fmt: skip
    sass = json.loads(done.stdout.strip().splitlines()[-1])
    loads, tma = sass["False"], sass["True"]
    assert loads["tma"] == 0 and tma["tma"] > 0
    assert tma["wgmma"] > 0 and loads["wgmma"] > 0
    assert tma["local"] * 4 < loads["local"]
