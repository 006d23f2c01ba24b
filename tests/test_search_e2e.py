"""End to end on the CPU: `autofit search` with a tiny real model and real workers, every output file,
then `autofit verify`, which trains the winner through HF Trainer with the exported settings."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from autofit.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("e2e") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    result = CliRunner().invoke(cli, ["search", "--model", "autofit/tiny-qwen2", "--max-token", "64", "--space", "cpu-tiny",
                                      "--global-batch", "8", "--run-dir", str(run), "--budget", "5m"])
    mp.undo()
    return run, result


def test_search_writes_every_output(cpu_run):
    run, result = cpu_run
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
    assert meta["context"]["device"] == "cpu"  # fields from the start of the run survive its end
    # The exported arguments are the ones TrainingArguments takes.
    from transformers import TrainingArguments

    TrainingArguments(**best["training_args"])


def test_verify_trains_the_winner_through_hf_trainer(cpu_run):
    run, _ = cpu_run
    result = CliRunner().invoke(cli, ["verify", str(run), "--steps", "4"])
    assert result.exit_code == 0, result.output + str(result.exception)
    v = json.loads((run / "verify.json").read_text())
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert v["strategy"] == best["config"]["strategy"] and v["steps"] == 4
    assert v["tokens_per_s"] > 0 and v["peak_gib"] > 0 and v["passed"]
    assert v["peak_gib"] < v["budget_gib"]


def test_verify_bad_inputs(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    nobest = runner.invoke(cli, ["verify", str(tmp_path / "empty")])
    assert nobest.exit_code == 2 and "no winner to verify" in nobest.stderr


def test_verify_refuses_a_winner_searched_across_machines(tmp_path):
    import shutil
    from pathlib import Path

    run = tmp_path / "multi"
    shutil.copytree(Path(__file__).resolve().parent.parent / "results" / "bench-h100-glm4-lora-T1024" / "search", run)
    doc = yaml.safe_load((run / "best.yaml").read_text())
    doc["hardware"]["hosts"] = ["node-1 slots=8", "node-2 slots=8"]
    (run / "best.yaml").write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(cli, ["verify", str(run)])
    assert r.exit_code == 2 and "across machines" in r.stderr and "deepspeed --hostfile" in r.stderr
    assert r.stderr.strip().count("\n") == 0
