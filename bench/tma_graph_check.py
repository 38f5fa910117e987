"""The paged reader's TMA tiles inside a CUDA graph (issue 3): the kernel writes its tensor descriptors to
scratch that Triton asks torch for at launch, so under capture that scratch comes from the graph's pool.
A graph of one prefill-over-history launch, replayed with new queries, must give the bits of the eager
per-thread-load path each time. CI has no GPU: `bash bench/gpu_pending.sh tma` runs this.

Run:  python3 bench/tma_graph_check.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine.paged_attn_triton as pat  # noqa: E402
from engine.attention import pack_meta  # noqa: E402


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    bs, kvh, hd, nh, q_len, ctx = 64, 8, 128, 32, 257, 4160
    nblk = ctx // bs + 8
    kc = torch.randn(nblk, bs, kvh, hd, device=dev, generator=g, dtype=torch.bfloat16)
    vc = torch.randn(nblk, bs, kvh, hd, device=dev, generator=g, dtype=torch.bfloat16)
    table = torch.randperm(nblk, device=dev, generator=g)[: ctx // bs].tolist()
    meta = pack_meta([(0, q_len, ctx, table)], dev)
    q = torch.randn(q_len, nh, hd, device=dev, generator=g, dtype=torch.bfloat16)

    shipped = pat.TMA

    def run(tma: bool) -> torch.Tensor:
        pat.TMA = tma
        return pat.paged_attention(q, kc, vc, None, None, meta, decode=False)

    run(True)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(True)
    res = {"plan": pat.plan(q_len * nh // kvh, ctx, 1, kvh, bs, False, dev, tma=True), "replays": []}
    for seed in (1, 2, 3):
        q.copy_(torch.randn(q_len, nh, hd, device=dev, generator=g.manual_seed(seed), dtype=torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        want = run(False)
        res["replays"].append(bool(torch.equal(out, want)))
    pat.TMA = shipped
    res["ok"] = all(res["replays"])
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
