"""Our Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, SmolLM2).

Tokens of all sequences in a step are flattened into one ``[T]`` batch (no padding in the linear layers);
attention reads and writes a paged KV cache described by `AttnBatch`. Numerics follow ``transformers``
(fp32 RMSNorm statistics, fp32 RoPE tables cast to the model dtype) so greedy outputs match token for token.
Layers pass ``(hidden, residual)`` so that each residual add is fused into the next RMSNorm; on CUDA the
norms, RoPE and SiLU * up run as Triton kernels (`engine.fused_ops`) that round as this torch code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttnBatch, attend_dense, attend_gather, attend_prefix_flash, write_kv
from engine.config import ModelConfig

__all__ = ["AttnBatch", "LlamaForCausalLM"]

FUSED: bool | None = None  # engine.fused_ops kernels: None = on CUDA tensors; tests force them (interpreter)


ROW_AMAX = True  # norms hand their rows' absmax to a quantized matmul that uses it (bench A/B: False)


def _fused(x: torch.Tensor) -> bool:
    return x.is_cuda if FUSED is None else FUSED


def _stores_int8(k_scale: torch.Tensor | None, q: torch.Tensor, ab: AttnBatch) -> bool:
    """Whether this layer's int8 K/V go through `engine.kv_int8_store` (one launch, no host sync) rather
    than `write_kv`: on CUDA, where the runner chose it, for a prefill it planned (``kv_plan``) or a
    decode step."""
    if k_scale is None or not ab.int8_store or not _fused(q):
        return False
    return ab.decode or ab.kv_plan is not None


def _takes_row_amax(linear: nn.Module) -> bool:
    return getattr(linear, "takes_row_amax", False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, row_amax: bool = False):
        """``weight * norm(x)``; given ``residual``, ``(weight * norm(x + residual), x + residual)``.
        ``row_amax``: the fused kernel also passes its rows' absmax on (`fused_ops.row_amax`)."""
        if _fused(x):
            from engine import fused_ops

            if residual is None:
                return fused_ops.rmsnorm(x, self.weight, self.eps, row_amax)
            return fused_ops.add_rmsnorm(x, residual, self.weight, self.eps, row_amax)
        if residual is not None:
            x = residual = x + residual
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * x.to(dtype)
        return out if residual is None else (out, residual)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, with Llama-3 (``llama3``) and linear scaling as in transformers."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    sc = cfg.rope_scaling
    if not sc:
        return inv
    kind = sc.get("rope_type", sc.get("type"))
    if kind == "linear":
        return inv / sc["factor"]
    if kind == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        inv_l = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wl < hi_wl) * ~(wl > lo_wl)
        return torch.where(medium, smoothed, inv_l)
    raise NotImplementedError(f"rope scaling {kind!r} is not supported")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.nh, self.kvh, self.hd = layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = (self.nh + 2 * self.kvh) * self.hd
        self.qkv_proj = nn.Linear(cfg.hidden_size, qkv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        self.l2_next = None  # `engine.l2_prefetch.LayerPrefetch`: o's and gate_up's weights asked into L2

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ab: AttnBatch) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.nh * self.hd, self.kvh * self.hd, self.kvh * self.hd], dim=-1)
        if self.l2_next is not None and ab.decode and x.is_cuda:  # while RoPE and attention run
            from engine import l2_prefetch

            l2_prefetch.launch(self.l2_next, x)
        q = q.view(t, self.nh, self.hd)
        k = k.view(t, self.kvh, self.hd)
        v = v.view(t, self.kvh, self.hd)
        if ab.layer_ready is not None:  # this layer's restored blocks must have landed
            ab.layer_ready(self.layer)
        kc, vc = ab.k_cache[self.layer], ab.v_cache[self.layer]
        ks = ab.k_scale[self.layer] if ab.k_scale is not None else None
        vs = ab.v_scale[self.layer] if ab.v_scale is not None else None
        mode = ab.meta.get("mode", "paged") if ab.meta is not None else "gather"
        if mode == "paged" and _fused(q):
            from engine.paged_attn_triton import fuses_rope, paged_attention

            if fuses_rope(q, kc, ks, ab.meta, ab.decode):  # RoPE and the K/V store inside (off by default)
                out = paged_attention(q, kc, vc, None, None, ab.meta, True, (k, v, cos, sin, ab.slot_mapping))
                return self.o_proj(out.reshape(t, self.nh * self.hd))
        into = None  # the fused kernel also stores K and V when the cache holds the model dtype
        if _fused(q):
            from engine.fused_ops import rope_qk, stores_kv

            if ks is None and stores_kv(kc, vc, k.dtype):
                into = (kc, vc, ab.slot_mapping, v)
            q, k = rope_qk(q, k, cos, sin, into)
        else:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if into is None and _stores_int8(ks, q, ab):
            from engine.kv_int8_store import store_kv_int8

            store_kv_int8(k, v, (kc, vc, ks, vs), None if ab.decode else ab.kv_plan, ab.slot_mapping)
        elif into is None:
            write_kv(kc, ks, ab.slot_mapping, k, ab.decode)
            write_kv(vc, vs, ab.slot_mapping, v, ab.decode)
        if mode == "dense":  # one fresh sequence: its own contiguous K/V, SDPA causal (as transformers)
            out = attend_dense(q, k, v)
        elif mode == "prefix_flash":
            out = attend_prefix_flash(q, kc, vc, ab.meta["table0"], ab.meta["max_ctx"])
        elif mode == "paged":  # CUDA bf16/fp16: read blocks in place (engine.paged_attn_triton)
            from engine.paged_attn_triton import paged_attention

            out = paged_attention(q, kc, vc, ks, vs, ab.meta, ab.decode)
        else:
            out = attend_gather(q, kc, vc, ks, vs, ab, self.nh, self.kvh)
        return self.o_proj(out.reshape(t, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gemv_silu = getattr(self.gate_up_proj, "silu_mul", None)  # a quantized layer whose GEMV may fuse it
        if gemv_silu is not None and _fused(x):
            h = gemv_silu(x, self.inter)
            if h is not None:
                return self.down_proj(h)
        gu = self.gate_up_proj(x)
        if _fused(gu):
            from engine.fused_ops import silu_mul

            return self.down_proj(silu_mul(gu, self.inter))
        g, u = gu.split(self.inter, dim=-1)
        return self.down_proj(F.silu(g) * u)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, cos, sin, ab: AttnBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` is the previous layer's MLP output and ``residual`` the stream before it (None at layer 0:
        ``x`` is the embedding); returns this layer's MLP output and the stream before it."""
        amax = ROW_AMAX and _takes_row_amax(self.self_attn.qkv_proj)
        if residual is None:
            x, residual = self.input_layernorm(x, row_amax=amax), x
        else:
            x, residual = self.input_layernorm(x, residual, amax)
        x = self.self_attn(x, cos, sin, ab)
        amax = ROW_AMAX and _takes_row_amax(self.mlp.gate_up_proj)
        x, residual = self.post_attention_layernorm(x, residual, amax)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Decoder + LM head; HF parameter names except fused ``qkv_proj``/``gate_up_proj``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def finish_load(self, device: torch.device, max_pos: int | None = None) -> None:
        """Build fp32 RoPE tables (like transformers) once weights are in place."""
        n = max(max_pos or self.cfg.max_position, 4096)
        inv = rope_inv_freq(self.cfg).to(device)
        freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def ensure_rope(self, max_pos: int) -> None:
        """Grow the RoPE tables (called by the runner with a Python int: no device sync)."""
        if max_pos >= self.cos.shape[0]:
            self.finish_load(self.cos.device, 2 * max_pos + 1)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ab: AttnBatch):
        """Hidden states ``[T, hidden]`` for flattened tokens; call `logits` on the rows you need."""
        x = self.model.embed_tokens(input_ids)
        cos = self.cos[positions].to(x.dtype).unsqueeze(1)
        sin = self.sin[positions].to(x.dtype).unsqueeze(1)
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, cos, sin, ab)
        return self.model.norm(x) if residual is None else self.model.norm(x, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = getattr(self, "lm_head", None)  # untied, or a quantized copy of tied embeddings (quant)
        if head is not None:
            out = head(hidden).float()
        else:
            out = F.linear(hidden, self.model.embed_tokens.weight).float()
        if hidden.is_cuda:  # the step's L2 prefetches (side stream) joined: a graph must end joined
            from engine import l2_prefetch

            l2_prefetch.join(hidden)
        return out
