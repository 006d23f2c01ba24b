"""What GPUs this machine has, read through NVML (no torch import: the CLI stays instant)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from autofit.errors import NoGPUError, UsageError


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_memory: int


def detect_gpus() -> list[GPU]:
    if os.environ.get("AUTOFIT_FORCE_NO_GPU"):  # lets tests exercise the no-GPU path anywhere
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(GPU(i, name.decode() if isinstance(name, bytes) else name, pynvml.nvmlDeviceGetMemoryInfo(h).total))
        return gpus
    except Exception:  # no driver, no library, no device: all mean "no GPU here"
        return []


def parse_gpus(text: str | None, device: str) -> tuple[str, tuple[int, ...]]:
    """Resolve --device/--gpus into (device, gpu indices). 'auto' picks cuda when a GPU exists."""
    gpus = detect_gpus()
    if device == "auto" and text and not gpus:
        raise NoGPUError(f"--gpus {text}: no CUDA GPU found (NVML sees none); drop --gpus to probe on the CPU")
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cpu":
        if text:
            raise UsageError("--gpus was given with --device cpu")
        return "cpu", ()
    if not gpus:
        raise NoGPUError("no CUDA GPU found (NVML sees none); pass --device cpu to probe on the CPU with a small model")
    if not text:
        return "cuda", (0,)
    try:
        ids = tuple(int(x) for x in text.split(",") if x.strip() != "")
    except ValueError:
        raise UsageError(f"--gpus {text!r}: expected GPU indices like 0 or 0,1,2,3") from None
    bad = [i for i in ids if i < 0 or i >= len(gpus)]
    if not ids or bad or len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {text!r}: this machine has GPUs 0..{len(gpus) - 1}")
    return "cuda", ids


def memory_budget(ctx) -> int:
    """Bytes a configuration may use per GPU: --gpu-memory, else the smallest selected card; host RAM on CPU."""
    if ctx.gpu_memory:
        return ctx.gpu_memory
    if ctx.device == "cpu":
        import psutil

        return psutil.virtual_memory().total
    return min(g.total_memory for g in detect_gpus() if g.index in ctx.gpus)
