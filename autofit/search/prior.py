"""What the architecture alone tells the planner before (and between) probes: autofit.memory.analytic's
analytic model, used in two ways that can each cost a probe but never a wrong answer.

- A slope: its activation term (bytes per token of a micro-batch) is within a few percent of measured
  slopes. Only the slope is taken, never the absolute peak: the first probe anchors the line, which
  absorbs what the estimate misses (DeepSpeed's reserved-but-unused memory). The planner uses it only
  to jump, so a wrong slope costs a probe, never a wrong wall.
- A peak, for strategies that cannot fit by far (DDP for full fine-tuning of a 9 B model on 80 GB
  cards). The planner takes such a wall without probing it only when the estimate exceeds the limit by
  more than its largest measured over-prediction (planner.ESTIMATE_OVER), so what it skips would have
  gone out of memory anyway.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from autofit.models import ModelSource
from autofit.spec import Context, Strategy


class AnalyticPrior:
    """slope(strategy, max_token) -> peak bytes per token; peak(strategy, micro_batch, max_token) ->
    predicted device bytes of one GPU. Both None where the estimate cannot say.

    GPU searches only: on the CPU the compared peak is the process's RSS, which the estimate does not
    model. Deterministic for a given model and context, so a resumed search plans the same.
    """

    def __init__(self, source: ModelSource, ctx: Context):
        self.source, self.ctx = source, ctx
        self._slopes: dict[tuple[str, int], float | None] = {}
        self._arch: Future | None = None
        if ctx.device == "cuda":
            # Outside the built-in table, reading the architecture imports torch + transformers into this
            # process (seconds; the search itself imports neither): start now, beside the first worker's
            # imports. A daemon thread, so Ctrl-C does not wait for the import.
            self._arch = Future()
            threading.Thread(target=_read_arch, args=(source, self._arch), daemon=True, name="autofit-arch").start()

    def _predict(self, s: Strategy, micro_batch: int, max_token: int, grad_accum: int) -> float | None:
        if self._arch is None:
            return None
        try:
            from autofit.memory.analytic import predict

            return predict(self._arch.result(), s, self.ctx.num_gpus, micro_batch, max_token, grad_accum,
                           self.source.lora_targets).device
        except Exception:  # an architecture the estimate cannot read: plan without the prior
            return None

    def slope(self, s: Strategy, t: int) -> float | None:
        key = (s.key(), t)
        if key not in self._slopes:
            # Same accumulation on both sides: the difference is the micro-batch's own memory.
            p1, p2 = (self._predict(s, mb, t, 2) for mb in (1, 2))
            self._slopes[key] = (p2 - p1) / t if p1 is not None and p2 is not None and p2 > p1 else None
        return self._slopes[key]

    def peak(self, s: Strategy, micro_batch: int, t: int) -> float | None:
        return self._predict(s, micro_batch, t, self.ctx.grad_accum(micro_batch))


def _read_arch(source: ModelSource, into: Future) -> None:
    try:
        from autofit.memory.arch import arch_of

        into.set_result(arch_of(source))
    except BaseException as exc:  # handed to _predict, which then plans without the prior
        into.set_exception(exc)
