"""A FAKE probe for unit-testing search logic only: deterministic walls, no training.

It never stands in as evidence that probing works; tests/test_probe.py runs the real worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autofit.spec import ProbeResult, Shape, Status, Strategy

GiB = 2**30


@dataclass
class FakeHardware:
    """peak = fixed + per_token * mb * T (GiB); OOM above `capacity`; tokens/s saturates with mb*T."""

    capacity: float = 80.0
    fixed: dict[str, float] = field(default_factory=dict)
    per_token: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    saturation_tokens: float = 4096.0
    calls: list[tuple[str, int, int]] = field(default_factory=list)
    interrupt_at: int | None = None   # raise KeyboardInterrupt when this many probes have run
    error_for: set[str] = field(default_factory=set)
    tokens_at: dict[tuple[str, int], float] = field(default_factory=dict)  # (strategy, mb) -> tokens/s override
    # GiB a worker's first shape needs over the same shape after smaller ones (the allocator's state: real
    # workers differ by several percent either way, see autofit.search.planner's fresh check).
    fresh_extra: float = 0.0
    workers: int = 0                  # sessions started: each gets a fake worker pid

    def peak(self, s: Strategy, shape: Shape) -> float:
        return self.fixed[s.key()] + self.per_token[s.key()] * shape.micro_batch * shape.max_token

    def tokens_per_s(self, s: Strategy, shape: Shape) -> float:
        if (s.key(), shape.micro_batch) in self.tokens_at:
            return self.tokens_at[(s.key(), shape.micro_batch)]
        n = shape.micro_batch * shape.max_token
        return self.speed[s.key()] * n / (n + self.saturation_tokens)

    def run(self, s: Strategy, shape: Shape, pid: int | None = None, first: bool = False) -> ProbeResult:
        if self.interrupt_at is not None and len(self.calls) >= self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((s.key(), shape.micro_batch, shape.max_token))
        base = dict(strategy=s.key(), micro_batch=shape.micro_batch, max_token=shape.max_token, grad_accum=1,
                    device_name="fake", weights="random", worker_pid=pid)
        if s.key() in self.error_for:
            return ProbeResult(**base, status=Status.ERROR, error="RuntimeError: fake setup failure")
        peak = self.peak(s, shape) + (self.fresh_extra if first else 0.0)
        if peak > self.capacity:
            return ProbeResult(**base, status=Status.OOM, error="OutOfMemoryError: CUDA out of memory (fake)")
        tps = self.tokens_per_s(s, shape)
        return ProbeResult(**base, status=Status.OK, micro_step_s=1.0, optimizer_step_s=0.0, step_s=1.0,
                           tokens_per_s=tps, peak_allocated=int(peak * GiB * 0.95), peak_reserved=int(peak * GiB),
                           nvml_peak=int(peak * GiB), host_peak=GiB)


class FakeSession:
    """Implements the driver's Session protocol on top of FakeHardware; dies after a failure like a worker."""

    def __init__(self, hw: FakeHardware, s: Strategy):
        self.hw, self.s, self.dead = hw, s, False
        self.started = True
        hw.workers += 1
        self.pid, self.probes = 1000 + hw.workers, 0

    def probe(self, shape: Shape) -> ProbeResult:
        assert not self.dead, "a dead worker must not be reused"
        self.probes += 1
        r = self.hw.run(self.s, shape, self.pid, first=self.probes == 1)
        if not r.ok:
            self.dead = True
        return r

    def close(self) -> None:
        self.dead = True

    def phase(self) -> dict | None:
        return None
