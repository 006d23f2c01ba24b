"""What every command shares: one-line errors, the model and hardware flags, and their Args."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from autofit.errors import UsageError


def _apply(options: list[Callable]) -> Callable:
    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


model_options = _apply([
    click.option("--model", "model", required=True, help="Hub id (e.g. THUDM/glm-4-9b-chat), local directory, or built-in table name."),
    click.option("--weights", type=click.Choice(["random", "real"]), default="random", show_default=True,
                 help="random: build on the GPU with random weights (same memory/speed, seconds). real: load local weights."),
    click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own modelling code."),
])

hardware_options = _apply([
    click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                 help="auto: the GPU if there is one, else the CPU."),
    click.option("--gpus", default=None, help="GPU indices to use, e.g. 0 or 0,1,2,3 (default: 0)."),
    click.option("--gpu-memory", default=None, help="Memory a probe may use per GPU, e.g. 24GiB: emulates a smaller card."),
    click.option("--global-batch", type=int, default=16, show_default=True, help="Samples per optimizer step (sets gradient accumulation)."),
    click.option("--hostfile", default=None, type=click.Path(dir_okay=False),
                 help="Several machines: DeepSpeed hostfile ('HOST slots=N' lines); a probe runs on every slot "
                      "through DeepSpeed's launcher (README: 'Several GPUs, several machines')."),
    click.option("--master-addr", default=None, help="With --hostfile: the rendezvous address (default: first host's IP)."),
])


@dataclass(frozen=True, kw_only=True)
class HardwareArgs:
    """The model and hardware flags of the commands that run probes (model_options, hardware_options).
    A subclass's __post_init__ raises every problem of its own flags and these in one line."""

    model: str
    weights: str = "random"
    trust_remote_code: bool = False
    device: str = "auto"
    gpus: str | None = None
    gpu_memory: str | None = None
    global_batch: int = 16
    hostfile: str | None = None
    master_addr: str | None = None

    def hardware_problems(self) -> list[str]:
        """What is wrong with these flags alone (the hostfile's contents and the GPUs are read by context)."""
        from autofit.units import parse_memory

        problems = []
        if self.global_batch < 1:
            problems.append(f"--global-batch must be at least 1, got {self.global_batch}")
        if self.master_addr and not self.hostfile:
            problems.append("--master-addr is for several machines; it needs --hostfile")
        if self.hostfile and self.gpus:
            problems.append("--gpus and --hostfile: give each host's GPU count as slots=N in the hostfile")
        if self.gpu_memory:
            try:
                parse_memory(self.gpu_memory)
            except UsageError as exc:
                problems.append(str(exc))
        return problems

    def context(self, **extra):
        """The probes' Context: reads the hostfile and looks for GPUs."""
        from autofit.hardware import detect_gpus, parse_gpus
        from autofit.spec import Context
        from autofit.units import parse_memory

        hostfile, gpus = self.hostfile, self.gpus
        hosts: tuple[tuple[str, int], ...] = ()
        if hostfile:
            from autofit.hosts import parse_hostfile

            hosts = parse_hostfile(hostfile)
        dev, ids = parse_gpus(gpus, self.device)
        if hosts and dev == "cuda":
            # This machine's cards stand for every host's (the budget is the smallest of them; pass
            # --gpu-memory when the hosts differ).
            ids = tuple(range(min(max(n for _, n in hosts), len(detect_gpus()))))
        return Context(model=self.model, weights=self.weights, trust_remote_code=self.trust_remote_code, device=dev,
                       gpus=ids, gpu_memory=parse_memory(self.gpu_memory) if self.gpu_memory else None,
                       global_batch=self.global_batch, hostfile=str(Path(hostfile).resolve()) if hostfile else None,
                       hosts=hosts, master_addr=self.master_addr, **extra)

    def resolve_model(self, max_token: int):
        """The model source, checked against max_token and --weights."""
        from autofit.models import check_max_token, resolve_model

        source = resolve_model(self.model, trust_remote_code=self.trust_remote_code)
        check_max_token(source, max_token)
        if self.weights == "real" and not source.has_weights:
            raise UsageError(f"--weights real: {self.model} has no local weights ({source.origin}); use --weights random")
        return source


def int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected integers like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise UsageError(f"{flag} {text!r}: expected positive integers")
    return vals


def where(ctx) -> str:
    from autofit.units import fmt_gib

    place = "CPU" if ctx.device == "cpu" else f"GPU {','.join(map(str, ctx.gpus))}"
    if ctx.hosts:
        place = (f"{ctx.num_gpus} {'GPU' if ctx.device == 'cuda' else 'CPU'} rank(s) over "
                 + ", ".join(f"{h} ({n})" for h, n in ctx.hosts) + " (DeepSpeed launcher)")
    return place + (f" capped at {fmt_gib(ctx.gpu_memory)} GiB" if ctx.gpu_memory else "")
