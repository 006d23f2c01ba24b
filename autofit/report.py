"""`autofit report RUN_DIR`: one self-contained report.html (figures embedded) plus the PNGs beside it.

Reads only what a search leaves behind (probes.csv, and boundaries.csv, best.yaml, run.json when
present), so it works on a finished, interrupted or copied run dir, and never imports the GPU stack.
matplotlib and yaml are imported inside functions so `autofit --help` stays fast.

Stages, top to bottom: load the run (validate once) -> aggregate probes into cells -> draw three
figures -> render the HTML -> write it all.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from autofit.errors import RunDirError, UsageError
from autofit.spec import Strategy, compared_peak
from autofit.writable import check_writable_dir, write_text

MIN_MARGIN = 0.02  # same floor on the headroom as the search (planner.MIN_MARGIN), for runs without best.yaml
PNG_NAMES = ("oom_map.png", "throughput.png", "memory_vs_speed.png")

# What happened at one (strategy, micro_batch, max_token), worst first: a failure at a shape outranks
# a success there (a repeat that OOMs means the shape is not safe), as in the search's boundaries.
OUTCOMES = {  # name: (legend label, short label for tables, fill colour)
    "oom": ("out of memory (OOM)", "OOM", "#f28b82"),
    "error": ("error / timeout / crash", "error", "#bdbdbd"),
    "over": ("ran, but peak over the headroom limit", "over limit", "#fbc26b"),
    "fits": ("fits (peak under the limit)", "fits", "#8fd19e"),
}
SEVERITY = {name: i for i, name in enumerate(reversed(OUTCOMES))}
WINNER_COLOUR = "#d4a017"
BUDGET_COLOUR = "#c62828"
LIMIT_COLOUR = "#ef6c00"


# -- data ---------------------------------------------------------------------------------------------
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
class Winner:
    strategy: str
    micro_batch: int
    max_token: int
    grad_accum: int | None
    tokens_per_s: float
    peak_gib: float


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
    run_dir = _resolve_run_dir(Path(run_dir))
    best = _read_yaml(run_dir / "best.yaml")
    info = _read_json(run_dir / "run.json")
    boundaries = _read_boundaries(run_dir / "boundaries.csv")
    budget, limit, headroom = _limits(best, boundaries, info)
    probes = _read_probe_file(run_dir / "probes.csv", "search", limit)
    if not probes:
        raise RunDirError(f"{run_dir / 'probes.csv'}: no probes recorded yet; nothing to report")
    grid_probes: tuple[Probe, ...] = ()
    if grid is not None:
        if not Path(grid).is_file():
            raise UsageError(f"--grid {grid}: no such file")
        grid_probes = _read_probe_file(Path(grid), "grid", limit)
    ident = info.get("identity", {})
    hw, search, cfg = best.get("hardware", {}), best.get("search", {}), best.get("config", {})
    winner = _winner(best)
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


def _resolve_run_dir(path: Path) -> Path:
    if not path.exists():
        raise RunDirError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory; give the run directory that holds probes.csv")
    if not (path / "probes.csv").exists() and (path / "search" / "probes.csv").exists():
        return path / "search"  # a benchmark folder (bench.log, grid.csv, search/) is accepted too
    if not (path / "probes.csv").exists():
        raise RunDirError(f"{path}: no probes.csv here; is this a run directory written by `autofit search`?")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted YAML ({str(exc).splitlines()[0]})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: not a best.yaml written by autofit")
    _check_best(doc, path)
    return doc


def _check_best(doc: dict[str, Any], path: Path) -> None:
    """Every best.yaml value the report reads has the right type; one error lists all that do not."""
    sections = ("model", "hardware", "search", "config", "measured", "training_args", "peft", "deepspeed")
    problems = [f"{s} is not a mapping" for s in sections if doc.get(s) is not None and not isinstance(doc[s], dict)]
    if not problems:
        numbers = [(s, k) for s, k in [("hardware", "num_gpus"), ("search", "global_batch"), ("search", "wall_time_s"),
                                       ("search", "max_token_requested")] if doc.get(s, {}).get(k) is not None]
        if doc.get("config", {}).get("strategy"):
            numbers += [("config", "micro_batch"), ("config", "max_token"), ("measured", "tokens_per_s"),
                        ("measured", "peak_gib")]
        if doc.get("hardware", {}).get("memory_budget_gib") is not None:
            numbers += [("hardware", "memory_budget_gib"), ("hardware", "limit_gib"), ("hardware", "headroom")]
        problems = [f"{s}.{k}={doc.get(s, {}).get(k)!r} is not a number" for s, k in numbers
                    if not _is_number(doc.get(s, {}).get(k))]
    if problems:
        raise RunDirError(f"{path}: corrupted ({'; '.join(problems)})")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted JSON ({exc})") from None
    ident = doc.get("identity", {}) if isinstance(doc, dict) else None
    if not isinstance(ident, dict) or not all(ident.get(k) is None or _is_number(ident[k])
                                              for k in ("gpu_memory", "headroom", "max_token", "global_batch")):
        raise RunDirError(f"{path}: not a run.json written by autofit (identity: {ident!r:.120})")
    if not isinstance(doc.get("command", []), list) or not (doc.get("wall_time_s") is None
                                                            or _is_number(doc["wall_time_s"])):
        raise RunDirError(f"{path}: not a run.json written by autofit (wall_time_s or command malformed)")
    return doc


def _read_boundaries(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted CSV ({exc})") from None
    for i, r in enumerate(rows, start=2):
        try:
            if not r.get("strategy") or not str(r.get("max_token", "")).isdigit():
                raise ValueError(f"strategy={r.get('strategy')!r}, max_token={r.get('max_token')!r}")
            for key in ("first_fail_micro_batch", "budget_gib", "limit_gib"):
                _field(r, key)
        except ValueError as exc:
            raise RunDirError(f"{path}: line {i} is corrupted ({exc})") from None
    return rows


def _limits(best: dict, boundaries: list[dict], info: dict) -> tuple[float | None, float | None, float | None]:
    """(budget, limit, headroom) in GiB: best.yaml, else boundaries.csv, else run.json's identity."""
    hw = best.get("hardware", {})
    if hw.get("memory_budget_gib") is not None:
        return float(hw["memory_budget_gib"]), float(hw["limit_gib"]), float(hw["headroom"])
    ident = info.get("identity", {})
    headroom = ident.get("headroom")
    budget, limit = (_field(boundaries[0], "budget_gib"), _field(boundaries[0], "limit_gib")) if boundaries else (None, None)
    if budget and limit:
        return budget, limit, headroom if headroom is not None else 1 - limit / budget
    if ident.get("gpu_memory") and headroom is not None:
        budget = ident["gpu_memory"] / 2**30
        return budget, budget * (1 - max(headroom, MIN_MARGIN)), headroom
    return None, None, headroom


