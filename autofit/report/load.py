"""The report's view of a run dir, read through autofit.rundir (which validates every file): the
probes typed, the walls the search settled without a probe, the winner, the memory limits."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autofit.errors import RunDirError, UsageError
from autofit.rundir import RunDir
from autofit.rundir.best import Winner
from autofit.rundir.records import number, read_probes
from autofit.spec import compared_peak

MIN_MARGIN = 0.02  # same floor on the headroom as the search (planner.MIN_MARGIN), for runs without best.yaml

# What happened at one (strategy, micro_batch, max_token), worst first: a failure at a shape outranks
# a success there (a repeat that OOMs means the shape is not safe), as in the search's boundaries.
OUTCOMES = {  # name: (legend label, short label for tables, fill colour)
    "oom": ("out of memory (OOM)", "OOM", "#f28b82"),
    "error": ("error / timeout / crash", "error", "#bdbdbd"),
    "over": ("ran, but peak over the headroom limit", "over limit", "#fbc26b"),
    "fits": ("fits (peak under the limit)", "fits", "#8fd19e"),
}
SEVERITY = {name: i for i, name in enumerate(reversed(OUTCOMES))}


# -- the run ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One row of probes.csv (or of an exhaustive grid.csv), typed; memory in GiB."""

    source: str                # search | grid
    trial: str
    phase: str
    strategy: str
    micro_batch: int
    max_token: int
    status: str                # ok | oom | error | timeout | crash
    outcome: str               # fits | over | oom | error (see OUTCOMES)
    tokens_per_s: float | None
    peak_gib: float | None     # the figure compared with the budget (NVML/reserved peak, or host RSS on CPU)
    allocated_gib: float | None
    reserved_gib: float | None
    nvml_gib: float | None
    host_gib: float | None
    grad_accum: int | None
    step_s: float | None
    error: str
    device: str


@dataclass(frozen=True)
class Wall:
    """A first failing micro-batch the search settled without running it (boundaries.csv, predicted)."""

    strategy: str
    max_token: int
    micro_batch: int
    reason: str                # e.g. "predicted 31.5 GiB > limit"
    predicted_gib: float | None


@dataclass(frozen=True)
class Run:
    path: Path
    model: str
    gpu: str
    num_gpus: int
    emulated: bool             # --gpu-memory capped a bigger card
    budget_gib: float | None
    limit_gib: float | None
    headroom: float | None
    max_token: int             # the max_token the winner (or the request) is at: the throughput figure's slice
    max_token_requested: int | None
    global_batch: int | None
    space: str
    status: str
    wall_time_s: float | None
    command: str
    probes: tuple[Probe, ...]
    grid: tuple[Probe, ...]
    walls: tuple[Wall, ...]
    winner: Winner | None
    best: dict[str, Any] = field(default_factory=dict)

    def strategies(self) -> list[str]:
        """Search order first (frugal to fast, as probed), then grid-only, then wall-only strategies."""
        seen: dict[str, None] = {}
        for k in [p.strategy for p in self.probes] + [p.strategy for p in self.grid] + [w.strategy for w in self.walls]:
            seen.setdefault(k, None)
        return list(seen)


def load_run(run_dir: Path, grid: Path | None = None) -> Run:
    """Read and validate a run dir. RunDirError names the file and the problem."""
    rd = _resolve_run_dir(Path(run_dir))
    run_dir = rd.path
    rows = rd.probes()
    best = rd.best_document()
    info = rd.run()
    boundaries = rd.boundaries()
    budget, limit, headroom = _limits(best, boundaries, info)
    probes = _probes(rows, rd.probes_csv, "search", limit)
    if not probes:
        raise RunDirError(f"{rd.probes_csv}: no probes recorded yet; nothing to report")
    grid_probes: tuple[Probe, ...] = ()
    if grid is not None:
        if not Path(grid).is_file():
            raise UsageError(f"--grid {grid}: no such file")
        grid_probes = _probes(read_probes(Path(grid)), Path(grid), "grid", limit)
    ident = info.get("identity", {})
    hw, search, cfg = best.get("hardware", {}), best.get("search", {}), best.get("config", {})
    winner = rd.best() if (best.get("config") or {}).get("strategy") else None
    requested = search.get("max_token_requested", ident.get("max_token"))
    target = winner.max_token if winner else requested
    if target not in {p.max_token for p in probes}:
        target = statistics.mode(p.max_token for p in probes)
    return Run(
        path=run_dir,
        model=best.get("model", {}).get("id") or ident.get("model") or "(model not recorded)",
        gpu=hw.get("gpu") or next((p.device for p in probes if p.device), "(device not recorded)"),
        num_gpus=int(hw.get("num_gpus") or max(1, len(ident.get("gpus") or []))),
        emulated=bool(hw.get("emulated_gpu_memory", ident.get("gpu_memory") is not None)),
        budget_gib=budget, limit_gib=limit, headroom=headroom,
        max_token=int(target), max_token_requested=requested,
        global_batch=search.get("global_batch", ident.get("global_batch")),
        space=str(search.get("space") or ident.get("space") or "not recorded").split(":")[0],
        status=str(info.get("status") or ("done" if cfg else "unknown")),
        wall_time_s=search.get("wall_time_s", info.get("wall_time_s")),
        command=" ".join(str(c) for c in info.get("command", [])),
        probes=probes, grid=grid_probes,
        walls=tuple(w for w in (_wall(b) for b in boundaries) if w is not None),
        winner=winner, best=best,
    )


