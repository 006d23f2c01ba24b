"""The escalation: which probes to run, in what order, and what they mean. Pure logic, no I/O.

It asks `measure(strategy, shape, phase, repeat)` for results; the driver answers from probes.csv
when the probe already ran (resume) or by running it. Because every decision is a function of the
results so far, a resumed search retraces the same plan and re-runs nothing.

Rules, each one a saving:
- Monotone shapes: if micro-batch m does not fit a strategy, no m' > m does. Never probed.
- Slower-at-equal-shape strategies (checkpointing, activation offload, offload, ZeRO-3 over 0-2) start above the wall of
  the faster one they extend, and are skipped once its throughput has saturated: they cannot win.
- ZeRO offload is the last resort: skipped once any strategy without it fits at the max_token.
- A per-strategy memory model fitted to measured peaks predicts the wall: the escalation jumps to the
  largest micro-batch predicted to fit, then confirms the wall one step above. An analytic slope
  (autofit.memory.analytic) stands in for the second point; a wall is only predicted from measured points.
- A strategy whose analytic peak at its first micro-batch is over the limit by more than the
  estimate's largest error (in a family that is only reported: over the limit) is a wall without
  probing it. The most frugal strategy is never ruled out this way, so a search never ends on
  estimates alone.
- The first strategy escalated is the fastest one the estimate predicts to fit (then the next, up to
  MAX_ESTIMATED_STARTS), else the most frugal one: the fast walls are in place at once.
- A strategy whose twin differs only in a technique that saves memory at no cost in speed (the fused
  loss, NF4 over LLM.int8) is skipped once the twin ran.
- Exact and 4/8-bit strategies are planned as two families (driver); the exact family's walls and
  flat curves bound the quantized one, which does the same matmuls after dequantizing. A family that is
  only reported (4/8-bit without --quantize) takes its walls where the memory model puts them.
- Top candidates within measurement noise of each other are re-measured before a winner is named.
- The winner is measured once more alone in a fresh worker (phase "fresh"), as the user's training
  starts, with at least two measured steps (probe.runner.StandbyFactory.fresh): the allocator's
  state after smaller shapes moves the peak at the same shape by several percent either way
  (results/fresh-check-h200-glm4-lora-T2048-24GiB). The larger peak is kept; a winner over the
  limit there gives way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from autofit.search import memmodel
from autofit.spec import Candidate, ProbeKey, ProbeResult, Shape, Status, Strategy, compared_peak

Measure = Callable[[Strategy, Shape, str, int], ProbeResult]
SlopePrior = Callable[[Strategy, int], "float | None"]  # (strategy, max_token) -> peak bytes per token
PeakEstimate = Callable[[Strategy, int, int], "float | None"]  # (strategy, micro_batch, max_token) -> bytes

SATURATION_GAIN = 1.03   # quadrupling micro-batch gained less than 3%: the curve is flat
NOISE = 0.05             # candidates within 5% of the best are re-measured
PREDICT_MARGIN = 0.97    # jump only to micro-batches predicted to stay 3% under the limit
PREDICT_OVER = 1.15      # a micro-batch predicted 15% over the limit is a wall without probing it
# The analytic estimate, with no measured point of the strategy, needs a wider margin: it over-predicts
# measured peaks by up to 18% (results/estimate-error; tests/test_search_prior.py keeps that below this).
ESTIMATE_OVER = 1.3
# Faster strategies the estimate predicts to fit, tried in turn before the most frugal one is confirmed.
MAX_ESTIMATED_STARTS = 3


def peak_of(r: ProbeResult) -> int | None:
    """The memory figure of a probe that is compared with the budget (see spec.compared_peak)."""
    return compared_peak(r.nvml_peak, r.peak_reserved, r.host_peak)


MIN_MARGIN = 0.02        # peaks vary by ~1% run to run (allocator, NVML sampling): never closer than 2%


@dataclass(frozen=True)
class Limits:
    budget: int          # bytes per GPU (or host bytes for a CPU search)
    headroom: float      # fraction of the budget kept free

    @property
    def limit(self) -> float:
        # Even with --headroom 0, a config whose peak sits within noise of the wall never wins.
        return self.budget * (1.0 - max(self.headroom, MIN_MARGIN))

    def fits(self, r: ProbeResult) -> bool:
        p = peak_of(r)
        return r.ok and p is not None and p <= self.limit


def _zero_comparable(a: Strategy, b: Strategy) -> bool:
    """ZeRO 0/1/2 trade comms for a sharded optimizer step: either can be faster or leaner; ZeRO-3 is both
    slower and leaner than any of them."""
    return a.zero_stage == b.zero_stage or a.zero_stage == 3 or b.zero_stage == 3


def _adds_savings(a: Strategy, b: Strategy) -> bool:
    """a has every memory-saving mechanism of b's that costs speed (checkpointing, activation offload,
    offload, ZeRO-3)."""
    return (a.grad_ckpt >= b.grad_ckpt and a.act_offload >= b.act_offload and a.offload_optimizer >= b.offload_optimizer
            and a.offload_params >= b.offload_params and (a.zero_stage == 3) >= (b.zero_stage == 3))


def never_faster(a: Strategy, b: Strategy) -> bool:
    """a is never faster than b at the same shape (and a != b): it only adds costs. The fused loss is
    taken to cost what HF's loss costs (it does the same matmuls, in chunks)."""
    if a == b or a.method != b.method or a.precision != b.precision or a.quant != b.quant or a.optim != b.optim:
        return False
    return _zero_comparable(a, b) and _adds_savings(a, b)


