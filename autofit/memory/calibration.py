"""Correct the analytic prediction of one strategy with the peaks a run measured for it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from autofit.memory.analytic import GiB, Peak

# ZeRO-3's optimizer step walks its partition in sub-groups of sub_group_size parameters (1e9 by
# default, kept by autofit), converting one sub-group's gradients to fp32 at a time; a sub-group closes
# at the first parameter that reaches the size, so it can be one parameter partition larger.
ZERO3_SUB_GROUP_PARAMS = 1e9
# A run's measured peaks move the prediction only by what they disagree beyond this fraction: small
# probes scatter by a few percent around the model (allocator slack is lumpy at small shapes), and
# extrapolating that scatter to the wall makes the held-out error worse (results/estimate-error).
CALIBRATION_NOISE = 0.05


@dataclass(frozen=True)
class Calibration:
    """Per-strategy correction from measured device-level peaks: predicted + offset."""

    offset: float
    points: int

    def apply(self, predicted: float) -> float:
        return predicted + self.offset

    def label(self) -> str:
        probes = f"run dir, {self.points} probe{'s' if self.points != 1 else ''}"
        return f"{probes}: agrees" if self.offset == 0 else f"{probes}: {self.offset / GiB:+.1f} GiB"


def calibrate(points: list[tuple[Peak, float]]) -> Calibration | None:
    """Offset from (predicted peak, measured device-level peak) pairs of one strategy.

    The mean disagreement is applied only beyond CALIBRATION_NOISE of the prediction: a run that
    agrees with the model within its measured scatter leaves it alone, one that does not (DeepSpeed's
    allocator, an architecture the model misreads) moves every prediction by the excess.
    """
    if not points:
        return None
    residual = statistics.fmean(measured - pk.device for pk, measured in points)
    band = CALIBRATION_NOISE * statistics.fmean(pk.device for pk, _ in points)
    offset = math.copysign(max(0.0, abs(residual) - band), residual)
    return Calibration(offset=offset, points=len(points))

