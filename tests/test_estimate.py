"""autofit estimate: the analytic memory model against real measurements, walls, calibration, CLI, errors.

The accuracy tests compare with peaks measured by real probes on H100/H200 and committed under results/
(read-only); the activation test compares with the tensors autograd really saves, on the CPU.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofit.errors import AutofitError, ModelSourceError, RunDirError, SearchSpaceError, UsageError
from autofit.estimate import (
    ERROR_DIR, REPO_ROOT, VALIDATE_COMMAND, Estimate, EstimateRow, Peak, activation_bytes, arch_of, estimate,
    estimate_cmd, predict, render, validate, write_validation,
)
from autofit.models import resolve_model
from autofit.spec import Method, Strategy

GiB = 2**30
GLM = "THUDM/glm-4-9b-chat"
H100_PROBES = REPO_ROOT / "results" / "probe-evidence-h100" / "probes.csv"


@pytest.fixture(scope="module")
def validation():
    return validate()


# ----------------------------------------------------------------------------- accuracy vs measurements


def test_glm4_lora_predictions_within_the_reported_error(validation):
    rows, summary = validation
    glm = [r for r in rows if r["model"] == GLM and r["status"] == "ok" and r["strategy"].startswith("lora")]
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
    assert summary["glm4_lora"]["nvml"]["median_abs_pct"] < 2.0


def test_measured_outcomes_and_walls_are_predicted(validation):
    _, summary = validation
    walls = summary["walls"]
    # every ok/oom probe on 80 GB H100s (1, 2 and 4 of them), 141 GB H200s (1, 2, 4; the 2 x H200 Qwen2-1.5B
    # grid: 60 cells that all fit, all predicted to) and under a 24 GiB
    # cap; six misses, all under the cap and all on the safe side (below). The 2- and 4-GPU full
    # fine-tuning walls (z0/z2/z3, offload; H100 and H200) are all right.
    assert walls["outcomes"] == 245 and walls["outcomes_predicted_right"] == 239
    for s in walls["sessions"]:
        if s["capacity_is"] == "card":
            assert s["predicted_largest_fit"] == s["measured_largest_fit"], s
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
    assert held["calibrated"]["median_abs_pct"] < held["uncalibrated"]["median_abs_pct"] / 2
    assert held["calibrated"]["max_abs_pct"] < held["uncalibrated"]["max_abs_pct"]
    # Where the analytic model misses low (ZeRO-3 + offload: DeepSpeed's allocator), one measured
    # micro-batch fixes the rest.
    ds = [r for r in rows if r["calibration_role"] == "held-out" and r["deepspeed"]]
    low = [r for r in ds if r["err_nvml_pct"] < -15.0]
    assert len(low) >= 3 and all(abs(r["err_nvml_calibrated_pct"]) < 6.0 for r in low)
    # What it does not fix (Qwen2-1.5B full fine-tuning on 2 GPUs; GLM-4 LoRA with ZeRO-3 full offload
    # at T=2048 under the 24 GiB cap): micro-batch 1-2 peaks sit on an allocator plateau, below the
    # line the larger ones follow, so the calibrated prediction of the larger ones stays 6-18% high.
    # High is the safe side: no wall is predicted too far out.
    high = [r for r in ds if r["err_nvml_calibrated_pct"] > 6.0]
    assert high and all(r["err_nvml_calibrated_pct"] < 18.0 and r["err_nvml_pct"] > 0 for r in high)
    # simpler calibrations do worse than the one used (small probes' allocator scatter gets extrapolated)
    assert held["memmodel_fit_alone"]["median_abs_pct"] > held["calibrated"]["median_abs_pct"]


def test_committed_error_files_are_what_the_command_writes(validation, tmp_path):
    summary = write_validation(out_dir=tmp_path)
    committed = REPO_ROOT / ERROR_DIR
    assert json.loads((committed / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (committed / "errors.csv").read_text() == (tmp_path / "errors.csv").read_text()
    assert summary["command"] == VALIDATE_COMMAND


# ----------------------------------------------------------------------------- the model's terms


def _tiny(tmp_path: Path, layers: int):
    from transformers import Qwen2Config

    d = tmp_path / f"tiny-{layers}"
    Qwen2Config(hidden_size=256, intermediate_size=688, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=64,
                tie_word_embeddings=False).save_pretrained(d)
    return resolve_model(str(d))


def _saved_bytes(source, strategy: Strategy, tokens: int) -> int:
    """Bytes autograd keeps for backward after one forward, built and trained as the worker does (CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from autofit.models import build_config
    from autofit.probe.worker import apply_method
    from autofit.trainconfig import autocast_dtype, model_dtype

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(source), torch_dtype=getattr(torch, model_dtype(strategy, 1)),
                                             attn_implementation="sdpa")
    model = apply_method(model, source, strategy)
    keep = {p.untyped_storage().data_ptr() for p in model.parameters()}
    keep |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        saved[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, 512, (1, tokens))
    ac = autocast_dtype(strategy)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=getattr(torch, ac) if ac else None, enabled=ac is not None):
        model(input_ids=ids, labels=ids)
    return sum(n for p, n in saved.items() if p not in keep)


