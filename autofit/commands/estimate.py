"""`autofit estimate`: each strategy's predicted peak memory, without a GPU."""

from __future__ import annotations

from pathlib import Path

import click

from autofit.errors import handles_errors
from autofit.estimate import EstimateArgs, estimate_for, render
from autofit.spec import METHODS


@click.command("estimate")
@click.option("--model", required=True, help="Hub id (e.g. THUDM/glm-4-9b-chat), local directory, or built-in table name.")
@click.option("--max-token", type=int, required=True, help="Sequence length of every sample.")
@click.option("--gpu-memory", default="24GiB", show_default=True, help="Memory of one GPU, e.g. 24GiB, 80GB.")
@click.option("--global-batch", type=int, default=32, show_default=True, help="Samples per optimizer step (caps the micro-batch).")
@click.option("--space", default="default", show_default=True, help="Search space: a YAML file or a shipped name (search_spaces/).")
@click.option("--method", type=click.Choice(list(METHODS)), default=None, help="Override the space's method.")
@click.option("--num-gpus", type=int, default=1, show_default=True, help="GPUs the run would use (ZeRO shards over them).")
@click.option("--headroom", type=float, default=0.08, show_default=True, help="Fraction of memory kept free, as in search.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Calibrate each strategy on the peaks measured in this search's run directory.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own modelling code.")
@handles_errors
def estimate(**flags) -> None:
    """Predict each strategy's peak memory and wall without a GPU (an estimate; 'search' measures)."""
    click.echo(render(estimate_for(EstimateArgs(**flags))))
