"""`autofit probe --loss/--quant/--optim`: combinations that cannot run are refused before any probe, with
Strategy.problems()' or capabilities.missing()'s reason, as one line and exit code 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from autofit.cli import cli

PROBE = ["probe", "--model", "autofit/tiny-qwen2", "--device", "cpu", "--max-token", "32"]


@pytest.mark.parametrize("flags,fragment", [
    (["--quant", "nf4", "--method", "full"], "only LoRA trains on them"),
    (["--quant", "int8", "--precision", "fp32"], "precision must be bf16-pure"),
    (["--optim", "adamw8bit", "--method", "full", "--zero", "2"], "adamw8bit is a torch optimizer for the plain (ZeRO-0) path"),
    (["--loss", "fused"], "needs a CUDA GPU"),
    (["--quant", "nf4"], "probed on CUDA GPUs only"),
], ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_a_strategy_that_cannot_run_is_a_usage_error(flags, fragment):
    r = CliRunner().invoke(cli, [*PROBE, *flags])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("autofit: error: cannot probe ") and fragment in r.stderr
    assert "Traceback" not in r.output


def test_the_flags_defaults_are_strategy_s_own():
    from autofit.commands.probe import ProbeArgs
    from autofit.spec import Strategy

    assert ProbeArgs(model="autofit/tiny-qwen2", device="cpu").strategy() == Strategy()
    flags = cli.commands["probe"].make_context("probe", PROBE[1:]).params  # what the command gets with no strategy flag
    assert ProbeArgs(**flags).strategy() == Strategy()
