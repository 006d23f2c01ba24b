"""What the tables and figures share: probes grouped into cells (the worst outcome at a shape), one
row per strategy and max_token, and a strategy key in words."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from autofit.report.load import SEVERITY, Probe, Run, Wall
from autofit.spec import Strategy


@dataclass(frozen=True)
class Cell:
    """All probes of one (strategy, max_token, micro_batch): the worst outcome, the max peak, the mean speed."""

    outcome: str
    status: str
    peak_gib: float | None
    tokens_per_s: float | None
    n: int
    error: str


def cells(probes: tuple[Probe, ...]) -> dict[tuple[str, int, int], Cell]:
    groups: dict[tuple[str, int, int], list[Probe]] = {}
    for p in probes:
        groups.setdefault((p.strategy, p.max_token, p.micro_batch), []).append(p)
    out = {}
    for key, ps in groups.items():
        worst = max(ps, key=lambda p: SEVERITY[p.outcome])
        ok = [p for p in ps if p.status == "ok"]
        peaks = [p.peak_gib for p in ok if p.peak_gib is not None]
        speeds = [p.tokens_per_s for p in ok if p.tokens_per_s is not None]
        out[key] = Cell(worst.outcome, worst.status, max(peaks) if peaks else None,
                        statistics.fmean(speeds) if speeds else None, len(ps), worst.error)
    return out


@dataclass(frozen=True)
class StrategyRow:
    strategy: str
    max_token: int
    fit_mb: int | None
    fit_peak: float | None
    fail_mb: int | None
    fail_why: str
    fail_source: str           # measured | predicted | ""
    best_tps: float | None
    best_mb: int | None
    max_tried: int | None
    n_probes: int


def strategy_rows(run: Run) -> list[StrategyRow]:
    """Per strategy and max_token: largest fit, first failure (measured, else the predicted wall), best speed."""
    cs = cells(run.probes)
    walls = {(w.strategy, w.max_token): w for w in run.walls}
    keys = sorted({(k, t) for k, t, _ in cs} | set(walls), key=lambda kt: (run.strategies().index(kt[0]), kt[1]))
    rows = []
    for k, t in keys:
        mine = {mb: c for (kk, tt, mb), c in cs.items() if kk == k and tt == t}
        fits = [mb for mb, c in mine.items() if c.outcome == "fits"]
        fit_mb = max(fits) if fits else None
        fails = [mb for mb, c in mine.items() if c.outcome != "fits" and (fit_mb is None or mb > fit_mb)]
        best = max(fits, key=lambda mb: mine[mb].tokens_per_s or 0) if fits else None
        row = dict(strategy=k, max_token=t, fit_mb=fit_mb, fit_peak=mine[fit_mb].peak_gib if fit_mb else None,
                   best_tps=mine[best].tokens_per_s if best else None, best_mb=best, max_tried=max(mine, default=None),
                   n_probes=sum(c.n for c in mine.values()))
        if fails:
            mb = min(fails)
            rows.append(StrategyRow(**row, fail_mb=mb, fail_why=_why(mine[mb], run.limit_gib), fail_source="measured"))
        elif (k, t) in walls:
            w = walls[(k, t)]
            rows.append(StrategyRow(**row, fail_mb=w.micro_batch, fail_why=_why_predicted(w, run.limit_gib),
                                    fail_source="predicted"))
        else:
            rows.append(StrategyRow(**row, fail_mb=None, fail_why="", fail_source=""))
    return rows


def _why(c: Cell, limit: float | None) -> str:
    if c.outcome == "oom":
        return "ran out of memory (OOM)"
    if c.outcome == "over":
        lim = f" {limit:.2f} GiB" if limit is not None else ""
        return f"ran, but peaked at {fmt(c.peak_gib)} GiB, over the{lim} headroom limit"
    first = c.error.strip().splitlines()[0][:90] if c.error.strip() else ""
    return f"{c.status}" + (f": {first}" if first else "")


def _why_predicted(w: Wall, limit: float | None) -> str:
    lim = f" {limit:.2f} GiB" if limit is not None else ""
    if w.predicted_gib is not None and w.reason.startswith("estimated"):
        margin = " by more than the estimate's measured error" if "by more than" in w.reason else ""
        return f"not run: autofit estimate puts it at {w.predicted_gib:.1f} GiB, over the{lim} limit{margin}"
    if w.predicted_gib is not None:
        return f"not run: the memory model predicts {w.predicted_gib:.1f} GiB, over the{lim} limit"
    return f"not run: {w.reason}"


PRECISION_WORDS = {"bf16-pure": "bf16 weights", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision",
                   "fp32": "fp32"}
QUANT_WORDS = {"nf4": "4-bit NF4 base weights (QLoRA)", "int8": "8-bit base weights (LLM.int8)"}


def describe_strategy(key: str) -> str:
    """'lora-r8/bf16-pure/nf4/ckpt/z0/fused' -> 'LoRA rank 8, bf16 weights, 4-bit NF4 base weights (QLoRA),
    gradient checkpointing, no ZeRO, fused cross-entropy': every dimension, read by Strategy.from_key."""
    try:
        s = Strategy.from_key(key)
    except ValueError:
        return key  # a key this version cannot read (a newer autofit's): shown as written
    m = s.method
    words = [{"lora": f"LoRA rank {m.lora_r}", "full": "full fine-tuning",
              "freeze": f"only the last {m.freeze_trainable_layers} blocks trained"}[m.kind], PRECISION_WORDS[s.precision]]
    if s.quant != "none":
        words.append(QUANT_WORDS[s.quant])
    words += ["gradient checkpointing" + (" with activations offloaded to CPU" if s.act_offload else "")
              if s.grad_ckpt else "no checkpointing",
              "no ZeRO" if s.zero_stage == 0 else f"DeepSpeed ZeRO-{s.zero_stage}"]
    words += [w for w, on in (("optimizer state on CPU", s.offload_optimizer), ("weights on CPU", s.offload_params),
                              ("fused cross-entropy", s.loss == "fused"), ("8-bit AdamW", s.optim == "adamw8bit")) if on]
    return ", ".join(words)


def fmt(x: float | None, spec: str = ".2f") -> str:
    """A number for a table: empty when unknown."""
    return "" if x is None else format(x, spec)
