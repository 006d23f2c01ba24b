"""autofit.memory.analytic: the analytic memory model's terms against what autograd really saves (CPU),
the architecture's own counts, and the peaks that DESIGN.md records for the fused loss and 4-bit
weights (H200 under a 24 GiB cap); the orderings the new dimensions must keep."""

from __future__ import annotations

from pathlib import Path

import pytest

from autofit.memory.analytic import activation_bytes, fused_chunk_rows, predict
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



# ----------------------------------------------------------------------------- the new dimensions

GLM_TARGETS = resolve_model(GLM).lora_targets


def _peak(model: str, key: str, micro_batch: int, max_token: int, grad_accum: int = 1):
    src = resolve_model(model)
    return predict(arch_of(src), Strategy.from_key(key), 1, micro_batch, max_token, grad_accum, src.lora_targets)


@pytest.mark.parametrize("model, base", [
    (GLM, "lora-r8/bf16-pure/ckpt/z0"), (GLM, "lora-r8/bf16-pure/nockpt/z0"),
    ("Qwen/Qwen2-1.5B", "full/bf16/ckpt/z0"), ("Qwen/Qwen2-1.5B", "full/bf16-pure/nockpt/z2"),
    (GLM, "lora-r8/bf16-pure/nf4/ckpt/z0"),
])
def test_the_fused_loss_never_costs_more_than_hf_and_saves_most_at_long_sequences(model, base):
    for mb, t in ((1, 512), (4, 2048), (2, 8192)):
        hf, fused = _peak(model, base, mb, t), _peak(model, base + "/fused", mb, t)
        assert fused.device <= hf.device, (mb, t)
        # A trainable head gets its gradient from the fused loss in forward (vocab x hidden), which at a few
        # hundred tokens can outweigh HF's logits; the peak is then the optimizer step's anyway.
        assert fused.activations <= hf.activations or not base.startswith("lora"), (mb, t)
    if "/ckpt/" in base:  # with checkpointing, HF's fp32 logits over a 150k vocabulary are most of it at T=8192
        assert _peak(model, base + "/fused", 2, 8192).activations < 0.6 * _peak(model, base, 2, 8192).activations


def test_fused_chunks_hold_about_as_much_as_the_hidden_states():
    arch = arch_of(resolve_model(GLM))
    for tokens in (1, 7, 512, 4096, 16384, 3 * 4096 + 5):
        rows = fused_chunk_rows(arch, tokens)
        assert 1 <= rows <= tokens
        assert rows == tokens or rows & (rows - 1) == 0      # a power of two, or all the tokens
        if rows < tokens and tokens * arch.hidden >= arch.vocab:
            # one chunk's logits: between half and twice the hidden states, as liger sizes them
            assert tokens * arch.hidden / 2 <= rows * arch.vocab <= 2 * tokens * arch.hidden * 1.1


def test_quantized_base_weights_order_nf4_int8_bf16():
    shape = (1, 1024)
    w = {q: _peak(GLM, f"lora-r8/bf16-pure{q}/ckpt/z0", *shape) for q in ("", "/nf4", "/int8")}
    assert w["/nf4"].weights < w["/int8"].weights < w[""].weights
    assert w["/nf4"].device < w["/int8"].device < w[""].device
    arch = arch_of(resolve_model(GLM))
    quantized = arch.layers * arch.block_linear_params
    # embeddings, norms and the untied head stay bf16; the blocks' Linear weights take 4 or 8 bits each
    assert w[""].weights - w["/nf4"].weights == pytest.approx(quantized * (2 - 0.5), rel=0.02)
    assert w[""].weights - w["/int8"].weights == pytest.approx(quantized * (2 - 1), rel=0.01)


def test_a_quantized_layer_adds_its_dequantized_weight_and_int8_keeps_linear_inputs():
    bf16, nf4, int8 = (_peak(GLM, f"lora-r8/bf16-pure{q}/nockpt/z0/fused", 1, 1024) for q in ("", "/nf4", "/int8"))
    # NF4's matmul saves nothing more than a frozen bf16 Linear; the weight it dequantizes is transient
    assert 0 < nf4.activations - bf16.activations < 0.5 * GiB
    # LLM.int8's matmul saves its input for backward, as a trainable Linear does
    assert int8.activations > nf4.activations + 1 * GiB


@pytest.mark.parametrize("base", ["full/bf16-pure/ckpt/z0", "full/bf16/ckpt/z0", "full/bf16-pure/nockpt/z0"])
def test_8bit_adamw_holds_less_state_than_adamw_for_full_finetuning(base):
    adamw, eight = _peak("Qwen/Qwen2-1.5B", base, 1, 1024), _peak("Qwen/Qwen2-1.5B", base + "/adamw8bit", 1, 1024)
    assert eight.optimizer < adamw.optimizer and eight.device < adamw.device
    # 2 bytes of state a parameter, plus its block statistics
    params = arch_of(resolve_model("Qwen/Qwen2-1.5B")).params
    assert 2 * params < eight.optimizer < 2.1 * params


# ----------------------------------------------------------------------------- DESIGN.md's measured figures
# /work/shared/DESIGN.md, "Memory techniques beyond ZeRO": an H200 under a 24 GiB cap (--gpu-memory 24GiB,
# the allocator's limit, which reserved memory is held to), LoRA r8, checkpointing. The figures are
# rounded to the GiB or so and their shapes are not all recorded, hence the tolerances below.

CAP = 24 * GiB


def test_nf4_saves_what_the_h200_measured_on_glm4():
    # "NF4 base weights: 9.4 B parameters take 8.8 GiB instead of 20.2": the two differ by the weights
    # alone at the same shape, so the difference is compared (within 5%), at any shape.
    for mb, t in ((1, 512), (2, 2048)):
        bf16, nf4 = _peak(GLM, "lora-r8/bf16-pure/ckpt/z0", mb, t), _peak(GLM, "lora-r8/bf16-pure/nf4/ckpt/z0", mb, t)
        assert (bf16.device - nf4.device) / GiB == pytest.approx(20.2 - 8.8, rel=0.05)


def test_glm4_nf4_with_the_fused_loss_fits_micro_batch_8_at_2048_tokens():
    # "With the fused loss, GLM-4-9B at T=2048 fits micro-batch 8 in about 19 GiB" (within 10%)
    pk = _peak(GLM, "lora-r8/bf16-pure/nf4/ckpt/z0/fused", 8, 2048, grad_accum=2)
    assert pk.reserved < CAP
    assert pk.device / GiB == pytest.approx(19, rel=0.10)


def test_qwen2_7b_at_4096_tokens_fits_only_with_the_fused_loss():
    # "Qwen2-7B at T=4096 goes from out of memory at micro-batch 1 to micro-batch 3 in about 21 GiB"
    # (within 10%)
    assert _peak("Qwen/Qwen2-7B", "lora-r8/bf16-pure/ckpt/z0", 1, 4096).reserved > CAP
    fused = _peak("Qwen/Qwen2-7B", "lora-r8/bf16-pure/ckpt/z0/fused", 3, 4096, grad_accum=2)
    assert fused.reserved < CAP
    assert fused.device / GiB == pytest.approx(21, rel=0.10)


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
        assert not mods & {"click", "autofit.estimate", "pathlib", "csv", "autofit.rundir", "autofit.rundir.records"}, path
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in calls, path
    for path in sorted((root / "search").glob("*.py")):
        assert "autofit.estimate" not in imports(path), path
