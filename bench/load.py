"""Load test of search and chat on a real `kb serve`, with wrk; is the server's memory flat?

    apt-get install wrk        # Debian's wrk 4.1
    .venv/bin/python -m bench.load [--requests 12000] [--connections 8] [--round-s 5]

Starts `kb serve` (embedded mode: SQLite, FAISS, tantivy, the MiniLM embedder) on a temp data dir with
300 small documents, then runs wrk in rounds of `--round-s` seconds, alternating POST /search (hybrid,
varied queries) and POST /v1/chat/completions (model kb:<collection>, so retrieval runs every time; the
generator is KB_GENERATOR=fake: this measures kb's own path, not a model) until `--requests` requests
were answered. The server's RSS is sampled after every round. Prints requests/s and p50/p99 per
endpoint, RSS at start (after a warm-up round) and end, and writes a PNG of RSS vs requests.
p50 is the request-weighted mean of the rounds' p50s, p99 the worst round's p99 (wrk reports
percentiles per run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.common import machine, wait_ready

TOPICS = ["boiler", "crane", "valve", "ladder", "permit", "drill", "helmet", "fuse", "pump", "scaffold"]
LUA = """
local bodies = {}
for i, q in ipairs(%(queries)s) do bodies[i] = q end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "%(path)s", nil, bodies[(n %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("KBSTATS %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _lua(path: str, bodies: list[dict]) -> str:
    quoted = ", ".join(json.dumps(json.dumps(b)) for b in bodies)
    return LUA % {"queries": "{" + quoted + "}", "path": path}


def _seed(base: str) -> None:
    with httpx.Client(base_url=base, timeout=120) as c:
        assert c.post("/v1/collections", json={"name": "plant"}).status_code == 201
        for i in range(300):
            t = TOPICS[i % len(TOPICS)]
            text = (
                f"# {t.title()} procedure {i}\n\nThe {t} at site {i % 17} is inspected every {i % 9 + 2} "
                f"days. Crew {i % 5} signs the {t} log and reports faults to the shift lead."
            )
            r = c.post("/v1/collections/plant/documents", json={"text": text, "source_id": f"doc-{i}"})
            assert r.status_code == 201, r.text


def _round(base: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"KBSTATS (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    assert m, out
    req, dur_us, p50, p99, errors = (int(x) for x in m.groups())
    return {
        "requests": req,
        "seconds": dur_us / 1e6,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors,
    }


def _summary(rounds: list[dict[str, float]]) -> dict[str, float]:
    n = sum(r["requests"] for r in rounds)
    return {
        "requests": n,
        "rps": n / sum(r["seconds"] for r in rounds),
        "p50_ms": sum(r["p50_ms"] * r["requests"] for r in rounds) / n,
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


def _plot(points: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
    ax.set_xlabel("requests answered")
    ax.set_ylabel("kb serve RSS (MiB)")
    ax.set_ylim(0, max(p[1] for p in points) * 1.2)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=12_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--round-s", type=int, default=5)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--png", type=Path, default=Path("bench/load_rss.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/out/load.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    base = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="kbload-"))
    env = {**os.environ, "KB_DATA_DIR": str(work / "data"), "KB_GENERATOR": "fake", "KB_LOG_FORMAT": "text"}
    env.pop("KB_DATABASE_URL", None)
    log = (work / "serve.log").open("wb")
    kb_bin = Path(sys.executable).with_name("kb")
    proc = subprocess.Popen([str(kb_bin), "serve", "--port", str(args.port)], env=env, stdout=log, stderr=log)
    try:
        wait_ready(base, proc)
        _seed(base)
        queries = [f"how often is the {t} at site {s} inspected" for t in TOPICS for s in range(5)]
        search = work / "search.lua"
        search.write_text(_lua("/v1/collections/plant/search", [{"query": q, "top_k": 5} for q in queries]))
        chat = work / "chat.lua"
        chat.write_text(
            _lua(
                "/v1/chat/completions",
                [
                    {"model": "kb:plant", "messages": [{"role": "user", "content": q}], "max_tokens": 32}
                    for q in queries
                ],
            )
        )
        server = psutil.Process(proc.pid)
        mib = lambda: server.memory_info().rss / 2**20  # noqa: E731
        _round(base, search, 3, args.connections)  # warm-up: embedder, caches, allocator pools
        _round(base, chat, 3, args.connections)
        rss_start = mib()
        points: list[tuple[int, float]] = [(0, rss_start)]
        results: dict[str, list[dict[str, float]]] = {"search": [], "chat": []}
        total, i = 0, 0
        started = time.monotonic()
        while total < args.requests:
            kind = "search" if i % 2 == 0 else "chat"
            r = _round(base, search if kind == "search" else chat, args.round_s, args.connections)
            results[kind].append(r)
            total += r["requests"]
            points.append((total, mib()))
            print(
                f"round {i:3d} {kind:6s} {r['requests']:6d} req  p99 {r['p99_ms']:7.1f} ms  "
                f"RSS {points[-1][1]:7.1f} MiB  total {total}",
                flush=True,
            )
            i += 1
        elapsed = time.monotonic() - started
        half = points[len(points) // 2 :]
        slope = (half[-1][1] - half[0][1]) / max(1, half[-1][0] - half[0][0]) * 1000
        report = {
            "machine": machine(),
            "requests": total,
            "seconds": elapsed,
            "connections": args.connections,
            "search": _summary(results["search"]),
            "chat": _summary(results["chat"]),
            "rss_start_mib": rss_start,
            "rss_end_mib": points[-1][1],
            "rss_max_mib": max(p[1] for p in points),
            "rss_slope_mib_per_1k_second_half": slope,
            "points": points,
        }
        args.png.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        _plot(points, args.png, f"kb serve RSS under search+chat load ({total} requests, {machine()[:40]})")
        for kind in ("search", "chat"):
            s = report[kind]
            print(
                f"{kind}: {s['requests']} requests, {s['rps']:.1f} req/s, p50 {s['p50_ms']:.1f} ms, "
                f"p99 {s['p99_ms']:.1f} ms, errors {s['errors']}"
            )
        print(
            f"RSS start {rss_start:.1f} MiB, end {points[-1][1]:.1f} MiB, "
            f"max {report['rss_max_mib']:.1f} MiB, "
            f"second-half slope {slope:+.2f} MiB per 1k requests; PNG {args.png}"
        )
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
