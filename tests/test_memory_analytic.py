"""autofit.memory.analytic: the analytic memory model's terms against what autograd really saves (CPU)
and the architecture's own counts; the memory package's purity."""

from __future__ import annotations

from pathlib import Path

import pytest

from autofit.memory.analytic import activation_bytes, predict
from autofit.memory.arch import arch_of
from autofit.models import resolve_model
from autofit.spec import Method, Strategy

GiB = 2**30
GLM = "THUDM/glm-4-9b-chat"


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



# ----------------------------------------------------------------------------- purity


def test_the_memory_model_is_pure_and_search_uses_it_not_the_command():
    """The memory package reads no file and has no CLI; search reaches the model through it, never
    through the `autofit estimate` command (autofit.estimate), which sits above search."""
    import ast

    root = Path(__file__).resolve().parents[1] / "autofit"

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return mods | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    for path in sorted((root / "memory").glob("*.py")):
        mods = imports(path)
        assert not mods & {"click", "autofit.estimate", "pathlib", "csv", "autofit.results"}, path
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in calls, path
    for path in sorted((root / "search").glob("*.py")):
        assert "autofit.estimate" not in imports(path), path
