"""Regenerate the result tables from the committed results/ files: the headline in README.md, every
measured table in results/README.md.

    python -m benchmarks.readme_tables            # print the markdown
    python -m benchmarks.readme_tables --write    # replace the blocks between the markers in both files

Reads only CSV/JSON/YAML (no torch). Every figure in the tables comes from a file under results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import yaml

from benchmarks import headline, scenario_table, techniques_table
from benchmarks.common import committed

ROOT = Path(__file__).resolve().parent.parent
RESULTS_README = ROOT / "results" / "README.md"
START, END = "<!-- tables:start (python -m benchmarks.readme_tables --write) -->", "<!-- tables:end -->"
HEAD_START, HEAD_END = "<!-- headline:start (python -m benchmarks.readme_tables --write) -->", "<!-- headline:end -->"


def _gib(b: str) -> str:
    return f"{int(b) / 2**30:.2f}" if b else "-"


def _short_gpu(name: str) -> str:
    return name.replace("NVIDIA ", "").replace(" HBM3", "")


def search_table() -> str:
    lines = ["| scenario | GPU | autofit: wall, probes | winner (micro-batch) | tokens/s | exhaustive grid: wall, probes | time vs grid | winner vs grid best |",
             "|---|---|---|---|---|---|---|---|"]
    for summary in committed(ROOT / "results", "*/summary.json"):
        s = json.loads(summary.read_text())
        if "search" not in s:  # other results (e.g. estimate-error) have summaries of their own shape
            continue
        cap = f", {s['budget_gib']:.0f} GiB cap" if "24GiB" in summary.parent.name else ""
        # Cold: timed on a bare machine without the benchmark's warm-up (see benchmarks/search_vs_grid.warm_up).
        cold = ", cold start" if summary.parent.name.endswith("-cold") or "-cold-" in summary.parent.name else ""
        method = "full FT" if str(s["search"].get("winner") or "").startswith("full/") else "LoRA"
        scen = f"{s['model'].split('/')[-1]} {method}, T={s['max_token']}, space `{s['space']}`{cap}{cold}"
        srch, grid = s["search"], s.get("grid")
        if not grid:
            g = "not run"
        elif grid.get("complete") is False:  # stopped early: its wall time is a lower bound
            g = f"≥ {grid['wall_s_at_least']:.0f} s, {grid['probes']} (cut short)"
        else:
            only = f" (T={','.join(map(str, grid['max_tokens']))} only)" if len(grid.get("max_tokens", [0, 0])) == 1 else ""
            g = f"{grid['wall_s']:.0f} s, {grid['probes']}{only}"
        frac = (f"{s['time_fraction']:.0%}" if "time_fraction" in s
                else f"≤ {s['time_fraction_at_most']:.0%}" if "time_fraction_at_most" in s else "-")
        q = f"{s['quality']:.1%}" if "quality" in s else "-"
        n = scenario_table.num_gpus(summary.parent)
        lines.append(f"| {scen} [{summary.parent.name}](results/{summary.parent.name}) | {f'{n} x ' if n > 1 else ''}{_short_gpu(s['gpu'])} | "
                     f"{srch['wall_s']:.0f} s, {srch['probes']} | `{srch['winner']}` ({srch['winner_micro_batch']}) | "
                     f"{srch['winner_tokens_per_s']:.0f} | {g} | {frac} | {q} |")
    return "\n".join(lines)


def _probe_groups(folder: Path) -> list[tuple[str, list[dict]]]:
    """probe.log names each `autofit probe` command; probes.csv holds its rows in the same order."""
    rows = list(csv.DictReader(open(folder / "probes.csv")))
    groups, i = [], 0
    log = (folder / "probe.log").read_text().splitlines()
    for j, line in enumerate(log):
        if line.startswith("### autofit probe"):
            n = 0
            for nxt in log[j + 1:]:
                if nxt.startswith("###"):
                    break
                n += bool(re.match(r"^(ok|oom|error|timeout|crash)\s+mb=", nxt))
            groups.append((line[4:], rows[i:i + n]))
            i += n
    return groups


def _flag(cmd: str, name: str) -> str | None:
    m = re.search(rf"--{name} (\S+)", cmd)
    return m.group(1) if m else None


def _label(cmd: str) -> str:
    """A short human label for an `autofit probe ...` command line."""
    parts = [_flag(cmd, "model").split("/")[-1], _flag(cmd, "method"), "ckpt" if "--grad-ckpt" in cmd else "no ckpt"]
    if _flag(cmd, "zero"):
        parts.append(f"ZeRO-{_flag(cmd, 'zero')}")
    if "--offload-params" in cmd:
        parts.append("offload opt+params")
    if _flag(cmd, "gpus"):
        parts.append(f"{len(_flag(cmd, 'gpus').split(','))} GPUs")
    if _flag(cmd, "gpu-memory"):
        parts.append(f"cap {_flag(cmd, 'gpu-memory')}")
    parts.append(f"T={_flag(cmd, 'max-token')}")
    return " ".join(parts)


def probe_table(folder: str) -> str:
    lines = ["| command | micro-batch | status | tokens/s | peak allocated | reserved | device (NVML) | host | GPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cmd, rows in _probe_groups(ROOT / "results" / folder):
        label = _label(cmd)
        for r in rows:
            tps = f"{float(r['tokens_per_s']):.0f}" if r["tokens_per_s"] else "-"
            lines.append(f"| {label} | {r['micro_batch']} | {r['status']} | {tps} | {_gib(r['peak_allocated'])} | "
                         f"{_gib(r['peak_reserved'])} | {_gib(r['nvml_peak'])} | {_gib(r['host_peak'])} | {_short_gpu(r['device_name'])} |")
    return "\n".join(lines)


def verify_table() -> str:
    lines = ["| run | GPU | winner (micro-batch, max_token) | steps | tokens/s: verify / search | peak GiB: verify / search | budget GiB | passed |",
             "|---|---|---|---|---|---|---|---|"]
    # verify-*/verify.json: a copy of a run verified on its own; */search/verify.json: verified in place.
    paths = committed(ROOT / "results", "*/verify.json") + committed(ROOT / "results", "*/search/verify.json")
    for path in paths:
        v = json.loads(path.read_text())
        run = path.relative_to(ROOT / "results").parts[0]
        n = (yaml.safe_load((path.parent / "best.yaml").read_text()) or {}).get("hardware", {}).get("num_gpus", 1)
        gpus = f"{n} x " if n > 1 else ""
        searched = f" (searched on {_short_gpu(v['search_device'])})" if v.get("search_device") else ""
        lines.append(f"| [{run}](results/{run}) | {gpus}{_short_gpu(v['device'])}{searched} | `{v['strategy']}` "
                     f"({v['micro_batch']}, {v['max_token']}) | {v['steps']} | {v['tokens_per_s']:.0f} / {v['probe_tokens_per_s']:.0f} "
                     f"({v['tokens_per_s_ratio']:.2f}) | {v['peak_gib']:.2f} / {v['probe_peak_gib']:.2f} ({v['peak_diff']:+.1%}) | "
                     f"{v['budget_gib']:.1f} | {'yes' if v['passed'] else 'NO: ' + '; '.join(v['problems'])} |")
    return "\n".join(lines)


def render() -> str:
    """results/README.md's tables; their links are relative to results/."""
    return _tables().replace("](results/", "](")


