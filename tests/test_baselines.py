"""benchmarks/baselines.py on the CPU (real tiny-model runs) and the issue-7 table generator (synthetic
fixtures made in tmp_path, not committed results)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import baselines, headline, scenario_table

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "autofit/tiny-qwen2", "--space", "cpu-tiny", "--max-token", "128", "--global-batch", "8", "--device", "cpu"]


def _run(out: Path, *extra: str, env: dict | None = None, timeout: float = 240) -> tuple[subprocess.CompletedProcess, dict]:
    p = subprocess.run([sys.executable, "-m", "benchmarks.baselines", *TINY, "--out", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    doc = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").exists() else {}
    return p, doc


@pytest.mark.slow
def test_hand_and_hf_auto_measure_real_numbers_on_cpu(tmp_path):
    # Address space capped 150 MB above each built model (the probe worker's and HF's test hook): the
    # probes' small micro-batches fit, HF's start batch of 64 meets a real allocation failure.
    p, doc = _run(tmp_path, "--only", "hand,hf-auto-ckpt", "--hf-steps", "3", env={"AUTOFIT_TEST_HOST_LIMIT": str(150 * 2**20)})
    assert p.returncode == 0, p.stderr[-2000:]
    hand, hf = doc["baselines"]["hand"], doc["baselines"]["hf-auto-ckpt"]

    assert hand["status"] == "ok", hand
    assert hand["strategy"] == "lora-r4/fp32/ckpt/z0"  # checkpointing on, first precision, ZeRO 0
    assert hand["micro_batch"] in (1, 2, 4, 8) and hand["tokens_per_s"] > 0 and hand["wall_s"] > 0
    assert [t["micro_batch"] for t in hand["tried"]][:2] == [1, 2]  # doubling from 1
    assert hand["probes"] == len(hand["tried"]) and hand["fits"] is True
    assert (tmp_path / "baselines" / "hand.log").read_text().startswith("hand:")

    assert hf["status"] == "ok", hf
    tried = [a["batch_size"] for a in hf["attempts"]]
    assert hf["start_batch"] == 64 and tried[0] == 64 and len(tried) >= 2, tried
    assert all(b == int(a * 0.9) for a, b in zip(tried, tried[1:])), tried  # accelerate's x0.9 after each OOM
    assert hf["probes"] == len(tried)
    assert hf["micro_batch"] == tried[-1] < 64 and hf["attempts"][-1]["steps"]
    assert hf["tokens_per_s"] > 0 and hf["peak_gib"] > 0 and hf["global_batch_trained"] == hf["micro_batch"]
    assert hf["strategy"] == "lora-r4/fp32/ckpt/z0" and (tmp_path / "baselines" / "hf-auto-ckpt.log").exists()


@pytest.mark.slow
def test_ds_autotune_on_cpu_is_a_recorded_failure_and_the_harness_exits_0(tmp_path):
    # Without tabulate (deepspeed[autotuning]) the autotuner refuses at once; with it, on a CPU it does
    # not finish within the timeout. Either way: failed, with a reason, and exit 0.
    p, doc = _run(tmp_path, "--only", "ds-autotune", "--ds-timeout", "20")
    assert p.returncode == 0, p.stderr[-2000:]
    ds = doc["baselines"]["ds-autotune"]
    assert ds["status"] == "failed" and ds["reason"], ds
    assert (tmp_path / "baselines" / "ds-autotune.log").read_text().strip()


def test_a_baseline_that_raises_does_not_stop_the_others(tmp_path):
    def broken():
        raise RuntimeError("boom\nsecond line")

    sc = baselines.Scenario(ctx=None, source=None, space=None, max_token=1, limits=None, out=tmp_path)
    doc = baselines.run_all(sc, ["hand", "hf-auto"], {"hand": broken, "hf-auto": lambda: {"name": "hf-auto", "status": "ok",
                                                                                          "wall_s": 1.0}},
                            {"model": "m"}, tmp_path / "baselines.json")
    assert doc["baselines"]["hand"]["status"] == "failed"
    assert doc["baselines"]["hand"]["reason"] == "RuntimeError: boom"
    assert doc["baselines"]["hf-auto"]["status"] == "ok"
    assert json.loads((tmp_path / "baselines.json").read_text()) == doc
    assert "Traceback" in (tmp_path / "hand.log").read_text()
    # A later command for another baseline of the same scenario adds to the file instead of replacing it.
    again = baselines.run_all(sc, ["ds-autotune"], {"ds-autotune": broken}, {"model": "m"}, tmp_path / "baselines.json")
    assert list(again["baselines"]) == ["hand", "hf-auto", "ds-autotune"]
    other = baselines.run_all(sc, ["ds-autotune"], {"ds-autotune": broken}, {"model": "n"}, tmp_path / "baselines.json")
    assert list(other["baselines"]) == ["ds-autotune"]


def test_bad_only_is_a_usage_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.baselines", *TINY, "--out", str(tmp_path), "--only", "grid"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--only" in p.stderr


def test_autotuner_results_are_read_from_its_results_dir(tmp_path):
    """Fixture shaped like DeepSpeed's autotuning_results/ (ds_config_optimal.json, one dir per experiment)."""
    res = tmp_path / "autotuning_results"
    for name, mb, stage, thr in [("z0_gas1_tmbspg2", 2, 0, 3.0), ("z0_gas1_tmbspg4", 4, 0, 5.0), ("z1_gas1_tmbspg4", 4, 1, 4.0)]:
        (res / name).mkdir(parents=True)
        (res / name / "ds_config.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": mb,
                                                               "zero_optimization": {"stage": stage}}))
        (res / name / "metrics.json").write_text(json.dumps({"throughput": thr}))
    assert baselines.read_autotune_results(res, 1024) is None  # no optimal config written: no result
    (res / "ds_config_optimal.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}))
    assert baselines.read_autotune_results(res, 1024) == {"micro_batch": 4, "zero_stage": 0, "grad_accum": 1, "samples_per_s": 5.0,
                                                          "tokens_per_s": 5120.0, "experiments": 3}
    (res / "summary.txt").write_text("| tuning_space | ... |\n\nTuning completed in 0:05:37. Total number of experiments: 12.")
    assert baselines.read_autotune_results(res, 1024)["experiments"] == 12  # the tuner's count, not the dirs


def test_the_autotuners_own_verdict_is_the_reason():
    log = ("[2026-11-27 23:33:30,156] [INFO] [autotuner.py:425:tune] Memory per GPU in the system is 79.1 GB.\n"
           "[2026-11-27 23:33:30,157] [INFO] [autotuner.py:456:tune] The model is not runable with ZERO stage 0 "
           "(which requires at least 150.4 GB memory with mbs = 1)\n"
           "[2026-11-27 23:33:30,158] [INFO] [autotuner.py:517:tune] The model has 9.4 B parameters and requires at least "
           "150.4 GB memory per GPU with DeepSpeed Zero stage 3 optimization. Memory per GPU in system is 79.1 GB. "
           "No tuning is performed.\n")
    assert baselines.autotuner_verdict(log).startswith("The model has 9.4 B parameters and requires at least 150.4 GB")
    assert baselines.autotuner_verdict("[x] [INFO] [a.py:1:f] No optimal setup is found. Please check\n") == \
        "No optimal setup is found. Please check"
    assert baselines.autotuner_verdict("Traceback ...\nAssertionError: Missing required package") is None


# -- the issue-7 table, on a synthetic scenario ---------------------------------------------------------
COLS = ["phase", "strategy", "micro_batch", "max_token", "status", "tokens_per_s", "nvml_peak", "peak_reserved",
        "host_peak", "peak_gib", "num_gpus"]
GIB = 2**30
A, B = "lora-r8/bf16-pure/nockpt/z0", "lora-r8/bf16-pure/ckpt/z0"


def _peak_a(mb: int, t: int) -> int:  # strategy A: exactly 10 GiB + 1 MiB per token
    return 10 * GIB + mb * t * 2**20


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({"num_gpus": 2, "peak_reserved": "", "host_peak": 10**9, "peak_gib": "", **r})


def _synthetic_scenario(d: Path, with_verify: bool = True) -> None:
    grid = [{"phase": "grid", "strategy": A, "micro_batch": mb, "max_token": 1024, "status": "ok",
             "tokens_per_s": 1000 * mb, "nvml_peak": _peak_a(mb, 1024)} for mb in (1, 2, 4)]
    grid += [{"phase": "grid", "strategy": A, "micro_batch": 8, "max_token": 1024, "status": "oom"}]
    grid += [{"phase": "grid", "strategy": B, "micro_batch": mb, "max_token": 1024, "status": "ok",
              "tokens_per_s": 700 * mb, "nvml_peak": 9 * GIB} for mb in (1, 2, 4, 8)]
    _write_csv(d / "grid.csv", grid)
    # The search probed A at 1 and 4 (a model for A) and B once (no model for B).
    search = [{"phase": "escalate", "strategy": A, "micro_batch": mb, "max_token": 1024, "status": "ok",
               "tokens_per_s": 1000 * mb, "nvml_peak": _peak_a(mb, 1024)} for mb in (1, 4)]
    search += [{"phase": "escalate", "strategy": B, "micro_batch": 1, "max_token": 1024, "status": "ok",
                "tokens_per_s": 700, "nvml_peak": 9 * GIB}]
    _write_csv(d / "search" / "probes.csv", search)
    (d / "summary.json").write_text(json.dumps({
        "model": "org/Some-Model", "max_token": 1024, "space": "default", "global_batch": 32, "gpu": "NVIDIA H100 80GB HBM3",
        "budget_gib": 79.6, "headroom": 0.08,
        "search": {"wall_s": 50.0, "probes": 3, "winner": A, "winner_micro_batch": 4, "winner_tokens_per_s": 4100.0},
        "grid": {"wall_s": 200.0, "probes": 8, "best": {"strategy": A, "micro_batch": 4, "tokens_per_s": 4000.0},
                 "search_winner_tokens_per_s_in_grid": 4000.0}}))
    (d / "baselines.json").write_text(json.dumps({"num_gpus": 2, "baselines": {
        "hand": {"status": "ok", "wall_s": 30.0, "probes": 4, "strategy": B, "micro_batch": 8, "tokens_per_s": 5700.0},
        "hf-auto": {"status": "ok", "wall_s": 90.0, "probes": 5, "strategy": B, "micro_batch": 40, "tokens_per_s": 3000.0,
                    "fits": False},
        "ds-autotune": {"status": "failed", "wall_s": 3.0, "reason": "AssertionError: Missing required package `tabulate`"},
    }}))
    if with_verify:
        (d / "search" / "verify.json").write_text(json.dumps({"passed": True}))


def test_scenario_table_rows_from_a_synthetic_folder(tmp_path):
    d = tmp_path / "results" / "bench-fixture"
    _synthetic_scenario(d)
    label, rows = scenario_table.scenario_rows(d)
    assert "Some-Model, T=1024" in label and "2 x H100 80GB" in label
    autofit, hand, hf, ds, oracle = rows
    # autofit: 50 s on 2 GPUs; grid-measured winner 4000 / best 4000; A's model is exact on A's unprobed
    # cell (mb 2); B has one point, no model: 1 of 4 unprobed cells predicted.
    assert autofit == f"| autofit search | 50 s | 100 | 3 | `{A}` (4) | 100.0% | 0.0% / 0.0% (1 of 4) | yes |"
    # hand's cell is in the grid: the grid's figure (700 x 8 = 5600), not its own 5700.
    assert hand == f"| hand-tuning (DeepSpeed tutorial) | 30 s | 60 | 4 | `{B}` (8) | 140.0% | - | - |"
    # hf-auto's batch 40 is not a grid cell: its own measurement, marked.
    assert hf == f"| HF auto_find_batch_size (from 64) | 90 s | 180 | 5 | `{B}` (40, over headroom) | 75.0%* | - | - |"
    assert ds.startswith("| DeepSpeed autotuner | 3 s | 6 | - | failed: AssertionError: Missing required package")
    assert oracle == f"| exhaustive grid (oracle) | 200 s | 400 | 8 | `{A}` (4) | 100.0% | measured | - |"


def test_a_timed_out_autotuner_shows_the_best_experiment_it_finished(tmp_path):
    """DeepSpeed's tuner killed at --ds-timeout chose nothing; its finished experiments (metrics.json
    beside each ds_config.json) still say what it had found. An unfinished one (no metrics) is skipped."""
    d = tmp_path / "results" / "bench-fixture"
    _synthetic_scenario(d)
    work = d / "baselines" / "ds-autotune"
    res = work / "autotuning_results"
    for name, mb, stage, thr in [("z0_gas1_tmbspg4", 4, 0, 5.0), ("z1_gas1_tmbspg8", 8, 1, 6.0), ("z2_gas1_tmbspg8", 8, 2, None)]:
        (res / name).mkdir(parents=True)
        (res / name / "ds_config.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": mb, "zero_optimization": {"stage": stage}}))
        if thr:
            (res / name / "metrics.json").write_text(json.dumps({"throughput": thr}))
    from autofit.spec import Method, Strategy

    tuned = Strategy(method=Method(kind="lora"), precision="bf16-pure", grad_ckpt=True, zero_stage=0)
    assert baselines.autotune_best_so_far(res, 1024, tuned) == {
        "experiment": "z1_gas1_tmbspg8", "zero_stage": 1, "micro_batch": 8, "grad_accum": 1,
        "strategy": "lora-r8/bf16-pure/ckpt/z1", "tokens_per_s": 6144.0, "experiments_finished": 2}
    assert baselines.autotune_best_so_far(tmp_path / "none", 1024, tuned) is None
    # The committed entry predates best_so_far: the table reads it from the folder, with the tuned strategy
    # (plan.json) at the tuner's ZeRO stage. Stage 1 is no grid cell: its own figure, marked.
    plan = {"strategy": {"method": {"kind": "lora"}, "precision": "bf16-pure", "grad_ckpt": True, "zero_stage": 0}}
    (work / "plan.json").write_text(json.dumps(plan))
    doc = json.loads((d / "baselines.json").read_text())
    doc["baselines"]["ds-autotune"] = {"status": "failed", "wall_s": 240.0, "probes": 3, "reason": "timed out after 240s"}
    (d / "baselines.json").write_text(json.dumps(doc))
    ds = scenario_table.scenario_rows(d)[1][3]
    assert ds == ("| DeepSpeed autotuner | 240 s | 480 | 3 | failed: timed out after 240s; best of its 2 finished experiments: "
                  "`lora-r8/bf16-pure/ckpt/z1` (8) | 153.6%* | - | - |")


