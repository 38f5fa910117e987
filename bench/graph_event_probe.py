"""What a CUDA graph's external event wait waits for (issue 3: copies issued beside a prefill graph).

Why: a CPU-tier restore by the copy engines would run outside the prefill graph (its pieces change every
step), and the graph's attention at layer l would wait on an external event that the host records after
layer l's copies. The CUDA docs say a wait node "waits for all work captured in event" without saying
when the event's latest record is taken: when the graph is launched, or when the node runs on the GPU.
If the latter, a node of a graph still running could wait on the next step's record, which waits for that
graph: a deadlock. This measures it, and checks that the wait orders the graph after the copy at all.

Run:  python3 bench/graph_event_probe.py
"""

from __future__ import annotations

import json
import time

import torch

MS = 1e-3


def cycles(seconds: float) -> int:
    """`torch.cuda._sleep` cycles for about ``seconds`` at the GPU's clock."""
    return int(seconds * torch.cuda.get_device_properties(0).clock_rate * 1e3)


def main() -> None:
    dev = torch.device("cuda")
    side = torch.cuda.Stream(dev)
    ev = torch.cuda.Event(external=True)
    x = torch.zeros(1, device=dev)
    y = torch.zeros(1, device=dev)
    res: dict = {"torch": torch.__version__}
    ev.record(side)  # torch creates the event at its first record: a wait on it before that captures nothing
    torch.cuda.synchronize()

    def body(sleep_s: float) -> None:
        if sleep_s:
            torch.cuda._sleep(cycles(sleep_s))
        torch.cuda.current_stream().wait_event(ev)
        y.copy_(x + 1)

    g_now, g_late = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(g_now):
        body(0)
    with torch.cuda.graph(g_late):
        body(100 * MS)
    torch.cuda.synchronize()

    # 1. does the wait order the graph after a copy recorded before the launch?
    with torch.cuda.stream(side):
        torch.cuda._sleep(cycles(50 * MS))
        x.fill_(5)
        ev.record(side)
    g_now.replay()
    torch.cuda.synchronize()
    res["waits_for_record_before_launch"] = float(y.item()) == 6.0

    # 2. a record made after the launch, before the node runs: is it waited for?
    x.zero_()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        ev.record(side)  # record A: done at once
    t0 = time.perf_counter()
    g_late.replay()  # its wait node runs ~100 ms from now
    with torch.cuda.stream(side):  # record B, 300 ms away
        torch.cuda._sleep(cycles(300 * MS))
        x.fill_(7)
        ev.record(side)
    torch.cuda.current_stream().synchronize()
    res["late_graph_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    res["late_graph_saw"] = float(y.item())  # 1: took record A (at launch); 8: took record B (at the node)
    res["record_taken"] = "at launch" if res["late_graph_saw"] == 1.0 else "when the node runs"
    torch.cuda.synchronize()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
