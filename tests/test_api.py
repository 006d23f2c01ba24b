"""The Python API (autofit/api.py): load() hands out the objects HF users train with, made by the same
functions as `autofit export --format hf`; `import autofit` stays light. That search() runs a real search
and returns its winner: tests/test_search_e2e.py, whose one search goes through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import autofit
from autofit.errors import ExportError, RunDirError, UsageError
from autofit.spec import Method, Strategy

ROOT = Path(__file__).resolve().parent.parent
LORA_PLAIN = ROOT / "results" / "bench-h100-glm4-lora-T1024" / "search"
LORA_ZERO3 = ROOT / "results" / "search-h100-glm4-lora-T1024-24GiB" / "search"
FULL_2GPU = ROOT / "results" / "search-2xh200-glm4-full-T1024" / "search"


@pytest.fixture(autouse=True)
def _no_deepspeed_leak(monkeypatch):
    """TrainingArguments with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED and a process-wide
    HfTrainerDeepSpeedConfig: as in a user's notebook, but later tests in this process (CPU verify, HF
    Trainer baselines) would then train through DeepSpeed. monkeypatch restores the environment."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    yield
    if "transformers.integrations.deepspeed" in sys.modules:
        sys.modules["transformers.integrations.deepspeed"].unset_hf_deepspeed_config()


def _best(run: Path) -> dict:
    return yaml.safe_load((run / "best.yaml").read_text())


def _as_strategy(tmp_path: Path, **dims) -> Path:
    """The committed plain LoRA winner with its strategy key rewritten (4-bit weights, fused loss...)."""
    run = tmp_path / "variant"
    shutil.copytree(LORA_PLAIN, run)
    doc = _best(run)
    doc["config"]["strategy"] = Strategy(method=Method("lora"), precision="bf16-pure", **dims).key()
    (run / "best.yaml").write_text(yaml.safe_dump(doc))
    return run


def test_import_autofit_loads_no_gpu_stack():
    code = ("import sys, autofit; autofit.load; heavy = {'torch', 'transformers', 'peft', 'deepspeed'} & set(sys.modules);"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("src", [LORA_PLAIN, LORA_ZERO3, FULL_2GPU], ids=["lora", "offload", "2gpu"])
def test_training_arguments_are_the_winners(tmp_path, src):
    best = _best(src)
    run = autofit.load(src)
    args = run.training_arguments(output_dir=str(tmp_path / "out"), learning_rate=3e-5)
    c = best["config"]
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (c["micro_batch"],
                                                                                    c["gradient_accumulation"])
    assert args.gradient_checkpointing is c["gradient_checkpointing"] and args.bf16 is best["training_args"]["bf16"]
    assert args.learning_rate == 3e-5 and args.output_dir == str(tmp_path / "out")
    assert run.strategy == c["strategy"] and run.tokens_per_s == best["measured"]["tokens_per_s"]
    ds = run.deepspeed_config()
    assert (ds is None) == (best["deepspeed"] is None)
    if ds is not None:
        assert args.deepspeed == ds and ds["zero_optimization"]["stage"] == c["zero_stage"]


def test_the_api_and_the_hf_export_agree(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run_dir)
    run = autofit.load(run_dir)
    (path,) = [p for p in run.export("hf") if p.suffix == ".yaml"]
    exported = yaml.safe_load(path.read_text())["training_args"]
    from transformers import TrainingArguments

    api = run.training_arguments(output_dir=exported["output_dir"]).to_dict()
    from_file = TrainingArguments(**{k: v for k, v in exported.items() if k != "deepspeed"}).to_dict()
    assert {k: v for k, v in api.items() if k != "deepspeed"} == {k: v for k, v in from_file.items() if k != "deepspeed"}
    assert api["deepspeed"] == {k: v for k, v in yaml.safe_load(
        Path(exported["deepspeed"]).read_text()).items() if k != "_comment"}
    assert run.lora_config().r == _best(run_dir)["peft"]["r"]


def test_lora_config_and_model_kwargs():
    import torch

    run = autofit.load(LORA_PLAIN)
    lora = run.lora_config()
    assert lora.r == 8 and set(lora.target_modules) == set(_best(LORA_PLAIN)["peft"]["target_modules"])
    kw = run.model_kwargs()
    assert kw == {"torch_dtype": torch.bfloat16, "attn_implementation": "sdpa", "trust_remote_code": False}
    assert autofit.load(FULL_2GPU).lora_config() is None


def test_a_4bit_winner_loads_with_a_bitsandbytes_config(tmp_path):
    import torch
    from transformers import BitsAndBytesConfig

    run = autofit.load(_as_strategy(tmp_path, quant="nf4"))
    q = run.model_kwargs()["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_use_double_quant


def test_a_fused_loss_winner_needs_a_newer_transformers(tmp_path):
    from transformers import TrainingArguments

    run = autofit.load(_as_strategy(tmp_path, loss="fused"))
    if "liger_kernel_config" in TrainingArguments.__dataclass_fields__:
        assert run.training_arguments(output_dir="o").use_liger_kernel is True
    else:  # transformers 4.40.2, autofit's own: refused with the version it needs, not dropped
        with pytest.raises(ExportError, match=r"fused cross-entropy: TrainingArguments needs transformers>=4\.52"):
            run.training_arguments(output_dir="o")


def test_load_of_a_dir_without_a_winner(tmp_path):
    with pytest.raises(RunDirError, match="has no best.yaml"):
        autofit.load(tmp_path)


def test_search_raises_instead_of_exiting(tmp_path):
    with pytest.raises(UsageError, match="--max-token must be positive"):
        autofit.search(model="autofit/tiny-qwen2", max_token=0, run_dir=tmp_path / "r")