def test_a_failed_verify_names_its_side(tmp_path):
    d = tmp_path / "results" / "bench-fixture"
    _synthetic_scenario(d)
    for v, want in [({"passed": False, "peak_gib": 98.5, "budget_gib": 140.4, "peak_diff": -0.056}, "no (peak -5.6% vs probe)"),
                    ({"passed": False, "peak_gib": 141.0, "budget_gib": 140.4, "peak_diff": 0.1}, "no (over budget)")]:
        (d / "search" / "verify.json").write_text(json.dumps(v))
        assert scenario_table.scenario_rows(d)[1][0].endswith(f"| {want} |")


def test_memory_error_is_measured_against_unprobed_grid_cells(tmp_path):
    d = tmp_path / "s"
    _synthetic_scenario(d)
    search = list(csv.DictReader(open(d / "search" / "probes.csv")))
    grid = list(csv.DictReader(open(d / "grid.csv")))
    # Skew one measured grid peak by +10%: the model (exact for A) is then 1/1.1 - 1 = -9.09% off there.
    for r in grid:
        if r["strategy"] == A and r["micro_batch"] == "2":
            r["nvml_peak"] = str(int(int(r["nvml_peak"]) * 1.1))
    errs, unprobed = scenario_table.memory_errors(search, grid)
    assert unprobed == 4 and len(errs) == 1 and abs(errs[0] - 100 * (1 - 1 / 1.1)) < 1e-6


