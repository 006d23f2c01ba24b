"""Command line. Parses flags into typed configs, validates once, and turns every AutofitError into
one line on stderr and exit code 2. Heavy imports (torch, optuna, pandas) happen inside commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from autofit.errors import UsageError, handles_errors
from autofit.spec import LOSSES, OPTIMIZERS, QUANTS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="autofit")
def cli(debug: bool) -> None:
    """autofit: find the fastest fine-tuning config that fits in GPU memory, by measuring it."""


# -- shared option groups ------------------------------------------------------------------------
def model_options(fn):
    for opt in reversed([
        click.option("--model", "model", required=True, help="Hub id (e.g. THUDM/glm-4-9b-chat), local directory, or built-in table name."),
        click.option("--weights", type=click.Choice(["random", "real"]), default="random", show_default=True,
                     help="random: build on the GPU with random weights (same memory/speed, seconds). real: load local weights."),
        click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own modelling code."),
    ]):
        fn = opt(fn)
    return fn


def hardware_options(fn):
    for opt in reversed([
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                     help="auto: the GPU if there is one, else the CPU."),
        click.option("--gpus", default=None, help="GPU indices to use, e.g. 0 or 0,1,2,3 (default: 0)."),
        click.option("--gpu-memory", default=None, help="Memory a probe may use per GPU, e.g. 24GiB: emulates a smaller card."),
        click.option("--global-batch", type=int, default=16, show_default=True, help="Samples per optimizer step (sets gradient accumulation)."),
        click.option("--hostfile", default=None, type=click.Path(dir_okay=False),
                     help="Several machines: DeepSpeed hostfile ('HOST slots=N' lines); a probe runs on every slot "
                          "through DeepSpeed's launcher (README: 'Several GPUs, several machines')."),
        click.option("--master-addr", default=None, help="With --hostfile: the rendezvous address (default: first host's IP)."),
    ]):
        fn = opt(fn)
    return fn


def _context(model: str, weights: str, trust_remote_code: bool, device: str, gpus: str | None,
             gpu_memory: str | None, global_batch: int, hostfile: str | None = None, master_addr: str | None = None,
             **extra):
    from autofit.hardware import detect_gpus, parse_gpus
    from autofit.spec import Context
    from autofit.units import parse_memory

    if global_batch < 1:
        raise UsageError(f"--global-batch must be at least 1, got {global_batch}")
    if master_addr and not hostfile:
        raise UsageError("--master-addr is for several machines; it needs --hostfile")
    hosts: tuple[tuple[str, int], ...] = ()
    if hostfile:
        from autofit.hosts import parse_hostfile

        if gpus:
            raise UsageError("--gpus and --hostfile: give each host's GPU count as slots=N in the hostfile")
        hosts = parse_hostfile(hostfile)
    dev, ids = parse_gpus(gpus, device)
    if hosts and dev == "cpu" and sum(n for _, n in hosts) != 1:
        raise UsageError(f"--hostfile {hostfile}: on the CPU a probe is one process; list one host with slots=1")
    if hosts and dev == "cuda":
        # This machine's cards stand for every host's (the budget is the smallest of them; pass
        # --gpu-memory when the hosts differ).
        ids = tuple(range(min(max(n for _, n in hosts), len(detect_gpus()))))
    return Context(model=model, weights=weights, trust_remote_code=trust_remote_code, device=dev, gpus=ids,
                   gpu_memory=parse_memory(gpu_memory) if gpu_memory else None, global_batch=global_batch,
                   hostfile=str(Path(hostfile).resolve()) if hostfile else None, hosts=hosts,
                   master_addr=master_addr, **extra)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected integers like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise UsageError(f"{flag} {text!r}: expected positive integers")
    return vals


# -- probe -----------------------------------------------------------------------------------------
@cli.command()
@model_options
@hardware_options
@click.option("--max-token", type=int, default=1024, show_default=True, help="Sequence length of every sample.")
@click.option("--micro-batch", default="1,2,4,8,16,32,64", show_default=True, help="Micro-batch sizes to escalate through, stopping at the first OOM.")
@click.option("--method", type=click.Choice(["lora", "full", "freeze"]), default="lora", show_default=True)
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--freeze-trainable-layers", type=int, default=2, show_default=True, help="freeze: train only the last N blocks and the head.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "bf16-pure"]), default="bf16-pure", show_default=True,
              help="bf16/fp16: mixed precision over fp32 weights; bf16-pure: weights in bf16 (how GLM-4's finetune loads them).")
@click.option("--grad-ckpt/--no-grad-ckpt", default=False, show_default=True, help="Gradient checkpointing.")
@click.option("--zero", "zero_stage", type=click.IntRange(0, 3), default=0, show_default=True, help="DeepSpeed ZeRO stage.")
@click.option("--offload-optimizer", is_flag=True, help="ZeRO: optimizer state on the CPU.")
@click.option("--offload-params", is_flag=True, help="ZeRO-3: parameters on the CPU.")
@click.option("--loss", type=click.Choice(LOSSES), default="hf", show_default=True,
              help="fused: liger-kernel's fused linear cross-entropy (the full logits never exist).")
@click.option("--quant", type=click.Choice(QUANTS), default="none", show_default=True,
              help="Base weights in 4-bit NF4 or 8-bit LLM.int8 (bitsandbytes; LoRA only).")
@click.option("--optim", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True,
              help="adamw8bit: bitsandbytes' 8-bit AdamW (ZeRO-0 only).")
@click.option("--warmup-steps", type=int, default=1, show_default=True)
@click.option("--measure-steps", type=int, default=2, show_default=True)
@click.option("--timeout", "timeout", default="5m", show_default=True, help="Per-probe time limit (model build gets its own 10m).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append the results to this probes.csv.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per probe on stdout.")
@handles_errors
def probe(model, weights, trust_remote_code, device, gpus, gpu_memory, global_batch, hostfile, master_addr, max_token, micro_batch, method,
          lora_r, lora_alpha, freeze_trainable_layers, precision, grad_ckpt, zero_stage, offload_optimizer,
          offload_params, loss, quant, optim, warmup_steps, measure_steps, timeout, out, as_json):
    """Run real training probes for one strategy, escalating micro-batch until the first OOM."""
    import tempfile

    from autofit.models import check_max_token, resolve_model
    from autofit.probe.runner import WorkerSession, escalate
    from autofit.writable import check_writable
    from autofit.rundir.records import append_probe
    from autofit.spec import Method, Shape, Strategy
    from autofit.units import parse_duration

    _check_probe_numbers(max_token=max_token, lora_r=lora_r, lora_alpha=lora_alpha,
                         freeze_trainable_layers=freeze_trainable_layers, measure_steps=measure_steps,
                         warmup_steps=warmup_steps)
    if offload_params and zero_stage != 3:
        raise UsageError("--offload-params needs --zero 3 (DeepSpeed offloads parameters only under ZeRO-3)")
    if offload_optimizer and zero_stage == 0:
        raise UsageError("--offload-optimizer needs --zero 1, 2 or 3")
    ctx = _context(model, weights, trust_remote_code, device, gpus, gpu_memory, global_batch, hostfile, master_addr,
                   warmup_steps=warmup_steps, measure_steps=measure_steps, probe_timeout_s=parse_duration(timeout),
                   max_positions=max_token)
    if out:
        check_writable(out)  # before the model is built
    source = resolve_model(model, trust_remote_code=trust_remote_code)
    check_max_token(source, max_token)
    if weights == "real" and not source.has_weights:
        raise UsageError(f"--weights real: {model} has no local weights ({source.origin}); use --weights random")
    strategy = Strategy(method=Method(kind=method, lora_r=lora_r, lora_alpha=lora_alpha,
                                      freeze_trainable_layers=freeze_trainable_layers),
                        precision=precision, grad_ckpt=grad_ckpt, zero_stage=zero_stage,
                        offload_optimizer=offload_optimizer, offload_params=offload_params,
                        loss=loss, quant=quant, optim=optim)
    from autofit.capabilities import missing

    if strategy.problems():  # the combination itself, before what this machine lacks
        raise UsageError(f"cannot probe {strategy.key()}: " + "; ".join(strategy.problems()))
    if ctx.device == "cpu" and zero_stage:
        raise UsageError(f"--zero {zero_stage} needs DeepSpeed, which needs a GPU; on the CPU use --zero 0")
    lacking = missing(strategy, ctx)
    if lacking:
        raise UsageError(f"cannot probe {strategy.key()}: {lacking}")
    shapes = [Shape(mb, max_token) for mb in _int_list(micro_batch, "--micro-batch")]
    if not as_json:
        click.echo(f"probing {source.name} ({source.origin}, {weights} weights) on {_where(ctx)}: {strategy.key()}", err=True)
    with tempfile.TemporaryDirectory(prefix="autofit-probe-") as tmp, \
            WorkerSession(ctx, strategy, source, Path(tmp)) as session:
        for r in escalate(session, shapes):
            if out:
                append_probe(out, r, strategy)
            click.echo(json.dumps(r.to_dict()) if as_json else _probe_line(r))
            if r.status.value in ("error", "crash") and not as_json:
                click.echo(session.log_tail(2000), err=True)


def _check_probe_numbers(**values: int) -> None:
    """Every count a probe takes must be positive (warm-up steps may be 0); all problems in one line."""
    problems = [f"--{k.replace('_', '-')} must be at least {0 if k == 'warmup_steps' else 1}, got {v}"
                for k, v in values.items() if v < (0 if k == "warmup_steps" else 1)]
    if problems:
        raise UsageError("; ".join(problems))


def _where(ctx) -> str:
    from autofit.units import fmt_gib

    where = "CPU" if ctx.device == "cpu" else f"GPU {','.join(map(str, ctx.gpus))}"
    if ctx.hosts:
        where = (f"{ctx.num_gpus} {'GPU' if ctx.device == 'cuda' else 'CPU'} rank(s) over "
                 + ", ".join(f"{h} ({n})" for h, n in ctx.hosts) + " (DeepSpeed launcher)")
    return where + (f" capped at {fmt_gib(ctx.gpu_memory)} GiB" if ctx.gpu_memory else "")


def _probe_line(r) -> str:
    from autofit.units import fmt_gib

    if r.ok:
        return (f"{r.status.value:7s} mb={r.micro_batch:<4d} T={r.max_token:<6d} accum={r.grad_accum:<3d} "
                f"{r.tokens_per_s:>10.1f} tok/s  micro {r.micro_step_s * 1000:8.1f} ms  opt {r.optimizer_step_s * 1000:7.1f} ms  "
                f"alloc {fmt_gib(r.peak_allocated)} GiB  reserved {fmt_gib(r.peak_reserved)} GiB  "
                f"nvml {fmt_gib(r.nvml_peak)} GiB  host {fmt_gib(r.host_peak)} GiB  [{r.device_name}]")
    return f"{r.status.value:7s} mb={r.micro_batch:<4d} T={r.max_token:<6d} {r.error}"


# -- search ----------------------------------------------------------------------------------------
@cli.command()
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
def search(model, weights, trust_remote_code, device, gpus, gpu_memory, global_batch, hostfile, master_addr, max_token, space, quantize,
           method, budget, headroom, run_dir, resume, storage, heartbeat, explore, probe_timeout, measure_steps, quiet):
    """Search for the fastest configuration that fits, writing results/<run>/best.yaml."""
    result = _run_search(model=model, weights=weights, trust_remote_code=trust_remote_code, device=device, gpus=gpus,
                         gpu_memory=gpu_memory, global_batch=global_batch, max_token=max_token, space=space,
                         method=method, budget=budget, headroom=headroom, run_dir=run_dir, resume=resume,
                         storage=storage, explore=explore, probe_timeout=probe_timeout, measure_steps=measure_steps,
                         quiet=quiet, heartbeat=heartbeat, hostfile=hostfile, master_addr=master_addr, quantize=quantize)
    _print_result(result)


def _run_search(*, model, weights, trust_remote_code, device, gpus, gpu_memory, global_batch, max_token, space, method,
                budget, headroom, run_dir, resume, storage, explore, probe_timeout, quiet, measure_steps=1, heartbeat=10,
                hostfile=None, master_addr=None, quantize=False):
    import time

    from autofit.hardware import memory_budget
    from autofit.models import check_max_token, resolve_model
    from autofit.search.driver import SearchRequest, run_search
    from autofit.search.planner import Limits
    from autofit.search.progress import Progress
    from autofit.search.space import load_space, runnable_strategies
    from autofit.units import parse_duration

    if max_token < 1:
        raise UsageError(f"--max-token must be positive, got {max_token}")
    if not 0 <= headroom < 1:
        raise UsageError(f"--headroom must be in [0, 1), got {headroom}")
    if explore < 0:
        raise UsageError(f"--explore must be >= 0, got {explore}")
    if measure_steps < 1:
        raise UsageError(f"--measure-steps must be at least 1, got {measure_steps}")
    if resume and run_dir is None:
        raise UsageError("--resume needs --run-dir (the search to continue)")
    budget_s = parse_duration(budget)
    ctx = _context(model, weights, trust_remote_code, device, gpus, gpu_memory, global_batch, hostfile, master_addr,
                   probe_timeout_s=parse_duration(probe_timeout), measure_steps=measure_steps)
    sp = load_space(space, method=method, num_gpus=ctx.num_gpus)
    runnable_strategies(sp, ctx.num_gpus, ctx.device)
    source = resolve_model(model, trust_remote_code=trust_remote_code)
    check_max_token(source, max_token)
    if weights == "real" and not source.has_weights:
        raise UsageError(f"--weights real: {model} has no local weights ({source.origin}); use --weights random")
    if run_dir is None:
        run_dir = Path("results") / f"{source.name.replace('/', '_')}-T{max_token}-{time.strftime('%Y%m%d-%H%M%S')}"
    limits = Limits(budget=memory_budget(ctx), headroom=headroom)
    req = SearchRequest(ctx=ctx, source=source, space=sp, max_token=max_token, limits=limits, run_dir=run_dir,
                        budget_s=budget_s, resume=resume, storage=storage, explore=explore, heartbeat_s=heartbeat,
                        quantize=quantize)
    header = (f"searching {source.name} ({source.origin}, {weights} weights) on {_where(ctx)}; "
              f"T={max_token}, global batch {global_batch}, budget {limits.budget / 2**30:.1f} GiB, "
              f"headroom {headroom:.0%}; space {sp.name}" + (" (quantized configurations may win)" if quantize else "")
              + f"; run dir {run_dir}")
    return run_search(req, progress=Progress(quiet=quiet), header=header)


def _print_result(result) -> None:
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


@cli.command()
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
    result = _run_search(weights="random", trust_remote_code=False, gpus=None, gpu_memory=None, method=None,
                         headroom=0.08, run_dir=run_dir or Path("results") / f"demo-{stamp}", resume=False,
                         storage=None, explore=2, probe_timeout="5m", quiet=False, **kw)
    _print_result(result)


# -- models ----------------------------------------------------------------------------------------
@cli.command()
@handles_errors
def models():
    """List the built-in architecture table (usable with no download)."""
    from autofit.models import list_table

    for row in list_table():
        click.echo("  ".join(str(x) for x in row))


def _register(module: str, name: str) -> None:
    """Commands that live in their own module (report/export import no torch: keep them lazy-light)."""
    import importlib

    cmd = getattr(importlib.import_module(module), name)
    cmd.callback = handles_errors(cmd.callback)
    cli.add_command(cmd)


for _module, _name in (("autofit.export", "export_cmd"), ("autofit.report", "report_cmd"),
                       ("autofit.estimate", "estimate_cmd"), ("autofit.verify", "verify_cmd")):
    _register(_module, _name)


def main() -> None:
    cli(prog_name="autofit")


if __name__ == "__main__":
    main()
