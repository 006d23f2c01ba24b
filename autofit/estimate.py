"""`autofit estimate`: each strategy's predicted peak memory and wall, from the architecture alone.

    autofit estimate --model THUDM/glm-4-9b-chat --max-token 1024 --gpu-memory 24GiB

The prediction is autofit.memory.analytic's; with ``--run-dir`` the peaks measured in that run correct
it per strategy (autofit.memory.calibration). The table's note quotes the model's measured error from
results/estimate-error/summary.json, which benchmarks/estimate_validation.py writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autofit.errors import UsageError, raise_problems
from autofit.memory.analytic import GiB, Peak, predict
from autofit.memory.arch import Arch, arch_of
from autofit.memory.calibration import calibrate
from autofit.spec import METHODS, Strategy, target_problems

ERROR_SUMMARY = Path(__file__).resolve().parent.parent / "results" / "estimate-error" / "summary.json"


@dataclass(frozen=True)
class EstimateRow:
    """One strategy: predicted device-level peak (bytes) per micro-batch and the largest that fits."""

    strategy: Strategy
    key: str
    micro_batches: tuple[int, ...]
    peaks: tuple[float, ...]           # device-level, calibrated when `source` says so
    analytic: tuple[Peak, ...]         # the uncalibrated prediction, term by term
    max_micro_batch: int | None        # largest micro-batch predicted under the limit; None: none fits
    source: str                        # "analytic", or "run dir, N probes: agrees" / ": +X.X GiB" (calibrated)


@dataclass(frozen=True)
class Estimate:
    model: str
    max_token: int
    num_gpus: int
    global_batch: int
    budget: int
    limit: float
    rows: tuple[EstimateRow, ...]
    note: str


def _run_points(run_dir: Path, num_gpus: int) -> dict[str, list[tuple[int, int, float]]]:
    """Measured (micro_batch, max_token, device-level peak) per strategy key in a run's probes.csv."""
    from autofit.rundir import RunDir
    from autofit.search.planner import peak_of

    out: dict[str, list[tuple[int, int, float]]] = {}
    for r in RunDir.existing(run_dir).probe_results():
        peak = peak_of(r)
        if r.ok and peak and r.num_gpus == num_gpus:
            out.setdefault(r.strategy, []).append((r.micro_batch, r.max_token, float(peak)))
    return out


# ----------------------------------------------------------------------------- the command's function


