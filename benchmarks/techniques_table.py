"""The 24 GB table: what the auto space's techniques buy on an emulated 24 GB card, from the folders
the `*-24GiB-auto` scenarios of benchmarks/scenarios.yaml leave (results/bench-*-24GiB-auto/).

    python -m benchmarks.techniques_table

Per scenario: the exact winner and the 4-bit one (the same probes, resumed with --quantize), the
consumer-24gb space's winner (ZeRO-3 with parameters and optimizer on the CPU) probed in the same device
call, each speed-up against it, the grid of the auto space at the requested max_token, and verify.
Reads only CSV/JSON/YAML.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from autofit.search.planner import Limits
from autofit.spec import compared_peak
from benchmarks.common import committed

ROOT = Path(__file__).resolve().parent.parent


def consumer_winner(folder: Path, limits: Limits) -> dict | None:
    """The fastest micro-batch of the consumer-24gb winner's strategy that fits under the headroom."""
    fits = []
    for line in (folder / "consumer.jsonl").read_text().splitlines():
        r = json.loads(line)
        peak = compared_peak(r.get("nvml_peak"), r.get("peak_reserved"), r.get("host_peak"))
        if r["status"] == "ok" and peak is not None and peak <= limits.limit:
            fits.append(r)
    return max(fits, key=lambda r: r["tokens_per_s"]) if fits else None


def _verify(run: Path) -> str:
    path = run / "verify.json"
    if not path.exists():
        return "not run"
    v = json.loads(path.read_text())
    return f"{'passed' if v['passed'] else 'FAILED'} ({v['peak_diff']:+.1%} peak, {v['tokens_per_s_ratio']:.2f}x tok/s)"


def row(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    best = yaml.safe_load((folder / "search" / "best.yaml").read_text())
    quant = yaml.safe_load((folder / "search-quantize" / "best.yaml").read_text())
    limits = Limits(int(best["hardware"]["memory_budget_gib"] * 2**30), best["hardware"]["headroom"])
    base = consumer_winner(folder, limits)
    base_tps = base["tokens_per_s"] if base else None
    grid = s.get("grid")
    return {
        "folder": folder.name, "model": s["model"], "max_token": s["max_token"], "gpu": s["gpu"],
        "exact": (best["config"]["strategy"], best["config"]["micro_batch"], best["measured"]["tokens_per_s"]),
        "quantized": (quant["config"]["strategy"], quant["config"]["micro_batch"], quant["measured"]["tokens_per_s"]),
        "consumer": (base["strategy"], base["micro_batch"], base_tps) if base else None,
        "search": (s["search"]["wall_s"], s["search"]["probes"]),
        "grid": (grid["wall_s"], grid["probes"], s.get("quality"), s.get("time_fraction"),
                 grid.get("best_quantized")) if grid else None,
        "verify": (_verify(folder / "search"), _verify(folder / "search-quantize")),
    }


def _cell(x: tuple, base: float | None) -> str:
    k, mb, tps = x
    up = f", **{tps / base:.1f}x**" if base else ""
    return f"`{k.split('/', 2)[2]}` mb {mb}: {tps:.0f} tok/s{up}"


def techniques_table(results: Path = ROOT / "results") -> str:
    lines = ["| scenario | consumer-24gb winner (ZeRO-3 offload) | exact winner (default) | 4-bit winner (`--quantize`) "
             "| search: wall, probes | grid of the auto space at T: wall, probes; winner vs best | verify (exact; 4-bit) |",
             "|---|---|---|---|---|---|---|"]
    for summary in committed(results, "*-24GiB-auto/summary.json"):
        r = row(summary.parent)
        base = r["consumer"][2] if r["consumer"] else None
        cons = f"mb {r['consumer'][1]}: {base:.0f} tok/s" if base else "nothing fits"
        g = r["grid"]
        if g:
            qb = g[4]
            qual = f"{g[2]:.0%} of the exact best" if g[2] is not None else "-"
            if qb and r["quantized"][:2] == (qb["strategy"], qb["micro_batch"]):
                qual += "; 4-bit: the grid's best"
            grid = f"{g[0]:.0f} s, {g[1]}; {qual}; search/grid time {g[3]:.0%}"
        else:
            grid = "not run"
        lines.append(f"| {r['model'].split('/')[-1]} LoRA, T={r['max_token']}, 24 GiB on {r['gpu'].replace('NVIDIA ', '')} "
                     f"[{r['folder']}](results/{r['folder']}) | {cons} | {_cell(r['exact'], base)} | {_cell(r['quantized'], base)} "
                     f"| {r['search'][0]:.0f} s, {r['search'][1]} | {grid} | {r['verify'][0]}; {r['verify'][1]} |")
    return "\n".join(lines)


def headline(results: Path = ROOT / "results") -> str:
    """One sentence for README: the speed-ups on a 24 GB card, each scenario's from its folder."""
    parts = []
    for summary in committed(results, "*-24GiB-auto/summary.json"):
        r = row(summary.parent)
        if not r["consumer"]:
            continue
        base = r["consumer"][2]
        parts.append(f"{r['model'].split('/')[-1]} LoRA at T={r['max_token']} ([{r['folder']}](results/{r['folder']})): "
                     f"{r['exact'][2] / base:.1f}x exact, {r['quantized'][2] / base:.1f}x with `--quantize`")
    if not parts:
        return ""
    return ("**On a 24 GB card** (emulated on one H200), the default auto space's winner against the ZeRO-3 CPU "
            "offload that a checkpointing-and-offload search falls back to: " + "; ".join(parts)
            + ". [The table](results/README.md#a-24-gb-card-the-auto-space-against-zero-3-offload).")


if __name__ == "__main__":
    print(techniques_table())