def _resolve_run_dir(path: Path) -> RunDir:
    run = RunDir.existing(path)
    if not run.probes_csv.exists() and (path / "search" / "probes.csv").exists():
        return RunDir(path / "search")  # a benchmark folder (bench.log, grid.csv, search/) is accepted too
    return run


def _limits(best: dict, boundaries: list[dict], info: dict) -> tuple[float | None, float | None, float | None]:
    """(budget, limit, headroom) in GiB: best.yaml, else boundaries.csv, else run.json's identity."""
    hw = best.get("hardware", {})
    if hw.get("memory_budget_gib") is not None:
        return float(hw["memory_budget_gib"]), float(hw["limit_gib"]), float(hw["headroom"])
    ident = info.get("identity", {})
    headroom = ident.get("headroom")
    budget, limit = (number(boundaries[0], "budget_gib"), number(boundaries[0], "limit_gib")) if boundaries else (None, None)
    if budget and limit:
        return budget, limit, headroom if headroom is not None else 1 - limit / budget
    if ident.get("gpu_memory") and headroom is not None:
        budget = ident["gpu_memory"] / 2**30
        return budget, budget * (1 - max(headroom, MIN_MARGIN)), headroom
    return None, None, headroom


def _wall(row: dict[str, str]) -> Wall | None:
    # predicted: the memory model fitted to this strategy's probes; estimated: autofit estimate, unprobed.
    if row.get("first_fail_source") not in ("predicted", "estimated") or not str(row.get("first_fail_micro_batch", "")).isdigit():
        return None
    reason = row.get("first_fail_status", "") or "predicted over the limit"
    m = re.search(r"(?:predicted|estimated) ([0-9.]+) GiB", reason)
    return Wall(row["strategy"], int(row["max_token"]), int(row["first_fail_micro_batch"]), reason,
                float(m.group(1)) if m else None)


def _probes(rows: list[dict[str, str]], path: Path, source: str, limit: float | None) -> tuple[Probe, ...]:
    """Rows read (and checked) by autofit.rundir, typed for the report; memory in GiB."""
    out = []
    for line, r in enumerate(rows, start=2):
        try:
            out.append(_probe(r, source, limit))
        except ValueError as exc:
            raise RunDirError(f"{path}: line {line} is corrupted ({exc})") from None
    return tuple(out)


def _probe(r: dict[str, str], source: str, limit: float | None) -> Probe:
    if not str(r["max_token"]).isdigit():
        raise ValueError(f"max_token={r['max_token']!r} is not a whole number")
    gib = {k: number(r, k, 2**30) for k in ("peak_allocated", "peak_reserved", "nvml_peak", "host_peak")}
    peak = number(r, "peak_gib")
    if peak is None:  # older files: the same figure the search compares (device peak, else host RSS)
        peak = compared_peak(gib["nvml_peak"], gib["peak_reserved"], gib["host_peak"])
    fits = {"True": True, "False": False}.get(r.get("fits", ""))
    if fits is None:
        fits = peak is None or limit is None or peak <= limit
    status = r["status"]
    outcome = ("fits" if fits else "over") if status == "ok" else ("oom" if status == "oom" else "error")
    accum = number(r, "grad_accum")
    return Probe(
        source=source, trial=r.get("trial", ""), phase=r.get("phase") or source,
        strategy=r["strategy"], micro_batch=int(r["micro_batch"]), max_token=int(r["max_token"]),
        status=status, outcome=outcome, tokens_per_s=number(r, "tokens_per_s") if status == "ok" else None,
        peak_gib=peak if status == "ok" else None, allocated_gib=gib["peak_allocated"], reserved_gib=gib["peak_reserved"],
        nvml_gib=gib["nvml_peak"], host_gib=gib["host_peak"], grad_accum=None if accum is None else int(accum),
        step_s=number(r, "step_s"),
        error=r.get("error", "") or "", device=r.get("device_name", "") or "",
    )
