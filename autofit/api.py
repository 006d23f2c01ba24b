"""The Python API: run a search, or load a run's winner as the objects HF Trainer takes.

    import autofit
    run = autofit.search(model="Qwen/Qwen2-7B", max_token=2048, gpu_memory="24GiB")
    run = autofit.load("results/Qwen_Qwen2-7B-T2048-...")
    model = AutoModelForCausalLM.from_pretrained(run.model_id, **run.model_kwargs())
    model = peft.get_peft_model(model, run.lora_config())
    Trainer(model, run.training_arguments(output_dir="out"), ...)

Every value comes from the functions `autofit export` writes its files with (export.py), so a
notebook and an exported YAML train the same configuration. torch, transformers and peft are
imported only when an object is asked for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autofit.errors import ExportError
from autofit.export import export_run, hf_deepspeed, hf_model_kwargs, hf_training_args
from autofit.rundir import RunDir
from autofit.rundir.best import Winner


@dataclass(frozen=True)
class Run:
    """A finished search's winner (RUN_DIR/best.yaml)."""

    winner: Winner

    @property
    def path(self) -> Path:
        return self.winner.run_dir

    @property
    def model_id(self) -> str:
        return self.winner.model_id

    @property
    def strategy(self) -> str:
        return self.winner.strategy.key()

    @property
    def tokens_per_s(self) -> float:
        return self.winner.tokens_per_s

    @property
    def peak_gib(self) -> float:
        return self.winner.peak_gib

    @property
    def max_token(self) -> int:
        return self.winner.max_token

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed config in HF Trainer's form ("auto" where Trainer fills it), or None without DeepSpeed."""
        return hf_deepspeed(self.winner) if self.winner.deepspeed is not None else None

    def training_arguments(self, output_dir: str, **overrides: Any):
        """transformers.TrainingArguments of the winner; overrides (learning_rate, num_train_epochs...) on top."""
        from transformers import TrainingArguments

        kwargs = hf_training_args(self.winner, None)
        if self.winner.deepspeed is not None:
            kwargs["deepspeed"] = self.deepspeed_config()
        kwargs.update(output_dir=output_dir, **overrides)
        if self.winner.strategy.act_offload:
            raise ExportError(f"the winner in {self.path} offloads checkpointed activations to host memory, which "
                              "TrainingArguments cannot express: call autofit.probe.act_offload.patch(model) on the "
                              "model you hand to Trainer")
        if self.winner.fused_loss and "liger_kernel_config" not in TrainingArguments.__dataclass_fields__:
            raise ExportError(f"the winner in {self.path} uses the fused cross-entropy: TrainingArguments needs "
                              f"{self.winner.fused_loss['requires']}")
        return TrainingArguments(**kwargs)

    def lora_config(self):
        """peft.LoraConfig of the winner, or None for full and freeze fine-tuning."""
        if self.winner.peft is None:
            return None
        from peft import LoraConfig

        return LoraConfig(**self.winner.peft)

    def model_kwargs(self) -> dict[str, Any]:
        """from_pretrained kwargs: dtype, attention, trust_remote_code, and a BitsAndBytesConfig for 4/8-bit
        base weights."""
        import torch
        import transformers

        kw = hf_model_kwargs(self.winner)
        dtype = getattr(torch, kw.pop("torch_dtype"))
        # transformers 5 renamed from_pretrained's torch_dtype to dtype
        kw["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
        if "quantization_config" in kw:
            from transformers import BitsAndBytesConfig

            q = dict(kw["quantization_config"])
            if "bnb_4bit_compute_dtype" in q:
                q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
            kw["quantization_config"] = BitsAndBytesConfig(**q)
        return kw

    def export(self, fmt: str, out: str | os.PathLike | None = None, **options: Any) -> list[Path]:
        """`autofit export` for this run (options: dataset, template, allow_placeholders, force)."""
        return export_run(self.path, fmt, out, **options)


def load(run_dir: str | os.PathLike) -> Run:
    """The winner of a finished search; RunDirError names what is wrong with a run dir."""
    return Run(RunDir(Path(run_dir)).best())


def search(model: str, max_token: int, gpu_memory: str | None = None, *, run_dir: str | os.PathLike | None = None,
           quiet: bool = True, **options: Any) -> Run:
    """Run `autofit search` and load its winner. Options are the command's flags in Python spelling
    (gpus="0,1", method="full", budget="10m", quantize=True); an AutofitError is raised, not printed."""
    from autofit.cli import cli

    name = model.rstrip("/").replace("/", "_")
    run_dir = Path(run_dir) if run_dir else Path("results") / f"{name}-T{max_token}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["--debug", "search", "--model", model, "--max-token", str(max_token), "--run-dir", str(run_dir)]
    if gpu_memory:
        args += ["--gpu-memory", str(gpu_memory)]
    if quiet:
        args.append("--quiet")
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    cli.main(args=args, prog_name="autofit", standalone_mode=False)  # --debug: errors propagate as exceptions
    return load(run_dir)
