"""`autofit probe`: one strategy, escalating micro-batch until the first OOM."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import click

from autofit.commands.common import HardwareArgs, hardware_options, int_list, model_options, where
from autofit.errors import ProbeError, UsageError, handles_errors, raise_problems
from autofit.spec import LOSSES, METHODS, OPTIMIZERS, PRECISIONS, QUANTS, Method, Strategy

DEFAULT = Strategy()


@dataclass(frozen=True, kw_only=True)
class ProbeArgs(HardwareArgs):
    max_token: int = 1024
    micro_batch: str = "1,2,4,8,16,32,64"
    # The strategy's flags default to Strategy's (and Method's) own defaults: one source for both.
    method: str = DEFAULT.method.kind
    lora_r: int = DEFAULT.method.lora_r
    lora_alpha: int = DEFAULT.method.lora_alpha
    freeze_trainable_layers: int = DEFAULT.method.freeze_trainable_layers
    precision: str = DEFAULT.precision
    grad_ckpt: bool = DEFAULT.grad_ckpt
    act_offload: bool = DEFAULT.act_offload
    zero_stage: int = DEFAULT.zero_stage
    offload_optimizer: bool = DEFAULT.offload_optimizer
    offload_params: bool = DEFAULT.offload_params
    loss: str = DEFAULT.loss
    quant: str = DEFAULT.quant
    optim: str = DEFAULT.optim
    warmup_steps: int = 1
    measure_steps: int = 2
    timeout: str = "5m"
    out: Path | None = None
    as_json: bool = False

    def __post_init__(self) -> None:
        from autofit.units import parse_duration

        # Every count a probe takes must be positive (warm-up steps may be 0).
        counts = dict(max_token=self.max_token, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                      freeze_trainable_layers=self.freeze_trainable_layers, measure_steps=self.measure_steps,
                      warmup_steps=self.warmup_steps)
        problems = [f"--{k.replace('_', '-')} must be at least {0 if k == 'warmup_steps' else 1}, got {v}"
                    for k, v in counts.items() if v < (0 if k == "warmup_steps" else 1)]
        if self.offload_params and self.zero_stage != 3:
            problems.append("--offload-params needs --zero 3 (DeepSpeed offloads parameters only under ZeRO-3)")
        if self.offload_optimizer and self.zero_stage == 0:
            problems.append("--offload-optimizer needs --zero 1, 2 or 3")
        for parse in (lambda: int_list(self.micro_batch, "--micro-batch"), lambda: parse_duration(self.timeout)):
            try:
                parse()
            except UsageError as exc:
                problems.append(str(exc))
        raise_problems(problems + self.hardware_problems())

    def strategy(self) -> Strategy:
        """The Strategy these flags name: every field of Strategy's that is a flag here, by the same name."""
        method = Method(kind=self.method, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                        freeze_trainable_layers=self.freeze_trainable_layers)
        return Strategy(method=method, **{f.name: getattr(self, f.name) for f in fields(Strategy) if f.name != "method"})


def run_probe(args: ProbeArgs) -> None:
    """Probe args.strategy() at each micro-batch until the first OOM, printing (and appending) each result."""
    import tempfile

    from autofit.capabilities import missing
    from autofit.probe.runner import WorkerSession, escalate
    from autofit.rundir.records import append_probe
    from autofit.spec import Shape
    from autofit.units import parse_duration
    from autofit.writable import check_writable

    ctx = args.context(warmup_steps=args.warmup_steps, measure_steps=args.measure_steps,
                       probe_timeout_s=parse_duration(args.timeout), max_positions=args.max_token)
    if args.out:
        check_writable(args.out)  # before the model is built
    source = args.resolve_model(args.max_token)
    strategy = args.strategy()
    if strategy.problems():  # the combination itself, before what this machine lacks
        raise UsageError(f"cannot probe {strategy.key()}: " + "; ".join(strategy.problems()))
    lacking = missing(strategy, ctx)
    if lacking:
        raise UsageError(f"cannot probe {strategy.key()}: {lacking}")
    shapes = [Shape(mb, args.max_token) for mb in int_list(args.micro_batch, "--micro-batch")]
    if not args.as_json:
        click.echo(f"probing {source.name} ({source.origin}, {args.weights} weights) on {where(ctx)}: {strategy.key()}",
                   err=True)
    # Ranks on other hosts read the probe's files where DeepSpeed's runner puts them: this directory.
    with tempfile.TemporaryDirectory(prefix=".autofit-probe-", dir="." if len(ctx.hosts) > 1 else None) as tmp, \
            WorkerSession(ctx, strategy, source, Path(tmp).resolve()) as session:
        for r in escalate(session, shapes):
            if args.out:
                append_probe(args.out, r, strategy)
            if session.host_error:  # a host failed, not the strategy: one line naming it, exit 2
                raise ProbeError(session.host_error)
            click.echo(json.dumps(r.to_dict()) if args.as_json else _probe_line(r))
            if r.status.value in ("error", "crash") and not args.as_json:
                click.echo(session.log_tail(2000), err=True)


