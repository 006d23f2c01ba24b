"""Benchmark: autofit search against the exhaustive grid over the same space, on the same GPU.

    python -m benchmarks.search_vs_grid --model THUDM/glm-4-9b-chat --max-token 1024 \
        --space default --global-batch 32 --out DIR [--repeats 2] [--skip-grid | --grid-only]

Like for like by default: the grid covers the space at the max_token the search answers, with one
measured step per probe as the search's probes have (its fresh check of the winner has two), and both
are timed after the same warm-up (see warm_up; --no-warm-up times both cold), each with empty Triton and
Inductor caches of its own (own_jit_caches). `--repeats N` measures
every cell N times, each pass in new workers: summary.json gives each pass's wall time, the best cell's
and the search winner's readings, and whether the winner is within the spread of the grid's best. With
`--repeat-near F` (a large space) the later passes re-measure only the cells within F of the first
pass's best and the search's winner.
Writes DIR/search/ (the search's run dir), DIR/grid.csv (every grid probe; a repeat pass's rows have
phase "repeat") and DIR/summary.json. The grid probes every (strategy, max_token, micro-batch) up to and
including each first OOM; cells above a wall are OOM by monotonicity and are not charged to the grid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from autofit.probe.runner import StandbyFactory, escalate
from autofit.rundir.records import append_probe, append_text, read_probes, result_from_row, rewrite_probes
from autofit.search.driver import SearchRequest, run_search
from autofit.search.planner import Limits, peak_of
from autofit.search.progress import Progress
from autofit.search.space import runnable_strategies
from autofit.spec import Context, ProbeResult, Shape, Strategy
from autofit.units import parse_duration
from benchmarks.common import add_scenario_args, scenario_from_args


SPANS = "grid_spans.jsonl"  # one line per finished escalation: pass, strategy, max_token, start, end
LEASE_GAP_S = 300.0         # between two escalations' spans: the grid went on in another device lease


@dataclass(frozen=True)
class CellRuns:
    """One grid cell measured in every pass (each pass in new workers): its spread is the noise a
    winner is judged within."""
    strategy: str
    micro_batch: int
    max_token: int
    tokens_per_s: tuple[float, ...]    # the passes that ran it to the end
    fits: bool                         # every pass ran it and its peak stayed under the headroom line

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)

    @property
    def spread(self) -> float:
        """(fastest - slowest) / median over the passes; 0 with a single pass."""
        return (max(self.tokens_per_s) - min(self.tokens_per_s)) / self.median if self.tokens_per_s else 0.0


def cell_runs(passes: list[dict[tuple[str, int, int], ProbeResult]], limits: Limits,
              planned: list[set | None] | None = None) -> dict[tuple[str, int, int], CellRuns]:
    """Each cell over the grid's passes. A cell fits only if every pass that planned it (a full pass plans
    every cell; a near-best pass its own list, see near_best) measured it under the limit: a cell a pass
    never reached, above that pass's wall, does not fit. The search's fresh check likewise keeps the larger
    of two peaks."""
    planned = planned or [None] * len(passes)
    out = {}
    for key in sorted({k for p in passes for k in p}):
        runs = [p.get(key) for p in passes]
        ok = [r for r in runs if r is not None and r.ok]
        expected = sum(1 for plan in planned if plan is None or key in plan)
        out[key] = CellRuns(*key, tuple(r.tokens_per_s for r in ok),
                            fits=len(ok) == expected and all(limits.fits(r) for r in ok))
    return out


def near_best(first: dict[tuple[str, int, int], ProbeResult], limits: Limits, within: float, max_token: int,
              exact: Callable[[str], bool], also: tuple[str, int] | None = None) -> set[tuple[str, int, int]]:
    """The cells a later pass re-measures when it need not repeat the whole grid: those of the first pass
    within `within` of the best fitting cell at max_token, exact and 4/8-bit families each by its own best,
    plus the search's winner (`also`). Only these can be the grid's best or the cell it is compared with."""
    fitting = {k: r for k, r in first.items() if k[2] == max_token and r.ok and limits.fits(r)}
    chosen = set()
    for family in (True, False):
        cells = {k: r.tokens_per_s for k, r in fitting.items() if exact(k[0]) == family}
        if cells:
            top = max(cells.values())
            chosen |= {k for k, v in cells.items() if v >= (1 - within) * top}
    if also is not None:
        chosen.add((also[0], also[1], max_token))
    return chosen


def within_spread(winner: CellRuns | None, best: CellRuns | None) -> bool | None:
    """The winner counts as the grid's best when their measurements overlap: its fastest pass reaches
    the best cell's slowest. None when either was not measured."""
    if winner is None or best is None or not winner.tokens_per_s or not best.tokens_per_s:
        return None
    return max(winner.tokens_per_s) >= min(best.tokens_per_s)


