"""Per-strategy memory model: peak = fixed + per_token x (micro_batch x max_token).

Weights, gradients and optimizer state are the fixed part; activations and logits grow with the
number of tokens in a micro-batch. Fitted by least squares on the measured peaks of one strategy,
it predicts where the wall is so the escalation can jump next to it instead of doubling blindly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryModel:
    fixed: float
    per_token: float
    points: int

    def predict(self, micro_batch: int, max_token: int) -> float:
        return self.fixed + self.per_token * micro_batch * max_token


def fit(points: list[tuple[int, int, float]], prior_slope: float | None = None) -> MemoryModel | None:
    """points: (micro_batch, max_token, peak_bytes). Least squares once two distinct token counts exist.

    With a single token count and `prior_slope` (bytes per token, from the analytic estimate), the
    model is that slope through the measured point: enough to jump towards the wall after one probe.
    The prior only ever decides how far to jump; a measured fit replaces it as soon as it can.
    """
    xs = [mb * t for mb, t, _ in points]
    ys = [p for _, _, p in points]
    if len(set(xs)) < 2:
        if not points or prior_slope is None or prior_slope <= 0:
            return None
        return MemoryModel(fixed=sum(ys) / len(ys) - prior_slope * xs[0], per_token=prior_slope, points=len(points))
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    slope = max(slope, 0.0)  # more tokens never need less memory
    return MemoryModel(fixed=my - slope * mx, per_token=slope, points=n)
