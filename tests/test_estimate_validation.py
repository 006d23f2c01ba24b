"""benchmarks/estimate_validation.py: the memory model against every peak real probes measured on
H100/H200 and committed under results/ (read-only), and the error files it writes."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.estimate_validation import (
    ERROR_DIR, REPO_ROOT, VALIDATE_COMMAND, validate, write_validation,
)

GLM = "THUDM/glm-4-9b-chat"


@pytest.fixture(scope="module")
def validation():
    return validate()


# ----------------------------------------------------------------------------- accuracy vs measurements


def test_glm4_lora_predictions_within_the_reported_error(validation):
    rows, summary = validation
    glm = [r for r in rows if r["model"] == GLM and r["status"] == "ok" and r["strategy"].startswith("lora")
           and not _auto(r)]
    assert len(glm) == 70, "every GLM-4 LoRA peak (probe-evidence-h100, the H200 grid, both 24 GiB grids)"
    nvml = sorted(abs(r["err_nvml_pct"]) for r in glm)
    alloc = sorted(abs(r["err_allocated_pct"]) for r in glm)
    # uncalibrated: median 1.8% against nvml_peak; the largest error is ZeRO-3 full offload at T=2048,
    # mb 4 under the 24 GiB cap, 18% high (the safe side). Allocated: within 3% but for ZeRO-3 offload
    # at its smallest shapes (4-12% low: DeepSpeed's fixed buffers, which calibration takes up).
    # ZeRO-3 without checkpointing was 27-30% low (allocated) until the estimate counted what DeepSpeed's
    # memory-efficient linear and the fp32 adapters keep (tests/test_saved_activations.py); now 1-3%.
    assert nvml[len(nvml) // 2] < 2.0 and nvml[-1] < 18.5
    assert alloc[-1] < 13.0 and alloc[-4] < 3.0
    z3_nockpt = [r for r in glm if "/nockpt/z3" in r["strategy"]]
    assert len(z3_nockpt) == 3 and all(abs(r["err_allocated_pct"]) < 3.0 for r in z3_nockpt)
    # The auto space's probes included, LLM.int8 on 2 x H200 among them (test_new_dimensions_error_is_shown).
    assert summary["glm4_lora"]["nvml"]["median_abs_pct"] < 3.0


def test_measured_outcomes_and_walls_are_predicted(validation):
    _, summary = validation
    walls = summary["walls"]
    # every ok/oom probe on 80 GB H100s (1, 2 and 4 of them), 141 GB H200s (1, 2, 4; the 2 x H200 Qwen2-1.5B
    # grid: 60 cells that all fit, all predicted to) and under a 24 GiB
    # cap; six misses, all under the cap and all on the safe side (below). The 2- and 4-GPU full
    # fine-tuning walls (z0/z2/z3, offload; H100 and H200) are all right.
    assert walls["outcomes"] == 545 and walls["outcomes_predicted_right"] == 520
    for s in walls["sessions"]:
        if _auto(s) and "int8" in s["strategy"]:
            continue  # LLM.int8 with checkpointing is under-predicted: test_new_dimensions_error_is_shown
        if s["capacity_is"] == "card" and "qwen2-7b-full" not in s["file"]:
            assert s["predicted_largest_fit"] == s["measured_largest_fit"], s
        elif s["capacity_is"] == "card" and s["micro_batches_tried"] == [2] and s["measured_largest_fit"] == 0:
            # The full-auto grid's second pass re-measured nockpt/z2/fused at mb 2 alone, and a rank ran out of
            # memory; pass 1's worker had run it at a 135.7 GiB device peak on the 139.8 GiB card. The card's
            # edge, inside the estimate's error: the search's headroom line (129.2 GiB) is below either.
            assert s["strategy"] == "full/bf16/nockpt/z2/fused" and s["predicted_largest_fit"] == 2, s
        elif s["capacity_is"] == "card":
            # Qwen2-7B fully fine-tuned on 2 x H200: where micro-batch 4 ran at 136-140 GiB of the 141 GB card,
            # the estimate stops at 2 (the safe side); its headroom line is far below either.
            assert 0 <= s["measured_largest_fit"] - s["predicted_largest_fit"] <= 2, s
        else:  # 24 GiB cap: e.g. checkpointing mb 2 ran at 22.8 GiB reserved, predicted 23.7 over the 23.5 cap
            # (ZeRO-3 without checkpointing went one micro-batch too far until the estimate counted
            # what DeepSpeed's ZeRO-3 keeps; see test_glm4_lora_predictions_within_the_reported_error)
            step = {mb: i for i, mb in enumerate(s["micro_batches_tried"], start=1)} | {0: 0}
            assert s["predicted_largest_fit"] <= s["measured_largest_fit"], "errs on the safe side"
            assert step[s["measured_largest_fit"]] - step[s["predicted_largest_fit"]] <= 1


def test_calibration_on_small_probes_lowers_the_error(validation):
    rows, summary = validation
    held = summary["calibration"]["held_out"]
    assert held["calibrated"]["rows"] == held["uncalibrated"]["rows"] >= 20
    # About half: 2.6% against 5.1% with the 2 x H200 grids of the auto space in.
    assert held["calibrated"]["median_abs_pct"] < held["uncalibrated"]["median_abs_pct"] * 0.55
    assert held["calibrated"]["max_abs_pct"] < held["uncalibrated"]["max_abs_pct"]
    # Where the analytic model misses low (ZeRO-3 + offload: DeepSpeed's allocator), one measured
    # micro-batch fixes the rest.
    ds = [r for r in rows if r["calibration_role"] == "held-out" and r["deepspeed"]]
    # (LLM.int8's error grows with the micro-batch: an offset cannot fix it; test_new_dimensions_error_is_shown.)
    low = [r for r in ds if r["err_nvml_pct"] < -15.0 and "int8" not in r["strategy"]]
    # One overshoots to the safe side: ZeRO-2 with the optimizer offloaded and the fused loss on Qwen2-7B at
    # micro-batch 8, whose peak falls back to its micro-batch-1 level with no gradient accumulation (+17%).
    assert len(low) >= 3 and all(abs(r["err_nvml_calibrated_pct"]) < 8.0 for r in low
                                 if (r["strategy"], r["micro_batch"]) != ("full/bf16/ckpt/z2/offopt/fused", 8))
    assert all(-8.0 < r["err_nvml_calibrated_pct"] < 17.0 for r in low)
    # What it does not fix (Qwen2-1.5B full fine-tuning on 2 GPUs; GLM-4 LoRA with ZeRO-3 full offload
    # at T=2048 under the 24 GiB cap): micro-batch 1-2 peaks sit on an allocator plateau, below the
    # line the larger ones follow, so the calibrated prediction of the larger ones stays 6-18% high.
    # High is the safe side: no wall is predicted too far out. Qwen2-7B fully fine-tuned on 2 x H200 is the
    # highest, 20-22%: ZeRO-2 at micro-batch 4 against the card's edge, and at 8, with no gradient accumulation,
    # where its peak drops (which the planner probes past a wall for that reason).
    high = [r for r in ds if r["err_nvml_calibrated_pct"] > 6.0]
    assert high and all(r["err_nvml_calibrated_pct"] < 23.0 and (r["err_nvml_pct"] > 0 or r in low) for r in high)
    # simpler calibrations do worse than the one used (small probes' allocator scatter gets extrapolated)
    assert held["memmodel_fit_alone"]["median_abs_pct"] > held["calibrated"]["median_abs_pct"]


def test_committed_error_files_are_what_the_command_writes(validation, tmp_path):
    summary = write_validation(out_dir=tmp_path)
    committed = REPO_ROOT / ERROR_DIR
    assert json.loads((committed / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (committed / "errors.csv").read_text() == (tmp_path / "errors.csv").read_text()
    assert summary["command"] == VALIDATE_COMMAND


def test_probes_of_the_new_dimensions_join_the_tables_once_committed(tmp_path):
    """Keys with the fused loss, 4/8-bit weights or 8-bit AdamW are decoded and predicted like the others.
    No GPU has measured them yet, so committed GLM-4 LoRA rows stand in for the file's format: the
    measured columns are not theirs, only the plumbing is checked."""
    src = REPO_ROOT / "results" / "bench-h100-glm4-lora-T2048-24GiB" / "grid.csv"
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if r["strategy"] == "lora-r8/bf16-pure/ckpt/z0"]
    new = {"lora-r8/bf16-pure/ckpt/z0/fused", "lora-r8/bf16-pure/nf4/ckpt/z0/fused",
           "lora-r8/bf16-pure/int8/ckpt/z0"}
    out = tmp_path / "results" / "new-dims" / "grid.csv"
    out.parent.mkdir(parents=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({**r, "strategy": key} for key in sorted(new | {rows[0]["strategy"]}) for r in rows)
    errors, summary = validate(tmp_path, (("results/new-dims/grid.csv", {"lora": GLM}),))

    assert {r["strategy"] for r in errors} == new | {"lora-r8/bf16-pure/ckpt/z0"}
    assert new <= {s["strategy"] for s in summary["per_strategy"]}
    device = {(r["strategy"], r["micro_batch"]): r["predicted_device_gib"] for r in errors}
    for (key, mb), gib in device.items():  # the new terms are in the prediction: each one saves memory
        assert key not in new or gib < device[("lora-r8/bf16-pure/ckpt/z0", mb)], (key, mb)
    assert summary["sources"] == ["results/new-dims/grid.csv"] and summary["walls"]["outcomes"] == len(errors)


def _auto(r: dict) -> bool:
    """A probe of the auto space's techniques (fused loss, 4/8-bit weights; results/*-auto)."""
    return "-auto/" in r["file"]