JIT_CACHES = ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")


@contextlib.contextmanager
def own_jit_caches():
    """Triton's and Inductor's on-disk caches, empty and this side's own while it runs. Liger's kernels and
    bitsandbytes' compiled functions are built on first use and read from disk after: a grid run after its
    search found them built, 3-4 s less on its first fused probe (r7 on the H200). Each side pays them once."""
    root = tempfile.mkdtemp(prefix="autofit-jit-")
    saved = {k: os.environ.get(k) for k in JIT_CACHES}
    os.environ.update({k: os.path.join(root, k.lower()) for k in JIT_CACHES})
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def _finished_escalations(out: Path) -> tuple[dict[tuple[int, str, int], list[ProbeResult]], list[dict]]:
    """What an earlier, cut-short run of this grid finished (the machine's time ran out, a later lease goes
    on): each (pass, strategy, max_token) escalation that ended, with its probes. grid.csv keeps only
    those: a strategy cut off mid-escalation runs again whole, in a new worker as every strategy does."""
    csv_path, spans_path = out / "grid.csv", out / SPANS
    spans = [json.loads(line) for line in spans_path.read_text().splitlines() if line.strip()] if spans_path.exists() else []
    if not spans or not csv_path.exists() or spans[-1].get("done"):  # nothing cut short: a new grid
        csv_path.unlink(missing_ok=True)
        spans_path.unlink(missing_ok=True)
        return {}, []
    ended = {(sp["pass"], sp["strategy"], sp["max_token"]) for sp in spans}
    rows = [r for r in read_probes(csv_path) if (int(r["repeat"]), r["strategy"], int(r["max_token"])) in ended]
    rewrite_probes(csv_path, rows)
    done: dict[tuple[int, str, int], list[ProbeResult]] = {k: [] for k in ended}
    for r in rows:
        done[(int(r["repeat"]), r["strategy"], int(r["max_token"]))].append(result_from_row(r))
    return done, spans


