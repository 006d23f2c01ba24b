"""What a search leaves behind, built from its results: the boundaries, the best.yaml document and the
summary table (autofit.rundir writes the files)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from autofit.rundir import records
from autofit.rundir.records import BOUNDARY_COLUMNS
from autofit.search.planner import Limits, Outcome, peak_of
from autofit.spec import Context, ProbeKey, ProbeResult, Shape, Strategy
from autofit.trainconfig import (
    deepspeed_config, fused_loss_settings, model_dtype, peft_config, quantization_config, training_args,
)


def _gib(x: float | None) -> float | str:
    return "" if x is None else round(x / 2**30, 3)


def boundary_rows(results: dict[ProbeKey, ProbeResult], limits: Limits, outcome: Outcome | None = None) -> list[dict[str, Any]]:
    """Per strategy and max_token: the largest micro-batch that fits and the first that does not."""
    cells: dict[tuple[str, int], dict[int, ProbeResult]] = defaultdict(dict)
    for key, r in results.items():
        prev = cells[(key.strategy, key.max_token)].get(key.micro_batch)
        if prev is None or (prev.ok and not r.ok):  # a failure at a shape outranks an earlier success
            cells[(key.strategy, key.max_token)][key.micro_batch] = r
    rows = []
    for (k, t), by_mb in sorted(cells.items()):
        fits = [mb for mb, r in by_mb.items() if limits.fits(r)]
        fit_max = max(fits) if fits else None
        fails = [mb for mb, r in by_mb.items() if not limits.fits(r) and (fit_max is None or mb > fit_max)]
        fail_min = min(fails) if fails else None
        fr = by_mb.get(fail_min) if fail_min is not None else None
        rows.append({
            "strategy": k, "max_token": t, "largest_fit_micro_batch": fit_max,
            "largest_fit_peak_gib": _gib(peak_of(by_mb[fit_max])) if fit_max else "",
            "first_fail_micro_batch": fail_min,
            "first_fail_status": ("" if fr is None else ("over-headroom" if fr.ok else fr.status.value)),
            "first_fail_peak_gib": _gib(peak_of(fr)) if fr is not None and fr.ok else "",
            "first_fail_source": "measured" if fr is not None else "",
            "budget_gib": _gib(limits.budget), "limit_gib": _gib(limits.limit),
        })
    # Walls the memory model, the estimate or a more frugal strategy's wall settled without a probe;
    # a strategy the estimate ruled out has no probe at all, and gets its row here.
    seen = {(row["strategy"], row["max_token"]) for row in rows}
    for so in (outcome.strategies.values() if outcome else ()):
        if so.predicted_fail and (so.strategy.key(), so.max_token) not in seen:
            rows.append({**dict.fromkeys(BOUNDARY_COLUMNS, ""), "strategy": so.strategy.key(), "max_token": so.max_token,
                         "largest_fit_micro_batch": None, "first_fail_micro_batch": None,
                         "budget_gib": _gib(limits.budget), "limit_gib": _gib(limits.limit)})
    for row in rows:
        so = outcome.strategies.get(row["strategy"]) if outcome else None
        if so and so.predicted_fail and so.max_token == row["max_token"] and row["first_fail_micro_batch"] is None:
            source = "estimated" if so.fail_status.startswith("estimated") else "predicted"
            row.update(first_fail_micro_batch=so.fail_min, first_fail_status=so.fail_status, first_fail_source=source)
    rows.sort(key=lambda r: (r["strategy"], r["max_token"]))
    return rows


def write_boundaries(path: Path, results: dict[ProbeKey, ProbeResult], limits: Limits, outcome: Outcome | None = None) -> None:
    records.write_boundaries(path, boundary_rows(results, limits, outcome))


def alternative_document(out: Outcome) -> dict[str, Any] | None:
    """The best of the other family (exact vs 4/8-bit), with its speed against the winner's."""
    if out.alternative is None:
        return None
    alt = out.alternative
    s = Strategy.from_key(alt.strategy)
    doc = {"strategy": alt.strategy, "numerics": "exact" if s.exact else "quantized", "micro_batch": alt.micro_batch,
           "tokens_per_s": round(alt.tokens_per_s, 1), "peak_gib": _gib(alt.peak)}
    if out.winner_tokens_per_s:
        doc["speedup_vs_winner"] = round(alt.tokens_per_s / out.winner_tokens_per_s, 2)
    return doc


def alternative_line(out: Outcome) -> str | None:
    """One sentence on the other family's best: how much faster (or slower) it trains, and how to get it."""
    alt = alternative_document(out)
    if alt is None:
        return None
    s = Strategy.from_key(alt["strategy"])
    what = {"nf4": "QLoRA (nf4)", "int8": "LoRA on int8 weights"}.get(s.quant, "8-bit Adam" if s.optim != "adamw" else "exact")
    if out.winner is None:
        return (f"{what} fits: {alt['strategy']} at micro-batch {alt['micro_batch']}, {alt['tokens_per_s']} tokens/s, "
                f"{alt['peak_gib']} GiB; rerun with --quantize to make it the answer")
    speed = alt["speedup_vs_winner"]
    if alt["numerics"] == "quantized":
        if speed > 1:
            return (f"{what} trains {speed:.1f}x faster at micro-batch {alt['micro_batch']} ({alt['strategy']}, "
                    f"{alt['peak_gib']} GiB); rerun with --quantize to make it the winner")
        return f"{what} is no faster ({speed:.2f}x at micro-batch {alt['micro_batch']}, {alt['strategy']}): the exact winner stands"
    return (f"the fastest exact configuration, {alt['strategy']} at micro-batch {alt['micro_batch']}, trains at "
            f"{speed:.2f}x the winner's speed")


