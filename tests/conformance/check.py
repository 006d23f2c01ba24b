"""Load autofit exports with their tool's own parser and compare what the tool read with the winner.

    torchrun --standalone --nproc_per_node=RANKS check.py MANIFEST_JSON

Runs inside a tool's conformance venv (tests/conformance/venvs.sh), never in autofit's: it imports
only the tools. MANIFEST_JSON lists [name, tool, export file, expected values]; the expected values are
the winner's as best.yaml and its strategy key state them (tests/test_export_conformance.py writes it).
One process checks every file of a venv's tools (a start costs 10-30 s of imports). Prints one line per
file on rank 0, "ok NAME" or "FAIL NAME: what the tool rejected or read differently".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

LIGER_ONLY_FLCE = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False, "rms_norm": False,
                   "swiglu": False}


def same(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise AssertionError(f"{what}: the tool read {got!r}, the winner has {want!r}")


def check_training_args(args: Any, e: dict[str, Any], liger_in_args: bool = True) -> None:
    """The HF TrainingArguments fields every format ends in (LLaMA-Factory and GLM-4 build them too)."""
    same("per_device_train_batch_size", args.per_device_train_batch_size, e["micro_batch"])
    same("gradient_accumulation_steps", args.gradient_accumulation_steps, e["accum"])
    same("bf16", args.bf16, e["bf16"])
    same("fp16", args.fp16, e["fp16"])
    same("optim", str(getattr(args.optim, "value", args.optim)), e["optim"])
    if liger_in_args:  # LLaMA-Factory has its own switch, enable_liger_kernel
        same("use_liger_kernel", bool(args.use_liger_kernel), e["fused"])
    if liger_in_args and e["fused"]:
        same("liger_kernel_config", args.liger_kernel_config, LIGER_ONLY_FLCE)
    if e["zero_stage"] is None:
        same("deepspeed", args.deepspeed, None)
    else:
        check_deepspeed(args.hf_deepspeed_config.config, e, hf=args)


def check_deepspeed(cfg: dict[str, Any], e: dict[str, Any], hf: Any = None) -> None:
    """DeepSpeed's own validation of the config, after HF filled its 'auto' values when hf is given."""
    from deepspeed.runtime.config import DeepSpeedConfig

    if hf is not None:
        hf.hf_deepspeed_config.trainer_config_finalize(hf, None, 100)
        cfg = hf.hf_deepspeed_config.config
    if "\"auto\"" in json.dumps(cfg):
        raise AssertionError(f"'auto' left in the DeepSpeed config: {cfg}")
    ds = DeepSpeedConfig(cfg)
    same("zero stage", ds.zero_optimization_stage, e["zero_stage"])
    same("train_micro_batch_size_per_gpu", ds.train_micro_batch_size_per_gpu, e["micro_batch"])
    same("gradient_accumulation_steps", ds.gradient_accumulation_steps, e["accum"])
    # HF fills train_batch_size from its own world size (1 for a CPU process); the concrete file states the run's.
    world = hf.world_size if hf is not None else e["num_gpus"]
    same("train_batch_size", ds.train_batch_size, e["micro_batch"] * e["accum"] * world)
    same("offload_optimizer", ds.zero_config.offload_optimizer is not None
         and str(ds.zero_config.offload_optimizer.device).endswith("cpu"), e["offload_optimizer"])
    same("offload_param", ds.zero_config.offload_param is not None
         and str(ds.zero_config.offload_param.device).endswith("cpu"), e["offload_params"])
    same("bf16", ds.bfloat16_config.enabled if hasattr(ds, "bfloat16_config") else ds.bfloat16_enabled, e["bf16"])


def check_lora(cfg: Any, e: dict[str, Any]) -> None:
    same("LoRA r", cfg.r, e["lora_r"])
    same("LoRA alpha", cfg.lora_alpha, e["lora_alpha"])
    same("LoRA targets", set(cfg.target_modules), set(e["lora_targets"]))


def check_hf(path: Path, e: dict[str, Any]) -> None:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainingArguments

    doc = yaml.safe_load(path.read_text())
    check_training_args(TrainingArguments(**doc["training_args"]), e)
    same("max_token", doc["max_token"], e["max_token"])
    if e["method"] == "lora":
        check_lora(LoraConfig(**doc["peft"]), e)
    q = doc["model_kwargs"].get("quantization_config")
    if e["quant"] == "none":
        same("quantization_config", q, None)
        return
    bnb = BitsAndBytesConfig(**q)
    same("load_in_4bit", bnb.load_in_4bit, e["quant"] == "nf4")
    same("load_in_8bit", bnb.load_in_8bit, e["quant"] == "int8")
    if e["quant"] == "nf4":
        same("bnb_4bit_quant_type", bnb.bnb_4bit_quant_type, "nf4")
        same("bnb_4bit_use_double_quant", bnb.bnb_4bit_use_double_quant, True)


def check_deepspeed_file(path: Path, e: dict[str, Any]) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = json.loads(path.read_text())
    cfg.pop("_comment")
    check_deepspeed(cfg, e)