def _winner(best: dict) -> Winner | None:
    cfg, measured = best.get("config") or {}, best.get("measured") or {}
    if not cfg.get("strategy"):
        return None
    return Winner(strategy=cfg["strategy"], micro_batch=int(cfg["micro_batch"]), max_token=int(cfg["max_token"]),
                  grad_accum=cfg.get("gradient_accumulation"), tokens_per_s=float(measured.get("tokens_per_s", 0)),
                  peak_gib=float(measured.get("peak_gib", 0)))


def _wall(row: dict[str, str]) -> Wall | None:
    # predicted: the memory model fitted to this strategy's probes; estimated: autofit estimate, unprobed.
    if row.get("first_fail_source") not in ("predicted", "estimated") or not str(row.get("first_fail_micro_batch", "")).isdigit():
        return None
    reason = row.get("first_fail_status", "") or "predicted over the limit"
    m = re.search(r"(?:predicted|estimated) ([0-9.]+) GiB", reason)
    return Wall(row["strategy"], int(row["max_token"]), int(row["first_fail_micro_batch"]), reason,
                float(m.group(1)) if m else None)


def _field(r: dict[str, str], key: str, scale: float = 1.0) -> float | None:
    """A numeric probes.csv field (None when empty); ValueError names the field."""
    v = r.get(key)
    if v in (None, ""):
        return None
    try:
        return float(v) / scale
    except ValueError:
        raise ValueError(f"{key}={v!r} is not a number") from None


def _read_probe_file(path: Path, source: str, limit: float | None) -> tuple[Probe, ...]:
    from autofit.results import read_probes

    if not path.exists():
        raise RunDirError(f"{path}: missing")
    rows = read_probes(path)  # validates columns, status and micro_batch; RunDirError otherwise
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
    gib = {k: _field(r, k, 2**30) for k in ("peak_allocated", "peak_reserved", "nvml_peak", "host_peak")}
    peak = _field(r, "peak_gib")
    if peak is None:  # older files: the same figure the search compares (device peak, else host RSS)
        peak = compared_peak(gib["nvml_peak"], gib["peak_reserved"], gib["host_peak"])
    fits = {"True": True, "False": False}.get(r.get("fits", ""))
    if fits is None:
        fits = peak is None or limit is None or peak <= limit
    status = r["status"]
    outcome = ("fits" if fits else "over") if status == "ok" else ("oom" if status == "oom" else "error")
    accum = _field(r, "grad_accum")
    return Probe(
        source=source, trial=r.get("trial", ""), phase=r.get("phase") or source,
        strategy=r["strategy"], micro_batch=int(r["micro_batch"]), max_token=int(r["max_token"]),
        status=status, outcome=outcome, tokens_per_s=_field(r, "tokens_per_s") if status == "ok" else None,
        peak_gib=peak if status == "ok" else None, allocated_gib=gib["peak_allocated"], reserved_gib=gib["peak_reserved"],
        nvml_gib=gib["nvml_peak"], host_gib=gib["host_peak"], grad_accum=None if accum is None else int(accum),
        step_s=_field(r, "step_s"),
        error=r.get("error", "") or "", device=r.get("device_name", "") or "",
    )


# -- aggregation ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """All probes of one (strategy, max_token, micro_batch): the worst outcome, the max peak, the mean speed."""

    outcome: str
    status: str
    peak_gib: float | None
    tokens_per_s: float | None
    n: int
    error: str


def cells(probes: tuple[Probe, ...]) -> dict[tuple[str, int, int], Cell]:
    groups: dict[tuple[str, int, int], list[Probe]] = {}
    for p in probes:
        groups.setdefault((p.strategy, p.max_token, p.micro_batch), []).append(p)
    out = {}
    for key, ps in groups.items():
        worst = max(ps, key=lambda p: SEVERITY[p.outcome])
        ok = [p for p in ps if p.status == "ok"]
        peaks = [p.peak_gib for p in ok if p.peak_gib is not None]
        speeds = [p.tokens_per_s for p in ok if p.tokens_per_s is not None]
        out[key] = Cell(worst.outcome, worst.status, max(peaks) if peaks else None,
                        statistics.fmean(speeds) if speeds else None, len(ps), worst.error)
    return out


@dataclass(frozen=True)
class StrategyRow:
    strategy: str
    max_token: int
    fit_mb: int | None
    fit_peak: float | None
    fail_mb: int | None
    fail_why: str
    fail_source: str           # measured | predicted | ""
    best_tps: float | None
    best_mb: int | None
    max_tried: int | None
    n_probes: int


