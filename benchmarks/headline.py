"""The issue-20 tables, from committed results/ files and benchmarks/scenarios.yaml only (no torch):

- headline(): per scenario, autofit against the exhaustive grid (like-for-like conditions and the
  spread of repeated grid passes stated) and against every baseline a competent user runs; a scenario
  of scenarios.yaml whose results folder is not committed yet shows "not run".
- every_search(): every search that was run, with its conditions, including those no grid checked.
- reproduce(): the command that reproduces each committed folder now.
- holdout_sentence() / holdout_table(): the memory model's error with one scenario held out.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from benchmarks import scenario_table
from benchmarks.common import committed
from benchmarks.scenario import Scenario, load_scenarios

# Headline columns: (header, baselines.json names shown there). The committed issue-7 folders ran
# `hand` (checkpointing, doubling, stopped at the headroom line: marked ‡) and `hf-auto` with
# checkpointing, before the recipes were split by checkpointing.
BASELINE_COLUMNS = (
    ("seed recipe", ("seed",)),
    ("HF, doubling", ("hf-double",)),
    ("HF, doubling + ckpt", ("hf-double-ckpt", "hand")),
    ("HF auto_find_batch_size", ("hf-auto",)),
    ("HF auto_find_batch_size + ckpt", ("hf-auto-ckpt", "hf-auto")),
    ("LLaMA-Factory defaults", ("llamafactory",)),
)
NOT_RUN = "not run"


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def timing(s: dict, folder: Path) -> str:
    """How the search was timed: after search_vs_grid's warm-up (excluded), from a cold start, or unrecorded."""
    if s.get("search_concurrent"):
        return "beside another job"
    if "warm_up_s" not in s:
        how = "cold" if "cold" in folder.name else "not recorded"
    else:
        how = f"warm ({s['warm_up_s']:.0f} s warm-up excluded)" if s["warm_up_s"] is not None else "cold"
    conditions = folder / "conditions.txt"
    if conditions.exists() and "other GPU ran" in " ".join(conditions.read_text().split()):
        how += "; another job on the other GPU for part of it (conditions.txt)"
    return how


def like_for_like(s: dict) -> str:
    """What the grid measured against what the search answers: the max_tokens, the measured steps per
    probe (the search's probes have 1), the passes."""
    g = s.get("grid") or {}
    tokens = g.get("max_tokens") or g.get("max_tokens_reached")
    steps = g.get("measure_steps", 2)  # 2 was the harness's default before the field was written
    parts = []
    if tokens is None:
        parts.append("max_tokens unrecorded")
    elif list(tokens) != [s["max_token"]]:
        parts.append(f"{len(tokens)} max_tokens")
    if steps != 1:
        parts.append(f"{steps} steps/probe")
    if g.get("complete") is False:
        parts.append("cut short")
    # A reused grid did the same work in another lease: like for like in work, not in conditions.
    lease = "; grid from another lease" if g.get("reused_from") else ""
    if g.get("leases", 1) > 1:  # resumed on other machines: its wall time is the sum of its escalations
        lease += f"; grid over {g['leases']} leases"
    return ("like for like" if not parts else "unlike: " + ", ".join(parts)) + lease


def quality(s: dict) -> str:
    g = s.get("grid") or {}
    best = (g.get("best") or {}).get("tokens_per_s")
    mine = g.get("search_winner_tokens_per_s_in_grid")
    own = (s.get("search") or {}).get("winner_tokens_per_s")
    if best and not mine and own:  # the grid has no such cell (a reused grid of another space): its own figure
        return f"{own / best:.1%}* (not a grid cell)"
    if not best or not mine:
        return "-"
    q = s.get("quality", mine / best)
    if "winner_within_spread" in s:
        spread = (g.get("best") or {}).get("spread")
        within = "within" if s["winner_within_spread"] else "outside"
        return f"{q:.1%} ({within} the spread{f', best cell ±{spread / 2:.1%}' if spread is not None else ''})"
    return f"{q:.1%} (one pass: no spread)"


def _baseline_cell(facts: scenario_table.Facts, names: tuple[str, ...]) -> str:
    for name in names:
        m = facts.methods.get(name)
        if m is None:
            continue
        if name == "hf-auto" and "hf-auto-ckpt" in names and "/ckpt/" not in m.choice:
            continue  # an hf-auto without checkpointing belongs to the other column
        if name == "hf-auto" and "hf-auto-ckpt" not in names and "/ckpt/" in m.choice:
            continue
        if m.tainted:
            return "tainted †"
        if m.failed:
            return "no answer"
        mark = " ‡" if name == "hand" else ""
        return (f"{m.vs_oracle}, over headroom" if m.over_headroom else m.vs_oracle) + mark
    return NOT_RUN