def _probe_line(r) -> str:
    from autofit.units import fmt_gib

    if r.ok:
        return (f"{r.status.value:7s} mb={r.micro_batch:<4d} T={r.max_token:<6d} accum={r.grad_accum:<3d} "
                f"{r.tokens_per_s:>10.1f} tok/s  micro {r.micro_step_s * 1000:8.1f} ms  opt {r.optimizer_step_s * 1000:7.1f} ms  "
                f"alloc {fmt_gib(r.peak_allocated)} GiB  reserved {fmt_gib(r.peak_reserved)} GiB  "
                f"nvml {fmt_gib(r.nvml_peak)} GiB  host {fmt_gib(r.host_peak)} GiB  [{r.device_name}]")
    return f"{r.status.value:7s} mb={r.micro_batch:<4d} T={r.max_token:<6d} {r.error}"


@click.command()
@model_options
@hardware_options
@click.option("--max-token", type=int, default=1024, show_default=True, help="Sequence length of every sample.")
@click.option("--micro-batch", default="1,2,4,8,16,32,64", show_default=True, help="Micro-batch sizes to escalate through, stopping at the first OOM.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT.method.kind, show_default=True)
@click.option("--lora-r", type=int, default=DEFAULT.method.lora_r, show_default=True)
@click.option("--lora-alpha", type=int, default=DEFAULT.method.lora_alpha, show_default=True)
@click.option("--freeze-trainable-layers", type=int, default=DEFAULT.method.freeze_trainable_layers, show_default=True, help="freeze: train only the last N blocks and the head.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT.precision, show_default=True,
              help="bf16/fp16: mixed precision over fp32 weights; bf16-pure: weights in bf16 (how GLM-4's finetune loads them).")
@click.option("--grad-ckpt/--no-grad-ckpt", default=DEFAULT.grad_ckpt, show_default=True, help="Gradient checkpointing.")
@click.option("--act-offload/--no-act-offload", default=DEFAULT.act_offload, show_default=True,
              help="With --grad-ckpt: keep the checkpointed activations in pinned host memory until the backward (CUDA).")
@click.option("--zero", "zero_stage", type=click.IntRange(0, 3), default=DEFAULT.zero_stage, show_default=True, help="DeepSpeed ZeRO stage.")
@click.option("--offload-optimizer", is_flag=True, help="ZeRO: optimizer state on the CPU.")
@click.option("--offload-params", is_flag=True, help="ZeRO-3: parameters on the CPU.")
@click.option("--loss", type=click.Choice(LOSSES), default=DEFAULT.loss, show_default=True,
              help="fused: liger-kernel's fused linear cross-entropy (the full logits never exist).")
@click.option("--quant", type=click.Choice(QUANTS), default=DEFAULT.quant, show_default=True,
              help="Base weights in 4-bit NF4 or 8-bit LLM.int8 (bitsandbytes; LoRA only).")
@click.option("--optim", type=click.Choice(OPTIMIZERS), default=DEFAULT.optim, show_default=True,
              help="adamw8bit: bitsandbytes' 8-bit AdamW (ZeRO-0 only).")
@click.option("--warmup-steps", type=int, default=1, show_default=True)
@click.option("--measure-steps", type=int, default=2, show_default=True)
@click.option("--timeout", "timeout", default="5m", show_default=True, help="Per-probe time limit (model build gets its own 10m).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append the results to this probes.csv.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per probe on stdout.")
@handles_errors
def probe(**flags):
    """Run real training probes for one strategy, escalating micro-batch until the first OOM."""
    run_probe(ProbeArgs(**flags))