def strategy_rows(run: Run) -> list[StrategyRow]:
    """Per strategy and max_token: largest fit, first failure (measured, else the predicted wall), best speed."""
    cs = cells(run.probes)
    walls = {(w.strategy, w.max_token): w for w in run.walls}
    keys = sorted({(k, t) for k, t, _ in cs} | set(walls), key=lambda kt: (run.strategies().index(kt[0]), kt[1]))
    rows = []
    for k, t in keys:
        mine = {mb: c for (kk, tt, mb), c in cs.items() if kk == k and tt == t}
        fits = [mb for mb, c in mine.items() if c.outcome == "fits"]
        fit_mb = max(fits) if fits else None
        fails = [mb for mb, c in mine.items() if c.outcome != "fits" and (fit_mb is None or mb > fit_mb)]
        best = max(fits, key=lambda mb: mine[mb].tokens_per_s or 0) if fits else None
        row = dict(strategy=k, max_token=t, fit_mb=fit_mb, fit_peak=mine[fit_mb].peak_gib if fit_mb else None,
                   best_tps=mine[best].tokens_per_s if best else None, best_mb=best, max_tried=max(mine, default=None),
                   n_probes=sum(c.n for c in mine.values()))
        if fails:
            mb = min(fails)
            rows.append(StrategyRow(**row, fail_mb=mb, fail_why=_why(mine[mb], run.limit_gib), fail_source="measured"))
        elif (k, t) in walls:
            w = walls[(k, t)]
            rows.append(StrategyRow(**row, fail_mb=w.micro_batch, fail_why=_why_predicted(w, run.limit_gib),
                                    fail_source="predicted"))
        else:
            rows.append(StrategyRow(**row, fail_mb=None, fail_why="", fail_source=""))
    return rows


def _why(c: Cell, limit: float | None) -> str:
    if c.outcome == "oom":
        return "ran out of memory (OOM)"
    if c.outcome == "over":
        lim = f" {limit:.2f} GiB" if limit is not None else ""
        return f"ran, but peaked at {_fmt(c.peak_gib)} GiB, over the{lim} headroom limit"
    first = c.error.strip().splitlines()[0][:90] if c.error.strip() else ""
    return f"{c.status}" + (f": {first}" if first else "")


def _why_predicted(w: Wall, limit: float | None) -> str:
    lim = f" {limit:.2f} GiB" if limit is not None else ""
    if w.predicted_gib is not None and w.reason.startswith("estimated"):
        return (f"not run: autofit estimate puts it at {w.predicted_gib:.1f} GiB, over the{lim} limit "
                "by more than the estimate's measured error")
    if w.predicted_gib is not None:
        return f"not run: the memory model predicts {w.predicted_gib:.1f} GiB, over the{lim} limit"
    return f"not run: {w.reason}"


PRECISION_WORDS = {"bf16-pure": "bf16 weights", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision",
                   "fp32": "fp32"}
QUANT_WORDS = {"nf4": "4-bit NF4 base weights (QLoRA)", "int8": "8-bit base weights (LLM.int8)"}


def describe_strategy(key: str) -> str:
    """'lora-r8/bf16-pure/nf4/ckpt/z0/fused' -> 'LoRA rank 8, bf16 weights, 4-bit NF4 base weights (QLoRA),
    gradient checkpointing, no ZeRO, fused cross-entropy': every dimension, read by Strategy.from_key."""
    try:
        s = Strategy.from_key(key)
    except ValueError:
        return key  # a key this version cannot read (a newer autofit's): shown as written
    m = s.method
    words = [{"lora": f"LoRA rank {m.lora_r}", "full": "full fine-tuning",
              "freeze": f"only the last {m.freeze_trainable_layers} blocks trained"}[m.kind], PRECISION_WORDS[s.precision]]
    if s.quant != "none":
        words.append(QUANT_WORDS[s.quant])
    words += ["gradient checkpointing" if s.grad_ckpt else "no checkpointing",
              "no ZeRO" if s.zero_stage == 0 else f"DeepSpeed ZeRO-{s.zero_stage}"]
    words += [w for w, on in (("optimizer state on CPU", s.offload_optimizer), ("weights on CPU", s.offload_params),
                              ("fused cross-entropy", s.loss == "fused"), ("8-bit AdamW", s.optim == "adamw8bit")) if on]
    return ", ".join(words)