def headline_folders(results: Path, scenarios: dict[str, Scenario] | None = None) -> list[Path]:
    """Folders with a search and a grid to judge it: scenario folders, the cold ones and the concurrent one;
    not those a later scenario supersedes (results/README.md shows every search)."""
    superseded = {sc.results for sc in (scenarios if scenarios is not None else load_scenarios()).values()
                  if sc.superseded_by}
    out = []
    for summary in committed(results, "*/summary.json"):
        if summary.parent.name in superseded:
            continue
        s = json.loads(summary.read_text())
        if s.get("grid") and (s.get("search") or s.get("search_concurrent")):
            out.append(summary.parent)
    return out


def headline(results: Path, scenarios: dict[str, Scenario] | None = None) -> str:
    cols = [c for c, _ in BASELINE_COLUMNS]
    lines = ["| scenario | GPUs | search timed | autofit: wall, probes | its winner vs the grid's best | "
             "exhaustive grid: wall, probes | time vs grid | " + " | ".join(cols) + " | winner verified |",
             "|" + "---|" * (8 + len(cols))]
    scenarios = scenarios if scenarios is not None else load_scenarios()
    caveats = {sc.results: sc.grid_caveat for sc in scenarios.values() if sc.results and sc.grid_caveat}
    folders = headline_folders(results, scenarios)
    for folder in folders:
        s = _summary(folder)
        concurrent = s.get("search_concurrent")
        srch = s.get("search") or concurrent
        g = s["grid"]
        facts = scenario_table.scenario_facts(folder) if s.get("search") else None
        n = scenario_table.num_gpus(folder) if facts is None else facts.gpus
        if facts is None:  # the concurrent search: its own folder
            n = len((yaml.safe_load((folder / concurrent["folder"] / "best.yaml").read_text()) or {})
                    .get("hardware", {}).get("gpus", [0])) if concurrent else n
        full = str(srch.get("winner") or "").startswith("full/")
        cap = f", {s['budget_gib']:.0f} GiB cap" if "24GiB" in folder.name else ""
        at_least = g.get("complete") is False
        gw = g.get("wall_s_at_least" if at_least else "wall_s")
        frac = (f"{s['time_fraction']:.0%}" if "time_fraction" in s else f"≤ {s['time_fraction_at_most']:.0%}"
                if "time_fraction_at_most" in s else f"≤ {srch['wall_s'] / gw:.0%}" if at_least and srch.get("wall_s") else "-")
        warm = s.get("time_fraction_with_warm_up")
        frac += f"; {warm:.0%} with warm-ups" if warm is not None else ""
        frac += f" ({like_for_like(s)}" + (f"; {caveats[folder.name]})" if folder.name in caveats else ")")
        cells = [_baseline_cell(facts, names) if facts else NOT_RUN for _, names in BASELINE_COLUMNS]
        verified = "-"
        if facts:
            a = facts.methods["autofit"]
            verified = scenario_table.VERDICT[a.passed] + (f" (on {a.verified_on})" if a.verified_on else "")
        reps = f", {g['repeats']} passes" if g.get("repeats") else ""
        if g.get("repeat_near"):  # a large space's later passes re-measured only the cells near its best
            reps += f" (then {sum(g['probes_runs'][1:])} near the best)"
        lines.append(
            f"| {s['model'].split('/')[-1]} {'full FT' if full else 'LoRA'}, T={s['max_token']}{cap} "
            f"([{folder.name}](results/{folder.name})) | {n} x {scenario_table._short_gpu(s.get('gpu'))} | {timing(s, folder)} | "
            f"{srch['wall_s']:.0f} s, {srch['probes']} | {quality(s)} | {'≥ ' if at_least else ''}{gw:.0f} s, {g['probes']}{reps} | "
            f"{frac} | " + " | ".join(cells) + f" | {verified} |")
    judged = {f.name for f in folders}
    for sc in scenarios.values():
        if not (sc.results and "search" in sc.steps and "grid" in sc.steps) or sc.results in judged or sc.superseded_by:
            continue
        cap = f", {sc.gpu_memory} cap" if sc.gpu_memory else ""
        method = "full FT" if sc.method == "full" else "LoRA"
        gpus = f"{sc.num_gpus} x {(sc.gpu or '?').replace('NVIDIA ', '')}"
        folder = results / sc.results
        s = _summary(folder) if (folder / "summary.json").exists() else {}
        searched = s.get("search")
        if searched:  # the search ran, its grid not (or not to the end) yet: shown, not judged
            grid = "grid cut short (resumable)" if (folder / "grid.csv").exists() else "grid not run"
            lines.append(f"| {sc.model.split('/')[-1]} {method}, T={sc.max_token}{cap} ([{sc.results}](results/{sc.results})) "
                         f"| {gpus} | {timing(s, folder)} | {searched['wall_s']:.0f} s, {searched['probes']} | "
                         + " | ".join([grid] * 3 + [NOT_RUN] * len(cols)) + " | - |")
            continue
        lines.append(f"| {sc.model.split('/')[-1]} {method}, T={sc.max_token}{cap} (`{sc.name}`: "
                     f"`python -m benchmarks.run {sc.name}`) | {gpus} | " + " | ".join([NOT_RUN] * (6 + len(cols))) + " |")
    return "\n".join(lines)


