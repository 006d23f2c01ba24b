"""The analytic slope the planner may use before a strategy has two measured peaks.

autofit.estimate predicts a strategy's peak from the architecture; its activation term (bytes per
token of a micro-batch) was within a few percent of the measured slopes on the H100 (e.g. GLM-4-9B
LoRA with checkpointing: 3.03 GiB predicted vs 3.05 GiB measured per 1024-token sequence). Only the
slope is taken, never the absolute peak: the measured first probe anchors the line, which absorbs
what the estimate misses (DeepSpeed's reserved-but-unused memory). The planner uses it only to jump,
so a wrong slope costs a probe, never a wrong wall.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

from autofit.models import ModelSource
from autofit.spec import Context, Strategy


def analytic_slope(source: ModelSource, ctx: Context) -> Callable[[Strategy, int], float | None]:
    """(strategy, max_token) -> peak bytes per token, or None where the estimate cannot say.

    GPU searches only: on the CPU the compared peak is the process's RSS, which the estimate does
    not model. Deterministic for a given model and context, so a resumed search plans the same.
    """
    cache: dict[tuple[str, int], float | None] = {}
    arch: Future | None = None
    if ctx.device == "cuda":
        # Reading the architecture imports torch + transformers into this process (~12 s on the H100
        # machine, where the search itself imports neither): start now, so it overlaps the first probe,
        # which the planner needs before it asks for a slope anyway. A daemon thread, so Ctrl-C at the
        # start of a search does not wait for the import.
        arch = Future()
        threading.Thread(target=_read_arch, args=(source, arch), daemon=True, name="autofit-arch").start()

    def slope(s: Strategy, t: int) -> float | None:
        if ctx.device != "cuda":
            return None
        key = (s.key(), t)
        if key not in cache:
            try:
                from autofit.estimate import predict

                a = arch.result()
                n = ctx.num_gpus
                # Same accumulation on both sides: the difference is the micro-batch's own memory.
                p1, p2 = (predict(a, s, n, mb, t, 2, source.lora_targets).device for mb in (1, 2))
                cache[key] = (p2 - p1) / t if p2 > p1 else None
            except Exception:  # an architecture the estimate cannot read: plan without the prior
                cache[key] = None
        return cache[key]

    return slope


def _read_arch(source: ModelSource, into: Future) -> None:
    try:
        from autofit.estimate import arch_of

        into.set_result(arch_of(source))
    except BaseException as exc:  # handed to slope(), which then plans without the prior
        into.set_exception(exc)
