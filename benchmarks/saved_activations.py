"""Bytes autograd keeps per token and decoder block, counted on the CPU (no GPU needed): the check
behind autofit.estimate's activation terms. Builds a Qwen2-shaped model (GLM-4-9B's block by default)
with one and with two blocks, LoRA on the given targets, bf16 weights and adapters (as the DeepSpeed
engine casts them), runs one forward under torch.autograd.graph.saved_tensors_hooks, sums the distinct
storages saved (parameters excluded) and takes the difference. `--zero3` patches F.linear with
DeepSpeed's ZeRO-3 memory-efficient linear first, as zero.Init does.

    python -m benchmarks.saved_activations [--zero3] [--hidden 4096 --mlp 13696 ...]
"""
from __future__ import annotations

import argparse
import contextlib


@contextlib.contextmanager
def zero3_linear():
    """F.linear replaced by DeepSpeed's LinearFunctionForZeroStage3 wrapper, restored afterwards."""
    import torch.nn.functional as F
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    orig = F.linear
    F.linear = zero3_linear_wrap
    try:
        yield
    finally:
        F.linear = orig


def saved_bytes(layers: int, hidden: int, mlp: int, heads: int, kv_heads: int, targets: list[str],
                tokens: int = 64, vocab: int = 256, fp32_adapters: bool = False) -> int:
    import peft
    import torch
    import transformers

    cfg = transformers.Qwen2Config(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                                   tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    for p in model.parameters():   # PEFT 0.12 makes the adapters fp32 (autocast_adapter_dtype)
        if not fp32_adapters:
            p.data = p.data.to(torch.bfloat16)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    ids = torch.randint(0, vocab, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


def per_block_per_token(hidden: int, mlp: int, heads: int, kv_heads: int, targets: list[str], tokens: int = 64,
                        fp32_adapters: bool = False) -> float:
    one = saved_bytes(1, hidden, mlp, heads, kv_heads, targets, tokens, fp32_adapters=fp32_adapters)
    two = saved_bytes(2, hidden, mlp, heads, kv_heads, targets, tokens, fp32_adapters=fp32_adapters)
    return (two - one) / tokens


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zero3", action="store_true")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--mlp", type=int, default=13696)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    a = ap.parse_args(argv)
    with zero3_linear() if a.zero3 else contextlib.nullcontext():
        b = per_block_per_token(a.hidden, a.mlp, a.heads, a.kv_heads, a.targets.split(","), fp32_adapters=a.zero3)
    print(f"{'ZeRO-3 linear' if a.zero3 else 'torch linear'}: {b:.0f} bytes per token and block")


if __name__ == "__main__":
    main()
