"""What GPUs this machine has, read through NVML (no torch import: the CLI stays instant)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from autofit.errors import NoGPUError, UsageError


@dataclass(frozen=True)
class GPU:
    index: int  # as CUDA numbers it for this process: the position in CUDA_VISIBLE_DEVICES when that is set
    name: str
    total_memory: int
    physical: str = ""  # the entry a child's CUDA_VISIBLE_DEVICES must name to reach this GPU
    nvml_index: int = -1  # NVML's (physical) number for it


def visible_mask(environ) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES, or None when it is unset (every GPU visible); the one parser
    of an outer mask (detect_gpus, device_mask, verify's visible_gpus)."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    return None if raw is None else [x.strip() for x in raw.split(",") if x.strip()]


def detect_gpus() -> list[GPU]:
    """The GPUs this process may use, numbered as CUDA numbers them: an outer CUDA_VISIBLE_DEVICES=1
    makes the machine's second GPU this process's GPU 0, so `--gpus 0` never reaches a masked card."""
    if os.environ.get("AUTOFIT_FORCE_NO_GPU"):  # lets tests exercise the no-GPU path anywhere
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        every = []  # (GPU in machine numbering, its UUID)
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name, uuid = pynvml.nvmlDeviceGetName(h), pynvml.nvmlDeviceGetUUID(h)
            every.append((GPU(i, name.decode() if isinstance(name, bytes) else name, pynvml.nvmlDeviceGetMemoryInfo(h).total,
                              str(i), i), uuid.decode() if isinstance(uuid, bytes) else uuid))
    except Exception:  # no driver, no library, no device: all mean "no GPU here"
        return []
    mask = visible_mask(os.environ)
    if mask is None:
        return [g for g, _ in every]
    gpus: list[GPU] = []
    for entry in mask:  # CUDA stops at the first entry that names no device
        hit = next((g for g, uuid in every
                    if entry == g.physical or (entry.startswith(("GPU-", "MIG-")) and uuid.startswith(entry))), None)
        if hit is None:
            break
        gpus.append(replace(hit, index=len(gpus), physical=entry))
    return gpus


def device_mask(gpus: tuple[int, ...]) -> str:
    """CUDA_VISIBLE_DEVICES for a child that must use exactly these of this process's GPUs."""
    mask = visible_mask(os.environ)
    if mask is None:
        return ",".join(map(str, gpus))
    return ",".join(mask[i] for i in gpus if i < len(mask))


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
