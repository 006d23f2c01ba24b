"""The memory model's per-block activation bytes against autograd's own count (CPU, a small Qwen2 block):
LoRA under the DeepSpeed engine at stage 0 (adapters cast to bf16) and under ZeRO-3 (F.linear replaced
by DeepSpeed's memory-efficient linear, adapters left fp32). The ZeRO-3 emulation reproduced the real
engine's count (deepspeed.initialize with ZeRO-3 + offload on the CPU, gloo) to the byte at
h=512/1024 and GLM-4-9B's h=4096, mlp=13696: 32456, 50952 and 257800 bytes per token and block."""
import pytest
import torch.nn.functional as F

from autofit.memory import analytic as E
from autofit.memory.arch import arch_of
from autofit.spec import Method, Strategy
from benchmarks.saved_activations import per_block_per_token

H, MLP, HEADS, KV = 256, 688, 8, 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _block(zero: int, model_dir) -> float:
    import transformers

    from autofit.models import resolve_model

    transformers.Qwen2Config(hidden_size=H, intermediate_size=MLP, num_hidden_layers=2, num_attention_heads=HEADS,
                             num_key_value_heads=KV, vocab_size=256).save_pretrained(model_dir)
    arch = arch_of(resolve_model(str(model_dir)))
    s = Strategy(method=Method(kind="lora", lora_r=8), precision="bf16-pure", grad_ckpt=False, zero_stage=zero,
                 offload_optimizer=zero == 3, offload_params=zero == 3)
    p = E._precision(s, 2)   # two GPUs: the DeepSpeed engine at stage 0 too (bf16 adapters)
    return E._block_bytes(arch, s, p, tuple(TARGETS))


def test_zero3_linear_keeps_frozen_inputs_as_the_estimate_counts(tmp_path):
    plain = per_block_per_token(H, MLP, HEADS, KV, TARGETS)
    z3 = per_block_per_token(H, MLP, HEADS, KV, TARGETS, zero3=True)
    assert F.linear.__name__ == "linear"  # restored, not left patched for later tests
    # ZeRO-3 keeps every Linear's input (the block's input, the MLP's and down_proj's: 2 bytes each),
    # and each fp32 adapter keeps its own fp32 copy of its input (q/k/v: 3 x 4 bytes instead of one
    # shared bf16 tensor; o: 4 bytes instead of sdpa's output) and A's output in fp32.
    assert z3 - plain == 2 * (H + H + MLP) + (3 * 4 * H - 2 * H) + 4 * H + 4 * 8 * 2
    assert _block(3, tmp_path) - _block(0, tmp_path) == z3 - plain


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_the_emulation_is_what_the_real_engine_keeps(stage):
    """deepspeed.initialize at ZeRO-2 (adapters cast to bf16, torch's linear) and ZeRO-3 (partitioned
    under zero.Init, parameters offloaded), on the CPU (gloo), in its own process: if a DeepSpeed or PEFT
    upgrade changes what the engine keeps, the emulation, and so the estimate, no longer match."""
    import os
    import re
    import subprocess
    import sys

    args = ["--hidden", str(H), "--mlp", str(MLP), "--heads", str(HEADS), "--kv-heads", str(KV)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(29541 + stage)}  # builds no extension: seconds
    out = subprocess.run([sys.executable, "-m", "benchmarks.saved_activations", "--engine", str(stage), *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    engine = float(re.search(rf"ZeRO-{stage} engine: (\d+) bytes", out.stdout).group(1))
    assert engine == per_block_per_token(H, MLP, HEADS, KV, TARGETS, zero3=stage == 3)
