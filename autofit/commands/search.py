"""`autofit search` and `autofit demo`: the fastest configuration that fits, into results/<run>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from autofit.commands.common import HardwareArgs, hardware_options, model_options, where
from autofit.errors import UsageError, handles_errors, raise_problems


@dataclass(frozen=True, kw_only=True)
class SearchArgs(HardwareArgs):
    max_token: int
    space: str = "auto"
    quantize: bool = False
    method: str | None = None
    budget: str = "15m"
    headroom: float = 0.08
    run_dir: Path | None = None
    resume: bool = False
    storage: str | None = None
    heartbeat: int = 10
    explore: int = 2
    probe_timeout: str = "5m"
    measure_steps: int = 1
    quiet: bool = False

    def __post_init__(self) -> None:
        from autofit.units import parse_duration

        from autofit.spec import target_problems

        problems = target_problems(self.max_token, self.headroom)
        if self.explore < 0:
            problems.append(f"--explore must be >= 0, got {self.explore}")
        if self.measure_steps < 1:
            problems.append(f"--measure-steps must be at least 1, got {self.measure_steps}")
        if self.resume and self.run_dir is None:
            problems.append("--resume needs --run-dir (the search to continue)")
        for text in (self.budget, self.probe_timeout):
            try:
                parse_duration(text)
            except UsageError as exc:
                problems.append(str(exc))
        raise_problems(problems + self.hardware_problems())


def start_search(args: SearchArgs):
    """Resolve the flags into the driver's SearchRequest and run it (printing progress unless quiet)."""
    import time

    from autofit.hardware import memory_budget
    from autofit.search.driver import SearchRequest, run_search
    from autofit.search.planner import Limits
    from autofit.search.progress import Progress
    from autofit.search.space import load_space, runnable_strategies
    from autofit.units import parse_duration

    ctx = args.context(probe_timeout_s=parse_duration(args.probe_timeout), measure_steps=args.measure_steps)
    sp = load_space(args.space, method=args.method, num_gpus=ctx.num_gpus)
    runnable_strategies(sp, ctx)  # nothing runnable: one line before the model is resolved
    source = args.resolve_model(args.max_token)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = Path("results") / f"{source.name.replace('/', '_')}-T{args.max_token}-{time.strftime('%Y%m%d-%H%M%S')}"
    limits = Limits(budget=memory_budget(ctx), headroom=args.headroom)
    req = SearchRequest(ctx=ctx, source=source, space=sp, max_token=args.max_token, limits=limits, run_dir=run_dir,
                        budget_s=parse_duration(args.budget), resume=args.resume, storage=args.storage,
                        explore=args.explore, heartbeat_s=args.heartbeat, quantize=args.quantize)
    header = (f"searching {source.name} ({source.origin}, {args.weights} weights) on {where(ctx)}; "
              f"T={args.max_token}, global batch {args.global_batch}, budget {limits.budget / 2**30:.1f} GiB, "
              f"headroom {args.headroom:.0%}; space {sp.name}"
              + (" (quantized configurations may win)" if args.quantize else "") + f"; run dir {run_dir}")
    return run_search(req, progress=Progress(quiet=args.quiet), header=header)


def print_result(result) -> None:
    out = result.outcome
    click.echo("")
    click.echo(result.summary)
    click.echo("")
    if out.note:
        click.echo(f"note: {out.note}")
    if out.budget_exhausted:
        click.echo("note: --budget ran out before the search finished; the winner is the best measured so far "
                   "(run again with --resume and a larger --budget to continue)")
    if result.best:
        c, m = result.best["config"], result.best["measured"]
        click.echo(f"best ({c['numerics']}): {c['strategy']} micro_batch={c['micro_batch']} x accum {c['gradient_accumulation']} "
                   f"at max_token {c['max_token']}: {m['tokens_per_s']} tokens/s, peak {m['peak_gib']} GiB "
                   f"(limit {result.best['hardware']['limit_gib']} GiB)")
        click.echo(f"wrote {result.run.best_yaml}" + (f" and {result.run.ds_config}" if result.best.get("deepspeed") else ""))
    elif out.alternative is not None:
        click.echo("no exact configuration fits (see boundaries.csv for the walls); the 4/8-bit one above does")
    else:
        click.echo("no configuration fits; see boundaries.csv for the walls")
    click.echo(f"{result.probes_run} probe(s) run, {result.probes_reused} reused, {result.wall_time_s:.0f}s; "
               f"probes.csv, boundaries.csv, study.db, run.json in {result.run.path}")


@click.command()
@model_options
@hardware_options
@click.option("--max-token", type=int, required=True, help="Sequence length to optimise for (every sample at full length).")
@click.option("--space", default="auto", show_default=True,
              help="Search space: a YAML file or a shipped name (search_spaces/). auto: every technique that applies "
                   "to the method and GPUs (fused loss, 4/8-bit weights, checkpointing, ZeRO, offload).")
@click.option("--quantize", is_flag=True, help="Let 4-bit/8-bit configurations win (they change the numerics); "
              "without it they are measured and reported beside the exact winner.")
@click.option("--method", type=click.Choice(["lora", "full", "freeze"]), default=None, help="Override the space's method.")
@click.option("--budget", default="15m", show_default=True, help="Wall-clock budget for probing, e.g. 8m, 1h.")
@click.option("--headroom", type=float, default=0.08, show_default=True, help="Fraction of memory kept free by the winner.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default: results/<model>-T<max_token>-<time>.")
@click.option("--resume", is_flag=True, help="Continue the search in --run-dir; finished probes are not re-run.")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite in the run dir). A postgresql://... URL "
              "lets several workers (one per GPU or host, each with its own --run-dir) share one search.")
@click.option("--heartbeat", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="With --storage: seconds between a worker's heartbeats; a probe whose worker is silent for 3x as long is run again by another.")
@click.option("--explore", type=int, default=2, show_default=True, help="Probes the TPE sampler may add after the escalation.")
@click.option("--probe-timeout", default="5m", show_default=True, help="Per-probe time limit.")
@click.option("--measure-steps", type=int, default=1, show_default=True,
              help="Measured optimizer steps per probe (after one warm-up); close candidates are re-measured anyway.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@handles_errors
def search(**flags):
    """Search for the fastest configuration that fits, writing results/<run>/best.yaml."""
    print_result(start_search(SearchArgs(**flags)))


@click.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@handles_errors
def demo(run_dir):
    """The main job, end to end: GLM-4-9B LoRA on the GPU if there is one, else a tiny model on the CPU."""
    import time

    from autofit.hardware import detect_gpus

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if detect_gpus():
        kw = dict(model="THUDM/glm-4-9b-chat", device="cuda", max_token=1024, space="auto", budget="8m", global_batch=32)
    else:
        click.echo("no GPU found: running the CPU demo on a tiny model (a real search, real training steps)", err=True)
        kw = dict(model="autofit/tiny-qwen2", device="cpu", max_token=128, space="cpu-tiny", budget="5m", global_batch=8)
    print_result(start_search(SearchArgs(run_dir=run_dir or Path("results") / f"demo-{stamp}", **kw)))
