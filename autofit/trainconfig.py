"""The one place that turns a (strategy, shape) into trainer settings.

The probe worker trains with exactly these values and best.yaml exports exactly these values:
what is probed is what is exported. No torch import here (report/export use it).
"""

from __future__ import annotations

from typing import Any

from autofit.spec import Context, Shape, Strategy

LEARNING_RATE = 1e-4  # value is irrelevant to memory and speed; exported so the config is complete


def model_dtype(strategy: Strategy, num_gpus: int) -> str:
    """dtype the weights are built/loaded in (what users pass as torch_dtype); with 4/8-bit base
    weights, the dtype of everything left unquantized (embeddings, norms, head, adapters)."""
    if strategy.precision == "bf16-pure":
        return "bfloat16"
    if strategy.uses_deepspeed(num_gpus) and strategy.precision in ("fp16", "bf16"):
        # DeepSpeed keeps the module in half precision and the fp32 master copy in its optimizer;
        # loading in that dtype avoids a transient fp32 copy on the GPU.
        return "float16" if strategy.precision == "fp16" else "bfloat16"
    return "float32"


def autocast_dtype(strategy: Strategy) -> str | None:
    """dtype of torch.autocast in the torch path (HF Trainer's fp16=/bf16= without DeepSpeed)."""
    return {"fp32": None, "fp16": "float16", "bf16": "bfloat16", "bf16-pure": "bfloat16"}[strategy.precision]


def deepspeed_config(strategy: Strategy, ctx: Context, shape: Shape, hf_auto: bool = False,
                     hidden_size: int | None = None) -> dict[str, Any] | None:
    """DeepSpeed config for this strategy, or None when training runs on a plain torch optimizer.

    hf_auto=True gives the file for HF Trainer, with "auto" wherever Trainer fills values in from
    TrainingArguments; otherwise the concrete numbers the probe passes to deepspeed.initialize.
    ZeRO bucket sizes are concrete in both, computed from hidden_size with HF Trainer's own
    formulas, so the user's run allocates the same buffers the probe measured.
    """
    if not strategy.uses_deepspeed(ctx.num_gpus):
        return None
    accum = ctx.grad_accum(shape.micro_batch)

    def v(concrete: Any) -> Any:
        return "auto" if hf_auto else concrete

    # HF Trainer's "auto" values (integrations/deepspeed.py): hidden^2, 0.9 hidden^2, 10 hidden;
    # DeepSpeed's defaults when the hidden size is unknown.
    h = hidden_size
    reduce_bucket = h * h if h else int(5e8)
    prefetch_bucket = int(0.9 * h * h) if h else int(5e7)
    persistence = 10 * h if h else int(1e5)
    zero: dict[str, Any] = {"stage": strategy.zero_stage}
    if strategy.zero_stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=reduce_bucket)
        if strategy.zero_stage < 3:
            zero["allgather_bucket_size"] = int(5e8)
    if strategy.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=prefetch_bucket, stage3_param_persistence_threshold=persistence,
                    stage3_gather_16bit_weights_on_model_save=True)
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if strategy.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": v(shape.micro_batch),
        "gradient_accumulation_steps": v(accum),
        "train_batch_size": v(shape.micro_batch * accum * ctx.num_gpus),
        "gradient_clipping": v(1.0),
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if strategy.precision == "fp16":
        cfg["fp16"] = {"enabled": v(True), "loss_scale": 0, "initial_scale_power": 16}
    elif strategy.precision in ("bf16", "bf16-pure"):
        cfg["bf16"] = {"enabled": v(True)}
    if strategy.offloads:
        # Offload needs DeepSpeed's CPU Adam (a torch optimizer is refused under offload), so the
        # optimizer is declared here; without offload HF Trainer's own AdamW is passed in instead.
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": v(LEARNING_RATE), "weight_decay": v(0.0)}}
    else:
        cfg["zero_allow_untested_optimizer"] = True
    return cfg


def quantization_config(strategy: Strategy) -> dict[str, Any] | None:
    """Keyword arguments for transformers.BitsAndBytesConfig, or None for bf16 base weights. Double
    quantization and bf16 compute for NF4, as QLoRA and the LLaMA-Factory / axolotl exporters set them."""
    if strategy.quant == "nf4":
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "bfloat16"}
    if strategy.quant == "int8":
        return {"load_in_8bit": True, "llm_int8_threshold": 6.0}
    return None


def hf_optim(strategy: Strategy) -> str:
    """TrainingArguments.optim for the strategy's optimizer."""
    return {"adamw": "adamw_torch", "adamw8bit": "adamw_bnb_8bit"}[strategy.optim]


def fused_loss_settings(strategy: Strategy) -> dict[str, Any] | None:
    """How HF Trainer turns on exactly the fused linear cross-entropy the probe ran, and nothing else of
    liger-kernel (its RoPE, RMSNorm and SwiGLU kernels would change what was measured). transformers
    4.40.2 has neither key: autofit's probes and verify patch the loss in themselves (probe/fused_loss.py)."""
    if strategy.loss != "fused":
        return None
    return {"use_liger_kernel": True,
            "liger_kernel_config": {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False,
                                    "rms_norm": False, "swiglu": False},
            "requires": "transformers>=4.52 (liger_kernel_config), liger-kernel>=0.5"}


def training_args(strategy: Strategy, ctx: Context, shape: Shape, ds_config_path: str | None = "ds_config.json") -> dict[str, Any]:
    """Keyword arguments for transformers.TrainingArguments (4.40.2) that reproduce the probe."""
    uses_ds = strategy.uses_deepspeed(ctx.num_gpus)
    args: dict[str, Any] = {
        "output_dir": "output",
        "per_device_train_batch_size": shape.micro_batch,
        "gradient_accumulation_steps": ctx.grad_accum(shape.micro_batch),
        "gradient_checkpointing": strategy.grad_ckpt,
        "learning_rate": LEARNING_RATE,
        "optim": hf_optim(strategy),
        "bf16": strategy.precision in ("bf16", "bf16-pure"),
        "fp16": strategy.precision == "fp16",
        "max_grad_norm": 1.0,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
    }
    if strategy.grad_ckpt:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if uses_ds and ds_config_path:
        args["deepspeed"] = ds_config_path
    return args


def peft_config(strategy: Strategy, default_targets: tuple[str, ...]) -> dict[str, Any] | None:
    """Keyword arguments for peft.LoraConfig, or None for full / freeze."""
    m = strategy.method
    if m.kind != "lora":
        return None
    return {
        "task_type": "CAUSAL_LM",
        "r": m.lora_r,
        "lora_alpha": m.lora_alpha,
        "lora_dropout": m.lora_dropout,
        "target_modules": list(m.lora_targets or default_targets),
    }
