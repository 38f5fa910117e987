"""engine.fused_ops against the torch code of engine.model that it replaces on CUDA.

Without a GPU (CI) the kernels run in Triton's CPU interpreter on CPU tensors (conftest sets
TRITON_INTERPRET); with one, compiled, on CUDA tensors. bf16, the model dtype that matters, must match bit
for bit, with one exception: RMSNorm's sum of squares runs in another order than torch's reduction, so on
the GPU its fp32 statistic can differ by an ulp, which rarely moves an output by one bf16 ulp (in the
interpreter numpy's sum happens to agree with torch's CPU sum on these inputs). fp16/fp32 are held to an ulp
or few where the exact value depends on a reduction order or on the ``exp`` implementation (numpy's vs
torch's Sleef on CPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import fused_ops
from engine.model import RMSNorm, rotate_half
from tests.engine.test_attention import _interpreter_scalar_fix

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch) -> None:
    if not CUDA:
        _interpreter_scalar_fix(monkeypatch)


def _rand(*shape, dtype=torch.bfloat16, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEV)


def _within_ulp(got: torch.Tensor, want: torch.Tensor, max_frac: float = 1.0, ulps: int = 1) -> None:
    """Equal except for at most ``max_frac`` of the elements, each at most ``ulps`` ulps of the dtype away."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = got.float(), want.float()
    bad = g != w
    ulp = ulps * torch.finfo(want.dtype).eps * w.abs() + torch.finfo(want.dtype).tiny
    assert ((g - w).abs()[bad] <= ulp[bad]).all(), (g - w).abs().max()
    assert bad.float().mean().item() <= max_frac, bad.sum()


def _check(got, want, exact: bool, max_frac: float = 1.0, ulps: int = 1) -> None:
    if exact:
        assert torch.equal(got, want), (got.float() - want.float()).abs().max()
    else:
        _within_ulp(got, want, max_frac, ulps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("t", "hidden"), [(1, 576), (3, 576), (16, 576), (16, 64), (2, 8192)])
def test_add_rmsnorm_matches_torch(dtype, t, hidden) -> None:
    norm = RMSNorm(hidden, 1e-5).to(DEV)
    with torch.no_grad():
        norm.weight.copy_(_rand(hidden, dtype=torch.float32, scale=0.3, seed=3) + 1)
    norm = norm.to(dtype)
    x, res = _rand(t, hidden, dtype=dtype, seed=1), _rand(t, hidden, dtype=dtype, scale=4.0, seed=2)
    want_res = x + res
    with torch.inference_mode():
        want = norm(want_res)
        got, got_res = fused_ops.add_rmsnorm(x, res, norm.weight, norm.eps)
        plain = fused_ops.rmsnorm(want_res, norm.weight, norm.eps)
    assert torch.equal(got_res, want_res)  # the residual add is elementwise: always exact
    exact = dtype == torch.bfloat16 and not CUDA
    # fp32 keeps the statistic's last-bit difference (rstd, then two products): a few ulps on any element
    loose = {"max_frac": 1.0, "ulps": 4} if dtype == torch.float32 else {"max_frac": 0.01}
    _check(got, want, exact, **loose)
    _check(plain, want, exact, **loose)
    assert fused_ops.row_amax(got) is None and fused_ops.row_amax(plain) is None  # only when asked


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(("t", "hidden"), [(1, 576), (3, 100), (16, 64)])
def test_rmsnorm_hands_on_each_rows_absmax(residual: bool, t: int, hidden: int) -> None:
    """Asked for it, the norm's output carries ``max |out|`` per row in float32 (the one-token int4
    GEMV's input scale), from the values it stored (a row of 100 has masked lanes, which must not count),
    and the output itself is unchanged."""
    w = _rand(hidden, scale=0.5, seed=4) + 1
    x, res = _rand(t, hidden, seed=5), _rand(t, hidden, scale=3.0, seed=6)
    x[-1, -1] = -40.0  # the largest magnitude is negative and in the last lane
    with torch.inference_mode():
        if residual:
            got, _ = fused_ops.add_rmsnorm(x, res, w, 1e-5, row_amax=True)
            plain, _ = fused_ops.add_rmsnorm(x, res, w, 1e-5)
        else:
            got, plain = fused_ops.rmsnorm(x, w, 1e-5, row_amax=True), fused_ops.rmsnorm(x, w, 1e-5)
    amax = fused_ops.row_amax(got)
    assert torch.equal(got, plain)
    assert amax is not None and amax.dtype == torch.float32 and amax.shape == (t,)
    assert torch.equal(amax, got.float().abs().amax(-1))
    assert int(got[-1].float().abs().argmax()) == hidden - 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    ("t", "nh", "kvh", "hd"), [(1, 9, 3, 64), (3, 9, 3, 64), (16, 4, 1, 128), (5, 6, 2, 32)]
)
def test_rope_qk_matches_torch(dtype, t, nh, kvh, hd) -> None:
    """q and k are strided views of one qkv output, as in Attention.forward; the result is bit-exact."""
    qkv = _rand(t, (nh + 2 * kvh) * hd, dtype=dtype, scale=2.0)
    q, k, _ = qkv.split([nh * hd, kvh * hd, kvh * hd], dim=-1)
    q, k = q.view(t, nh, hd), k.view(t, kvh, hd)
    pos = torch.randint(0, 5000, (t,), generator=torch.Generator().manual_seed(5)).to(DEV)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=DEV).float() / hd))
    freqs = torch.outer(pos.float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)
    got_q, got_k = fused_ops.rope_qk(q, k, cos, sin)
    assert torch.equal(got_q, q * cos + rotate_half(q) * sin)
    assert torch.equal(got_k, k * cos + rotate_half(k) * sin)
    assert got_q.is_contiguous() and got_k.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("t", "kvh", "hd"), [(1, 3, 64), (5, 2, 32), (16, 1, 128)])