def never_more_memory(a: Strategy, b: Strategy) -> bool:
    """a needs no more memory than b at the same shape (and a != b): every technique of b's that saves
    memory, a has too. Where a runs out of memory, so does b."""
    if a == b or a.method != b.method or a.precision != b.precision or a.quant != b.quant:
        return False
    return (_zero_comparable(a, b) and _adds_savings(a, b)
            and (a.loss == "fused") >= (b.loss == "fused") and (a.optim != "adamw") >= (b.optim != "adamw"))


def dominating_twins(s: Strategy) -> list[Strategy]:
    """Strategies that differ from s only in techniques that cost no speed and save memory (the fused
    loss for HF's) or that are faster and save memory (NF4 for LLM.int8's outlier path), alone or
    together: once one of them runs, s cannot win."""
    swaps = [{"loss": "fused"}] if s.loss == "hf" else []
    if s.quant == "int8":
        swaps.append({"quant": "nf4"})
    twins = [replace(s, **swaps[0])] if swaps else []
    if len(swaps) == 2:
        twins += [replace(s, **swaps[1]), replace(s, **swaps[0], **swaps[1])]
    return [t for t in twins if not t.problems()]


def quantized_never_faster(q: Strategy, e: Strategy) -> bool:
    """q, a 4/8-bit strategy, is never faster than e, its bf16 twin at the same shape: it does the same
    matmuls after dequantizing each weight. Lets the exact family's walls and flat curves bound the
    quantized family's escalation."""
    return q.quant != "none" and e.quant == "none" and replace(q, quant="none") == replace(e, optim=q.optim)


def speed_rank(s: Strategy) -> tuple:
    """Fastest-expected first: no offload, no ZeRO-3, no checkpointing, no activation offload; at equal
    speed the technique that saves memory first (the fused loss, NF4 over LLM.int8)."""
    return (s.offload_params, s.offload_optimizer, s.zero_stage == 3, s.grad_ckpt, s.act_offload, s.zero_stage,
            s.quant == "int8", s.loss != "fused", s.optim != "adamw")


def memory_rank(s: Strategy) -> tuple:
    """Least memory last: the strategy confirmed first when no estimate names a faster one."""
    return (s.offload_params, s.offload_optimizer, s.zero_stage == 3, s.grad_ckpt, s.act_offload, s.quant == "nf4",
            s.quant != "none", s.loss == "fused", s.optim != "adamw", -s.zero_stage)


@dataclass
class StrategyOutcome:
    strategy: Strategy
    max_token: int
    fit_max: int | None = None           # largest micro-batch measured to fit
    fail_min: int | None = None          # smallest micro-batch measured not to fit
    fail_status: str = ""
    predicted_fail: bool = False         # fail_min came from the memory model, not a probe

    @property
    def memory_wall(self) -> bool:
        """fail_min is where memory ran out (measured or predicted), not a crash, error or timeout,
        which say nothing about what fits."""
        return self.fail_min is not None and (self.predicted_fail or self.fail_status == Status.OOM.value
                                              or self.fail_status.startswith("over headroom"))
    skipped: str = ""                    # why the strategy was not probed (dominated, saturated...)
    started_at: int | None = None
    inferred_fit: int | None = None      # fits by dominance (a faster strategy fit there)