def test_render_lists_only_scenario_folders_and_marks_missing_verify(tmp_path):
    _synthetic_scenario(tmp_path / "bench-x", with_verify=False)
    (tmp_path / "estimate-error").mkdir()
    (tmp_path / "estimate-error" / "summary.json").write_text(json.dumps({"command": "other shape"}))
    text = scenario_table.render(tmp_path)
    assert "bench-x" in text and "estimate-error" not in text
    assert "| 0.0% / 0.0% (1 of 4) | - |" in text


def _tiny_scenario(tmp_path: Path) -> "baselines.Scenario":
    """The baselines' Scenario for the tiny CPU model, as `benchmarks.baselines` builds it from TINY."""
    import argparse

    from benchmarks.common import add_scenario_args, scenario_from_args

    ap = argparse.ArgumentParser()
    add_scenario_args(ap)
    a = ap.parse_args([*TINY, "--out", str(tmp_path)])
    ctx, source, space, limits = scenario_from_args(a, max_positions=128)
    return baselines.Scenario(ctx=ctx, source=source, space=space, max_token=128, limits=limits, out=tmp_path / "baselines")


def test_told_autotuner_reruns_on_a_profile_with_lora_s_footprint(tmp_path, monkeypatch):
    """ds-autotune-told's two passes, with a stand-in for the DeepSpeed autotuner process (the real one
    needs a GPU to refuse LoRA): pass 1 profiles and refuses; pass 2 must see the rewritten profile and
    overwrite off (DeepSpeed's scheduler then skips the profile experiment whose result exists)."""
    sc = _tiny_scenario(tmp_path)
    calls = []

    def fake_autotuner(cmd, log_path, env, timeout_s, cwd=None):  # appends to its log, as _run_logged does
        results = Path(cwd) / "autotuning_results"
        cfg = json.loads((Path(cwd) / "ds_config.json").read_text())
        calls.append(cfg["autotuning"]["overwrite"])
        if len(calls) == 1:
            prof = results / "profile_model_info"
            prof.mkdir(parents=True)
            (prof / "model_info.json").write_text(json.dumps(
                {"num_params": 9407979520, "trainable_num_params": 8028160, "activation_mem_per_gpu": 1635791872}))
            (prof / "stderr.log").write_text("")
            with open(log_path, "a") as f:
                f.write("[2026-11-28 00:54:01,000] [INFO] [autotuner.py:517:tune] The model has 9407979520 "
                        "parameters and requires at least 141.71 GB memory per GPU. No tuning is performed.\n")
            return 0, 40.0
        told = json.loads((results / "profile_model_info" / "model_info.json").read_text())["num_params"]
        wb = 4 if sc.hand_strategy().precision == "fp32" else 2  # cpu-tiny trains in fp32
        assert told == -(-(wb * 9407979520 + 16 * 8028160) // 16)  # the weights + Adam on the LoRA weights
        exp = results / "z0_mbs8"
        exp.mkdir()
        best = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 0}}
        (exp / "ds_config.json").write_text(json.dumps(best))
        (exp / "metrics.json").write_text(json.dumps({"throughput": 10.0}))
        (results / "ds_config_optimal.json").write_text(json.dumps(best))
        with open(log_path, "a") as f:
            f.write("tuning done\n")
        return 0, 100.0

    monkeypatch.setattr(baselines, "_run_logged", fake_autotuner)
    r = baselines.run_ds_autotune(sc, 600, told=True)
    assert calls == [True, False]
    assert r["status"] == "ok" and r["name"] == "ds-autotune-told" and r["micro_batch"] == 8
    assert r["tokens_per_s"] == 10.0 * 128 and r["wall_s"] == 140.0
    assert r["told"]["num_params_profiled"] == 9407979520 and r["told"]["trainable_num_params"] == 8028160
    log = (sc.out / "ds-autotune-told.log").read_text()
    assert "No tuning is performed" in log and "second pass" in log and "tuning done" in log
    # Unaided (told=False) the same refusal is the recorded result.
    calls.clear()
    plain = baselines.run_ds_autotune(sc, 600)
    assert calls == [True] and plain["status"] == "failed" and "No tuning is performed" in plain["reason"]


