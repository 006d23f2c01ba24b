"""End to end on the CPU: `autofit search` with a tiny real model, real workers, every output file."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from autofit.cli import cli

pytestmark = pytest.mark.slow


def test_search_writes_every_output(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--model", "autofit/tiny-qwen2", "--max-token", "64", "--space", "cpu-tiny",
                                      "--global-batch", "8", "--run-dir", str(run), "--budget", "5m"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "best: lora-r4/fp32/" in result.stdout and "wrote" in result.stdout
    assert "probe " in result.stderr  # live progress went to stderr
    for name in ("probes.csv", "boundaries.csv", "best.yaml", "run.json", "study.db"):
        assert (run / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(run / "probes.csv")))
    assert rows and all(r["status"] == "ok" and float(r["tokens_per_s"]) > 0 for r in rows)
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert best["config"]["max_token"] == 64 and best["measured"]["tokens_per_s"] > 0
    assert best["hardware"]["device"] == "cpu" and best["model"]["weights_probed"] == "random"
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and meta["versions"]["transformers"] == "4.40.2"
    # The exported arguments are the ones TrainingArguments takes.
    from transformers import TrainingArguments

    TrainingArguments(**best["training_args"])