def check_llamafactory(path: Path, e: dict[str, Any]) -> None:
    from llamafactory.hparams import get_train_args

    sys.argv = ["llamafactory-cli", str(path)]  # `llamafactory-cli train FILE` reads the file from argv like this
    model, data, train, ft, _ = get_train_args()
    check_training_args(train, e, liger_in_args=False)
    same("cutoff_len", data.cutoff_len, e["max_token"])
    same("finetuning_type", ft.finetuning_type, e["method"])
    same("gradient checkpointing", not model.disable_gradient_checkpointing, e["ckpt"])
    same("quantization_bit", model.quantization_bit, {"none": None, "nf4": 4, "int8": 8}[e["quant"]])
    same("enable_liger_kernel", model.enable_liger_kernel, e["fused"])
    same("use_unsloth_gc", model.use_unsloth_gc, e.get("act_offload", False))
    if e["method"] == "lora":
        same("lora_rank", ft.lora_rank, e["lora_r"])
        same("lora_alpha", ft.lora_alpha, e["lora_alpha"])
        same("lora_target", set(ft.lora_target), set(e["lora_targets"]))


def check_axolotl(path: Path, e: dict[str, Any]) -> None:
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    raw = DictDefault(yaml.safe_load(path.read_text()))
    prepare_plugins(raw)  # as axolotl's load_cfg does: the liger plugin adds its keys to the schema
    caps = {"bf16": True, "fp8": False, "n_gpu": e["num_gpus"], "n_node": 1, "compute_capability": "sm_90"}
    cfg = validate_config(raw, capabilities=caps, env_capabilities={"torch_version": "2.13.0"})
    same("micro_batch_size", cfg.micro_batch_size, e["micro_batch"])
    same("gradient_accumulation_steps", cfg.gradient_accumulation_steps, e["accum"])
    same("sequence_len", cfg.sequence_len, e["max_token"])
    same("gradient_checkpointing", bool(cfg.gradient_checkpointing), e["ckpt"])
    same("bf16", bool(cfg.bf16), e["bf16"])
    same("optimizer", str(getattr(cfg.optimizer, "value", cfg.optimizer)), e["optim"])
    same("tf32", cfg.tf32, False)  # axolotl's "auto" would turn it on; autofit measured without
    for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel"):
        same(k, bool(cfg.get(k)), False)  # what axolotl auto-enables for LoRA; the probe ran PEFT's layers
    same("load_in_4bit", bool(cfg.load_in_4bit), e["quant"] == "nf4")
    same("load_in_8bit", bool(cfg.load_in_8bit), e["quant"] == "int8")
    same("liger_fused_linear_cross_entropy", bool(cfg.liger_fused_linear_cross_entropy), e["fused"])
    # hidden_states: offload of the HF-checkpointed blocks' inputs, what autofit's probe measured
    same("activation_offloading", cfg.activation_offloading or False,
         "hidden_states" if e.get("act_offload") else False)
    for k in ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy"):
        same(k, bool(cfg.get(k)), False)
    if e["method"] == "lora":
        same("adapter", cfg.adapter, "qlora" if e["quant"] == "nf4" else "lora")
        same("lora_r", cfg.lora_r, e["lora_r"])
        same("lora_alpha", cfg.lora_alpha, e["lora_alpha"])
        same("lora_target_modules", set(cfg.lora_target_modules), set(e["lora_targets"]))
    same("deepspeed", cfg.deepspeed is not None, e["zero_stage"] is not None)


def check_glm4(path: Path, e: dict[str, Any]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from glm4_finetune_config import FinetuningConfig

    ft = FinetuningConfig.from_file(path)
    check_training_args(ft.training_args, e)
    same("max_input_length + max_output_length + 1", ft.max_input_length + ft.max_output_length + 1, e["max_token"])
    same("gradient_checkpointing", ft.training_args.gradient_checkpointing, e["ckpt"])
    if e["method"] == "lora":
        same("peft_type", str(getattr(ft.peft_config.peft_type, "value", ft.peft_config.peft_type)), "LORA")
        check_lora(ft.peft_config, {**e, "lora_targets": e["glm_targets"]})


CHECKS: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "hf": check_hf, "deepspeed": check_deepspeed_file, "llamafactory": check_llamafactory,
    "axolotl": check_axolotl, "glm4": check_glm4,
}


def emulate_bf16_gpu() -> None:
    """CI has no GPU, and TrainingArguments refuses bf16 there ("Your setup doesn't support bf16/gpu"): a
    property of the machine, not of the file. This answer is the only thing patched in the tools."""
    import transformers.training_args
    import transformers.utils
    import transformers.utils.import_utils

    # before the tool imports it: LLaMA-Factory binds the name with `from transformers.utils import ...`
    for module in (transformers.training_args, transformers.utils, transformers.utils.import_utils):
        module.is_torch_bf16_gpu_available = lambda *a, **k: True


def main() -> None:
    manifest = json.loads(Path(sys.argv[1]).read_text())
    emulate_bf16_gpu()
    rank0 = os.environ.get("RANK", "0") == "0"
    for name, tool, path, expect in manifest:
        try:
            CHECKS[tool](Path(path), expect)
            line = f"ok {name}"
        except Exception as exc:  # noqa: BLE001 - any rejection is the finding, reported per file
            line = f"FAIL {name}: {type(exc).__name__}: {' '.join(str(exc).split())[:800]}"
        if rank0:
            print(line, flush=True)


if __name__ == "__main__":
    main()