def test_new_dimensions_error_is_shown(validation):
    rows, _ = validation
    auto = [r for r in rows if _auto(r) and r["status"] == "ok" and r["err_nvml_pct"] is not None]
    assert len(auto) >= 30
    exact_or_nf4 = sorted(abs(r["err_nvml_pct"]) for r in auto if r["strategy"].startswith("lora")
                          and "int8" not in r["strategy"] and ("fused" in r["strategy"] or "nf4" in r["strategy"]))
    # The fused loss and NF4 weights: within a few percent (the largest, 11%, is NF4 without checkpointing
    # at micro-batch 16, predicted high).
    assert exact_or_nf4[len(exact_or_nf4) // 2] < 3.0 and exact_or_nf4[-1] < 12.0
    # LLM.int8 with checkpointing is predicted 25-53% low: the estimate misses what bitsandbytes keeps for
    # the recomputed blocks. int8 never wins (nf4 dominates it), so the planner only spends probes on it.
    low = [r for r in auto if "int8/ckpt" in r["strategy"]]
    assert low and all(r["err_nvml_pct"] < -20 for r in low)
    # bitsandbytes' 8-bit AdamW (Qwen2-7B full fine-tuning on 2 x H200) was predicted 9-29% high until the step
    # stopped counting a whole-partition AdamW temporary for it: it updates in place.
    # With checkpointing it is still 10-25% high (the safe side): micro-batch 8 without the fused loss fits
    # at 107.7 GiB and is predicted over the 128.6 GiB line, but below the 1.3x at which the search skips it.
    adamw8bit = [r for r in auto if "adamw8bit" in r["strategy"]]
    assert adamw8bit and all(abs(r["err_nvml_pct"]) < 10 for r in adamw8bit if "nockpt" in r["strategy"])
    assert all(10 < r["err_nvml_pct"] < 25 for r in adamw8bit if "/ckpt" in r["strategy"])


# ----------------------------------------------------------------------------- leave one scenario out

def _measured(folder: str, strategy: str, mb: int, nvml_gib: float, allocated_gib: float, capacity_gib: float = 80.0):
    from benchmarks.estimate_validation import Measured
    from autofit.spec import Strategy

    G = 2**30
    return Measured(file=f"results/{folder}/grid.csv", model="m", strategy=Strategy.from_key(strategy), micro_batch=mb,
                    max_token=1024, grad_accum=1, num_gpus=1, device_name="gpu", session=f"{folder}#1", ok=True,
                    allocated=allocated_gib * G, reserved=None, nvml=nvml_gib * G, capacity=capacity_gib * G, capped=False)


def _fake_peak(m):
    """A stand-in for the analytic model: 10 GiB per micro-batch, whatever the scenario measured."""
    from autofit.memory.analytic import Peak

    G = 2**30
    return Peak(micro_batch=m.micro_batch, max_token=m.max_token, weights=0, gathered=0, gradients=0, optimizer=0,
                autocast_copies=0, activations=0, step_extra=0, phase="forward/backward",
                allocated=9.0 * m.micro_batch * G, reserved=10.0 * m.micro_batch * G, device=10.0 * m.micro_batch * G)


S = "lora-r8/bf16-pure/ckpt/z0"


def test_a_held_out_scenario_is_calibrated_on_the_others_only():
    from benchmarks.estimate_validation import holdout

    # Scenario a measures 20% over the model at every shape; b and c agree with it.
    a = [_measured("a", S, mb, 12.0 * mb, 10.8 * mb) for mb in (1, 2, 4)]
    bc = [_measured(f, S, mb, 10.0 * mb, 9.0 * mb) for f in ("b", "c") for mb in (1, 2)]
    rows, summary = holdout(a + bc, _fake_peak)
    held_a = [r for r in rows if r["scenario"] == "a"]
    # Held out, a is predicted from b and c (no correction): 10/12 - 1 = -16.7%, on both measures.
    assert [round(r["err_device_pct"], 1) for r in held_a] == [-16.7] * 3
    assert [round(r["err_allocated_pct"], 1) for r in held_a] == [-16.7] * 3
    assert all(r["calibrated_on"] == 4 for r in held_a)
    # Were a's own probes in its calibration, they would correct it (here: a copy of a as the only other
    # scenario): the split really leaves the held-out scenario out.
    with_copy, _ = holdout(a + [_measured("a-copy", S, mb, 12.0 * mb, 10.8 * mb) for mb in (1, 2, 4)], _fake_peak)
    assert all(abs(r["err_device_pct"]) < 16 for r in with_copy if r["scenario"] == "a")
    # b held out is calibrated on a and c: a's +20% pulls its prediction over what it measured.
    assert all(r["err_device_pct"] > 0 for r in rows if r["scenario"] == "b")
    assert summary["device_peak"]["worst_under_pct"] == pytest.approx(-16.67, abs=0.01)
    assert summary["under_predictions"]["count"] == 3


def test_a_cell_predicted_over_the_limit_that_fits_is_counted_missed():
    from benchmarks.estimate_validation import holdout

    # Limit 80 x 0.92 = 73.6 GiB; mb 8 is predicted at 80 GiB (over) but measures 70 (fits): missed.
    rows, summary = holdout([_measured("a", S, 8, 70.0, 60.0), _measured("b", S, 1, 10.0, 9.0)], _fake_peak)
    assert summary["missed_cells"]["predicted_over_limit_but_fits"] == 1
    assert summary["missed_cells"]["cells"][0]["micro_batch"] == 8
    assert summary["missed_cells"]["predicted_over_1.3x_limit_but_fits"] == 0


def test_committed_holdout_files_are_what_the_command_writes(tmp_path):
    from benchmarks.estimate_validation import write_holdout

    summary = write_holdout(out_dir=tmp_path)
    committed = REPO_ROOT / ERROR_DIR
    assert json.loads((committed / "holdout.json").read_text()) == json.loads(json.dumps(summary))
    assert (committed / "holdout.csv").read_text() == (tmp_path / "holdout.csv").read_text()