HEADLINE_NOTE = (
    "`search timed`: after the benchmark's warm-up (stack read, CUDA init, CPU Adam build; excluded, and the grid "
    "is timed after the same warm-up) or from a cold start. `time vs grid` says whether the grid measured what the "
    "search answers (the requested max_token only, one measured step per probe as the search's probes have) or "
    "what differs. The winner counts as the grid's best when its readings overlap the best cell's over the grid's "
    "passes (`within the spread`; each pass measures every cell in new workers). Baselines (sources in "
    "`benchmarks/baselines.py`): their pick's tokens/s over the grid's best, as the grid measured that cell (* "
    "their own measurement); `over headroom`: the pick runs but peaks above the line autofit keeps from an OOM; "
    "`no answer`: nothing it tried runs; ‡: the older procedure, which stopped at the headroom line; † "
    "`tainted`: measured while another job's process held memory on its GPU (the folder's tainted.yaml says which "
    "and why), so no figure; "
    "`not run`: no committed folder has it yet. Runs a later scenario supersedes (same question, older harness) are "
    "in results/README.md with every other search.")


# -- every search -----------------------------------------------------------------------------------
def _printed_summary(log: Path) -> dict | None:
    """The summary.json a benchmark printed at the end of its log (a run folder that did not come back)."""
    text = log.read_text()
    start = text.rfind("\n{\n")
    try:
        return json.loads(text[start + 1:]) if start >= 0 else None
    except ValueError:
        return None


def _searches(results: Path) -> list[tuple[str, dict, str, bool]]:
    """(folder, a summary-shaped dict, conditions, whether its grid judges it) of every committed search."""
    out = []
    summaries = {p.parent: json.loads(p.read_text()) for p in committed(results, "*/summary.json")}
    summaries.update({p.parent: json.loads(p.read_text()) for p in committed(results, "*/run*/summary.json")})
    for log in committed(results, "*/run*/bench.log"):
        if log.parent not in summaries and (s := _printed_summary(log)):
            summaries[log.parent] = {**s, "from_log": True}
    for folder, s in sorted(summaries.items()):
        rel = str(folder.relative_to(results))
        if s.get("search"):
            s = {**s, "num_gpus": scenario_table.num_gpus(folder)}
            cond = [timing(s, folder)] + (["read from bench.log (run folder not kept)"] if s.get("from_log") else [])
            out.append((rel, s, ", ".join(cond), bool(s.get("grid"))))
        if s.get("search_concurrent"):
            c = s["search_concurrent"]
            run = scenario_table._rows(folder / c["folder"] / "probes.csv")
            s = {**s, "num_gpus": int((run[0] if run else {}).get("num_gpus") or 1)}
            out.append((f"{rel}/{c['folder']}", {**s, "search": c}, f"beside another job: {c['caveat']}", True))
    seen = {f"{r}/search" for r, _, _, _ in out} | {r for r, _, _, _ in out}
    for best in committed(results, "*/search*/best.yaml"):
        rel = str(best.parent.relative_to(results))
        if rel in seen or best.parent.parent.name.startswith("verify-"):
            continue
        b = yaml.safe_load(best.read_text())
        quant = best.parent.name == "search-quantize"
        run = b["search"]
        rows = scenario_table._rows(best.parent / "probes.csv")
        out.append((rel, {"model": b["model"]["id"], "max_token": run["max_token_requested"], "space": run["space"],
                          "budget_gib": b["hardware"]["memory_budget_gib"], "gpu": b["hardware"]["gpu"],
                          "num_gpus": b["hardware"]["num_gpus"],
                          "search": {"wall_s": run["wall_time_s"], "probes": len(rows) if quant else run["probes_run"],
                                     "winner": b["config"]["strategy"], "winner_micro_batch": b["config"]["micro_batch"],
                                     "winner_tokens_per_s": b["measured"]["tokens_per_s"]}},
                    "the run dir resumed with --quantize" if quant else "autofit search alone", False))
    return out


