"""Which strategies this machine can run, asked without importing their libraries (the CLI stays instant).

The one owner of every "runs here or not, and why" rule: the search space, `autofit probe` and the
probe worker all ask here. A technique that cannot run here is not an error: the search reports it
once, with the reason, and leaves it out. Each check names the library that supplies the technique.
"""

from __future__ import annotations

import importlib.util

from autofit.spec import Context, Strategy


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(s: Strategy, ctx: Context) -> str | None:
    """Why `s` cannot run in `ctx`, or None when it can. The reason names the dimension, so
    strategies that share it share one message."""
    if ctx.device == "cpu" and s.precision == "fp16" and s.uses_deepspeed(ctx.num_gpus):
        return "fp16 under DeepSpeed: its CPU accelerator has no fp16 (use bf16, bf16-pure or fp32)"
    if ctx.device == "cpu" and s.offloads:
        return ("offload: ZeRO moves state from the GPU to the host's memory; on the CPU it is there already "
                "(and DeepSpeed's CPU Adam would be compiled for nothing)")
    if s.act_offload and ctx.device != "cuda":
        return ("activation offload: keeps checkpointed activations in pinned host memory instead of the GPU's; "
                "on the CPU they are there already")
    if s.loss == "fused":
        if ctx.device != "cuda":
            return "fused loss: liger-kernel's fused linear cross-entropy is a Triton kernel and needs a CUDA GPU"
        if not (_installed("liger_kernel") and _installed("triton")):
            return "fused loss: liger-kernel is not installed (pip install liger-kernel)"
    if s.quant != "none" or s.optim != "adamw":
        what = f"{s.quant} base weights" if s.quant != "none" else f"{s.optim} optimizer"
        if ctx.device != "cuda":
            return f"{what}: bitsandbytes' quantized kernels are probed on CUDA GPUs only"
        if not _installed("bitsandbytes"):
            return f"{what}: bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def runnable(strategies: list[Strategy], ctx: Context) -> tuple[list[Strategy], list[str]]:
    """The strategies that can run in `ctx`, and each distinct reason the others cannot (once each)."""
    keep, reasons = [], []
    for s in strategies:
        why = missing(s, ctx)
        if why is None:
            keep.append(s)
        elif why not in reasons:
            reasons.append(why)
    return keep, reasons
