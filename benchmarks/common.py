"""What the benchmark commands share: the scenario flags and what they build, and which result
folders count.

search_vs_grid and baselines must describe a scenario the same way: baselines add their rows to the
folder search_vs_grid wrote, and the issue-7 table compares them cell by cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autofit.hardware import memory_budget, parse_gpus
from autofit.models import ModelSource, resolve_model
from autofit.search.planner import Limits
from autofit.search.space import SearchSpace, load_space
from autofit.spec import Context
from autofit.units import parse_memory


def add_scenario_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-token", type=int, required=True)
    ap.add_argument("--space", default="default")
    ap.add_argument("--method", default=None, choices=["lora", "full", "freeze"])
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--gpu-memory", default=None)
    ap.add_argument("--gpus", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--headroom", type=float, default=0.08)
    ap.add_argument("--out", type=Path, required=True)


def scenario_from_args(a: argparse.Namespace, **ctx_kw) -> tuple[Context, ModelSource, SearchSpace, Limits]:
    """The context (two measured steps per probe, as the oracle measures), model, space and limits."""
    device, gpus = parse_gpus(a.gpus, a.device)
    ctx = Context(model=a.model, device=device, gpus=gpus, gpu_memory=parse_memory(a.gpu_memory) if a.gpu_memory else None,
                  global_batch=a.global_batch, measure_steps=2, **ctx_kw)
    space = load_space(a.space, method=a.method, num_gpus=ctx.num_gpus)
    return ctx, resolve_model(a.model), space, Limits(memory_budget(ctx), a.headroom)


def committed(results: Path, pattern: str) -> list[Path]:
    """Files under results/ matching pattern, without the git-ignored `make demo` runs (demo-*/):
    tables show what every checkout has."""
    return sorted(p for p in results.glob(pattern) if not p.relative_to(results).parts[0].startswith("demo-"))
