"""The fused-loss patch (autofit/probe/fused_loss.py) on the CPU: its hidden-state, head and shift wiring.

liger-kernel's Triton kernel cannot run here, so these tests hand the patch a FAKE kernel: a plain
torch linear cross-entropy with the kernel's call signature. The patched loss and gradients must equal
HF's own, for every architecture of the built-in table and under PEFT; the kernel itself runs in the
GPU tests (tests/test_techniques_gpu.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autofit.errors import ModelSourceError
from autofit.models import load_table
from autofit.probe import fused_loss

TINY_SHAPES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, head_dim=16,
                   num_local_experts=4, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64)


def fake_kernel_reference_loss(weight, hidden, target, bias=None):
    """FAKE liger kernel: the same (weight, hidden, target, bias) -> mean loss, with whole fp32 logits."""
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), target, ignore_index=fused_loss.IGNORE_INDEX)


def _tiny(arch_config: dict, architecture: str):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    cfg = {k: TINY_SHAPES.get(k, v) for k, v in arch_config.items() if k != "torch_dtype"}
    cfg.update({k: TINY_SHAPES[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[architecture](**cfg), torch_dtype=torch.float32,
                                             attn_implementation="eager")
    return model.train()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :5] = fused_loss.IGNORE_INDEX  # a prompt the loss skips, as SFT data has
    return ids, labels


def _loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _architectures():
    seen = {}
    for entry in load_table().values():
        seen.setdefault(entry["architecture"], entry["config"])
    return sorted(seen.items())


@pytest.mark.parametrize("architecture,config", _architectures(), ids=lambda v: v if isinstance(v, str) else "")
def test_patched_loss_and_gradients_equal_hf_for_every_table_architecture(architecture, config):
    model = _tiny(config, architecture)
    ids, labels = _batch(model.config.vocab_size)
    hf, hf_grads = _loss_and_grads(model, ids, labels)
    fused_loss.patch(model, loss_fn=fake_kernel_reference_loss)
    fused, fused_grads = _loss_and_grads(model, ids, labels)
    assert fused.logits is None  # the point: no whole logits
    assert fused.loss.item() == pytest.approx(hf.loss.item(), abs=1e-5)
    assert fused_grads.keys() == hf_grads.keys()
    for name, g in hf_grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_the_patch_reaches_through_peft_and_only_changes_training_with_labels():
    from peft import LoraConfig, get_peft_model

    model = _tiny(load_table()["Qwen/Qwen2-0.5B"]["config"], "qwen2")
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters count
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, labels = _batch(model.config.vocab_size)
    hf, hf_grads = _loss_and_grads(peft_model, ids, labels)
    fused_loss.patch(peft_model, loss_fn=fake_kernel_reference_loss)
    # HF Trainer's call: model(**inputs)
    fused, fused_grads = _loss_and_grads(peft_model, ids, labels)
    assert fused.loss.item() == pytest.approx(hf.loss.item(), abs=1e-5)
    assert set(fused_grads) == set(hf_grads) and all("lora_" in n for n in fused_grads)
    for name, g in hf_grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    peft_model.eval()  # evaluation and generation keep the model's own forward, logits included
    with torch.no_grad():
        assert peft_model(input_ids=ids, labels=labels).logits.shape == (2, 24, model.config.vocab_size)
    peft_model.train()
    with torch.no_grad():
        assert peft_model(input_ids=ids).logits is not None  # no labels: nothing to fuse


def test_a_model_without_a_readable_head_is_a_clear_error():
    model = _tiny(load_table()["Qwen/Qwen2-0.5B"]["config"], "qwen2")
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(ModelSourceError, match="fused loss: .*output projection is Sequential"):
        fused_loss.patch(model, loss_fn=fake_kernel_reference_loss)


def test_shifted_targets_are_hf_shift_padded_with_the_ignore_index():
    labels = torch.tensor([[1, 2, 3, 4], [5, -100, 7, 8]])
    assert fused_loss.shifted_targets(labels).tolist() == [[2, 3, 4, -100], [-100, 7, 8, -100]]


@pytest.mark.slow
def test_verify_trains_a_fused_winner_through_hf_trainer_with_the_patch(tmp_path, monkeypatch):
    """verify builds the winner through the worker's trainable_model, so HF Trainer's model(**inputs) runs
    the patched loss; the FAKE kernel counts its calls."""
    import json

    from click.testing import CliRunner

    from autofit.cli import cli
    from autofit.spec import Context, Shape, Strategy
    from tests.test_quantize import write_best_yaml

    calls = []

    def counting_fake_kernel():
        def loss(weight, hidden, target, bias=None):
            calls.append(hidden.shape)
            return fake_kernel_reference_loss(weight, hidden, target, bias)
        return loss

    monkeypatch.setattr(fused_loss, "liger_loss", counting_fake_kernel)
    strategy = Strategy(precision="fp32", loss="fused")
    write_best_yaml(tmp_path / "run", strategy, Context(model="autofit/tiny-qwen2", device="cpu", gpus=(), global_batch=4),
                    Shape(2, 32), measured={"tokens_per_s": 1000.0, "peak_gib": 1.0},
                    hardware={"device": "cpu", "gpu": "cpu", "gpus": [], "memory_budget_gib": 64.0, "emulated_gpu_memory": False})
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "run"), "--steps", "3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert json.loads((tmp_path / "run" / "verify.json").read_text())["strategy"] == "lora-r8/fp32/nockpt/z0/fused"
    assert len(calls) == 3 * 2 and set(calls) == {(2 * 32, 64)}  # 3 steps x 2 micro-batches of 2 x 32 tokens
