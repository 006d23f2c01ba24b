"""`autofit verify RUN_DIR`: train the winner for longer through HF Trainer and compare with the search."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from autofit.errors import handles_errors
from autofit.verify import PEAK_TOLERANCE, VerifyArgs, VerifyFailed, _load_best, verify_run


def run_verify(args: VerifyArgs) -> None:
    """Verify, then print and record the comparison (rank 0 records it when the ranks run under torchrun)."""
    from autofit.probe.worker import dist_env
    from autofit.writable import check_writable, write_text

    rank, world, _ = dist_env()
    record = args.run_dir / "verify.json"
    _load_best(args.run_dir)
    if rank == 0:
        check_writable(record)  # before minutes of training, not after
    v = verify_run(args.run_dir, args.steps, args.tolerance)
    if world > 1:
        if rank == 0:  # one record; the parent prints it
            write_text(record, json.dumps(asdict(v), indent=2))
        return
    click.echo(f"verify {v.strategy} mb={v.micro_batch} T={v.max_token}, {v.steps} steps through HF Trainer on {v.device}:")
    elsewhere = f" on {v.search_device}" if v.search_device else ""
    click.echo(f"  tokens/s {v.tokens_per_s:.1f} (search measured {v.probe_tokens_per_s}{elsewhere}, ratio {v.tokens_per_s_ratio:.3f})")
    click.echo(f"  peak {v.peak_gib:.2f} GiB (search measured {v.probe_peak_gib}, {v.peak_diff:+.1%}; budget {v.budget_gib} GiB)")
    if v.peak_allocated_gib is not None and v.peak_reserved_gib is not None:
        click.echo(f"  allocated {v.peak_allocated_gib:.2f} GiB (probe {v.probe_peak_allocated_gib}), "
                   f"reserved {v.peak_reserved_gib:.2f} GiB (probe {v.probe_peak_reserved_gib})")
    write_text(record, json.dumps(asdict(v), indent=2))
    click.echo(f"wrote {record}")
    if not v.passed:
        raise VerifyFailed("verify failed: " + "; ".join(v.problems))


@click.command("verify")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--steps", type=int, default=200, show_default=True, help="Optimizer steps to train the winner for.")
@click.option("--tolerance", type=float, default=PEAK_TOLERANCE, show_default=True,
              help="Largest allowed relative difference between this run's peak and the probe's.")
@handles_errors
def verify(**flags) -> None:
    """Train the winner for longer through HF Trainer and check peak memory and speed against the search."""
    run_verify(VerifyArgs(**flags))
