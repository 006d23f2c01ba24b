"""End to end on the CPU: `autofit search` with a tiny real model and real workers, run through the Python
API (autofit.search), every output file and the winner the API hands back, then `autofit verify`, which
trains the winner through HF Trainer with the exported settings."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import autofit
from autofit.cli import cli

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class CpuRun:
    path: Path
    run: autofit.Run | None  # what autofit.search returned; None if it raised
    stdout: str
    stderr: str
    error: BaseException | None


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> CpuRun:
    """One real search for every test here (each costs tens of seconds of worker starts)."""
    path = tmp_path_factory.mktemp("e2e") / "run"
    out, err = io.StringIO(), io.StringIO()
    run, error = None, None
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run = autofit.search(model="autofit/tiny-qwen2", max_token=64, space="cpu-tiny", global_batch=8,
                                 run_dir=path, budget="5m", quiet=False)
    except Exception as exc:  # noqa: BLE001 - each test fails on it with what the search printed
        error = exc
    finally:
        mp.undo()
    return CpuRun(path, run, out.getvalue(), err.getvalue(), error)


def test_search_writes_every_output(cpu_run):
    run = cpu_run.path
    assert cpu_run.error is None, f"{cpu_run.error!r}\n{cpu_run.stderr[-3000:]}"
    assert "best (exact): lora-r4/fp32/" in cpu_run.stdout and "wrote" in cpu_run.stdout
    assert "probe " in cpu_run.stderr  # live progress went to stderr
    for name in ("probes.csv", "boundaries.csv", "best.yaml", "run.json", "study.db"):
        assert (run / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(run / "probes.csv")))
    assert rows and all(r["status"] == "ok" and float(r["tokens_per_s"]) > 0 for r in rows)
    # Every worker it started ran a probe: no standby is spawned after the last one (the fresh check).
    assert len(list((run / "probe_io").glob("w*"))) == len({r["worker_pid"] for r in rows})
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert best["config"]["max_token"] == 64 and best["measured"]["tokens_per_s"] > 0
    assert best["hardware"]["device"] == "cpu" and best["model"]["weights_probed"] == "random"
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and meta["versions"]["transformers"] == "4.40.2"
    assert meta["context"]["device"] == "cpu"  # fields from the start of the run survive its end
    # The exported arguments are the ones TrainingArguments takes.
    from transformers import TrainingArguments

    TrainingArguments(**best["training_args"])


def test_the_api_returns_the_winner(cpu_run, tmp_path):
    assert cpu_run.error is None, f"{cpu_run.error!r}\n{cpu_run.stderr[-3000:]}"
    run, best = cpu_run.run, yaml.safe_load((cpu_run.path / "best.yaml").read_text())
    assert run.path == cpu_run.path.resolve() and run.strategy == best["config"]["strategy"]
    assert run.max_token == 64 and run.tokens_per_s == best["measured"]["tokens_per_s"] > 0
    assert run.training_arguments(output_dir=str(tmp_path / "o")).per_device_train_batch_size == \
        best["config"]["micro_batch"]


def test_verify_trains_the_winner_through_hf_trainer(cpu_run):
    run = cpu_run.path
    result = CliRunner().invoke(cli, ["verify", str(run), "--steps", "4"])
    assert result.exit_code == 0, result.output + str(result.exception)
    v = json.loads((run / "verify.json").read_text())
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert v["strategy"] == best["config"]["strategy"] and v["steps"] == 4
    assert v["tokens_per_s"] > 0 and v["peak_gib"] > 0 and v["passed"]
    assert v["peak_gib"] < v["budget_gib"]
    # The device it trained on, as the probes name it; the search's only when it was another.
    assert v["device"] == best["hardware"]["gpu"] and v["device"].startswith("cpu (") and v["search_device"] is None
    # The search measured its winner once more, alone in a fresh worker (a new pid, one row).
    rows = list(csv.DictReader(open(run / "probes.csv")))
    fresh = [r for r in rows if r["phase"] == "fresh"]
    assert len(fresh) == 1 and [r["worker_pid"] for r in rows].count(fresh[0]["worker_pid"]) == 1
    assert (fresh[0]["strategy"], int(fresh[0]["micro_batch"])) == (best["config"]["strategy"], best["config"]["micro_batch"])
    # live vs cached memory, on a GPU (None on the CPU), beside the probe's own figures from best.yaml
    assert v["peak_allocated_gib"] is None and v["probe_peak_allocated_gib"] == best["measured"]["peak_allocated_gib"]


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


def test_verify_masks_the_gpus_the_search_used_so_hf_trainer_never_falls_back_to_dataparallel():
    from autofit.errors import UsageError
    from autofit.verify import visible_gpus

    assert visible_gpus((2, 3), {}) == "2,3"  # the machine's numbering, as best.yaml records it
    assert visible_gpus((2,), {"CUDA_VISIBLE_DEVICES": "5,6"}) == "5"  # an outer mask wins
    assert visible_gpus((0, 1), {"CUDA_VISIBLE_DEVICES": "4, 5,6"}) == "4,5"
    assert visible_gpus((2, 3), {}, installed=4) == "2,3"
    assert visible_gpus((2, 3), {}, installed=2) == "0,1"  # searched on a bigger machine: the first two stand in
    try:
        visible_gpus((0, 1), {"CUDA_VISIBLE_DEVICES": "3"})
    except UsageError as e:
        assert "measured on 2 GPUs" in str(e)
    else:
        raise AssertionError("one visible GPU was accepted for a 2-GPU winner")


def _two_gpu_run(tmp_path):
    import shutil
    from pathlib import Path

    run = tmp_path / "two"
    shutil.copytree(Path(__file__).resolve().parent.parent / "results" / "search-2xh200-glm4-full-T1024" / "search", run,
                    ignore=shutil.ignore_patterns("report", "verify.json"))
    return run


def test_verify_of_a_multi_gpu_winner_launches_one_rank_per_gpu_under_torchrun(tmp_path, monkeypatch):
    """The parent's side only: torchrun with one rank per GPU of best.yaml, masked to them, and a rank
    that dies before rank 0 writes its record is one line and exit 2. The ranks' own run, record and
    verdict need the GPUs: tests/test_gpu.py::test_a_two_gpu_winner_is_verified_one_rank_per_gpu."""
    import subprocess
    import torch

    from autofit import verify

    run = _two_gpu_run(tmp_path)
    seen = {}

    def ranks_die(cmd, env):  # an OOM or an NCCL error before rank 0 could write anything
        seen.update(cmd=cmd, mask=env["CUDA_VISIBLE_DEVICES"])
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(verify.subprocess, "run", ranks_die)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    r = CliRunner().invoke(cli, ["verify", str(run), "--steps", "5"])
    assert seen["cmd"][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert seen["cmd"][5:9] == ["-m", "autofit", "verify", str(run)] and seen["mask"] == "0,1"
    assert r.exit_code == 2 and "2 ranks exited with code 1" in r.stderr
    assert not (run / "verify.json").exists()


def test_verify_of_a_multi_gpu_winner_on_a_machine_without_those_gpus(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    r = CliRunner().invoke(cli, ["verify", str(_two_gpu_run(tmp_path))])
    assert r.exit_code == 2 and "measured on 2 GPUs; this machine shows 0" in r.stderr