def test_a_timed_out_autotuner_records_its_best_finished_experiment(tmp_path, monkeypatch):
    """The harness's timeout path (DeepSpeed's tuner stand-in writes one finished experiment, then the
    limit hits): failed, with the experiment it had and the tuned strategy at that ZeRO stage."""
    import dataclasses

    sc = _tiny_scenario(tmp_path)

    def slow_autotuner(cmd, log_path, env, timeout_s, cwd=None):
        exp = Path(cwd) / "autotuning_results" / "z1_gas1_tmbspg4"
        exp.mkdir(parents=True)
        (exp / "ds_config.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}}))
        (exp / "metrics.json").write_text(json.dumps({"throughput": 3.0}))
        return None, timeout_s  # rc None: killed at the limit

    monkeypatch.setattr(baselines, "_run_logged", slow_autotuner)
    r = baselines.run_ds_autotune(sc, 240)
    assert r["status"] == "failed" and r["reason"] == "timed out after 240s"
    so_far = r["best_so_far"]
    assert (so_far["micro_batch"], so_far["zero_stage"], so_far["tokens_per_s"], so_far["experiments_finished"]) == (4, 1, 384.0, 1)
    assert so_far["strategy"] == dataclasses.replace(sc.hand_strategy(), zero_stage=1).key()


def test_a_verify_on_another_gpu_is_named_and_one_on_the_searched_gpu_wins(tmp_path):
    """No search/verify.json: a committed verify folder of the same winner counts. One run on another GPU
    model (verify.json's search_device is the scenario's GPU) is shown with that GPU; one on the
    scenario's own GPU model, when there is one, is preferred."""
    import yaml

    results = tmp_path / "results"
    _synthetic_scenario(results / "bench-fixture", with_verify=False)
    best = {"model": {"id": "org/Some-Model"}, "hardware": {"memory_budget_gib": 79.6}}

    def verify_folder(name: str, device: str, search_device: str | None, passed: bool) -> None:
        (results / name).mkdir()
        (results / name / "best.yaml").write_text(yaml.safe_dump(best))
        (results / name / "verify.json").write_text(json.dumps({
            "strategy": A, "micro_batch": 4, "max_token": 1024, "device": device, "search_device": search_device,
            "passed": passed, "peak_gib": 50.0, "budget_gib": 79.6, "peak_diff": 0.072}))

    verify_folder("verify-h200-x", "NVIDIA H200", "NVIDIA H100 80GB HBM3", False)
    verify_folder("verify-a100-x", "NVIDIA A100", "NVIDIA A100", True)  # another search's GPU: not this one's
    autofit = scenario_table.scenario_rows(results / "bench-fixture")[1][0]
    assert autofit.endswith("| no (peak +7.2% vs probe) on H200 ([verify-h200-x](results/verify-h200-x)) |")
    assert headline.headline(results, scenarios={}).splitlines()[2].endswith("| no (on H200) |")
    verify_folder("verify-h100-x", "NVIDIA H100 80GB HBM3", None, True)
    autofit = scenario_table.scenario_rows(results / "bench-fixture")[1][0]
    assert autofit.endswith("| yes ([verify-h100-x](results/verify-h100-x)) |")


def test_ds_shim_maps_the_autotuners_gpus_to_the_ones_given():
    from benchmarks.ds_shim import remap_include

    # DeepSpeed's autotuner launches each experiment on slots 0..n-1 of what it was given.
    args = ["--hostfile", "/job/hostfile", "--include", "localhost:0", "--master_port", "29600", "train.py"]
    assert remap_include(args, ["1"])[3] == "localhost:1"
    assert remap_include(["--include", "localhost:0,1@b:1"], ["2", "3"]) == ["--include", "localhost:2,3@b:3"]
    assert remap_include(args, []) == args  # no GPUs given (CPU, or a UUID mask): as DeepSpeed wrote it
    assert remap_include(["--include", "localhost:4"], ["1"]) == ["--include", "localhost:4"]


def test_ds_shim_runs_deepspeeds_launcher():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTOFIT_DS_GPUS": "1"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.ds_shim", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--autotuning" in r.stdout  # DeepSpeed's runner's own usage