@dataclass(frozen=True, kw_only=True)
class EstimateArgs:
    """What `autofit estimate` takes; raises every problem with its values in one UsageError."""

    model: str
    max_token: int
    gpu_memory: str | int = "24GiB"
    global_batch: int = 32
    space: str = "default"
    method: str | None = None
    run_dir: str | Path | None = None
    num_gpus: int = 1
    headroom: float = 0.08
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems = target_problems(self.max_token, self.headroom)
        if self.global_batch < 1:
            problems.append(f"--global-batch must be at least 1, got {self.global_batch}")
        if self.num_gpus < 1:
            problems.append(f"--num-gpus must be at least 1, got {self.num_gpus}")
        if self.method is not None and self.method not in METHODS:
            problems.append(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        try:
            self.budget()
        except UsageError as exc:
            problems.append(str(exc))
        raise_problems(problems)

    def budget(self) -> int:
        from autofit.units import parse_memory

        return self.gpu_memory if isinstance(self.gpu_memory, int) else parse_memory(self.gpu_memory)


def estimate(model: str, max_token: int, **options: Any) -> Estimate:
    """Predicted peaks and walls for every strategy of a space; options are EstimateArgs' fields."""
    return estimate_for(EstimateArgs(model=model, max_token=max_token, **options))


def estimate_for(args: EstimateArgs) -> Estimate:
    """Predicted peaks and walls for every strategy of `args.space` on `args.num_gpus` GPUs of `args.gpu_memory` each."""
    from autofit.models import check_max_token, resolve_model
    from autofit.search.planner import Limits
    from autofit.search.space import load_space

    model, max_token, global_batch, method = args.model, args.max_token, args.global_batch, args.method
    run_dir, num_gpus, headroom = args.run_dir, args.num_gpus, args.headroom
    budget = args.budget()
    # The auto space's sections differ by method and GPU count, so both choose what is loaded.
    sp = load_space(args.space, method, num_gpus)
    source = resolve_model(model, trust_remote_code=args.trust_remote_code)
    check_max_token(source, max_token)
    arch = arch_of(source)
    measured = _run_points(Path(run_dir), num_gpus) if run_dir is not None else {}
    limit = Limits(budget=budget, headroom=headroom).limit
    cap = max(1, global_batch // num_gpus)
    mbs = tuple(mb for mb in sp.micro_batches if mb <= cap) or (1,)
    rows = tuple(_row(arch, s, num_gpus, mbs, max_token, global_batch, source.lora_targets, measured.get(s.key(), []),
                      limit) for s in sp.strategies(num_gpus))
    used = sum(1 for r in rows if r.source != "analytic")
    note = _note(run_dir, used, len(rows))
    return Estimate(model=source.name, max_token=max_token, num_gpus=num_gpus, global_batch=global_batch,
                    budget=budget, limit=limit, rows=rows, note=note)


def _row(arch: Arch, s: Strategy, n: int, mbs: tuple[int, ...], max_token: int, global_batch: int,
         targets: tuple[str, ...], points: list[tuple[int, int, float]], limit: float) -> EstimateRow:
    def at(mb: int, t: int) -> Peak:
        return predict(arch, s, n, mb, t, max(1, -(-global_batch // (mb * n))), targets)

    analytic = tuple(at(mb, max_token) for mb in mbs)
    cal = calibrate([(at(mb, t), peak) for mb, t, peak in points])
    peaks = tuple(cal.apply(pk.device) if cal else pk.device for pk in analytic)
    fitting = [mb for mb, peak in zip(mbs, peaks) if peak <= limit]
    return EstimateRow(strategy=s, key=s.key(), micro_batches=mbs, peaks=peaks, analytic=analytic,
                       max_micro_batch=max(fitting) if fitting else None,
                       source=cal.label() if cal else "analytic")


def _note(run_dir: str | Path | None, used: int, total: int) -> str:
    line = ("estimate, not a measurement: predicted from the architecture" if not used
            else f"estimate, not a measurement: {used} of {total} strategies calibrated on {run_dir}")
    doc = measured_error()
    if doc:
        err = doc["headline"]
        line += (f".\nMeasured error (vs nvml peak, {err['rows']} probes on {err['devices']}): median "
                 f"{err['median_pct']:.1f}%, max {err['max_pct_torch']:.1f}% without DeepSpeed and "
                 f"{err['max_pct_deepspeed']:.1f}% with it (predicted low); calibrated on a run's small probes, "
                 f"max {err['calibrated_max_pct']:.1f}% ({doc['command']})")
    return line + ". Confirm with 'autofit search'."


def measured_error() -> dict[str, Any] | None:
    """The committed results/estimate-error/summary.json's headline and the command that wrote it
    (None outside a checkout)."""
    try:
        doc = json.loads(ERROR_SUMMARY.read_text())
        return {"headline": doc["headline"], "command": doc["command"]}
    except (OSError, ValueError, KeyError):
        return None


def render(est: Estimate) -> str:
    """The table `autofit estimate` prints."""
    mbs = est.rows[0].micro_batches if est.rows else ()
    key_w = max([len("strategy")] + [len(r.key) for r in est.rows])
    head = f"{'strategy':<{key_w}}  " + "".join(f"{'mb' + str(mb):>8}" for mb in mbs) + f"  {'fits up to':>10}  source"
    lines = [f"{est.model}, T={est.max_token}, {est.num_gpus} GPU(s) of {est.budget / GiB:.1f} GiB, "
             f"limit {est.limit / GiB:.1f} GiB per GPU, global batch {est.global_batch}; predicted peak per GPU (GiB)",
             head, "-" * len(head)]
    for r in est.rows:
        cells = "".join(f"{p / GiB:>7.1f}{'*' if p > est.limit else ' '}" for p in r.peaks)
        fit = f"mb {r.max_micro_batch}" if r.max_micro_batch else "none"
        lines.append(f"{r.key:<{key_w}}  {cells}  {fit:>10}  {r.source}")
    lines.append("* over the limit")
    lines.append(est.note)
    return "\n".join(lines)