def _tables() -> str:
    return "\n\n".join([
        "### Search against the exhaustive grid (published architectures, random weights)", search_table(),
        "Memory in GiB. `time vs grid` is autofit's wall time over the grid's; `winner vs grid best` is the "
        "tokens/s the grid itself measured for autofit's winner over the grid's best (same cell, same measurement).",
        "### Against what users do today: hand-tuning, HF auto_find_batch_size, DeepSpeed's autotuner",
        scenario_table.render(ROOT / "results"),
        "One block per scenario (`benchmarks/scenario_table.py`; baselines from `python -m benchmarks.baselines`). "
        "GPU-s is wall time x GPUs. `tokens/s vs oracle` is the tokens/s the grid measured for the chosen cell over "
        "the grid's best fitting cell at the requested max_token (* where the grid has no such cell: the method's own "
        "measurement). The memory error is autofit's per-strategy model (fitted to the search's probes only) against "
        "the grid's measured peaks on the cells the search never probed (`k of n`: cells of strategies it fitted a "
        "model for, of all unprobed measured cells). `verify passed` reads `search/verify.json`, else a committed `autofit verify` folder of the same winner (model, max_token, strategy, micro-batch, memory budget and GPU model all equal; linked); `-`: none.",
        "### A 24 GB card: the auto space against ZeRO-3 offload",
        techniques_table.techniques_table(),
        "One H200 under `--gpu-memory 24GiB`, global batch 16, every sample at full length. The baseline is the "
        "`consumer-24gb` space's winner, probed in the same device call at micro-batches 1, 2, 4 (the fastest under "
        "the headroom line); speed-ups are over it. The 4-bit column is the same run dir resumed with `--quantize` "
        "(the same probes). The grid measured every cell of the auto space at the requested max_token with one "
        "measured step, as the search does; `search/grid time` compares wall times without the warm-up.",
        "### `autofit verify`: the winner trained through HF Trainer with the exported files", verify_table(),
        "Peaks are device-level (NVML), the figure the search compared with the budget. Verify fails if the peak "
        "exceeds the budget, is more than 5% over the probe's, or is more than 5% under it while the live tensors "
        "(allocated) differ too; runs from before the rule (`autofit.verify.judge`) show the verdict they got then.",
        "### Probes: escalation to the first OOM (`python -m benchmarks.run h100-probe-evidence`)", probe_table("probe-evidence-h100"),
        "### ZeRO-2 across two GPUs", probe_table("probe-evidence-2gpu-zero2"),
        "### Every search that was run", headline.every_search(ROOT / "results"),
        "`vs the grid's best`: the tokens/s the grid measured for the search's winner over its best fitting cell at the "
        "requested max_token; `no grid`: no grid of that scenario was measured with it.",
        "### The memory model, one scenario held out", headline.holdout_table(ROOT / "results"),
        "### Which command reproduces each folder", headline.reproduce(ROOT / "results"),
        "Scenarios are described in `benchmarks/scenarios.yaml`; `python -m benchmarks.run NAME --dry-run` prints the "
        "commands. The per-lease shell scripts some folders' READMEs and logs quote were replaced by these scenarios.",
    ])


def render_headline() -> str:
    return "\n\n".join([
        headline.headline(ROOT / "results"),
        headline.HEADLINE_NOTE,
        techniques_table.headline(ROOT / "results"),
        headline.holdout_sentence(ROOT / "results"),
        "Published architectures with random weights (same memory and speed), global batch 32 (16 under a 24 GiB "
        "cap), autofit's default 8% headroom. Details, every search, the DeepSpeed autotuner and the memory model's "
        "error per scenario: [results/README.md](results/README.md).",
    ])


def _replace(text: str, start: str, end: str, body: str) -> str:
    if start not in text:
        sys.exit(f"no {start} block to replace")
    return text[: text.index(start)] + f"{start}\n{body}\n{end}" + text[text.index(end) + len(end):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    a = ap.parse_args(argv)
    if not a.write:
        print(f"{HEAD_START}\n{render_headline()}\n{HEAD_END}\n\n{START}\n{render()}\n{END}")
        return 0
    readme = ROOT / "README.md"
    readme.write_text(_replace(readme.read_text(), HEAD_START, HEAD_END, render_headline()))
    RESULTS_README.write_text(_replace(RESULTS_README.read_text(), START, END, render()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