def grid(ctx: Context, source, space, tokens: list[int], limits: Limits, out: Path, progress: Progress,
         repeats: int = 1, near: Callable[[dict], set] | None = None) -> dict:
    """Every cell of the space at `tokens`, `repeats` times over; each pass escalates every strategy in
    a new worker, so a cell's passes are separate workers' readings. With `near`, the passes after the
    first re-measure only the cells near(first pass) names, each strategy's in a new worker.

    A pass's wall time is the sum of its escalations' spans (grid_spans.jsonl), so a grid cut short on
    one machine resumes on the next (the same command, the same DIR) without counting the gap between."""
    csv_path, spans_path = out / "grid.csv", out / SPANS
    done, spans = _finished_escalations(out)
    cap = max(1, ctx.global_batch // ctx.num_gpus)
    mbs = [m for m in space.micro_batches if m <= cap]
    walls, probes, passes, planned = [], [], [], []
    # The grid gets the same warm workers and standbys as the search: only the choice of probes differs. The
    # caches come first: the factory's standbys inherit the environment as they spawn.
    with own_jit_caches(), contextlib.closing(StandbyFactory(ctx, source, out / "grid_io")) as factory:
        for rep in range(repeats):
            n, cells = 0, {}
            # A repeat's rows are phase "repeat": tables that read one measurement per cell read the first pass.
            phase = "grid" if rep == 0 else "repeat"
            plan = near(passes[0]) if rep and near is not None else None
            planned.append(plan)
            # What the search leaves out as unavailable here, the grid leaves out too: the same space.
            for s in runnable_strategies(space, ctx)[0]:
                for t in tokens:
                    shapes = [Shape(m, t) for m in mbs if plan is None or (s.key(), m, t) in plan]
                    if not shapes:
                        continue
                    if (rep, s.key(), t) in done:  # finished in an earlier lease
                        for r in done[(rep, s.key(), t)]:
                            n += 1
                            cells[(s.key(), r.micro_batch, t)] = r
                        continue
                    progress.log(f"grid pass {rep + 1}/{repeats}: {s.key()} T={t} over micro-batch "
                                 f"{[sh.micro_batch for sh in shapes]}")
                    start = time.time()
                    with factory(s) as session:
                        for r in escalate(session, shapes):
                            factory.tick()  # as the search's pool does between probes
                            n += 1
                            fits = limits.fits(r)
                            append_probe(csv_path, r, s, fits=fits, phase=phase, repeat=rep, peak=peak_of(r),
                                         finished_at=time.time())
                            progress.done(r, fits, peak_of(r))
                            cells[(s.key(), r.micro_batch, t)] = r
                    span = {"pass": rep, "strategy": s.key(), "max_token": t, "start": round(start, 3),
                            "end": round(time.time(), 3)}
                    append_text(spans_path, json.dumps(span) + "\n")
                    spans.append(span)
            walls.append(round(sum(sp["end"] - sp["start"] for sp in spans if sp["pass"] == rep), 1))
            probes.append(n)
            passes.append(cells)
        append_text(spans_path, json.dumps({"done": True}) + "\n")  # the same command again measures anew
    shutil.rmtree(out / "grid_io", ignore_errors=True)
    # The leases a pass ran in: a gap longer than any escalation is a new machine.
    leases = 1 + sum(1 for a, b in zip(spans, spans[1:]) if b["start"] - a["end"] > LEASE_GAP_S)
    return {"wall_s_runs": walls, "probes_runs": probes, "passes": passes, "planned": planned, "leases": leases}


WARM_UP = r"""
import sys, time
t0 = time.time()
import torch, transformers, peft, deepspeed, optuna  # noqa: F401  (reads the stack from disk once)
if torch.cuda.is_available():
    torch.ones(1, device="cuda")
if "offload" in sys.argv[1:]:
    from deepspeed.ops.op_builder import CPUAdamBuilder
    CPUAdamBuilder().load()  # JIT-compiled once per machine (~1 min), then loaded from the cache
print(f"warm-up {time.time() - t0:.1f}s", flush=True)
"""


def warm_up(offload: bool) -> float:
    """Put the machine in the state every later run finds it in, so neither side of the comparison pays
    one-time costs: the stack read from a cold disk, CUDA's first init, DeepSpeed's CPU Adam JIT build.
    A user's very first search on a bare machine pays these once (about a minute with offload)."""
    t0 = time.time()
    subprocess.run([sys.executable, "-c", WARM_UP] + (["offload"] if offload else []), check=True)
    return round(time.time() - t0, 1)


def measured_cell(rows: list[dict], strategy: str, micro_batch: int, max_token: int) -> dict | None:
    """The grid.csv row that measured this cell (status ok), if the grid ran it."""
    return next((r for r in rows if r["strategy"] == strategy and int(r["micro_batch"]) == micro_batch
                 and int(r["max_token"]) == max_token and r["status"] == "ok"), None)


def summarize_cut_short(out: Path, log: Path, limits_max_token: int, measure_steps: int) -> dict:
    """Rebuild summary.json for a benchmark whose grid was stopped before the end (the GPU machine's
    time ran out), from what it wrote: OUT/search/, OUT/grid.csv and its own log, whose "[  Ns]" stamps
    give the timings. The grid's wall time is then a lower bound, so the time fraction is an upper bound.
    """
    import re

    import yaml

    stamps = [(int(m.group(1)), line) for line in log.read_text().splitlines()
              if (m := re.match(r"\[\s*(\d+)s\]", line))]
    # An older benchmark log stamps "grid:" as its grid starts; a --grid-only run's log its first pass.
    grid_start = next(t for t, line in stamps if "grid:" in line or "grid pass 1/" in line)
    last = stamps[-1][0]
    best = yaml.safe_load((out / "search" / "best.yaml").read_text())
    search_rows = read_probes(out / "search" / "probes.csv")
    rows = read_probes(out / "grid.csv")
    cfg, hw = best["config"], best["hardware"]
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    # The oracle answers what the search may pick: exact configurations unless it ran with --quantize.
    fitting = [r for r in rows if int(r["max_token"]) == limits_max_token and r["fits"] == "True"
               and (earlier.get("quantize") or Strategy.from_key(r["strategy"]).exact)]
    top = max(fitting, key=lambda r: float(r["tokens_per_s"])) if fitting else None
    mine = measured_cell(rows, cfg["strategy"], cfg["micro_batch"], limits_max_token)
    run = best["search"]
    summary = {
        "model": best["model"]["id"], "max_token": limits_max_token, "space": run["space"],
        "global_batch": run["global_batch"], "gpu": hw["gpu"], "budget_gib": hw["memory_budget_gib"],
        "headroom": hw["headroom"], "rebuilt_from_log": log.name,
        "search": {"wall_s": run["wall_time_s"], "probes": len(search_rows), "winner": cfg["strategy"],
                   "winner_micro_batch": cfg["micro_batch"], "winner_tokens_per_s": best["measured"]["tokens_per_s"],
                   "note": run.get("note")},
        "grid": {"complete": False, "max_tokens_reached": sorted({int(r["max_token"]) for r in rows}),
                 "wall_s_at_least": float(last - grid_start), "probes": len(rows),
                 "best": {"strategy": top["strategy"], "micro_batch": int(top["micro_batch"]),
                          "tokens_per_s": float(top["tokens_per_s"])} if top else None,
                 "search_winner_tokens_per_s_in_grid": float(mine["tokens_per_s"]) if mine else None,
                 "measure_steps": measure_steps},
    }
    if earlier.get("search"):  # a --grid-only run's search, as the benchmark timed it
        summary["search"], summary["warm_up_s"] = earlier["search"], earlier.get("warm_up_s")
    if top and mine:
        summary["quality"] = round(float(mine["tokens_per_s"]) / float(top["tokens_per_s"]), 4)
    summary["time_fraction_at_most"] = round(summary["search"]["wall_s"] / summary["grid"]["wall_s_at_least"], 3)
    return summary


def reuse_grid(src: Path, out: Path, search: dict, max_token: int, gpu: str | None = None, quantize: bool = False) -> dict:
    """The grid half of summary.json, taken from an earlier run of the same scenario (same model, space,
    budget and GPU model): the oracle does not depend on how the search plans, so a planner change can
    be re-measured without paying for the grid again. The search's winner is looked up in that grid."""
    prev = json.loads((src / "summary.json").read_text())
    if gpu and prev.get("gpu") and gpu != prev["gpu"]:
        # An H100 grid says nothing about an H200's tokens/s: the ratio would be meaningless.
        raise SystemExit(f"--grid-from {src}: that grid ran on {prev['gpu']}, this search on {gpu}")
    shutil.copyfile(src / "grid.csv", out / "grid.csv")
    g = dict(prev["grid"], reused_from=src.name)
    # The grid's own log comes along: a cut-short grid's wall time was read from its stamps.
    log = next((p for p in (src / "grid.log", src / "bench.log") if p.exists()), None)
    if log is not None:
        shutil.copyfile(log, out / "grid.log")
        g["log"] = "grid.log"
    q = g.get("best_quantized")
    if quantize and q and (not g.get("best") or q["tokens_per_s"] > g["best"]["tokens_per_s"]):
        g["best"] = q  # with --quantize the oracle's answer may be a 4/8-bit cell
    part = {"grid": g}
    rows = read_probes(out / "grid.csv")
    # The winner's cell over every pass of that grid, judged as that grid's own search was: median and spread.
    runs = tuple(float(r["tokens_per_s"]) for r in rows if r["strategy"] == search["winner"] and r["status"] == "ok"
                 and int(r["micro_batch"]) == search["winner_micro_batch"] and int(r["max_token"]) == max_token
                 and r.get("phase", "grid") in ("grid", "repeat")) if search.get("winner") else ()
    g["search_winner_tokens_per_s_in_grid"] = round(statistics.median(runs), 2) if runs else None
    g.pop("search_winner_tokens_per_s_runs", None)
    if len(runs) > 1:
        g["search_winner_tokens_per_s_runs"] = list(runs)
    best = g.get("best")
    if runs and best:
        part["quality"] = round(statistics.median(runs) / best["tokens_per_s"], 4)
        if best.get("tokens_per_s_runs"):
            mine = CellRuns(search["winner"], search["winner_micro_batch"], max_token, runs, True)
            part["winner_within_spread"] = within_spread(mine, CellRuns(best["strategy"], best["micro_batch"], max_token,
                                                                        tuple(best["tokens_per_s_runs"]), True))
    if "wall_s" in g:
        part["time_fraction"] = round(search["wall_s"] / g["wall_s"], 3)
    else:  # the earlier grid was cut short: its wall time is a lower bound
        part["time_fraction_at_most"] = round(search["wall_s"] / g["wall_s_at_least"], 3)
    return part


def grid_summary(cells: dict[tuple[str, int, int], CellRuns], allowed: set[str], max_token: int, search: dict | None,
                 exact: Callable[[str], bool]) -> dict:
    """The grid half of summary.json from its cells: the oracle's answer for the objective (the fitting
    cell at the requested max_token with the best median tokens/s, among the configurations the search may
    pick: `allowed`), the search's winner as the grid measured it, and whether the two are within the
    passes' spread."""
    at_t = {k[:2]: c for k, c in cells.items() if k[2] == max_token and c.fits}
    fitting = {k: c for k, c in at_t.items() if k[0] in allowed}
    quantized = {k: c for k, c in at_t.items() if not exact(k[0])}
    best_key = max(fitting, key=lambda k: fitting[k].median) if fitting else None
    best = fitting.get(best_key) if best_key else None
    mine = cells.get((search["winner"], search["winner_micro_batch"], max_token)) if search and search.get("winner") else None
    mine = mine if mine is not None and mine.tokens_per_s else None

    def entry(c: CellRuns) -> dict:
        e = {"strategy": c.strategy, "micro_batch": c.micro_batch, "tokens_per_s": round(c.median, 2)}
        if len(c.tokens_per_s) > 1:
            e.update(tokens_per_s_runs=list(c.tokens_per_s), spread=round(c.spread, 4))
        return e

    part: dict = {"grid": {"best": entry(best) if best else None,
                           "search_winner_tokens_per_s_in_grid": round(mine.median, 2) if mine else None}}
    if mine and len(mine.tokens_per_s) > 1:
        part["grid"]["search_winner_tokens_per_s_runs"] = list(mine.tokens_per_s)
    spreads = [c.spread for c in fitting.values() if len(c.tokens_per_s) > 1]
    if spreads:
        part["grid"]["spread_median"] = round(statistics.median(spreads), 4)
        part["grid"]["spread_max"] = round(max(spreads), 4)
    if quantized:
        qk = max(quantized, key=lambda k: quantized[k].median)
        part["grid"]["best_quantized"] = entry(quantized[qk])
    if best and mine:
        part["quality"] = round(mine.median / best.median, 4)
        if len(best.tokens_per_s) > 1:
            part["winner_within_spread"] = within_spread(mine, best)
    return part


def run_grid(a: argparse.Namespace, ctx: Context, source, space, limits: Limits, search: dict | None, progress: Progress,
             search_wall: float | None = None, warm_up_s: float | None = None) -> dict:
    """The grid half of summary.json: every cell of the space at the grid's max_tokens (default: the
    requested one only, what the search answers), and how the search's winner compares with the grid's best."""
    tokens = (sorted({int(t) for t in a.grid_tokens.split(",")} | {a.max_token}) if a.grid_tokens else [a.max_token])
    exact = lambda k: Strategy.from_key(k).exact  # noqa: E731
    winner = (search["winner"], search["winner_micro_batch"]) if search and search.get("winner") else None
    near = (None if a.repeat_near is None else
            lambda first: near_best(first, limits, a.repeat_near, a.max_token, exact, also=winner))
    g = grid(replace(ctx, max_positions=max(tokens), measure_steps=a.grid_measure_steps), source, space, tokens,
             limits, a.out, progress, repeats=a.repeats, near=near)
    allowed = {s.key() for s in space.strategies(ctx.num_gpus) if a.quantize or s.exact}
    part = grid_summary(cell_runs(g["passes"], limits, g["planned"]), allowed, a.max_token, search, exact)
    # A near-best repeat is not the grid's work again: the exhaustive first pass is what the search saves.
    wall = g["wall_s_runs"][0] if near else statistics.median(g["wall_s_runs"])
    part["grid"] = {"max_tokens": tokens, "wall_s": round(wall, 1), "probes": g["probes_runs"][0], **part["grid"],
                    "measure_steps": a.grid_measure_steps}
    if g["leases"] > 1:  # resumed: its wall time is the sum of its escalations' spans (see grid)
        part["grid"]["leases"] = g["leases"]
    if a.repeats > 1:
        part["grid"].update(repeats=a.repeats, wall_s_runs=g["wall_s_runs"], probes_runs=g["probes_runs"])
        if near:
            part["grid"]["repeat_near"] = a.repeat_near
    if warm_up_s is not None:
        part["grid"]["warm_up_s"] = warm_up_s
    search_wall = search["wall_s"] if search_wall is None and search else search_wall
    if search_wall is not None:
        part["time_fraction"] = round(search_wall / wall, 3)
    return part


def time_rule(summary: dict) -> dict:
    """How the two wall times compare: both timed after the same warm-up (excluded from both, each's
    warm-up given), or both from a cold start; plus the fraction with each side's warm-up added back."""
    s_w, g_w = summary.get("warm_up_s"), (summary.get("grid") or {}).get("warm_up_s")
    out: dict = {"time_rule": "both after a warm-up, excluded from both" if s_w is not None and g_w is not None
                 else "both from a cold start" if s_w is None and g_w is None and "warm_up_s" in summary
                 else "mixed: see warm_up_s"}
    g = summary.get("grid") or {}
    if s_w is not None and g_w is not None and g.get("wall_s") and summary.get("search"):
        out["time_fraction_with_warm_up"] = round((summary["search"]["wall_s"] + s_w) / (g["wall_s"] + g_w), 3)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scenario_args(ap)
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--no-warm-up", action="store_true", help="time the search from a cold start (see warm_up)")
    ap.add_argument("--grid-tokens", default=None,
                    help="comma-separated max_tokens the grid covers besides --max-token (default: --max-token "
                         "only, the one the search answers: like for like)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="grid passes, each cell in a new worker every pass: the spread a winner is judged within")
    ap.add_argument("--repeat-near", type=float, default=None, metavar="FRACTION",
                    help="passes after the first re-measure only the cells within FRACTION of the first pass's best "
                         "(each family's) and the search's winner; the grid's wall time is then the first pass's")
    ap.add_argument("--grid-from", type=Path, metavar="DIR", default=None,
                    help="skip the grid and compare with the one an earlier run of this scenario measured on the "
                         "same GPU model (its grid.csv and summary.json are copied in, marked reused_from)")
    ap.add_argument("--grid-only", action="store_true",
                    help="run only the grid, against the search an earlier --skip-grid run left in OUT (summary.json)")
    ap.add_argument("--quantize", action="store_true", help="the search's --quantize: 4/8-bit configurations may win")
    ap.add_argument("--grid-measure-steps", type=int, default=1,
                    help="measured steps per grid probe (default 1, what the search measures per probe; its fresh "
                         "check of the winner measures 2)")
    ap.add_argument("--summarize-cut-short", type=Path, metavar="LOG", default=None,
                    help="rebuild OUT/summary.json from OUT and this benchmark log after the grid was stopped early")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.summarize_cut_short:
        summary = summarize_cut_short(a.out, a.summarize_cut_short, a.max_token, a.grid_measure_steps)
        (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return 0

    ctx, source, space, limits = scenario_from_args(a)
    budget = limits.budget
    a.out.mkdir(parents=True, exist_ok=True)
    progress = Progress()

    if a.repeats < 1:
        ap.error("--repeats is at least 1")
    if a.repeat_near is not None and not 0 < a.repeat_near < 1:
        ap.error("--repeat-near is a fraction between 0 and 1")
    if a.grid_only:
        path = a.out / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {
            "model": a.model, "max_token": a.max_token, "space": space.name, "global_batch": a.global_batch,
            "quantize": a.quantize, "budget_gib": round(budget / 2**30, 2), "headroom": a.headroom, "search": None}
        # The same rule as the search's timing: after the same warm-up, or both cold (--no-warm-up).
        warm_s = None if a.no_warm_up else warm_up(any(s.offload_optimizer for s in space.strategies(ctx.num_gpus)))
        summary.update(run_grid(a, ctx, source, space, limits, summary.get("search"), progress, warm_up_s=warm_s))
        summary.setdefault("gpu", (read_probes(a.out / "grid.csv") or [{}])[0].get("device_name"))
        summary.update(time_rule(summary))
        (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return 0
    shutil.rmtree(a.out / "search", ignore_errors=True)
    warm_s = None if a.no_warm_up else warm_up(any(s.offload_optimizer for s in space.strategies(ctx.num_gpus)))
    t0 = time.time()
    # The search measures one step per probe (close candidates are re-measured, its winner measured again
    # with two in a fresh worker); the grid by default one per cell, in each of --repeats passes.
    with own_jit_caches():
        res = run_search(SearchRequest(ctx=replace(ctx, measure_steps=1), source=source, space=space, max_token=a.max_token,
                                       limits=limits, run_dir=a.out / "search", budget_s=parse_duration(a.budget),
                                       quantize=a.quantize), progress=progress)
    search_wall = time.time() - t0
    shutil.rmtree(a.out / "search" / "probe_io", ignore_errors=True)
    print(res.summary, flush=True)
    summary = {
        "model": a.model, "max_token": a.max_token, "space": space.name, "global_batch": a.global_batch,
        "quantize": a.quantize,
        "gpu": (read_probes(a.out / "search" / "probes.csv") or [{}])[0].get("device_name"),
        "budget_gib": round(budget / 2**30, 2), "headroom": a.headroom, "warm_up_s": warm_s,
        "search": {"wall_s": round(search_wall, 1), "probes": res.probes_run,
                   "winner": res.best["config"]["strategy"] if res.best else None,
                   "winner_micro_batch": res.best["config"]["micro_batch"] if res.best else None,
                   "winner_tokens_per_s": res.best["measured"]["tokens_per_s"] if res.best else None,
                   "note": res.outcome.note or None,
                   "numerics": res.best["config"]["numerics"] if res.best else None,
                   "alternative": res.best.get("alternative") if res.best else None},
    }
    if a.grid_from:
        summary.update(reuse_grid(a.grid_from, a.out, summary["search"], a.max_token, summary["gpu"], a.quantize))
    elif not a.skip_grid:
        summary.update(run_grid(a, ctx, source, space, limits, summary["search"], progress, search_wall, warm_up_s=warm_s))
    if summary.get("grid"):
        summary.update(time_rule(summary))
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