def test_rope_qk_stores_k_and_v_in_the_paged_cache_as_write_kv(dtype, t, kvh, hd) -> None:
    """With ``cache``, the rotated K and V land at their slots exactly as `write_kv` stores them (the
    decode step's two index_put launches this replaces), other slots untouched; the returned q, k are
    those of the plain call. Slots in any order, across blocks; a cache of another dtype is refused."""
    from engine.attention import write_kv

    nh, blocks, bs = 2 * kvh, 6, 4
    qkv = _rand(t, (nh + 2 * kvh) * hd, dtype=dtype, scale=2.0, seed=3)
    q, k, v = (x.view(t, -1, hd) for x in qkv.split([nh * hd, kvh * hd, kvh * hd], dim=-1))
    emb = torch.cat([torch.outer(torch.arange(t).float() + 7, torch.rand(hd // 2))] * 2, dim=-1).to(DEV)
    cos, sin = emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)
    slots = torch.randperm(blocks * bs, generator=torch.Generator().manual_seed(t))[:t].to(DEV)
    kc, vc = _rand(blocks, bs, kvh, hd, dtype=dtype, seed=8), _rand(blocks, bs, kvh, hd, dtype=dtype, seed=9)
    want_kc, want_vc = kc.clone(), vc.clone()
    plain_q, plain_k = fused_ops.rope_qk(q, k, cos, sin)
    write_kv(want_kc, None, slots, plain_k, False)
    write_kv(want_vc, None, slots, v, False)
    got_q, got_k = fused_ops.rope_qk(q, k, cos, sin, (kc, vc, slots, v))
    assert torch.equal(got_q, plain_q) and torch.equal(got_k, plain_k)
    assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc)
    with pytest.raises(ValueError, match="model dtype"):
        fused_ops.rope_qk(q, k, cos, sin, (kc.half(), vc.half(), slots, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("t", "inter"), [(1, 1536), (3, 1536), (16, 96), (2, 3000)])
def test_silu_mul_matches_torch(dtype, t, inter) -> None:
    gu = _rand(t, 2 * inter, dtype=dtype, scale=3.0)
    g, u = gu.split(inter, dim=-1)
    want = F.silu(g) * u
    got = fused_ops.silu_mul(gu, inter)
    # bit-exact on CUDA (libdevice expf and IEEE division, like torch's kernel) and for bf16 on CPU; numpy's
    # exp and torch's CPU (Sleef) exp differ in the last fp32 bit, which fp16 rarely and fp32 often keeps
    loose = {"max_frac": 1.0, "ulps": 3} if dtype == torch.float32 else {"max_frac": 0.01}
    _check(got, want, exact=CUDA or dtype == torch.bfloat16, **loose)


def test_model_fused_path_matches_torch_path(tmp_path, monkeypatch) -> None:
    """A bf16 forward (2 layers, GQA, chunked prefill, then decode) through the kernels vs the torch path."""
    import transformers

    import engine.model as model_mod
    from engine.loader import load_model
    from engine.model import AttnBatch

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    cfg = transformers.LlamaConfig(vocab_size=97, num_hidden_layers=2, max_position_embeddings=256, **shape)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model = load_model(tmp_path, torch.device(DEV), torch.bfloat16)
    ids = torch.randint(0, 97, (21,))
    kv = [torch.zeros(8, 4, 2, 16, dtype=torch.bfloat16, device=DEV) for _ in range(2)]

    def run(fused: bool) -> torch.Tensor:
        monkeypatch.setattr(model_mod, "FUSED", fused)
        kc, vc, outs = [k.clone() for k in kv], [k.clone() for k in kv], []
        for start, n in ((0, 13), (13, 7), (20, 1)):  # prefill chunks, then one decode token
            pos = torch.arange(start, start + n, device=DEV)
            table = torch.arange(8, device=DEV)
            ab = AttnBatch(pos, [(0, n, start + n, table[: (start + n + 3) // 4])], kc, vc)
            with torch.inference_mode():
                outs.append(model(ids[start : start + n].to(DEV), pos, ab))
        return torch.cat(outs)

    got, want = run(True), run(False)
    _check(got, want, exact=not CUDA, max_frac=0.01)


def _tiny_llama(tmp_path, monkeypatch, quantize: bool):
    """A 2-layer Llama (hidden 64, GQA) in bf16, int4 g32 if ``quantize``, with the fused path forced on."""
    import transformers

    import engine.model as model_mod
    from engine.loader import load_model
    from engine.quant.policy import apply_policy

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    cfg = transformers.LlamaConfig(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, **shape)
    folder = tmp_path / ("int4" if quantize else "bf16")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    monkeypatch.setattr(model_mod, "FUSED", True)
    model = load_model(folder, torch.device(DEV), torch.bfloat16)
    if quantize:
        apply_policy(model, "int4:g32")
    return model


def _each_projection(model, probe) -> dict[str, list[bool]]:
    """One 5-token forward (KV into a bf16 cache, gather path); ``probe(args)`` at each call of each
    ``*_proj``, listed by projection name."""
    from engine.model import AttnBatch

    seen: dict[str, list[bool]] = {}

    def hook(name: str):
        return lambda m, args: seen.setdefault(name, []).append(probe(args))

    hooks = [
        mod.register_forward_pre_hook(hook(name.split(".")[-1]))
        for name, mod in model.named_modules()
        if name.endswith("_proj")
    ]
    kv = [torch.zeros(4, 4, 2, 16, dtype=torch.bfloat16, device=DEV) for _ in range(2)]
    pos = torch.arange(5, device=DEV)
    ab = AttnBatch(pos, [(0, 5, 5, torch.arange(2, device=DEV))], kv, [k.clone() for k in kv])
    try:
        with torch.inference_mode():
            model(torch.arange(5, device=DEV) * 7, pos, ab)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_model_hands_norm_absmax_to_quantized_qkv_and_gate_up_only(tmp_path, monkeypatch) -> None:
    """With quantized linears, the two norms of a layer pass their rows' absmax to the matmul they feed
    (qkv, gate_up), which the one-token int4 GEMV uses as its input scale; o_proj and down_proj get none
    (their producers do not reduce the row), a bf16 model's linears get none, and the switch turns it off."""
    import engine.model as model_mod

    def has_amax(args) -> bool:
        return fused_ops.row_amax(args[0]) is not None

    seen = _each_projection(_tiny_llama(tmp_path, monkeypatch, quantize=False), has_amax)
    assert not any(any(v) for v in seen.values())
    quant = _tiny_llama(tmp_path, monkeypatch, quantize=True)
    got = _each_projection(quant, has_amax)
    assert got["qkv_proj"] == got["gate_up_proj"] == [True, True]
    assert got["o_proj"] == got["down_proj"] == [False, False]
    monkeypatch.setattr(model_mod, "ROW_AMAX", False)
    seen = _each_projection(quant, has_amax)
    assert not any(any(v) for v in seen.values())


def test_quantized_mlp_takes_silu_mul_from_its_gate_up_layer_where_offered(tmp_path, monkeypatch) -> None:
    """A quantized ``[gate | up]`` layer may write ``silu(gate) * up`` itself (its CUDA GEMV,
    `QuantLinear.silu_mul`): the MLP then feeds that to down_proj and skips the product and
    `fused_ops.silu_mul`; where the layer declines (None), the MLP runs those two as before. Both paths
    give the same model output."""
    from engine.quant.linear import QuantLinear

    quant = _tiny_llama(tmp_path, monkeypatch, quantize=True)
    offered: list[int] = []

    def offer(self, x, inter):  # what the GEMV computes, the two-kernel way
        offered.append(inter)
        return fused_ops.silu_mul(QuantLinear.forward(self, x), inter)

    def run() -> tuple[torch.Tensor, dict]:
        from engine.model import AttnBatch

        kv = [torch.zeros(4, 4, 2, 16, dtype=torch.bfloat16, device=DEV) for _ in range(2)]
        pos = torch.arange(5, device=DEV)
        ab = AttnBatch(pos, [(0, 5, 5, torch.arange(2, device=DEV))], kv, [k.clone() for k in kv])
        with torch.inference_mode():
            out = quant(torch.arange(5, device=DEV) * 7, pos, ab)
        return out, _each_projection(quant, lambda args: True)

    monkeypatch.setattr(QuantLinear, "silu_mul", lambda self, x, inter: None)
    declined, calls = run()
    assert len(calls["gate_up_proj"]) == 2 and not offered
    monkeypatch.setattr(QuantLinear, "silu_mul", offer)
    got, calls = run()
    assert "gate_up_proj" not in calls and offered == [96] * 4  # 2 layers, 2 runs (the forward, the probe)
    assert torch.equal(got, declined)
