"""The memory techniques on a CUDA GPU, for real: liger's fused loss kernel, NF4 / int8 base weights and
bitsandbytes' AdamW8bit, each trained by a real probe worker on a built-in model with random weights.

Run on the GPU machine (benchmarks/gpu_smoke_18.sh does): `python3 -m pytest -q -m gpu tests/test_techniques_gpu.py`.
"""

from __future__ import annotations

import pytest

from autofit.models import resolve_model
from autofit.probe.runner import WorkerSession
from autofit.spec import Context, Method, Shape, Status, Strategy

pytestmark = pytest.mark.gpu

GiB = 2**30


def _probe(tmp_path, model: str, strategy: Strategy, shape: Shape):
    ctx = Context(model=model, device="cuda", gpus=(0,), global_batch=8, warmup_steps=1, measure_steps=2,
                  max_positions=shape.max_token, probe_timeout_s=300, build_timeout_s=300)
    with WorkerSession(ctx, strategy, resolve_model(model), tmp_path / strategy.key().replace("/", "_")) as s:
        r = s.probe(shape)
    assert r.status is Status.OK, f"{strategy.key()}: {r.error}"
    assert r.strategy == strategy.key() and r.tokens_per_s > 0
    return r


@pytest.fixture(autouse=True)
def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def test_liger_kernel_loss_and_gradients_equal_hf_on_a_tiny_model():
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from autofit.probe import fused_loss
    from tests.conftest import TINY

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**TINY), torch_dtype=torch.float32).cuda().train()
    ids = torch.randint(0, TINY["vocab_size"], (2, 64), device="cuda")
    labels = ids.clone()
    labels[:, :8] = fused_loss.IGNORE_INDEX

    def run():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    hf, hf_grads = run()
    fused_loss.patch(model)  # the real Triton kernel
    fused, fused_grads = run()
    assert fused.logits is None
    assert fused.loss.item() == pytest.approx(hf.loss.item(), abs=1e-4)
    for name, g in hf_grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-4, rtol=1e-3, msg=name)


def test_nf4_with_the_fused_loss_trains_in_well_under_the_bf16_peak(tmp_path):
    shape = Shape(1, 1024)
    bf16 = _probe(tmp_path, "Qwen/Qwen2-7B", Strategy(grad_ckpt=True), shape)
    nf4 = _probe(tmp_path, "Qwen/Qwen2-7B", Strategy(grad_ckpt=True, quant="nf4", loss="fused"), shape)
    # 7.6 B parameters: ~14 GiB of bf16 weights against ~5.5 GiB in NF4 (head and embeddings stay bf16).
    assert nf4.peak_allocated < 0.55 * bf16.peak_allocated, (nf4.peak_allocated / GiB, bf16.peak_allocated / GiB)


def test_int8_lora_trains(tmp_path):
    r = _probe(tmp_path, "Qwen/Qwen2-1.5B", Strategy(quant="int8"), Shape(2, 512))
    # Weights are small (~1.2 GiB of int8 blocks); what dominates at this shape is HF's fp32 logits over a
    # 152k vocabulary and LLM.int8's fp16/int8 copies of each Linear's input: 6.36 GiB on an H200
    # (results/gpu-smoke-18/gpu-tests.log). The bound catches the weights falling back to bf16 (+1.5 GiB).
    assert r.ok and r.peak_allocated < 7 * GiB


def test_adamw8bit_full_fine_tuning_keeps_a_smaller_optimizer_state(tmp_path):
    full = Method(kind="full")
    adamw = _probe(tmp_path, "Qwen/Qwen2-0.5B", Strategy(method=full), Shape(1, 256))
    adamw8 = _probe(tmp_path, "Qwen/Qwen2-0.5B", Strategy(method=full, optim="adamw8bit"), Shape(1, 256))
    # 0.5 B parameters: torch AdamW keeps two bf16 moments (~2 GiB), AdamW8bit two uint8 ones (~1 GiB).
    assert adamw8.peak_allocated < adamw.peak_allocated - 0.5 * GiB, (adamw8.peak_allocated / GiB, adamw.peak_allocated / GiB)


def test_verify_trains_an_nf4_fused_winner_through_hf_trainer_as_the_probe_measured(tmp_path):
    """What was probed is what HF Trainer trains: same quantized build, same fused loss, same peak."""
    import json
    import subprocess
    import sys

    import torch

    from autofit.spec import compared_peak
    from tests.test_quantize import write_best_yaml

    strategy, shape = Strategy(grad_ckpt=True, quant="nf4", loss="fused"), Shape(2, 1024)
    r = _probe(tmp_path, "Qwen/Qwen2-1.5B", strategy, shape)
    ctx = Context(model="Qwen/Qwen2-1.5B", device="cuda", gpus=(0,), global_batch=8)
    write_best_yaml(tmp_path / "run", strategy, ctx, shape,
                    measured={"tokens_per_s": r.tokens_per_s, "peak_allocated_gib": round(r.peak_allocated / GiB, 3),
                              "peak_reserved_gib": round(r.peak_reserved / GiB, 3),
                              "peak_gib": round(compared_peak(r.nvml_peak, r.peak_reserved, r.host_peak) / GiB, 3)},
                    hardware={"device": "cuda", "gpu": r.device_name, "gpus": [0], "emulated_gpu_memory": False,
                              "memory_budget_gib": round(torch.cuda.get_device_properties(0).total_memory / GiB, 3)})
    done = subprocess.run([sys.executable, "-m", "autofit", "verify", str(tmp_path / "run"), "--steps", "8"],
                          capture_output=True, text=True)
    print(done.stdout, done.stderr[-3000:])
    v = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert v["strategy"] == strategy.key()
    assert done.returncode == 0 and v["passed"], v["problems"]


def test_activation_offload_keeps_the_block_inputs_off_the_gpu(tmp_path):
    """Qwen2-7B LoRA at T=8192: 28 bf16 block inputs of 8192 x 3584 (~1.6 GiB) leave the GPU; one comes back
    at a time for its recompute."""
    shape = Shape(1, 8192)
    ckpt = _probe(tmp_path, "Qwen/Qwen2-7B", Strategy(grad_ckpt=True, loss="fused"), shape)
    off = _probe(tmp_path, "Qwen/Qwen2-7B", Strategy(grad_ckpt=True, act_offload=True, loss="fused"), shape)
    saved = ckpt.peak_allocated - off.peak_allocated
    assert saved > 1.0 * GiB, (ckpt.peak_allocated / GiB, off.peak_allocated / GiB)
