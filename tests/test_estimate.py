"""autofit estimate, the command: walls per strategy, run-dir calibration, the table, its errors, and
what it imports. The model's terms are tests/test_memory_analytic.py's; its measured error is
tests/test_estimate_validation.py's."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofit.errors import AutofitError, ModelSourceError, RunDirError, SearchSpaceError, UsageError
from autofit.commands.estimate import estimate as estimate_cmd
from autofit.estimate import ERROR_SUMMARY, Estimate, EstimateRow, estimate, render
from autofit.memory.analytic import Peak

GiB = 2**30
GLM = "THUDM/glm-4-9b-chat"
REPO_ROOT = Path(__file__).resolve().parents[1]
H100_PROBES = REPO_ROOT / "results" / "probe-evidence-h100" / "probes.csv"


# ----------------------------------------------------------------------------- walls


def test_walls_are_ordered_sensibly():
    est = estimate(GLM, 1024, gpu_memory="80GiB", global_batch=64)
    walls = {r.strategy.grad_ckpt: r.max_micro_batch for r in est.rows}
    assert walls == {False: 4, True: 16}  # what the H100 measured (probe-evidence-h100)
    assert all(list(r.peaks) == sorted(r.peaks) for r in est.rows)

    multi = estimate(GLM, 2048, gpu_memory="80GiB", space="multi-gpu", num_gpus=2)
    peak = {r.key: r.peaks[0] for r in multi.rows}
    # With checkpointing ZeRO-3 saves half the weights (8.8 GiB) less its gathered window. Without it,
    # ZeRO-3 keeps every Linear's input and fp32 copies for the fp32 adapters (about 4 MB per token for
    # GLM-4, as the 24 GiB grid measured), which at T=2048 outweighs the sharding: no gain over DDP.
    assert peak["lora-r8/bf16-pure/ckpt/z3"] < peak["lora-r8/bf16-pure/ckpt/z0"] - 5 * GiB
    assert peak["lora-r8/bf16-pure/nockpt/z3"] > peak["lora-r8/bf16-pure/nockpt/z0"]

    full = {r.key: r for r in estimate("Qwen/Qwen2-1.5B", 1024, gpu_memory="24GiB", space="full-zero", num_gpus=2,
                                         global_batch=16).rows}
    z0, z2, z3o = (full[f"full/bf16/nockpt/{k}"] for k in ("z0", "z2", "z3/offopt/offparam"))
    assert z3o.peaks[0] < z2.peaks[0] < z0.peaks[0]
    assert (z0.max_micro_batch or 0) <= (z2.max_micro_batch or 0) <= (z3o.max_micro_batch or 0)


def test_a_smaller_card_moves_the_wall_down():
    big = estimate(GLM, 1024, gpu_memory="80GiB")
    small = estimate(GLM, 1024, gpu_memory="24GiB")
    for b, s in zip(big.rows, small.rows):
        assert (s.max_micro_batch or 0) <= (b.max_micro_batch or 0)
    # measured under a 24 GiB cap: nockpt does not fit at micro-batch 1, ckpt does
    assert {r.strategy.grad_ckpt: r.max_micro_batch for r in small.rows} == {False: None, True: 1}


# ----------------------------------------------------------------------------- run-dir calibration


def _run_dir_with(tmp_path: Path, strategy_key: str, micro_batch: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    with open(H100_PROBES, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["strategy"] == strategy_key and r["micro_batch"] == micro_batch]
        fields = reader.fieldnames
    with open(run / "probes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows[:1])
    return run


def test_run_dir_calibration_corrects_a_strategy_the_model_misses(tmp_path):
    key = "full/bf16/ckpt/z3/offopt/offparam"
    space = tmp_path / "space.yaml"
    space.write_text("method: full\nprecision: [bf16]\ngrad_ckpt: [true]\n"
                     "zero: [{stage: 3, offload_optimizer: true, offload_params: true}]\n"
                     "micro_batch: [1, 2, 4]\nmax_token: [1024]\n")
    measured_mb4 = 21110849536  # nvml_peak of the H100 probe at micro-batch 4, not shown to the calibration
    kw = dict(gpu_memory="80GiB", global_batch=16, space=str(space))
    plain = estimate("Qwen/Qwen2-1.5B", 1024, **kw).rows[0]
    cal = estimate("Qwen/Qwen2-1.5B", 1024, run_dir=_run_dir_with(tmp_path, key, "1"), **kw).rows[0]
    assert plain.source == "analytic" and cal.source.startswith("run dir, 1 probe: +")
    err = lambda row: abs(row.peaks[2] - measured_mb4) / measured_mb4  # noqa: E731
    assert err(plain) > 0.15 and err(cal) < 0.03


def test_run_dir_that_agrees_with_the_model_leaves_it_alone(tmp_path):
    run = _run_dir_with(tmp_path, "lora-r8/bf16-pure/nockpt/z0", "2")
    plain = estimate(GLM, 1024, gpu_memory="80GiB")
    cal = estimate(GLM, 1024, gpu_memory="80GiB", run_dir=run)
    nockpt = [r for r in cal.rows if not r.strategy.grad_ckpt][0]
    assert nockpt.source == "run dir, 1 probe: agrees"
    assert [r.peaks for r in cal.rows] == [r.peaks for r in plain.rows]  # 2% off: within the model's scatter
    assert "calibrated on" in cal.note


# ----------------------------------------------------------------------------- the command and its output


def test_estimate_returns_typed_rows():
    est = estimate(GLM, 1024)
    assert isinstance(est, Estimate) and est.budget == 24 * GiB and est.num_gpus == 1
    assert est.rows and all(isinstance(r, EstimateRow) for r in est.rows)
    row = est.rows[0]
    assert row.micro_batches == (1, 2, 4, 8, 16, 32)  # the default space's, capped by the global batch of 32
    assert all(isinstance(p, Peak) for p in row.analytic) and len(row.peaks) == len(row.micro_batches)
    assert all(p.device > p.reserved > p.allocated > p.weights for p in row.analytic)


def test_cli_prints_the_table_and_its_error():
    res = CliRunner().invoke(estimate_cmd, ["--model", GLM, "--max-token", "1024", "--gpu-memory", "80GiB"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split()[:2] == ["strategy", "mb1"] and "fits up to" in lines[1]
    table = {ln.split()[0]: ln for ln in lines if ln.startswith("lora-")}
    assert table["lora-r8/bf16-pure/nockpt/z0"].split()[-3:] == ["mb", "4", "analytic"]
    assert table["lora-r8/bf16-pure/ckpt/z0"].split()[-3:] == ["mb", "16", "analytic"]
    assert "estimate, not a measurement" in res.output and "Measured error" in res.output
    assert json.loads(ERROR_SUMMARY.read_text())["command"] in res.output
    assert render(estimate(GLM, 1024, gpu_memory="80GiB")) in res.output


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(model="no/such-model", max_token=1024), ModelSourceError, "not found"),
    (dict(model=GLM, max_token=0), UsageError, "--max-token"),
    (dict(model=GLM, max_token=1024, global_batch=0), UsageError, "--global-batch"),
    (dict(model=GLM, max_token=1024, num_gpus=0), UsageError, "--num-gpus"),
    (dict(model=GLM, max_token=1024, headroom=1.5), UsageError, "--headroom"),
    (dict(model=GLM, max_token=1024, method="qlora"), UsageError, "--method"),
    (dict(model=GLM, max_token=1024, gpu_memory="24XB"), UsageError, "24XB"),
    (dict(model=GLM, max_token=1024, space="no-such-space"), SearchSpaceError, "not found"),
    (dict(model=GLM, max_token=1024, run_dir="/nonexistent/run"), RunDirError, "does not exist"),
], ids=["model", "max-token", "global-batch", "num-gpus", "headroom", "method", "gpu-memory", "space", "run-dir"])
def test_bad_input_raises_the_right_error(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        estimate(**kwargs)


def test_lora_targets_that_match_nothing_are_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("method: lora\nlora: {r: 8, targets: [no_such_proj]}\nprecision: [bf16-pure]\n"
                     "grad_ckpt: [false]\nzero: [{stage: 0}]\nmicro_batch: [1]\nmax_token: [1024]\n")
    with pytest.raises(UsageError, match="no_such_proj"):
        estimate(GLM, 1024, space=str(space))


def test_run_dir_without_probes_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="no probes.csv"):
        estimate(GLM, 1024, run_dir=tmp_path)


def test_cli_turns_errors_into_one_line_and_exit_2():
    from autofit.cli import cli  # the CLI group registers the command with its one-line error handling

    res = CliRunner().invoke(cli, ["estimate", "--model", GLM, "--max-token", "1024", "--gpu-memory", "lots"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "autofit: error:" in res.output
    assert not isinstance(res.exception, AutofitError)  # handled, not propagated


def test_importing_the_module_does_not_import_torch():
    code = "import sys, autofit.estimate; print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_auto_space_takes_the_methods_section_for_the_gpu_count():
    # The auto space is a template: --method full on two GPUs must give full fine-tuning's several-GPU
    # ZeRO options and its optimizers, not the LoRA one-GPU section relabelled.
    rows = estimate("Qwen/Qwen2-7B", 2048, gpu_memory="139GiB", global_batch=16, space="auto",
                    method="full", num_gpus=2).rows
    keys = {r.key for r in rows}
    assert all(k.startswith("full/bf16/") for k in keys), keys
    assert {"full/bf16/ckpt/z2", "full/bf16/ckpt/z3/offopt", "full/bf16/nockpt/z0/adamw8bit"} <= keys
