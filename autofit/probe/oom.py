"""Is this exception an out-of-memory? (exception type first, known message fragments second)."""

from __future__ import annotations

# OOM does not always surface as torch.cuda.OutOfMemoryError: cuBLAS/cuDNN fail to allocate their
# workspace, NCCL fails to allocate its buffers, DeepSpeed re-raises as RuntimeError, and the host
# allocator fails under CPU offload. Each fragment below was seen in one of those.
_OOM_FRAGMENTS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "defaultcpuallocator: can't allocate memory",
    "failed to allocate",
    "cudaerrormemoryallocation",
    "ncclsystemerror",  # most often cudaMalloc failing inside NCCL
)


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is always there in a worker
        pass
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(f in text for f in _OOM_FRAGMENTS)


def oom_line(text: str) -> str | None:
    """Same test on a worker's log tail, for a worker that died before reporting: the last line that names
    the OOM, or None. Under torchrun the log ends in the launcher's ChildFailedError, not in the rank's cause."""
    for line in reversed(text.splitlines()):
        low = line.lower()
        if any(f in low for f in _OOM_FRAGMENTS):
            return line.strip()
    return None


def last_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    head = msg[0] if msg else ""
    return f"{type(exc).__name__}: {head}"[:500]
