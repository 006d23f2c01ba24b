"""The issue-7 table: autofit's search, the baselines users have today, and the exhaustive grid (the
oracle), per scenario, from committed result folders. Reads only CSV/JSON (no torch).

A scenario folder holds summary.json and grid.csv from benchmarks/search_vs_grid.py, the search's run
dir in search/ (probes.csv, optionally verify.json from `autofit verify`), and optionally
baselines.json from benchmarks/baselines.py. Rows:
- autofit: the search's wall time and probes; its winner's tokens/s as the grid measured that cell;
  the error of its memory model (autofit/search/memmodel.py fitted per strategy to the search's ok
  probes) against the grid's measured peaks on every cell the search did not probe; verify's verdict.
- each baseline: its own wall time and probes (or attempts); its chosen cell's tokens/s as the grid
  measured it, or, for a cell the grid does not have, the baseline's own measurement (marked *).
- oracle: the grid's wall time and probes and its best fitting cell at the requested max_token.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from autofit.search import memmodel
from benchmarks.common import committed
from autofit.spec import compared_peak

def _first_sentence(reason: str) -> str:
    """A failure reason short enough for a table cell (baselines.json keeps the whole message)."""
    end = reason.find(". ", 40)
    return reason if end < 0 else reason[:end + 1]


def verified_elsewhere(results: Path, s: dict) -> Path | None:
    """A committed `autofit verify` of this very winner: same model, max_token, strategy, micro-batch
    and memory budget (a verify run folder holds best.yaml + verify.json). One on the GPU model the
    search ran on comes first; else one on another GPU of this search's best.yaml (verify.json's
    search_device), when no GPU of the search's model could be had: the memory verdict holds across GPUs
    under the same budget, the tokens/s ratio does not."""
    import yaml

    srch = s["search"]
    found: list[tuple[bool, Path]] = []
    for v in committed(results, "*/verify.json"):
        got = json.loads(v.read_text())
        if (got.get("strategy"), got.get("micro_batch"), got.get("max_token")) != (
                srch["winner"], srch["winner_micro_batch"], s["max_token"]):
            continue
        if s.get("gpu") not in (got.get("device"), got.get("search_device")):
            continue
        best_path = v.parent / "best.yaml"
        best = yaml.safe_load(best_path.read_text()) if best_path.exists() else {}
        if (best.get("model") or {}).get("id") == s["model"] and \
                abs(float((best.get("hardware") or {}).get("memory_budget_gib", -1)) - float(s["budget_gib"])) < 0.1:
            found.append((got.get("device") != s.get("gpu"), v.parent))
    return min(found)[1] if found else None


VERDICT = {None: "-", True: "yes", False: "no"}  # the headline's verify column: verified or not


def _verdict(v: dict) -> str:
    """verify's verdict; a failure names its side: a peak over the probe's eats the headroom, one under it
    means the probe over-measured (the run fits, with more room than the search assumed)."""
    if v.get("passed"):
        return VERDICT[True]
    if v.get("peak_gib", 0) > v.get("budget_gib", float("inf")):
        return "no (over budget)"
    return f"no (peak {v.get('peak_diff', 0):+.1%} vs probe)"


def _autotune_so_far(work: Path, max_token: int) -> dict | None:
    """best_so_far for a committed tuner run whose baselines.json predates that field: read from its own
    committed results dir, with the strategy it tuned from its plan.json."""
    from autofit.spec import strategy_from_dict
    from benchmarks.baselines import autotune_best_so_far

    plan = work / "plan.json"
    if not plan.exists():
        return None
    return autotune_best_so_far(work / "autotuning_results", max_token, strategy_from_dict(json.loads(plan.read_text())["strategy"]))


BASELINE_LABELS = {"hand": "hand-tuning (DeepSpeed tutorial)", "hf-auto": "HF auto_find_batch_size (from 64)",
                   "hf-auto-ckpt": "HF auto_find_batch_size (from 64), checkpointing",
                   "seed": "seed recipe (mb 1 + ckpt, then ZeRO-3 offload)", "hf-double": "HF defaults, doubling",
                   "hf-double-ckpt": "HF defaults, doubling, checkpointing", "llamafactory": "LLaMA-Factory's defaults",
                   "ds-autotune": "DeepSpeed autotuner",
                   "ds-autotune-told": "DeepSpeed autotuner, told LoRA's real footprint"}


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _peak(row: dict[str, str]) -> float | None:
    p = compared_peak(_num(row.get("nvml_peak")), _num(row.get("peak_reserved")), _num(row.get("host_peak")))
    if p is None and row.get("peak_gib"):
        p = float(row["peak_gib"]) * 2**30
    return p


def _cell(row: dict[str, str]) -> tuple[str, int, int]:
    return row["strategy"], int(row["micro_batch"]), int(row["max_token"])


def memory_errors(search_rows: list[dict[str, str]], grid_rows: list[dict[str, str]]) -> tuple[list[float], int]:
    """Absolute % errors of the search's per-strategy memory models on the grid's measured cells the
    search never probed; and how many such cells there were (some strategies get no model)."""
    points: dict[str, list[tuple[int, int, float]]] = {}
    for r in search_rows:
        p = _peak(r)
        if r["status"] == "ok" and p:
            points.setdefault(r["strategy"], []).append((int(r["micro_batch"]), int(r["max_token"]), p))
    models = {k: memmodel.fit(v) for k, v in points.items()}
    probed = {_cell(r) for r in search_rows}
    errors, unprobed = [], 0
    for r in grid_rows:
        meas = _peak(r)
        if r["status"] != "ok" or not meas or _cell(r) in probed:
            continue
        unprobed += 1
        model = models.get(r["strategy"])
        if model is not None:
            errors.append(abs(model.predict(int(r["micro_batch"]), int(r["max_token"])) - meas) / meas * 100)
    return errors, unprobed


def _short_gpu(name: str | None) -> str:
    return (name or "?").replace("NVIDIA ", "").replace(" HBM3", "")


def _wall(w: float | None, gpus: int, at_least: bool = False) -> tuple[str, str]:
    if w is None:
        return "-", "-"
    ge = "≥ " if at_least else ""
    return f"{ge}{w:.0f} s", f"{ge}{w * gpus:.0f}"


@dataclass
class Method:
    """One row of a scenario: autofit, a baseline or the grid, as the table shows it."""
    label: str
    wall: tuple[str, str]          # wall time, GPU-seconds
    probes: object
    choice: str                    # markdown: the chosen cell, or why there is none
    vs_oracle: str                 # its tokens/s over the grid's best ("-": unknown; "*": own measurement)
    memory: str = "-"
    verified: str = "-"            # verify's verdict, a failure's side named (_verdict)
    verified_in: str | None = None  # the committed verify folder it comes from, when not the scenario's own
    verified_on: str | None = None  # the GPU verify ran on, when not the scenario's (short name)
    passed: bool | None = None     # verify's pass or fail; None: not verified
    failed: bool = False
    over_headroom: bool = False    # the chosen cell peaks above the headroom line
    tainted: bool = False          # measured beside another job's process (the folder's tainted.yaml)


@dataclass
class Facts:
    folder: Path
    model: str
    max_token: int
    space: str
    gpus: int
    gpu: str
    cap: str
    full: bool                      # the winner fine-tunes every weight (else LoRA)
    methods: dict[str, Method]      # "autofit", each baseline's name, "grid"

    @property
    def label(self) -> str:
        return (f"{self.model}, T={self.max_token}, space `{self.space}`, {self.gpus} x {self.gpu}{self.cap} "
                f"[{self.folder.name}](results/{self.folder.name})")


def tainted(folder: Path) -> dict:
    """The folder's tainted.yaml: steps whose figures are not evidence (`baselines`: names) and why."""
    p = folder / "tainted.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def scenario_facts(folder: Path) -> Facts:
    """Every figure of one scenario folder, as the tables show them."""
    s = json.loads((folder / "summary.json").read_text())
    search_rows = _rows(folder / "search" / "probes.csv")
    grid_rows = [r for r in _rows(folder / "grid.csv") if r.get("phase", "grid") == "grid"]
    base = json.loads((folder / "baselines.json").read_text()) if (folder / "baselines.json").exists() else {}
    gpus = num_gpus(folder, base)
    T = s["max_token"]
    grid = s.get("grid") or {}
    best = (grid.get("best") or {}).get("tokens_per_s")
    by_cell = {_cell(r): r for r in grid_rows}

    def frac(tps: float | None, own: bool = False) -> str:
        if tps is None or not best:
            return "-"
        return f"{tps / best:.1%}{'*' if own else ''}"

    def as_grid_measured(strategy: str, mb: int, own: float | None) -> str:
        """A cell's tokens/s as the grid measured it; its own measurement (marked) where the grid has none."""
        cell = by_cell.get((strategy, int(mb), T))
        from_grid = cell is not None and cell["status"] == "ok" and cell.get("tokens_per_s")
        return frac(float(cell["tokens_per_s"]) if from_grid else own, own=not from_grid)

    cap = f", {s['budget_gib']:.0f} GiB cap" if base.get("gpu_memory") or "24GiB" in folder.name else ""
    methods: dict[str, Method] = {}

    srch = s["search"]
    verify_path = next((p for p in (folder / "search" / "verify.json", folder / "verify.json") if p.exists()), None)
    verified_in = None
    if verify_path is None and srch.get("winner"):
        other = verified_elsewhere(folder.parent, s)
        if other is not None:
            verify_path, verified_in = other / "verify.json", other.name
    v = json.loads(verify_path.read_text()) if verify_path else None
    ran_on = (v or {}).get("device")
    verified_on = _short_gpu(ran_on) if ran_on and s.get("gpu") and ran_on != s["gpu"] else None
    errs, unprobed = memory_errors(search_rows, grid_rows) if search_rows and grid_rows else ([], 0)
    mem = (f"{statistics.median(errs):.1f}% / {max(errs):.1f}% ({len(errs)} of {unprobed})" if errs
           else "-")
    in_grid = grid.get("search_winner_tokens_per_s_in_grid")
    winner = f"`{srch['winner']}` ({srch['winner_micro_batch']})" if srch.get("winner") else "none"
    methods["autofit"] = Method("autofit search", _wall(srch["wall_s"], gpus), srch["probes"], winner,
                                frac(in_grid if in_grid else srch.get("winner_tokens_per_s"), own=not in_grid), mem,
                                _verdict(v) if v else "-", verified_in, verified_on, bool(v.get("passed")) if v else None)

    taint = tainted(folder)
    for name, b in base.get("baselines", {}).items():
        lab = BASELINE_LABELS.get(name, name)
        w = _wall(b.get("wall_s"), gpus)
        probes = b.get("probes", "-")
        if name in taint.get("baselines", ()):
            methods[name] = Method(lab, w, probes, "tainted: another job's process held memory on its GPU (tainted.yaml says why)", "-",
                                   tainted=True)
            continue
        if b.get("status") != "ok":
            why = f"failed: {_first_sentence(b.get('reason', '?')).replace('|', '/')}"
            so_far = b.get("best_so_far") or _autotune_so_far(folder / "baselines" / name, T)
            if so_far:  # a tuner stopped before it chose: the best it had measured, as the grid measured that cell
                methods[name] = Method(lab, w, probes, f"{why.rstrip('.')}; best of its {so_far['experiments_finished']} "
                                       f"finished experiments: `{so_far['strategy']}` ({so_far['micro_batch']})",
                                       as_grid_measured(so_far["strategy"], so_far["micro_batch"], so_far.get("tokens_per_s")),
                                       failed=True)
            else:
                methods[name] = Method(lab, w, probes, why, "-", failed=True)
            continue
        over = "" if b.get("fits", True) else ", over headroom"
        methods[name] = Method(lab, w, probes, f"`{b['strategy']}` ({b['micro_batch']}{over})",
                               as_grid_measured(b["strategy"], b["micro_batch"], b.get("tokens_per_s")),
                               over_headroom=bool(over))

    if grid:
        at_least = grid.get("complete") is False
        bb = grid.get("best")
        methods["grid"] = Method("exhaustive grid (oracle)", _wall(grid.get("wall_s_at_least" if at_least else "wall_s"), gpus, at_least),
                                 grid["probes"], f"`{bb['strategy']}` ({bb['micro_batch']})" if bb else "nothing fits",
                                 "100.0%" if bb else "-", "measured")
    return Facts(folder, s["model"].split("/")[-1], T, s["space"], gpus, _short_gpu(s.get("gpu")), cap,
                 str(srch.get("winner") or "").startswith("full/"), methods)


