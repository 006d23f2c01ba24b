"""What is probed is what is exported: the HF/DeepSpeed/PEFT settings are accepted by their consumers
and the HF Trainer's "auto" file resolves to exactly the config the probe trained with."""

from __future__ import annotations

import pytest

from autofit.search.space import SPACES_DIR, load_space
from autofit.spec import Context, Shape
from autofit.trainconfig import deepspeed_config, peft_config, training_args

STRATEGIES = sorted({s for p in SPACES_DIR.glob("*.yaml") for s in load_space(str(p)).strategies(1)}, key=lambda s: s.key())


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.key())
def test_exports_are_accepted_and_match_the_probe(strategy):
    from transformers import TrainingArguments

    ctx, shape, hidden = Context(model="m", gpus=(0,), global_batch=16), Shape(2, 1024), 4096
    args = TrainingArguments(**training_args(strategy, ctx, shape, ds_config_path=None))
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert args.gradient_checkpointing == strategy.grad_ckpt
    concrete = deepspeed_config(strategy, ctx, shape, hidden_size=hidden)
    if concrete is None:
        assert not strategy.uses_deepspeed(1)
        return
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    ds = DeepSpeedConfig(concrete)  # DeepSpeed's own validation (batch arithmetic, ZeRO keys)
    assert ds.zero_optimization_stage == strategy.zero_stage
    hf = HfTrainerDeepSpeedConfig(deepspeed_config(strategy, ctx, shape, hf_auto=True, hidden_size=hidden))
    hf.trainer_config_process(args)
    assert hf.config == concrete


def test_peft_config_constructs():
    from peft import LoraConfig

    s = next(s for s in STRATEGIES if s.method.kind == "lora")
    cfg = LoraConfig(**peft_config(s, ("q_proj", "v_proj")))
    assert cfg.r == s.method.lora_r and set(cfg.target_modules) == {"q_proj", "v_proj"}