def best_document(out: Outcome, ctx: Context, source, limits: Limits, results: dict[ProbeKey, ProbeResult],
                  space_name: str, wall_time_s: float, probes_run: int,
                  unavailable: list[str] | None = None) -> dict[str, Any] | None:
    if out.winner is None:
        return None
    s, mb = out.winner
    shape = Shape(mb, out.max_token)
    measured = [r for k, r in results.items() if k.shape == shape and k.strategy == s.key() and r.ok]
    r0 = max(measured, key=lambda r: peak_of(r) or 0)
    ds = deepspeed_config(s, ctx, shape, hf_auto=True, hidden_size=source.config.get("hidden_size"))
    doc = {
        "autofit": "best configuration: the fastest measured config that fits with the headroom",
        "model": {"id": source.name, "origin": source.origin, "architecture": source.architecture,
                  "weights_probed": ctx.weights, "torch_dtype": model_dtype(s, ctx.num_gpus),
                  "attn_implementation": "sdpa", "trust_remote_code": source.trust_remote_code},
        "hardware": {"device": ctx.device, "gpu": r0.device_name, "num_gpus": ctx.num_gpus, "gpus": list(ctx.gpus),
                     **({"hosts": [f"{h} slots={n}" for h, n in ctx.hosts]} if ctx.hosts else {}),
                     "memory_budget_gib": _gib(limits.budget), "headroom": limits.headroom,
                     "limit_gib": _gib(limits.limit), "emulated_gpu_memory": ctx.gpu_memory is not None},
        "search": {"space": space_name, "max_token_requested": out.requested_max_token, "global_batch": ctx.global_batch,
                   "probes_run": probes_run, "wall_time_s": round(wall_time_s, 1), "note": out.note or None,
                   "budget_exhausted": out.budget_exhausted, **({"unavailable": unavailable} if unavailable else {})},
        "config": {"method": s.method.kind, **({"lora_r": s.method.lora_r, "lora_alpha": s.method.lora_alpha} if s.method.kind == "lora" else {}),
                   **({"freeze_trainable_layers": s.method.freeze_trainable_layers} if s.method.kind == "freeze" else {}),
                   "precision": s.precision, "gradient_checkpointing": s.grad_ckpt, "zero_stage": s.zero_stage,
                   "offload_optimizer": s.offload_optimizer, "offload_params": s.offload_params,
                   "loss": s.loss, "quant": s.quant, "optim": s.optim,
                   "max_token": out.max_token, "micro_batch": mb, "gradient_accumulation": ctx.grad_accum(mb),
                   "strategy": s.key(), "numerics": out.numerics},
        "measured": {"tokens_per_s": round(out.winner_tokens_per_s, 1), "step_s": r0.step_s,
                     "micro_step_s": r0.micro_step_s, "optimizer_step_s": r0.optimizer_step_s,
                     "peak_gib": _gib(out.winner_peak), "peak_allocated_gib": _gib(r0.peak_allocated),
                     "peak_reserved_gib": _gib(r0.peak_reserved), "nvml_peak_gib": _gib(r0.nvml_peak),
                     "host_peak_gib": _gib(r0.host_peak), "measurements": len(measured)},
        "training_args": training_args(s, ctx, shape, "ds_config.json" if ds else None),
        "deepspeed": ds,
        "peft": peft_config(s, source.lora_targets),
        "quantization_config": quantization_config(s),
        "fused_loss": fused_loss_settings(s),
        "alternative": alternative_document(out),
        "runner_up": [{"strategy": c.strategy, "micro_batch": c.micro_batch, "tokens_per_s": round(c.tokens_per_s, 1),
                       "peak_gib": _gib(c.peak)} for c in out.candidates[1:5]],
    }
    return doc


def summary_table(out: Outcome, results: dict[ProbeKey, ProbeResult], limits: Limits) -> str:
    lines = [f"{'strategy':40s} {'T':>6s} {'fits up to':>10s} {'first fail':>18s} {'best tok/s':>11s} {'peak GiB':>9s}"]
    rows = {(r["strategy"], r["max_token"]): r for r in boundary_rows(results, limits, out)}
    for (k, t), b in sorted(rows.items()):
        ok = [(r.tokens_per_s, peak_of(r)) for key, r in results.items()
              if key.strategy == k and key.max_token == t and limits.fits(r)]
        best = max(ok) if ok else None
        fail = "-"
        if b["first_fail_micro_batch"]:
            fail = f"mb={b['first_fail_micro_batch']} " + (b["first_fail_source"] if b["first_fail_source"] in ("predicted", "estimated") else b["first_fail_status"])
        lines.append(f"{k:40s} {t:6d} {str(b['largest_fit_micro_batch'] or '-'):>10s} {fail:>18s} "
                     f"{(f'{best[0]:.1f}' if best else '-'):>11s} {(f'{best[1] / 2**30:.2f}' if best else '-'):>9s}")
    for k, so in out.strategies.items():
        if so.skipped:
            lines.append(f"{k:40s} skipped: {so.skipped}")
    alt = alternative_line(out)
    if alt:
        lines += ["", alt]
    return "\n".join(lines)