def num_gpus(folder: Path, base: dict | None = None) -> int:
    """GPUs per probe of a scenario or search folder: its search's probes.csv, else its baselines.json."""
    rows = _rows(folder / "search" / "probes.csv")
    return int((rows[0] if rows else {}).get("num_gpus") or (base or {}).get("num_gpus") or 1)


def scenario_rows(folder: Path) -> tuple[str, list[str]]:
    """The scenario's label and its table rows (markdown)."""
    f = scenario_facts(folder)
    def verified(m: Method) -> str:
        on = f" on {m.verified_on}" if m.verified_on else ""
        return f"{m.verified}{on} ([{m.verified_in}](results/{m.verified_in}))" if m.verified_in else m.verified + on

    return f.label, [f"| {m.label} | {m.wall[0]} | {m.wall[1]} | {m.probes} | {m.choice} | {m.vs_oracle} | {m.memory} | {verified(m)} |"
                     for m in f.methods.values()]


def scenario_folders(results: Path) -> list[Path]:
    """Folders that make an issue-7 scenario: a search with its grid, or baselines.json."""
    out = []
    for summary in committed(results, "*/summary.json"):
        d = summary.parent
        s = json.loads(summary.read_text())
        if "search" not in s:
            continue
        if ((d / "grid.csv").exists() and (d / "search" / "probes.csv").exists()) or (d / "baselines.json").exists():
            out.append(d)
    return out


def render(results: Path) -> str:
    lines = ["| scenario / method | wall | GPU-s | probes | winner (micro-batch) | tokens/s vs oracle | "
             "memory prediction error, unprobed cells: median / max | verify passed |",
             "|---|---|---|---|---|---|---|---|"]
    for folder in scenario_folders(results):
        label, rows = scenario_rows(folder)
        lines.append(f"| **{label}** | | | | | | | |")
        lines.extend(rows)
    return "\n".join(lines)
