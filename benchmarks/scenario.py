"""A benchmark scenario as data: benchmarks/scenarios.yaml, read and validated into frozen dataclasses.

One entry names a model, method, max_token, memory cap, GPUs, global batch and space, the steps to run
(search, search-quantize, grid, baselines, consumer, verify, or a scenario's own `commands`) and the
committed results folder it produced or will produce. benchmarks/run.py turns an entry into commands.
Reads YAML only (no torch), so the tables and tests can use it on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "benchmarks" / "scenarios.yaml"

# The steps run.py knows, in the order it runs them when a scenario lists several.
STEPS = ("search", "search-quantize", "consumer", "grid", "baselines", "verify")
BASELINES = ("seed", "hf-double", "hf-double-ckpt", "hf-auto", "hf-auto-ckpt", "llamafactory",
             "hand", "ds-autotune", "ds-autotune-told")
METHODS = ("lora", "full", "freeze")
_DURATION = re.compile(r"^\d+(\.\d+)?[smh]?$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(GiB|GB|MiB|MB)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


class ScenarioError(ValueError):
    """A scenarios.yaml entry that cannot be run as written: the message names the entry and the field."""


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    max_token: int
    steps: tuple[str, ...]
    space: str = "auto"
    method: str | None = None
    gpu_memory: str | None = None
    gpus: str | None = None                # "0" or "0,1": the GPU indices every command gets
    global_batch: int = 32
    headroom: float = 0.08
    budget: str = "10m"                    # the search's wall-clock budget
    warm_up: bool = True                   # False: the search timed from a cold start (--no-warm-up)
    grid_tokens: tuple[int, ...] = ()      # () : the requested max_token only, what the search answers
    grid_measure_steps: int = 1            # 1: what the search measures per probe
    repeats: int = 1                       # grid passes, each cell in a new worker every pass
    # Passes after the first re-measure only the cells within this fraction of the first pass's best and
    # the search's winner (a large space, where a whole second pass costs another quarter hour).
    repeat_near: float | None = None
    grid_from: str | None = None           # the search judged by a committed grid (search_vs_grid --grid-from)
    baselines: tuple[str, ...] = ()
    ds_timeout: int = 600
    verify_steps: int = 6
    gpu: str | None = None                 # the GPU the committed numbers come from (informative)
    results: str | None = None             # the results/ folder this scenario wrote or is to write
    commands: tuple[tuple[str, str], ...] = ()  # (step, shell command with {out} and {py}) for one-off evidence
    # A later scenario measuring the same thing with today's harness: the README headline leaves this
    # folder to results/README.md, which still shows every search.
    superseded_by: str | None = None
    # How a reused grid's conditions differ from the search's (grid_from), shown beside the time ratio.
    grid_caveat: str | None = None
    note: str = ""

    @property
    def num_gpus(self) -> int:
        return len(self.gpus.split(",")) if self.gpus else 1

    def flags(self) -> list[str]:
        """The scenario flags every benchmark command shares (benchmarks.common.add_scenario_args)."""
        f = ["--model", self.model, "--max-token", str(self.max_token), "--global-batch", str(self.global_batch),
             "--space", self.space]
        if self.method:
            f += ["--method", self.method]
        if self.gpu_memory:
            f += ["--gpu-memory", self.gpu_memory]
        if self.gpus:
            f += ["--gpus", self.gpus]
        if self.headroom != 0.08:
            f += ["--headroom", str(self.headroom)]
        return f

    @property
    def grid_at(self) -> tuple[int, ...]:
        return self.grid_tokens or (self.max_token,)


def _fail(name: str, msg: str) -> ScenarioError:
    return ScenarioError(f"scenario {name!r}: {msg}")


def scenario_from_dict(name: str, d: Any) -> Scenario:
    if not _NAME.match(str(name)):
        raise _fail(name, "a name is letters, digits, dots and dashes")
    if not isinstance(d, dict):
        raise _fail(name, "an entry is a mapping of fields")
    known = set(Scenario.__dataclass_fields__) - {"name"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise _fail(name, f"unknown field(s) {', '.join(unknown)}")
    for req in ("model", "max_token", "steps"):
        if req not in d:
            raise _fail(name, f"{req} is required")
    kw = dict(d)
    commands = kw.pop("commands", None) or {}
    if not isinstance(commands, dict) or not all(isinstance(v, str) for v in commands.values()):
        raise _fail(name, "commands maps a step name to one shell command")
    steps = kw.pop("steps")
    if not isinstance(steps, list) or not steps:
        raise _fail(name, "steps is a non-empty list")
    bad = [s for s in steps if s not in STEPS and s not in commands]
    if bad:
        raise _fail(name, f"unknown step(s) {', '.join(map(str, bad))}: choose from {', '.join(STEPS)} or the scenario's commands")
    if len(set(steps)) != len(steps):
        raise _fail(name, "a step is listed twice")
    for k in ("max_token", "global_batch", "grid_measure_steps", "repeats", "ds_timeout", "verify_steps"):
        if k in kw and (not isinstance(kw[k], int) or isinstance(kw[k], bool) or kw[k] < 1):
            raise _fail(name, f"{k} is a positive integer, not {kw[k]!r}")
    if kw.get("grid_caveat") is not None and not (isinstance(kw["grid_caveat"], str) and "grid_from" in kw):
        raise _fail(name, "grid_caveat is a sentence about the grid that grid_from names")
    near = kw.get("repeat_near")
    if near is not None and (not isinstance(near, (int, float)) or isinstance(near, bool) or not 0 < near < 1):
        raise _fail(name, f"repeat_near is a fraction between 0 and 1, not {near!r}")
    if kw.get("method") not in (None, *METHODS):
        raise _fail(name, f"method is one of {', '.join(METHODS)}")
    if kw.get("gpu_memory") is not None and not _MEMORY.match(str(kw["gpu_memory"])):
        raise _fail(name, f"gpu_memory {kw['gpu_memory']!r} is not a size such as 24GiB")
    if "gpus" in kw and kw["gpus"] is not None:
        kw["gpus"] = str(kw["gpus"])
        if not re.match(r"^\d+(,\d+)*$", kw["gpus"]):
            raise _fail(name, f"gpus {kw['gpus']!r} is a comma-separated list of GPU indices")
    if not _DURATION.match(str(kw.get("budget", "10m"))):
        raise _fail(name, f"budget {kw['budget']!r} is a duration such as 10m")
    grid_tokens = kw.pop("grid_tokens", None) or []
    if not isinstance(grid_tokens, list) or not all(isinstance(t, int) and t > 0 for t in grid_tokens):
        raise _fail(name, "grid_tokens is a list of positive max_tokens")
    baselines = kw.pop("baselines", None) or []
    if not isinstance(baselines, list) or any(b not in BASELINES for b in baselines):
        raise _fail(name, f"baselines is a list drawn from {', '.join(BASELINES)}")
    if "baselines" in steps and not baselines:
        raise _fail(name, "the baselines step needs a baselines list")
    if "headroom" in kw and not (isinstance(kw["headroom"], (int, float)) and 0 <= kw["headroom"] < 1):
        raise _fail(name, "headroom is a fraction in [0, 1)")
    return Scenario(name=str(name), steps=tuple(steps), grid_tokens=tuple(grid_tokens), baselines=tuple(baselines),
                    commands=tuple(commands.items()), **kw)


def load_scenarios(path: Path = SCENARIOS) -> dict[str, Scenario]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}".splitlines()[0]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenarios"), dict):
        raise ScenarioError(f"{path}: a mapping with a `scenarios:` mapping of name -> entry")
    defaults = doc.get("defaults") or {}
    out = {name: scenario_from_dict(name, {**defaults, **(entry or {})}) for name, entry in doc["scenarios"].items()}
    for sc in out.values():
        if sc.superseded_by is not None and sc.superseded_by not in out:
            raise _fail(sc.name, f"superseded_by {sc.superseded_by!r} names no scenario")
    return out


def by_results_folder(path: Path = SCENARIOS) -> dict[str, Scenario]:
    """The scenario that produced (or is to produce) each results/ folder."""
    return {s.results: s for s in load_scenarios(path).values() if s.results}


__all__ = ["Scenario", "ScenarioError", "load_scenarios", "by_results_folder", "STEPS", "BASELINES"]