@dataclass
class Outcome:
    requested_max_token: int
    max_token: int
    strategies: dict[str, StrategyOutcome] = field(default_factory=dict)
    winner: tuple[Strategy, int] | None = None
    winner_tokens_per_s: float | None = None
    winner_peak: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    note: str = ""
    budget_exhausted: bool = False
    largest_fitting_max_token: int | None = None
    # The best of the other family (exact vs 4/8-bit), reported beside the winner: key, mb, tok/s, peak.
    alternative: Candidate | None = None

    @property
    def numerics(self) -> str:
        """exact (bf16 weights, full-precision optimizer state) or quantized: what kind the winner is."""
        return "exact" if self.winner is None or self.winner[0].exact else "quantized"


class Planner:
    def __init__(self, strategies: list[Strategy], micro_batches: tuple[int, ...], max_tokens: tuple[int, ...],
                 target_max_token: int, micro_batch_cap: int, limits: Limits, measure: Measure,
                 deadline: float | None = None, confirm_top: int = 3, log: Callable[[str], None] = lambda s: None,
                 slope_prior: SlopePrior | None = None, estimate: PeakEstimate | None = None,
                 exact: "Planner | None" = None, decisive: bool = True):
        if not strategies:
            raise ValueError("no strategies to search")
        self.order = sorted(strategies, key=speed_rank)
        self.frugal = max(strategies, key=memory_rank)
        self.mbs = [m for m in micro_batches if m <= micro_batch_cap] or [min(micro_batches)]
        # The micro-batch that needs no gradient accumulation, where ZeRO-1/2's peak can drop (_escalate).
        self.no_accum = micro_batch_cap if micro_batch_cap in self.mbs else None
        self.max_tokens = tuple(sorted(max_tokens))
        self.target = self.requested = target_max_token
        self._first_failure = ""
        self.limits = limits
        self._measure = measure
        self.deadline = deadline
        self.confirm_top = confirm_top
        self.log = log
        self.slope_prior = slope_prior
        self.estimate = estimate
        self.results: dict[ProbeKey, ProbeResult] = {}
        self.by_key = {s.key(): s for s in strategies}
        # The quantized family is planned after the exact one, whose walls and curves bound it. A family
        # whose winner cannot become the answer (quantized without --quantize) is reported as measured:
        # no re-measurement of close candidates, no fresh-worker check (a --quantize resume runs them).
        self.exact, self.decisive = exact, decisive
        self.outcome: Outcome | None = None

    # -- measuring ------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def measure(self, s: Strategy, mb: int, t: int, phase: str = "escalate", repeat: int = 0) -> ProbeResult:
        r = self._measure(s, Shape(mb, t), phase, repeat)
        self.results[ProbeKey(s.key(), mb, t, phase, repeat)] = r
        return r

    def ok_points(self, s: Strategy) -> list[tuple[int, int, float]]:
        return [(k.micro_batch, k.max_token, peak_of(r)) for k, r in self.results.items()
                if k.strategy == s.key() and r.ok and peak_of(r)]

    def tokens_curve(self, s: Strategy, t: int) -> list[tuple[int, float]]:
        pts = {k.micro_batch: r.tokens_per_s for k, r in self.results.items()
               if k.strategy == s.key() and k.max_token == t and k.phase == "escalate" and self.limits.fits(r)}
        return sorted(pts.items())

    # -- the search -----------------------------------------------------------------------------
    def run(self, explore: Callable[["Planner", Outcome], None] | None = None) -> Outcome:
        out = Outcome(requested_max_token=self.target, max_token=self.target)
        done: list[Strategy] = []
        start = None
        for tried, s in enumerate(self._estimated_starts()):
            # Escalating a fast strategy first puts its wall in place, so the frugal ones start above it
            # (or are skipped as saturated); the slow frugal one is confirmed only if the estimate keeps missing.
            if tried == MAX_ESTIMATED_STARTS:
                self.log(f"the estimate missed {tried} times; confirming the most frugal strategy")
                break
            self.log(f"starting with {s.key()}: the fastest strategy the estimate predicts to fit at T={self.target}"
                     if not tried else f"trying {s.key()}: the next fastest the estimate predicts to fit")
            so = self._escalate(s, out)
            out.strategies[s.key()] = so
            done.append(s)
            if so.fit_max is not None:
                start = s
                break
            self.log(f"{s.key()} did not fit after all ({so.fail_status})")
        broken = False
        if start is None and self.frugal not in done and not self._exact_fits():
            first, broken = self._confirm_frugal(out)
            if first is None:
                return out
            done.append(self.frugal)
        for s in self.order:
            if s in done:
                continue
            if self.out_of_time():
                out.budget_exhausted = True
                break
            out.strategies[s.key()] = self._escalate(s, out)
        if broken and not any(r.ok for r in self.results.values()):
            out.note = f"no strategy ran; the first failure was {self._first_failure}"
        if explore is not None and not self.out_of_time():
            explore(self, out)
        self._confirm(out)
        self.outcome = out
        if out.winner is None and out.largest_fitting_max_token is not None:
            # The fresh check or the re-measurement took back what the escalation found: say so plainly.
            out.note = (f"nothing fits at max_token {self.target} once re-measured in a fresh worker "
                        f"(max_token {self.target} was the largest the escalation found to fit; the requested "
                        f"{self.requested} did not)")
        return out

    def _exact_fits(self) -> bool:
        """The exact family already fits at this max_token: nothing to confirm before escalating."""
        return any(so.fit_max for so in self._exact_outcomes())

    def _estimated_starts(self) -> Iterator[Strategy]:
        """Strategies faster than the most frugal whose estimated peak at the smallest micro-batch fits,
        fastest first."""
        if self.estimate is None:
            return
        for s in self.order:
            if s == self.frugal:
                return
            if any(t in self.order for t in dominating_twins(s)):
                continue  # its twin saves memory at no cost: never the better start
            if any(quantized_never_faster(s, f.strategy) and f.fit_max for f in self._exact_outcomes()):
                continue  # starts above its exact twin's wall, which _escalate finds
            est = self.estimate(s, self.mbs[0], self.target)
            if est is not None and est <= self.limits.limit * PREDICT_MARGIN:
                yield s

    def _exact_outcomes(self) -> list["StrategyOutcome"]:
        """The exact family's outcomes at this max_token (none for the exact family itself)."""
        o = self.exact.outcome if self.exact else None
        return list(o.strategies.values()) if o and o.max_token == self.target else []

    def _confirm_frugal(self, out: Outcome) -> tuple[ProbeResult | None, bool]:
        """The most frugal strategy, probed at the smallest shape and then escalated: whether anything can
        fit at all, and at which max_token. (None, _) when nothing fits at any max_token."""
        frugal = self.frugal
        self.log(f"confirming the most frugal strategy runs at all: {frugal.key()} mb={self.mbs[0]} T={self.target}")
        first = self.measure(frugal, self.mbs[0], self.target)
        broken = first.status in (Status.ERROR, Status.CRASH, Status.TIMEOUT)
        if broken:
            # Not a wall: that strategy is broken here (e.g. DeepSpeed cannot build an op). The others
            # may still run; if none does, the note says why.
            self._first_failure = f"{first.status.value}: {first.error}"
            self.log(f"{frugal.key()} failed ({first.status.value}): {first.error}; trying the other strategies")
            out.strategies[frugal.key()] = StrategyOutcome(strategy=frugal, max_token=self.target, fail_min=self.mbs[0],
                                                           fail_status=first.status.value)
            return first, True
        if not self.limits.fits(first):
            t = self._largest_fitting_max_token(frugal)
            out.largest_fitting_max_token = t
            if t is None:
                out.note = (f"nothing fits: even {frugal.key()} at micro-batch {self.mbs[0]} and the shortest "
                            f"max_token probed exceeds the memory budget")
                return None, False
            out.note = (f"nothing fits at max_token {self.target}; the largest max_token that fits is {t} "
                        f"({frugal.key()}); the search continued at {t}")
            out.max_token = self.target = t
        # Escalated in the worker that just confirmed it runs: its wall caps every faster strategy's
        # (they need at least as much memory).
        out.strategies[frugal.key()] = self._escalate(frugal, out)
        return first, False

    def open_cells(self, out: Outcome) -> list[tuple[Strategy, int]]:
        """Micro-batches the escalation jumped over that may still fit: what the sampler may explore."""
        t, cells = self.target, []
        for so in out.strategies.values():
            if so.skipped:
                continue
            model = memmodel.fit(self.ok_points(so.strategy))
            for mb in self.mbs:
                if any(k.strategy == so.strategy.key() and k.micro_batch == mb and k.max_token == t for k in self.results):
                    continue
                if so.fail_min is not None and mb >= so.fail_min:
                    continue  # monotone: it cannot fit
                if so.started_at is not None and mb < so.started_at:
                    continue  # a faster strategy covers it
                if not ((so.fit_max and mb < so.fit_max) or (model and model.predict(mb, t) <= self.limits.limit)):
                    continue
                if self._clearly_slower(so.strategy, mb, t):
                    continue
                cells.append((so.strategy, mb))
        return cells

    def _clearly_slower(self, s: Strategy, mb: int, t: int) -> bool:
        """Throughput rises with micro-batch until it flattens, so a cell between two measured
        neighbours cannot beat the upper one while the curve still rises (or is flat) there, and
        cannot be the winner if both are clearly (> noise) below the best. Only where the curve
        falls between them (it peaked in between, or noise) is the cell worth a probe."""
        curve = self.tokens_curve(s, t)
        best = max((r.tokens_per_s for r in self.results.values() if self.limits.fits(r)), default=0.0)
        below = [tps for m, tps in curve if m < mb]
        above = [tps for m, tps in curve if m > mb]
        if not below or not above:
            return False
        return above[0] >= below[-1] or max(below[-1], above[0]) < best * (1 - NOISE)

    def _largest_fitting_max_token(self, frugal: Strategy) -> int | None:
        shorter = [t for t in self.max_tokens if t < self.target] or [max(16, self.target // 2)]
        for t in sorted(shorter, reverse=True):
            if self.out_of_time():
                return None
            self.log(f"nothing fits at T={self.target}; trying T={t}")
            if self.limits.fits(self.measure(frugal, self.mbs[0], t)):
                return t
        return None

    def _escalate(self, s: Strategy, out: Outcome) -> StrategyOutcome:
        so = self._escalate_monotone(s, out)
        # Peaks rise with the micro-batch, except into no accumulation under ZeRO-1/2: Qwen2-7B full FT on
        # 2 x H200 peaked at 132.8 GiB at micro-batch 4 (2 micro-batches a step) and 128.0 GiB at 8 (one),
        # the fastest cell under the line (results/eval-2xh200-qwen2-7b-full-T2048-full-zero).
        if (self.no_accum and s.zero_stage in (1, 2) and so.fit_max is not None and so.memory_wall
                and so.fail_min < self.no_accum and not self.out_of_time()):
            self.log(f"{s.key()}: probing micro-batch {self.no_accum} past its wall at {so.fail_min}: with no gradient "
                     f"accumulation ZeRO-{s.zero_stage} can peak lower")
            if self.limits.fits(self.measure(s, self.no_accum, so.max_token)):
                so.fit_max = self.no_accum
        return so

    def _escalate_monotone(self, s: Strategy, out: Outcome) -> StrategyOutcome:
        t = self.target
        so = StrategyOutcome(strategy=s, max_token=t)
        twin = next((out.strategies[t.key()] for t in dominating_twins(s) if t.key() in out.strategies
                     and (out.strategies[t.key()].fit_max is not None or out.strategies[t.key()].skipped)), None)
        if twin is not None:
            # s is never faster and never leaner than its twin: whatever ruled the twin out rules s out too.
            so.skipped = (f"{twin.strategy.key()} ran, and differs only in a technique that saves memory at no "
                          "cost in speed" if twin.fit_max is not None else
                          f"{twin.strategy.key()} was skipped, and differs only in a technique that saves memory at "
                          "no cost in speed")
            self.log(f"skip {s.key()}: {so.skipped}")
            return so
        faster = ([out.strategies[k] for k in out.strategies if never_faster(s, out.strategies[k].strategy)]
                  + [f for f in self._exact_outcomes() if quantized_never_faster(s, f.strategy)])
        wall = max([f.fit_max or 0 for f in faster] + [f.inferred_fit or 0 for f in faster], default=0)
        for f in faster:
            curve = (self.exact if self.exact and f.strategy.exact != s.exact else self).tokens_curve(f.strategy, t)
            if _flat(curve):
                so.skipped = (f"cannot beat {f.strategy.key()}: its throughput is flat by micro-batch {curve[-1][0]} "
                              f"and {s.key()} is slower at equal micro-batch")
                self.log(f"skip {s.key()}: {so.skipped}")
                return so
        killed = self._host_killed_sibling(s)
        if killed:
            so.skipped = (f"{killed} was killed by SIGKILL (the host's OOM killer) before it ever ran; checkpointing "
                          f"does not change the host memory of ZeRO's offloaded state")
            self.log(f"skip {s.key()}: {so.skipped}")
            return so
        # Offload moves state over PCIe every step: wherever a strategy without it also fitted, offload's best
        # ran at 48% or less of that one's best (every grid and search in results/ with both).
        without = next((f for f in out.strategies.values() if f.fit_max is not None and not f.strategy.offloads), None)
        if s.offloads and without is not None:
            so.skipped = (f"ZeRO offload is the last resort, and {without.strategy.key()} fits without it "
                          f"(up to micro-batch {without.fit_max})")
            self.log(f"skip {s.key()}: {so.skipped}")
            return so
        above = [m for m in self.mbs if m > wall]
        if not above:
            so.skipped = f"a faster strategy already fits the largest micro-batch ({wall})"
            so.inferred_fit = wall  # bounds the strategies that extend this one, as an escalated one would
            self.log(f"skip {s.key()}: {so.skipped}")
            return so
        so.inferred_fit = wall or None
        i = self.mbs.index(above[0])
        so.started_at = self.mbs[i]
        # Frugal strategies already escalated bound this one's wall from above.
        ceiling = min([f.fail_min for f in out.strategies.values()
                       if f.memory_wall and never_more_memory(f.strategy, s)], default=None)
        if self._estimated_out(s, so, self.mbs[i], t):
            return so
        self.log(f"escalating {s.key()} at T={t} from micro-batch {self.mbs[i]}"
                 + (f" (below {ceiling}, the wall of a more frugal strategy)" if ceiling else ""))
        while i < len(self.mbs):
            if self.out_of_time():
                out.budget_exhausted = True
                return so
            if ceiling is not None and self.mbs[i] >= ceiling:
                so.fail_min, so.fail_status, so.predicted_fail = self.mbs[i], "implied by a more frugal strategy's wall", True
                return so
            # A family that is only reported (4/8-bit without --quantize) takes its wall where the model, with the
            # analytic slope standing in for a second point, puts it; --quantize probes it, as it may win.
            prior = self.slope_prior(s, t) if self.slope_prior and not self.decisive else None
            model = memmodel.fit(self.ok_points(s), prior) if so.fit_max else None
            over, why = (PREDICT_OVER, "") if self.decisive else (1.0, " (--quantize probes it)")
            if model is not None and model.predict(self.mbs[i], t) > self.limits.limit * over:
                so.fail_min, so.predicted_fail = self.mbs[i], True
                so.fail_status = f"predicted {model.predict(self.mbs[i], t) / 2**30:.1f} GiB > limit{why}"
                self.log(f"{s.key()}: mb={self.mbs[i]} predicted over the limit; wall taken without probing it{why}")
                return so
            r = self.measure(s, self.mbs[i], t)
            if not self.limits.fits(r):
                so.fail_min, so.fail_status = self.mbs[i], _why(r, self.limits)
                return so
            so.fit_max = self.mbs[i]
            j = self._jump_target(s, i, t, ceiling)
            if j is not None:
                r = self.measure(s, self.mbs[j], t)
                if self.limits.fits(r):
                    so.fit_max, i = self.mbs[j], j + 1
                    continue
                so.fail_min, so.fail_status = self.mbs[j], _why(r, self.limits)
                self._bisect(s, so, i + 1, j - 1, t)
                return so
            i += 1
        return so

    def _host_killed_sibling(self, s: Strategy) -> str | None:
        """The same ZeRO stage and offload with the other checkpointing setting, if every probe of it was
        killed by SIGKILL. Under offload that is the host's OOM killer (GPU OOM is an exception, not a
        signal), and the pinned fp32 master weights and Adam state do not depend on checkpointing: the
        sibling would be killed too, after minutes of building (results/search-2xh200-glm4-full-T1024)."""
        if not s.offloads:
            return None
        sibling = replace(s, grad_ckpt=not s.grad_ckpt).key()
        runs = [r for k, r in self.results.items() if k.strategy == sibling]
        if runs and all(r.status == Status.CRASH and "SIGKILL" in (r.error or "") for r in runs):
            return sibling
        return None

    def _estimated_out(self, s: Strategy, so: StrategyOutcome, mb: int, t: int) -> bool:
        """The estimate rules the strategy out from micro-batch mb up (monotone shapes), by a margin; a family
        that is only reported takes the estimate as it is, as it takes the memory model's walls."""
        if self.estimate is None or s == self.frugal:
            return False
        est = self.estimate(s, mb, t)
        over, why = (ESTIMATE_OVER, " by more than the estimate's error") if self.decisive else (1.0, "")
        if est is None or est <= self.limits.limit * over:
            return False
        so.fail_min, so.predicted_fail = mb, True
        so.fail_status = (f"estimated {est / 2**30:.1f} GiB at micro-batch {mb}, "
                          f"over the {self.limits.limit / 2**30:.1f} GiB limit{why}")
        self.log(f"skip {s.key()}: {so.fail_status} (autofit estimate); wall taken without probing it"
                 + ("" if self.decisive else " (--quantize probes it)"))
        return True

    def _jump_target(self, s: Strategy, i: int, t: int, ceiling: int | None = None) -> int | None:
        """Index of the largest micro-batch the model predicts to fit, if that skips at least one."""
        model = memmodel.fit(self.ok_points(s), self.slope_prior(s, t) if self.slope_prior else None)
        if model is None:
            return None
        best = None
        for j in range(i + 1, len(self.mbs)):
            if ceiling is not None and self.mbs[j] >= ceiling:
                break
            if model.predict(self.mbs[j], t) <= self.limits.limit * PREDICT_MARGIN:
                best = j
        return best if best is not None and best > i + 1 else None

    def _bisect(self, s: Strategy, so: StrategyOutcome, lo: int, hi: int, t: int) -> None:
        """The jump overshot: find the wall between the last fit (lo-1) and the failure (hi+1)."""
        while lo <= hi and not self.out_of_time():
            mid = (lo + hi + 1) // 2
            r = self.measure(s, self.mbs[mid], t)
            if self.limits.fits(r):
                so.fit_max, lo = self.mbs[mid], mid + 1
            else:
                so.fail_min, so.fail_status, hi = self.mbs[mid], _why(r, self.limits), mid - 1

    def _confirm(self, out: Outcome) -> None:
        """Re-measure the candidates within noise of the best; the median decides."""
        t = self.target
        fitting = [(k.strategy, k.micro_batch, r) for k, r in self.results.items()
                   if k.max_token == t and k.phase in ("escalate", "explore") and self.limits.fits(r)]
        if not fitting:
            if not out.note:
                out.note = f"no configuration fits at max_token {t} within the budget and headroom"
            return
        fitting.sort(key=lambda x: -x[2].tokens_per_s)
        lead, best = fitting[0][:2], fitting[0][2].tokens_per_s
        # Not a contender: the leader's own strategy at a smaller micro-batch within noise of it. Throughput does
        # not fall as the micro-batch grows until memory runs short, and the fresh check re-measures the leader.
        close = [x for x in fitting if x[2].tokens_per_s >= best * (1 - NOISE)
                 and not (x[0] == lead[0] and x[1] < lead[1])][: self.confirm_top]
        scored = []
        for k, mb, r0 in close:
            runs = [r0]
            if len(close) > 1 and self.decisive and not self.out_of_time():
                runs.append(self.measure(self.by_key[k], mb, t, phase="confirm", repeat=1))
            ok_runs = [r for r in runs if r.ok]
            peak = max(peak_of(r) or 0 for r in ok_runs)
            if len(ok_runs) < len(runs) or peak > self.limits.limit:
                self.log(f"{k} mb={mb} failed its re-measurement or crossed the headroom: not a candidate")
                continue
            scored.append(Candidate(k, mb, statistics.median(r.tokens_per_s for r in ok_runs), peak))
        confirmed = {(k, mb) for k, mb, _ in close}
        scored += [Candidate(k, mb, r.tokens_per_s, peak_of(r)) for k, mb, r in fitting if (k, mb) not in confirmed]
        scored.sort(key=lambda x: -x[2])
        if self.decisive:
            scored = self._fresh_check(scored, t)
        out.candidates = scored
        if scored:
            k, mb, tps, peak = scored[0]
            out.winner, out.winner_tokens_per_s, out.winner_peak = (self.by_key[k], mb), tps, peak

    def _fresh_check(self, scored: list[Candidate], t: int) -> list[Candidate]:
        """The leading candidate measured alone in a fresh worker; one that does not fit there is dropped
        and the next is checked (at most confirm_top). The peak kept is the larger of the two measurements."""
        tried = 0
        while scored and tried < self.confirm_top and not self.out_of_time():
            k, mb, tps, peak = scored[0]
            tried += 1
            r = self.measure(self.by_key[k], mb, t, phase="fresh")
            if r.ok and self.limits.fits(r):
                # Its tokens/s joins the earlier figure (offloaded steps vary by 10% from run to run).
                scored[0] = Candidate(k, mb, statistics.median((tps, r.tokens_per_s)), max(peak, peak_of(r) or 0))
                break
            if not r.ok and r.status != Status.OOM:
                # A crash, error or timeout says nothing about memory (and a probe in flight on another
                # worker is no result yet: the driver replays the pass once it is in).
                self.log(f"{k} mb={mb}: the fresh-worker check did not finish ({r.status.value}: {r.error}); "
                         "the escalation's figure stands")
                break
            self.log(f"{k} mb={mb} " + (f"needs {(peak_of(r) or 0) / 2**30:.2f} GiB in a fresh worker, over the "
                                        f"{self.limits.limit / 2**30:.2f} GiB limit" if r.ok else "ran out of memory in a fresh worker")
                     + ": not a candidate")
            scored = scored[1:]
        return scored


def _flat(curve: list[tuple[int, float]]) -> bool:
    """Throughput gained less than SATURATION_GAIN over at least two doublings of micro-batch up to the last
    point: one doubling's gain is within run-to-run noise (results/eval-h200-qwen2-7b-lora-T4096-24GiB-auto-r4
    read one as flat, and its 4-bit twin then ran 7% faster at micro-batch 4)."""
    if len(curve) < 2:
        return False
    last_mb, last = curve[-1]
    return any(mb * 4 <= last_mb and last < tps * SATURATION_GAIN for mb, tps in curve[:-1])


def families(strategies: list[Strategy]) -> dict[str, list[Strategy]]:
    """The exact strategies and the 4/8-bit ones, each planned on its own (their speeds and walls do not
    bound each other's); exact first, so a short budget still answers the question asked."""
    split = {"exact": [s for s in strategies if s.exact], "quantized": [s for s in strategies if not s.exact]}
    return {name: f for name, f in split.items() if f}


def combine(exact: Outcome | None, quantized: Outcome | None, quantize: bool) -> Outcome:
    """One answer from the families' outcomes. The winner is exact unless `quantize` allows a faster
    quantized one; the best of the other family is kept as the alternative either way."""
    if exact is None or quantized is None:
        return exact or quantized
    pick, other = exact, quantized
    if quantize and quantized.winner is not None and (exact.winner is None
                                                      or quantized.winner_tokens_per_s > exact.winner_tokens_per_s):
        pick, other = quantized, exact
    out = replace(pick, strategies={**other.strategies, **pick.strategies},
                  budget_exhausted=exact.budget_exhausted or quantized.budget_exhausted)
    out.alternative = other.candidates[0] if other.winner is not None and other.candidates else None
    return out


def _why(r: ProbeResult, limits: Limits) -> str:
    if r.ok:
        return f"over headroom ({(peak_of(r) or 0) / 2**30:.2f} GiB > {limits.limit / 2**30:.2f} GiB)"
    return r.status.value