@pytest.mark.parametrize("strategy", [
    Strategy(method=Method(kind="lora"), precision="bf16-pure"),
    Strategy(method=Method(kind="full"), precision="bf16-pure"),
    Strategy(method=Method(kind="full"), precision="bf16"),       # fp32 weights under autocast: half copies
    Strategy(method=Method(kind="lora"), precision="fp32"),
], ids=lambda s: s.key())
def test_one_block_costs_what_autograd_really_saves(tmp_path, strategy):
    """One more decoder block adds exactly the bytes the model predicts (CPU, real PEFT and autocast)."""
    t = 64
    two, three = _tiny(tmp_path, 2), _tiny(tmp_path, 3)
    measured = _saved_bytes(three, strategy, t) - _saved_bytes(two, strategy, t)

    def predicted(src):
        pk = predict(arch_of(src), strategy, 1, 1, t, 1, src.lora_targets)
        return activation_bytes(arch_of(src), strategy, 1, 1, t, src.lora_targets) + pk.autocast_copies

    assert predicted(three) - predicted(two) == pytest.approx(measured, rel=0.01)


def test_freeze_saves_activations_of_the_trained_blocks_only(tmp_path):
    """Training one more of the last blocks adds one trainable block's saved tensors; frozen ones add none."""
    t, src = 64, _tiny(tmp_path, 3)
    last = [Strategy(method=Method(kind="freeze", freeze_trainable_layers=n), precision="bf16-pure") for n in (1, 2)]
    measured = _saved_bytes(src, last[1], t) - _saved_bytes(src, last[0], t)
    predicted = [activation_bytes(arch_of(src), s, 1, 1, t, src.lora_targets) for s in last]
    assert predicted[1] - predicted[0] == pytest.approx(measured, rel=0.01)


def test_checkpointing_keeps_one_hidden_state_per_block_plus_the_logits():
    src = resolve_model(GLM)
    arch, lora = arch_of(src), Strategy(method=Method(kind="lora"))
    ckpt = activation_bytes(arch, Strategy(method=Method(kind="lora"), grad_ckpt=True), 1, 1, 1024, src.lora_targets)
    full = activation_bytes(arch, lora, 1, 1, 1024, src.lora_targets)
    per_token_ckpt = ckpt / 1024
    assert per_token_ckpt == pytest.approx(40 * 2 * 4096 + 4 * 4096 + 12 * 151552 + 16, rel=0.001)
    assert full / ckpt > 4  # 9.1 MB vs 2.2 MB per token, as measured on the H100


def test_weights_and_lora_parameters_of_glm4():
    src = resolve_model(GLM)
    arch = arch_of(src)
    assert arch.params == 9_399_951_360 and arch.layers == 40 and arch.vocab == 151552
    pk = predict(arch, Strategy(method=Method(kind="lora", lora_r=8)), 1, 1, 1024, 32, src.lora_targets)
    lora = 40 * 8 * ((4096 + 4096) + 2 * (4096 + 256) + (4096 + 4096))
    assert pk.weights == arch.params * 2 + lora * 4          # bf16 base, fp32 adapters (PEFT's autocast_adapter_dtype)
    assert pk.optimizer == 2 * 4 * lora and pk.gradients == 4 * lora


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
    assert VALIDATE_COMMAND in res.output
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
    (dict(model=GLM, max_token=1024, run_dir="/nonexistent/run"), RunDirError, "not a directory"),
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