# -- figures ----------------------------------------------------------------------------------------------
def _colours(run: Run) -> dict[str, str]:
    palette = ["#1f77b4", "#9467bd", "#2ca02c", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e"]
    return {k: palette[i % len(palette)] for i, k in enumerate(run.strategies())}


def _mb_axis(values: set[int]) -> list[int]:
    """Every micro-batch seen plus the powers of two between, so each column is one doubling."""
    lo, hi = min(values), max(values)
    pow2 = {2**i for i in range(0, hi.bit_length() + 1) if lo <= 2**i <= hi}
    return sorted(values | pow2)


def _budget_text(run: Run) -> str:
    if run.budget_gib is None:
        return "memory budget not recorded"
    emu = " (emulated cap)" if run.emulated else ""
    return (f"memory budget {run.budget_gib:.1f} GiB{emu}, {run.headroom:.0%} headroom kept free "
            f"\u2192 a config must peak under {run.limit_gib:.2f} GiB")


def fig_oom_map(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    search, grid = cells(run.probes), cells(run.grid)
    walls = {(w.strategy, w.max_token, w.micro_batch): w for w in run.walls}
    allkeys = set(search) | set(grid) | set(walls)
    mbs = _mb_axis({mb for _, _, mb in allkeys})
    tokens = sorted({t for _, t, _ in allkeys})
    strategies = run.strategies()
    fig = Figure(figsize=(11, 1.5 + len(strategies) * (0.62 * len(tokens) + 0.75)), layout="constrained", dpi=110)
    axes = fig.subplots(len(strategies), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, strategies):
        _draw_map_row(ax, run, k, search, grid, walls, mbs, tokens)
    axes[-1].set_xlabel("micro-batch per GPU (each column doubles it)")
    fig.suptitle(f"OOM map: where each strategy runs out of memory \u2014 {run.gpu}\n{_budget_text(run)}",
                 fontsize=11.5, fontweight="bold")
    seen = {c.outcome for c in [*search.values(), *grid.values()]}
    handles = [Patch(facecolor=c, edgecolor="black", label=label)
               for o, (label, _, c) in reversed(OUTCOMES.items()) if o in seen]
    if walls:
        handles.append(Patch(facecolor="white", edgecolor=BUDGET_COLOUR, hatch="///", label="predicted wall (not run)"))
    handles.append(Patch(facecolor="white", edgecolor="#cccccc", label="not probed"))
    if run.grid:
        handles += [Patch(facecolor="#dddddd", edgecolor="black", linewidth=2, label="probed by the search"),
                    Patch(facecolor="#dddddd", edgecolor="none", label="from the exhaustive grid (--grid) only")]
    if run.winner:
        handles.append(Patch(facecolor="white", edgecolor=WINNER_COLOUR, linewidth=3, label="\u2605 winner"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9, frameon=False)
    return fig


def _draw_map_row(ax, run, k, search, grid, walls, mbs, tokens) -> None:
    from matplotlib.patches import Rectangle

    w = run.winner
    for yi, t in enumerate(tokens):
        for xi, mb in enumerate(mbs):
            key = (k, t, mb)
            c, from_search = search.get(key) or grid.get(key), key in search
            wall = walls.get(key)
            box = dict(xy=(xi - 0.46, yi - 0.42), width=0.92, height=0.84)
            if c is None and wall is None:
                ax.add_patch(Rectangle(**box, facecolor="white", edgecolor="#dddddd", linewidth=0.8))
                if _beyond_wall(k, t, mb, search, grid, walls):
                    ax.text(xi, yi, "beyond the wall", ha="center", va="center", fontsize=8, color="#999999")
                continue
            if c is not None:
                ax.add_patch(Rectangle(**box, facecolor=OUTCOMES[c.outcome][2],
                                       edgecolor="black" if from_search or not run.grid else "none",
                                       linewidth=1.6 if from_search and run.grid else 0.8))
                text = _cell_text(c)
            else:
                text = "not run:\npredicted\n" + (f"{wall.predicted_gib:.1f} GiB" if wall.predicted_gib else "over limit")
            if wall is not None:
                ax.add_patch(Rectangle(**box, facecolor="none", edgecolor=BUDGET_COLOUR, hatch="///", linewidth=1.2))
                if c is not None:
                    text += "\n(as predicted)"
            if w and (w.strategy, w.max_token, w.micro_batch) == key:
                ax.add_patch(Rectangle(**box, facecolor="none", edgecolor=WINNER_COLOUR, linewidth=3.5))
                text = "\u2605 winner\n" + text
            ax.text(xi, yi, text, ha="center", va="center", fontsize=9, linespacing=1.1,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.8, linewidth=0) if wall else None)
    ax.set_xlim(-0.5, len(mbs) - 0.5)
    ax.set_ylim(-0.5, len(tokens) - 0.5)
    ax.set_xticks(range(len(mbs)), [str(m) for m in mbs])
    ax.set_yticks(range(len(tokens)), [str(t) for t in tokens])
    ax.tick_params(length=0, labelbottom=True)
    ax.set_ylabel("max_token")
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(k, loc="left", fontsize=10, fontweight="bold", pad=21)
    ax.annotate(describe_strategy(k), (0, 1), xycoords="axes fraction", xytext=(0, 4), textcoords="offset points",
                fontsize=9, color="#444444", va="bottom")


def _beyond_wall(k: str, t: int, mb: int, search: dict, grid: dict, walls: dict) -> bool:
    """A shape nobody ran, right of a smaller micro-batch that already failed: it would fail too."""
    failed = [m for (kk, tt, m), c in {**grid, **search}.items() if (kk, tt) == (k, t) and c.outcome != "fits"]
    failed += [m for (kk, tt, m) in walls if (kk, tt) == (k, t)]
    return any(m < mb for m in failed)


def _cell_text(c: Cell) -> str:
    if c.outcome in ("fits", "over"):
        peak = "ran" if c.peak_gib is None else f"{c.peak_gib:.1f} GiB"
        return peak if c.outcome == "fits" else f"{peak}\nover limit"
    return "OOM" if c.outcome == "oom" else c.status


def fig_throughput(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    fig = Figure(figsize=(11, 6), layout="constrained", dpi=110)
    ax = fig.add_subplot()
    colours, t = _colours(run), run.max_token
    search, grid = cells(run.probes), cells(run.grid)
    walls = {w.strategy: w for w in run.walls if w.max_token == t}
    xs_seen: set[int] = set()
    marks: set[str] = set()  # which marker kinds were drawn, so the legend explains only those
    handles = []
    for k in run.strategies():
        col = colours[k]
        if run.grid:
            xs_seen |= _grid_curve(ax, grid, k, t, col)
        mine = sorted((mb, c) for (kk, tt, mb), c in search.items() if kk == k and tt == t)
        if not mine and k not in walls:
            continue
        handles.append(Line2D([], [], color=col, marker="o", label=k))
        xs, wall_kind = _search_curve(ax, mine, walls.get(k), col)
        xs_seen |= xs
        marks |= {c.outcome for _, c in mine} | {wall_kind}
    if run.winner and run.winner.max_token == t:
        w = run.winner
        ax.scatter([w.micro_batch], [w.tokens_per_s], marker="*", s=420, color=WINNER_COLOUR, edgecolor="black", zorder=6)
        ax.annotate(f"winner: {w.tokens_per_s:,.0f} tokens/s", (w.micro_batch, w.tokens_per_s), xytext=(0, 14),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
    if not xs_seen:
        ax.text(0.5, 0.5, f"no probes at max_token {t}", transform=ax.transAxes, ha="center")
        return fig
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(xs_seen)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(x) for x in sorted(xs_seen)])
    ax.set_xlim(min(xs_seen) / 1.35, max(xs_seen) * 1.35)
    ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("micro-batch per GPU (log\u2082 scale)")
    ax.set_ylabel("training throughput (tokens / second, higher is better)")
    gb = f", global batch {run.global_batch}" if run.global_batch else ""
    ax.set_title(f"Throughput per strategy at max_token {t}{gb}", fontsize=12, fontweight="bold")
    keys = {"fits": Line2D([], [], ls="none", marker="o", color="grey", label="fits under the limit"),
            "over": Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="grey",
                           label="ran, but over the headroom limit"),
            "measured": Line2D([], [], ls=":", marker="X", color="grey", markersize=9,
                               label="first failure (OOM/error), measured"),
            "predicted": Line2D([], [], ls=":", marker="X", markerfacecolor="white", color="grey", markersize=9,
                                label="wall predicted by the memory model (not run)")}
    handles += [h for kind, h in keys.items() if kind in marks]
    if run.grid:
        handles.append(Line2D([], [], ls="--", color="grey", alpha=0.6, label="exhaustive grid (--grid)"))
    if run.winner:
        handles.append(Line2D([], [], ls="none", marker="*", markersize=14, color=WINNER_COLOUR, markeredgecolor="black",
                              label="winner"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig


def _search_curve(ax, mine: list[tuple[int, Cell]], wall: Wall | None, col: str) -> tuple[set[int], str | None]:
    """One strategy's line, ended by its wall (measured, else predicted) drawn level with the last point."""
    ran = [(mb, c) for mb, c in mine if c.tokens_per_s is not None and c.outcome in ("fits", "over")]
    if ran:
        ax.plot([mb for mb, _ in ran], [c.tokens_per_s for _, c in ran], color=col, lw=2, zorder=3)
        for mb, c in ran:
            ax.scatter([mb], [c.tokens_per_s], s=55, zorder=4, edgecolor=col, linewidth=1.8,
                       facecolor=col if c.outcome == "fits" else "white")
    fails = [(mb, c) for mb, c in mine if c.outcome in ("oom", "error") and (not ran or mb > ran[-1][0])]
    y = ran[-1][1].tokens_per_s if ran else 0.0
    x0 = ran[-1][0] if ran else None
    if fails:
        mb, c = fails[0]
        label, hollow = ("OOM" if c.outcome == "oom" else c.status), False
    elif wall is not None:
        mb, label, hollow = wall.micro_batch, "predicted\nwall", True
    else:
        return {mb for mb, _ in mine}, None
    if x0 is not None:
        ax.plot([x0, mb], [y, y], ls=":", color=col, lw=1.5, zorder=2)
    ax.scatter([mb], [y], marker="X", s=130, zorder=5, edgecolor=col, linewidth=1.8, facecolor="white" if hollow else col,
               clip_on=False)
    if ran:
        ax.annotate(label, (mb, y), xytext=(0, -11), textcoords="offset points", ha="center", va="top", fontsize=8,
                    color=col)
    else:  # nothing ran: the wall is at the first micro-batch, drawn on the axis
        ax.annotate(f"{label} already at micro-batch {mb}", (mb, y), xytext=(10, 4), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8, color=col)
    return {m for m, _ in mine} | {mb}, "predicted" if hollow else "measured"


def _grid_curve(ax, grid: dict, k: str, t: int, col: str) -> set[int]:
    mine = sorted((mb, c) for (kk, tt, mb), c in grid.items() if kk == k and tt == t)
    ran = [(mb, c.tokens_per_s) for mb, c in mine if c.tokens_per_s is not None]
    if ran:
        ax.plot(*zip(*ran), ls="--", color=col, alpha=0.55, lw=1.2, marker=".", zorder=1)
    oom = [mb for mb, c in mine if c.outcome in ("oom", "error")]
    if oom and ran:
        ax.scatter([min(oom)], [ran[-1][1]], marker="x", color=col, alpha=0.55, s=40, zorder=1)
    return {mb for mb, _ in mine}


def fig_memory_speed(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 6.2), layout="constrained", dpi=110)
    ax = fig.add_subplot()
    colours = _colours(run)
    ok = [p for p in run.probes if p.status == "ok" and p.peak_gib is not None and p.tokens_per_s is not None]
    if not ok:
        ax.text(0.5, 0.5, "no probe ran to completion", transform=ax.transAxes, ha="center")
        return fig
    grid_ok = [p for p in run.grid if p.status == "ok" and p.max_token == run.max_token
               and p.peak_gib is not None and p.tokens_per_s is not None]
    for p in grid_ok:
        ax.scatter([p.peak_gib], [p.tokens_per_s], s=14, color=colours[p.strategy], alpha=0.35, zorder=1)
    for p in ok:
        ax.scatter([p.peak_gib], [p.tokens_per_s], s=60, zorder=3, edgecolor=colours[p.strategy], linewidth=1.8,
                   facecolor=colours[p.strategy] if p.outcome == "fits" else "white")
    w = run.winner
    labelled: set[tuple] = {(w.strategy, w.micro_batch, w.max_token)} if w else set()
    for p in ok:  # one label per cell: repeats of a shape sit on top of each other
        key = (p.strategy, p.micro_batch, p.max_token)
        if key not in labelled:
            labelled.add(key)
            tag = f"mb {p.micro_batch}" + (f", T {p.max_token}" if p.max_token != run.max_token else "")
            ax.annotate(tag, (p.peak_gib, p.tokens_per_s), xytext=(7, -3), textcoords="offset points", fontsize=8,
                        color="#333333", va="top")
    xmax = max([p.peak_gib for p in ok + grid_ok] + [run.budget_gib or 0]) * 1.08
    handles = [Line2D([], [], ls="none", marker="o", color=colours[k], label=k)
               for k in run.strategies() if any(p.strategy == k for p in ok)]
    if any(p.outcome == "over" for p in ok):
        handles += [Line2D([], [], ls="none", marker="o", color="grey", label="fits under the limit"),
                    Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="grey",
                           label="ran, but over the headroom limit")]
    handles += _budget_lines(ax, run, xmax)
    if grid_ok:
        handles.append(Line2D([], [], ls="none", marker="o", markersize=4, color="grey", alpha=0.4,
                              label=f"exhaustive grid probes at max_token {run.max_token}"))
    ymax = max(p.tokens_per_s for p in ok + grid_ok) * 1.15
    if w:
        _mark_winner(ax, w)
        handles.append(Line2D([], [], ls="none", marker="*", markersize=14, color=WINNER_COLOUR, markeredgecolor="black",
                              label=f"winner: {w.strategy}, micro-batch {w.micro_batch}\n"
                                    f"{w.tokens_per_s:,.0f} tokens/s at {w.peak_gib:.2f} GiB"))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("peak memory per GPU (GiB; device-level peak, what the budget is compared with)")
    ax.set_ylabel("training throughput (tokens / second)")
    ax.set_title(f"Every probe that ran: peak memory against speed ({run.gpu})", fontsize=12, fontweight="bold")
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig


def _budget_lines(ax, run: Run, xmax: float) -> list:
    """The limit (dashed) and the budget (solid) as vertical lines, the zones past them shaded."""
    from matplotlib.lines import Line2D

    if run.budget_gib is None:
        return []
    ax.axvline(run.budget_gib, color=BUDGET_COLOUR, lw=2)
    ax.axvline(run.limit_gib, color=LIMIT_COLOUR, lw=2, ls="--")
    ax.axvspan(run.limit_gib, run.budget_gib, color=LIMIT_COLOUR, alpha=0.12, lw=0)
    ax.axvspan(run.budget_gib, xmax, color=BUDGET_COLOUR, alpha=0.08, lw=0)
    return [Line2D([], [], color=BUDGET_COLOUR, lw=2, label=f"memory budget {run.budget_gib:.1f} GiB (OOM beyond)"),
            Line2D([], [], color=LIMIT_COLOUR, lw=2, ls="--",
                   label=f"headroom limit {run.limit_gib:.2f} GiB ({run.headroom:.0%} kept free)")]


def _mark_winner(ax, w: Winner) -> None:
    # Above the star is free: a faster point there would have fit and won instead (details in the legend).
    ax.scatter([w.peak_gib], [w.tokens_per_s], marker="*", s=480, color=WINNER_COLOUR, edgecolor="black", zorder=6)
    ax.annotate("winner", (w.peak_gib, w.tokens_per_s), xytext=(0, 13), textcoords="offset points", ha="center",
                va="bottom", fontsize=9, fontweight="bold", zorder=7)


def render_figures(run: Run) -> dict[str, bytes]:
    """PNG bytes by file name."""
    out = {}
    for name, make in zip(PNG_NAMES, (fig_oom_map, fig_throughput, fig_memory_speed)):
        buf = io.BytesIO()
        make(run).savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


# -- HTML -----------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d1d1f;
 max-width:1260px;margin:0 auto;padding:24px 28px 60px;line-height:1.45;font-size:15px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 18px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.facts dt{color:#555}dl.facts dd{margin:0}
.winner{background:#f1f8e9;border-left:6px solid #7cb342;padding:12px 18px;margin:18px 0;border-radius:4px}
.winner.none{background:#fff3e0;border-color:#ef6c00}
.winner p{margin:4px 0 10px;font-size:16px}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:10px 14px;overflow-x:auto;font-size:13px;
 line-height:1.35}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.win td{background:#fff8e1}
.nw{white-space:nowrap}td.strat{min-width:17em}.scroll{overflow-x:auto}
.tag{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;white-space:nowrap}
figure{margin:14px 0 26px}figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:14px;margin-top:4px}
.small{color:#666;font-size:13px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""

E = html.escape


def _code(key: str) -> str:
    """A strategy name that line-wraps only after a slash, never inside 'bf16-pure'."""
    parts = key.split("/")
    spans = [f'<span class="nw">{E(p)}{"/" if i < len(parts) - 1 else ""}</span>' for i, p in enumerate(parts)]
    return f"<code>{'<wbr>'.join(spans)}</code>"


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "" if x is None else format(x, spec)


def _tag(p: Probe) -> str:
    long, short, colour = OUTCOMES[p.outcome]
    short = p.status if p.outcome == "error" else short  # error | timeout | crash
    return f'<span class="tag" style="background:{colour}" title="{E(long)}">{E(short)}</span>'


def render_html(run: Run, images: dict[str, bytes]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autofit report: {E(run.model)} on {E(run.gpu)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>autofit report: {E(run.model)} on {E(run.gpu)}</h1>",
        f'<p class="sub">The fastest fine-tuning configuration that fits in memory, found by short real training '
        f"probes. Run directory <code>{E(str(run.path))}</code>; report written "
        f"{E(time.strftime('%Y-%m-%d %H:%M'))}.</p>",
        _html_facts(run), _html_winner(run),
        "<h2>Per strategy: where it fits, where it fails</h2>", _html_summary(run),
        "<h2>Figures</h2>", _html_figures(run, images),
        "<h2>How to read this</h2>", _html_glossary(),
        "<h2>Every probe</h2>",
        '<p class="small">One row per probe, in the order they ran; highlighted rows are the winner\'s measurements. '
        "Memory in GiB: <i>peak</i> is what the limit is compared with; <i>allocated</i>/<i>reserved</i> are PyTorch's "
        "allocator peaks, <i>NVML</i> the whole device, <i>host RAM</i> the process's CPU memory (offload lives there). "
        "Hover an error to read all of it.</p>",
        _html_probes(run.probes, run),
    ]
    if run.grid:
        parts += ["<details><summary>Exhaustive grid rows (--grid)</summary>", _html_probes(run.grid, run), "</details>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_facts(run: Run) -> str:
    gpus = f"{run.num_gpus} \u00d7 {run.gpu}" if run.num_gpus > 1 else run.gpu
    if run.emulated and run.budget_gib is not None:
        gpus += f", memory capped at {run.budget_gib:.1f} GiB (--gpu-memory) to emulate a smaller card"
    t = str(run.max_token_requested or run.max_token)
    if run.max_token_requested and run.max_token != run.max_token_requested:
        t += f" requested; the winner runs at {run.max_token} (nothing fit at the request)"
    facts = [
        ("Model", f"<code>{E(run.model)}</code>"),
        ("Hardware", E(gpus)),
        ("Memory", E(_budget_text(run))),
        ("Sequence length (max_token)", E(t)),
        ("Global batch", f"{run.global_batch} samples per optimizer step" if run.global_batch else "not recorded"),
        ("Search space", f"<code>{E(run.space)}</code>"),
        ("Probes", f"{len(run.probes)} in probes.csv over {len({p.strategy for p in run.probes})} strategies"
                   + (f", {run.wall_time_s:.0f} s of search" if run.wall_time_s else "")
                   + (f"; plus {len(run.grid)} exhaustive-grid rows" if run.grid else "")),
        ("Run status", E(run.status)),
    ]
    if run.command:
        facts.append(("Command", f'<code class="small">{E(run.command)}</code>'))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _html_winner(run: Run) -> str:
    w = run.winner
    if w is None:
        fitting = [p for p in run.probes if p.outcome == "fits" and p.tokens_per_s]
        best = max(fitting, key=lambda p: p.tokens_per_s) if fitting else None
        so_far = (f" The fastest probe that fit so far: <code>{E(best.strategy)}</code> at micro-batch "
                  f"{best.micro_batch}, {best.tokens_per_s:,.0f} tokens/s." if best else "")
        return (f'<div class="winner none"><p><b>No winner recorded</b> (no best.yaml): the search found no configuration '
                f"that fits under the limit, or has not finished.{so_far}</p></div>")
    accum = f" \u00d7 gradient accumulation {w.grad_accum}" if w.grad_accum else ""
    lim = f" (limit {run.limit_gib:.2f} GiB)" if run.limit_gib is not None else ""
    sentence = (f"<b>Winner:</b> <code>{E(w.strategy)}</code> ({E(describe_strategy(w.strategy))}) at micro-batch "
                f"{w.micro_batch}{accum}, max_token {w.max_token}: measured <b>{w.tokens_per_s:,.0f} tokens/s</b> "
                f"with a peak of <b>{w.peak_gib:.2f} GiB</b>{lim}.")
    return (f'<div class="winner"><p>{sentence}</p><div class="small">Paste-ready settings (from best.yaml; '
            f"every number was measured):</div><pre><code>{E(_paste_ready(run))}</code></pre></div>")


def _paste_ready(run: Run) -> str:
    """best.yaml's model dtype, LoRA and TrainingArguments blocks as Python one can paste."""
    best, model = run.best, run.best.get("model") or {}
    imports = ["from transformers import AutoModelForCausalLM, TrainingArguments"]
    body = []
    if model.get("torch_dtype"):
        imports.insert(0, "import torch")
        body.append(f"model = AutoModelForCausalLM.from_pretrained({model.get('id', run.model)!r}, "
                    f"torch_dtype=torch.{model['torch_dtype']}, "
                    f"attn_implementation={model.get('attn_implementation', 'sdpa')!r})")
    if best.get("peft"):
        imports.append("from peft import LoraConfig, get_peft_model")
        body.append(_call("model = get_peft_model(model, LoraConfig", best["peft"], close="))"))
    body.append(_call("args = TrainingArguments", best.get("training_args") or {}))
    if best.get("deepspeed"):
        body.append("# ds_config.json: the deepspeed block of best.yaml, written next to it by the search")
    body.append(f"# every sample padded/truncated to max_token = {run.winner.max_token} tokens")
    return "\n".join(imports + [""] + body)


def _call(head: str, kwargs: dict[str, Any], close: str = ")") -> str:
    body = "".join(f"\n    {k}={v!r}," for k, v in kwargs.items())
    return f"{head}({body}\n{close}"


def _html_summary(run: Run) -> str:
    head = ("<tr><th>strategy</th><th>what it means</th><th>max_token</th><th>largest micro-batch that fits (peak)</th>"
            "<th>first micro-batch that fails</th><th>why</th><th>best tokens/s that fits</th><th>probes</th></tr>")
    rows = []
    w = run.winner
    for r in strategy_rows(run):
        win = w is not None and (w.strategy, w.max_token) == (r.strategy, r.max_token)
        fit = f"{r.fit_mb} ({r.fit_peak:.2f} GiB)" if r.fit_mb else "none"
        fail = "\u2013" if r.fail_mb is None else f"{r.fail_mb}" + (" (predicted)" if r.fail_source == "predicted" else "")
        why = r.fail_why or (f"no failure up to micro-batch {r.max_tried}, the largest tried" if r.fit_mb else "")
        best = f"{r.best_tps:,.0f} (micro-batch {r.best_mb})" if r.best_tps else "\u2013"
        star = " \u2605 winner" if win else ""
        rows.append(f'<tr class="{"win" if win else ""}"><td class=strat>{_code(r.strategy)}{star}</td>'
                    f"<td>{E(describe_strategy(r.strategy))}</td><td class=n>{r.max_token}</td><td class=n>{fit}</td>"
                    f"<td class=n>{E(fail)}</td><td>{E(why)}</td><td class=n>{best}</td>"
                    f"<td class=n>{r.n_probes}</td></tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _html_figures(run: Run, images: dict[str, bytes]) -> str:
    captions = {
        "oom_map.png": ("OOM map. One panel per strategy; each cell is one shape (micro-batch \u00d7 max_token) "
                        "coloured by what happened, with its measured peak memory. Hatched cells are walls the "
                        "search did not need to run: its memory model predicted them over the limit. Empty cells "
                        "were skipped." + (" Cells with a thick outline were probed by the search; the others come "
                                           "from the exhaustive grid given with --grid." if run.grid else "")),
        "throughput.png": (f"Throughput at max_token {run.max_token}: how speed grows with the micro-batch for each "
                           "strategy, and where each line hits its memory wall (\u2716). Bigger micro-batches are "
                           "faster until the GPU is saturated; the winner is the fastest point that fits."),
        "memory_vs_speed.png": ("Every probe that ran, peak memory against speed. Points right of the dashed line "
                                "are over the headroom limit and cannot win even though they ran; beyond the solid "
                                "line a run goes out of memory. The winner is the highest point left of the dashed line. "
                                "Labels give each point's micro-batch (mb); hollow points ran but peaked over the limit."),
    }
    out = []
    for name in PNG_NAMES:
        data = base64.b64encode(images[name]).decode("ascii")
        out.append(f'<figure><img alt="{E(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{E(captions[name])} <span class=small>({E(name)})</span></figcaption></figure>")
    return "\n".join(out)


def _html_glossary() -> str:
    items = [
        "<b>micro-batch</b>: samples per forward/backward pass on one GPU. Gradient accumulation repeats it until the "
        "global batch is reached, so the training maths is the same for every micro-batch; only speed and memory change.",
        "<b>max_token</b>: the sequence length every sample is padded or truncated to. Activation memory grows with "
        "micro-batch \u00d7 max_token.",
        "<b>budget / headroom</b>: the memory a run may use, and the fraction of it kept free so that a config that "
        "peaks close to the edge (allocator noise, a longer batch) never wins.",
        "<b>strategy names</b> read left to right: method (<code>lora-r8</code> = LoRA rank 8), precision "
        "(<code>bf16-pure</code> = weights held in bf16), <code>ckpt</code>/<code>nockpt</code> = gradient "
        "checkpointing on/off (less memory, ~30% more compute), <code>z0</code>..<code>z3</code> = DeepSpeed ZeRO "
        "stage, <code>offopt</code>/<code>offparam</code> = optimizer state / weights offloaded to CPU RAM.",
        "<b>peak</b>: the device-level peak (NVML, which counts the CUDA context too), or the allocator's reserved "
        "peak if larger; this is what is compared with the limit.",
        "<b>predicted</b> walls come from the search's memory model (peak = fixed + per-token \u00d7 micro-batch \u00d7 "
        "max_token, fitted to the measured peaks); a shape predicted well over the limit is not run.",
    ]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _html_probes(probes: tuple[Probe, ...], run: Run) -> str:
    head = ("<tr><th>#</th><th>phase</th><th>strategy</th><th>micro-batch</th><th>max_token</th><th>outcome</th>"
            "<th>tokens/s</th><th>peak GiB</th><th>allocated GiB</th><th>reserved GiB</th><th>NVML GiB</th>"
            "<th>host RAM GiB</th><th>grad accum</th><th>step s</th><th>error</th></tr>")
    w = run.winner
    rows = []
    for p in probes:
        win = (w is not None and p.source == "search" and p.status == "ok"
               and (p.strategy, p.micro_batch, p.max_token) == (w.strategy, w.micro_batch, w.max_token))
        err = p.error.strip().splitlines()[0] if p.error.strip() else ""
        short = err if len(err) <= 70 else err[:68] + "\u2026"
        rows.append(
            f'<tr class="{"win" if win else ""}"><td class=n>{E(p.trial)}</td><td>{E(p.phase)}</td>'
            f"<td class=strat>{_code(p.strategy)}</td><td class=n>{p.micro_batch}</td><td class=n>{p.max_token}</td>"
            f"<td>{_tag(p)}</td><td class=n>{_fmt(p.tokens_per_s, ',.0f')}</td><td class=n>{_fmt(p.peak_gib)}</td>"
            f"<td class=n>{_fmt(p.allocated_gib)}</td><td class=n>{_fmt(p.reserved_gib)}</td>"
            f"<td class=n>{_fmt(p.nvml_gib)}</td><td class=n>{_fmt(p.host_gib)}</td>"
            f"<td class=n>{'' if p.grad_accum is None else p.grad_accum}</td><td class=n>{_fmt(p.step_s, '.2f')}</td>"
            f'<td class=small title="{E(p.error)}">{E(short)}</td></tr>')
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


# -- entry points -------------------------------------------------------------------------------------------
def write_report(run_dir: Path, out: Path | None = None, grid: Path | None = None) -> Path:
    """Write report.html (self-contained: figures embedded, CSS inline) and the PNGs into `out`
    (default RUN_DIR/report). Returns the HTML path."""
    run = load_run(Path(run_dir), None if grid is None else Path(grid))
    out = Path(out) if out is not None else run.path / "report"
    check_writable_dir(out, create=True)  # before the figures are drawn
    images = render_figures(run)
    html = render_html(run, images)
    try:
        for name, data in images.items():
            (out / name).write_bytes(data)
    except OSError as exc:
        raise RunDirError(f"cannot write in {out}: {exc.strerror}") from None
    page = out / "report.html"
    write_text(page, html)
    return page


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.html and the PNGs (default: RUN_DIR/report).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An exhaustive-grid CSV (probes.csv columns, e.g. a benchmark's grid.csv) to add to the OOM map.")
def report_cmd(run_dir: Path, out: Path | None, grid: Path | None) -> None:
    """Write RUN_DIR's search as one self-contained report.html (figures embedded) plus the PNGs."""
    from autofit.cli import handles_errors  # at call time: cli imports this module to register the command

    page = handles_errors(write_report)(run_dir, out, grid)
    click.echo(f"wrote {page} (open it in any browser; it needs no network) and {', '.join(PNG_NAMES)} beside it")
