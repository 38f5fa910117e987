"""The end of an engine GPU run: the goal figures in the log's tail and the TTFT-per-turn plot."""

from __future__ import annotations

import json


def think_keys(r: dict, sfx: str) -> list[str]:
    """The result keys of a conversation size's runs with pauses between turns (``--think-ms``)."""
    return sorted(k for k in r if k.startswith(f"ours_multiturn{sfx}_think") and "_rows" not in k)


def computed(rows: list[dict]) -> list[int]:
    """Tokens each turn computed (its prompt less what the cache held)."""
    return [x["prompt_tokens"] - x["cached_tokens"] for x in rows]


class ReportMixin:
    def summary(self) -> None:
        """The goal figures, printed last so they are in the tail of the log."""
        r = self.res
        for size in self.sizes():
            sfx = "" if size == self.args.turn_tokens else f"_{size}"
            mt, rc, hf = (r.get(k + sfx, {}) for k in ("ours_multiturn", "ours_recompute", "hf_multiturn"))
            if not mt or not rc:
                continue
            reuse, alone, rec = mt["reuse_ms"], rc["new_alone_ms"], rc["recompute_ms"]
            print(f"turns of {size}: reuse {[round(x) for x in reuse]}")
            print(f"   alone {[round(x) for x in alone]}  recompute {[round(x) for x in rec]}")
            rows = r.get("ours_turn_rows" if not sfx else f"t{size}_rows", [])
            print(f"   tokens computed a turn {computed(rows)}")
            if hf:
                held, hrec = hf["handheld_ms"], hf["recompute_ms"]
                print(f"   HF held {[round(x) for x in held]}  HF rec {[round(x) for x in hrec]}")
            ratio, speed = reuse[-1] / alone[-1], rec[-1] / reuse[-1]
            print(f"   turn10: reuse/alone {ratio:.2f}x  recompute/reuse {speed:.1f}x")
            if seen := rc.get("alone_as_seen_ms"):
                print(f"   alone as the engine saw them (+ last answer token) {[round(x, 1) for x in seen]}")
            for key in think_keys(r, sfx):
                think = r[key]["reuse_ms"]
                print(f"   {key[len('ours_multiturn') :]}: reuse {[round(x, 1) for x in think]}")
                print(f"      tokens computed a turn {computed(r.get(key + '_rows', []))}")
                print(
                    f"      turn10: reuse/alone {think[-1] / alone[-1]:.2f}x  recompute/reuse "
                    f"{rec[-1] / think[-1]:.1f}x"
                )
        for key, mt in r.get("int8_kv", {}).items():  # int8 KV reuse, torch's store against the kernel's
            if key.startswith("int8_multiturn"):
                print(f"{key}: reuse {[round(x) for x in mt['reuse_ms']]}")
        # turn 10 of S sessions, most restored from the CPU tier (before the step / as configured)
        for k in ("sessions_before_step", "sessions"):
            if k in r:
                x = r[k]
                keys = ("kv_dtype", "turn_tokens", "p50_last_ttft_ms", "p99_last_ttft_ms", "max_last_ttft_ms")
                keys += ("recompute_same_size_ms", "new_alone_ms", "cached_from_sum", "layerwise_restores")
                print(k, json.dumps({q: x.get(q) for q in keys}))
        for k in ("ours_decode", "hf_static_compile", "int8_kv", "restart", "peak_gib_ours"):
            if k in r:
                print(k, json.dumps(r[k])[:600])
        print("errors", {k: v for k, v in r.items() if k.endswith("_error")})

    def plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        r = self.res
        sizes = self.sizes()
        fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 4.5), squeeze=False)
        for ax, size in zip(axes[0], sizes, strict=True):
            sfx = "" if size == self.args.turn_tokens else f"_{size}"
            series = [
                ("ours: reuse", r.get("ours_multiturn" + sfx, {}).get("reuse_ms")),
                ("ours: recompute", r.get("ours_recompute" + sfx, {}).get("recompute_ms")),
                ("ours: new tokens alone", r.get("ours_recompute" + sfx, {}).get("new_alone_ms")),
                ("HF: DynamicCache by hand", r.get("hf_multiturn" + sfx, {}).get("handheld_ms")),
                ("HF: recompute", r.get("hf_multiturn" + sfx, {}).get("recompute_ms")),
            ]
            for key in think_keys(r, sfx):
                ms = key.rsplit("_think", 1)[1]
                series.insert(1, (f"ours: reuse, {ms} ms between turns", r[key].get("reuse_ms")))
            if not sfx:
                sess = r.get("sessions", {})
                if sess:
                    ax.axhline(
                        sess["p50_last_ttft_ms"],
                        ls=":",
                        c="k",
                        label=f"{sess['sessions']} sessions: turn-10 p50",
                    )
            for label, ys in series:
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
            ax.set_xlabel("turn")
            ax.set_ylabel("TTFT (ms)")
            ax.set_yscale("log")
            ax.set_title(f"{size}-token turns, {r['shape']}, {r['device'].get('name', 'cpu')}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.out / "engine_gpu_ttft.png", dpi=120)
