"""Bytes autograd keeps per token and decoder block, counted on the CPU (no GPU needed): the check
behind autofit.memory.analytic's activation terms. Builds a Qwen2-shaped model (GLM-4-9B's block by default)
with one and with two blocks, LoRA on the given targets, bf16 weights and adapters (as the DeepSpeed
engine casts them), runs one forward under torch.autograd.graph.saved_tensors_hooks, sums the distinct
storages saved (parameters excluded) and takes the difference. `--zero3` patches F.linear with
DeepSpeed's ZeRO-3 memory-efficient linear first, as zero.Init does.

    python -m benchmarks.saved_activations [--zero3 | --engine STAGE] [--hidden 4096 --mlp 13696 ...]

`--zero3` emulates ZeRO-3 (the patched F.linear, fp32 adapters); `--engine 3` runs the real ZeRO-3
engine on the CPU (DeepSpeed's CPU accelerator, gloo): both gave 32456, 50952 and 257800 bytes at
h=512, 1024 (mlp 1712) and 4096 (mlp 13696). `--engine 0` and `--engine 2` give what the plain count
gives (19752 at h=512): below ZeRO-3 the engine casts the adapters to bf16 and keeps torch's linear.
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


def _qwen2(layers: int, hidden: int, mlp: int, heads: int, kv_heads: int, vocab: int):
    import transformers

    return transformers.Qwen2Config(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                                    num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                                    tie_word_embeddings=False, attn_implementation="sdpa")


def _lora(model, targets: list[str]):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=targets))


def _saved(model, forward) -> int:
    """Bytes of the distinct storages autograd saves while `forward()` runs: not parameters, nor ZeRO-3
    parameters gathered for the moment (ds_id)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and not hasattr(t, "ds_id"):
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def saved_bytes(layers: int, hidden: int, mlp: int, heads: int, kv_heads: int, targets: list[str],
                tokens: int = 64, vocab: int = 256, zero3: bool = False) -> int:
    """Emulation: plain torch with bf16 adapters (the engine below ZeRO-3), or with `zero3` the patched
    F.linear and fp32 adapters (PEFT 0.12's autocast_adapter_dtype, never cast under ZeRO-3)."""
    import torch
    import transformers

    torch.manual_seed(0)
    with zero3_linear() if zero3 else contextlib.nullcontext():
        model = _lora(transformers.Qwen2ForCausalLM(_qwen2(layers, hidden, mlp, heads, kv_heads, vocab)).to(torch.bfloat16),
                      targets)
        if not zero3:
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
        model.train()
        ids = torch.randint(0, vocab, (1, tokens))
        return _saved(model, lambda: model(input_ids=ids, labels=ids))


def engine_saved_bytes(layers: int, hidden: int, mlp: int, heads: int, kv_heads: int, targets: list[str],
                       tokens: int = 64, vocab: int = 256, stage: int = 3) -> int:
    """The same count under the real DeepSpeed engine at `stage` (deepspeed.initialize; ZeRO-3 built under
    zero.Init with parameters offloaded), run on the CPU: set DS_ACCELERATOR=cpu before deepspeed is
    imported."""
    import os

    import deepspeed
    import torch
    import transformers

    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                 ("LOCAL_RANK", "0")):
        os.environ.setdefault(k, v)
    if not torch.distributed.is_initialized():
        # One rank needs no shared-memory collectives: skip the CPU accelerator's shm op, whose first
        # JIT build (minutes on 2 cores, once per environment) would dominate the count.
        import importlib   # not `import deepspeed.comm.torch as`: deepspeed.comm exports torch itself

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")
    # A torch optimizer, not DeepSpeed's: what forward saves does not depend on it, and DeepSpeed's own
    # (CPU Adam, FusedAdam) would JIT-build an extension first.
    zero = {"stage": stage, **({"offload_param": {"device": "cpu"}} if stage == 3 else {})}
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
          "zero_optimization": zero, "zero_allow_untested_optimizer": True}
    # as the probe worker and HF Trainer build it: partitioned while built under ZeRO-3
    with deepspeed.zero.Init(config_dict_or_path=ds) if stage == 3 else contextlib.nullcontext():
        model = transformers.Qwen2ForCausalLM(_qwen2(layers, hidden, mlp, heads, kv_heads, vocab)).to(torch.bfloat16)
    model = _lora(model, targets)
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trained, lr=1e-4), config=ds)
    ids = torch.randint(0, vocab, (1, tokens))
    return _saved(model, lambda: engine(input_ids=ids, labels=ids))


def per_block_per_token(hidden: int, mlp: int, heads: int, kv_heads: int, targets: list[str], tokens: int = 64,
                        zero3: bool = False, engine: int | None = None) -> float:
    """One block's share: the count with two blocks less the count with one, per token. `engine`: the real
    engine at that ZeRO stage instead of the emulation."""
    def count(layers: int) -> int:
        if engine is not None:
            return engine_saved_bytes(layers, hidden, mlp, heads, kv_heads, targets, tokens, stage=engine)
        return saved_bytes(layers, hidden, mlp, heads, kv_heads, targets, tokens, zero3=zero3)
    return (count(2) - count(1)) / tokens


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zero3", action="store_true")
    ap.add_argument("--engine", type=int, metavar="STAGE", default=None,
                    help="the real DeepSpeed engine at this ZeRO stage, on the CPU, instead of the emulation")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--mlp", type=int, default=13696)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    a = ap.parse_args(argv)
    if a.engine is not None:
        import os

        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    b = per_block_per_token(a.hidden, a.mlp, a.heads, a.kv_heads, a.targets.split(","), zero3=a.zero3, engine=a.engine)
    what = f"ZeRO-{a.engine} engine" if a.engine is not None else "ZeRO-3 linear" if a.zero3 else "torch linear"
    print(f"{what}: {b:.0f} bytes per token and block")


if __name__ == "__main__":
    main()