def every_search(results: Path) -> str:
    lines = ["| search | GPUs | model, T, space | conditions | wall, probes | winner (micro-batch) | tokens/s | "
             "vs the grid's best |", "|---|---|---|---|---|---|---|---|"]
    for rel, s, cond, judged in _searches(results):
        srch = s["search"]
        g = s.get("grid") or {}
        best, mine = (g.get("best") or {}).get("tokens_per_s"), g.get("search_winner_tokens_per_s_in_grid")
        top = rel.split("/")[0]
        vs = (f"{mine / best:.1%}" if best and mine else "-") if judged else "no grid"
        n = s.get("num_gpus") or scenario_table.num_gpus(results / top)
        cap = f", {s['budget_gib']:.0f} GiB cap" if s.get("budget_gib") and s["budget_gib"] < 30 else ""
        lines.append(f"| [{rel}](results/{rel}) | {n} x {scenario_table._short_gpu(s.get('gpu'))} | "
                     f"{s['model'].split('/')[-1]}, T={s['max_token']}, `{s['space']}`{cap} | {cond} | "
                     f"{srch['wall_s']:.0f} s, {srch['probes']} | `{srch['winner']}` ({srch['winner_micro_batch']}) | "
                     f"{srch['winner_tokens_per_s']:.0f} | {vs} |")
    return "\n".join(lines)


# -- reproduction -----------------------------------------------------------------------------------
def reproduce(results: Path, scenarios: dict[str, Scenario] | None = None) -> str:
    lines = ["| folder | reproduced now by | note |", "|---|---|---|"]
    by_folder = {sc.results: sc for sc in (scenarios if scenarios is not None else load_scenarios()).values() if sc.results}
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("demo-")):
        sc = by_folder.get(folder.name)
        cmd = f"`python -m benchmarks.run {sc.name} --out DIR`" if sc else "-"
        note = " ".join(sc.note.split()) if sc else ""
        lines.append(f"| [{folder.name}](results/{folder.name}) | {cmd} | {note} |")
    return "\n".join(lines)


# -- memory model, one scenario held out --------------------------------------------------------------
def _holdout(results: Path) -> dict | None:
    p = results / "estimate-error" / "holdout.json"
    return json.loads(p.read_text()) if p.exists() else None


def holdout_sentence(results: Path) -> str:
    h = _holdout(results)
    if h is None:
        return "The memory model's hold-out error: not run."
    d, a, m = h["device_peak"], h["allocated"], h["missed_cells"]
    return (f"The memory model, each scenario held out of its calibration (`{h['command']}`): device peak, the figure "
            f"compared with the budget, median {d['median_abs_pct']:.1f}% off, worst under-prediction "
            f"{d['worst_under_pct']:.1f}%; allocated memory median {a['median_abs_pct']:.1f}%, worst "
            f"{a['worst_under_pct']:.1f}% ({d['rows']} measured peaks); "
            f"{m['predicted_over_limit_but_fits']} fitting cell(s) predicted over the limit, "
            f"{next(v for k, v in m.items() if k.endswith('x_limit_but_fits'))} beyond the line where the search skips "
            f"without probing.")


def holdout_table(results: Path) -> str:
    h = _holdout(results)
    if h is None:
        return NOT_RUN
    lines = ["| scenario held out | peaks | allocated: median / worst under | device peak: median / worst under |",
             "|---|---|---|---|"]

    def cell(x: dict) -> str:
        return f"{x['median_abs_pct']:.1f}% / {x['worst_under_pct']:.1f}%" if x.get("rows") else "-"

    for name, v in h["per_scenario"].items():
        lines.append(f"| [{name}](results/{name}) | {v['device_peak']['rows']} | {cell(v['allocated'])} | {cell(v['device_peak'])} |")
    lines.append(f"| **all** | {h['device_peak']['rows']} | {cell(h['allocated'])} | {cell(h['device_peak'])} |")
    u = h["under_predictions"]
    lines.append("")
    lines.append(f"{h['which_direction_matters'][0].upper()}{h['which_direction_matters'][1:]}. Under-predictions beyond {u['beyond_pct']:.0f}%: {u['count']}, of which "
                 f"{u['predicted_under_limit_but_over']} predicted under the limit but measured over it. "
                 f"Protocol: {h['protocol']}. Caveat: {h['in_sample_caveat']}.")
    return "\n".join(lines)
