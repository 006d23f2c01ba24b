"""4-bit NF4 / 8-bit LLM.int8 base weights (bitsandbytes) for the probe and `autofit verify`.

The random-weight twin is quantized layer by layer and never exists whole in bf16 on the device:
the model is built with its parameters on the meta device, each Linear of the decoder blocks becomes
a bitsandbytes layer made from one random bf16 tensor quantized where it lies, and what
transformers' BitsAndBytes integration leaves unquantized (embeddings, norms, the output head)
is materialised in bf16. Real weights load through from_pretrained with BitsAndBytesConfig, as users do.
"""

from __future__ import annotations

from typing import Any

from autofit.models import ModelSource, build_config, decoder_blocks
from autofit.spec import Context, Strategy
from autofit.trainconfig import quantization_config


def quantized_linear(torch: Any, lin: Any, settings: dict[str, Any], device: Any, std: float) -> Any:
    """A bitsandbytes layer with `lin`'s shape, from a random bf16 weight quantized on `device`, set up
    as BitsAndBytesConfig(**settings) sets up the layers of a loaded model (trainconfig.quantization_config)."""
    import bitsandbytes as bnb

    w = torch.empty(lin.out_features, lin.in_features, dtype=torch.bfloat16, device=device).normal_(0.0, std)
    four_bit = settings.get("load_in_4bit", False)
    with torch.device("meta"):  # the layer's own fp weight is never allocated; a meta bias is replaced below
        if four_bit:
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                                  compute_dtype=getattr(torch, settings["bnb_4bit_compute_dtype"]),
                                  compress_statistics=settings["bnb_4bit_use_double_quant"],
                                  quant_type=settings["bnb_4bit_quant_type"])
        else:
            q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                                    threshold=settings["llm_int8_threshold"])
    if four_bit:
        # Params4bit quantizes on its first move to a real device, here where the weight already lies.
        q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=settings["bnb_4bit_use_double_quant"],
                                     quant_type=settings["bnb_4bit_quant_type"], module=q).to(device)
    else:
        # Int8Params quantizes only on a move off the CPU, so quantize here with its own function.
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
        q.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    del w
    if lin.bias is not None:  # qkv biases (Qwen2, GLM-4)
        q.bias = torch.nn.Parameter(torch.zeros(lin.out_features, dtype=torch.bfloat16, device=device), requires_grad=False)
    return q


def quantize_blocks(torch: Any, model: Any, source: ModelSource, settings: dict[str, Any], device: Any, std: float) -> int:
    """Replace every Linear inside the decoder blocks, one at a time; returns how many."""
    n = 0
    for block in decoder_blocks(model, source):
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, quantized_linear(torch, child, settings, device, std))
                    n += 1
    return n


def materialise_rest(torch: Any, model: Any, device: Any, std: float) -> None:
    """Every parameter still on the meta device (embeddings, norms, head) becomes a real bf16 tensor on
    `device`; tied parameters stay one tensor. Buffers (RoPE caches) move to `device`."""
    made: dict[int, Any] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in made:
                t = torch.empty(p.shape, dtype=torch.bfloat16, device=device)
                if p.dim() == 1:  # norm scales and biases: values do not change memory or speed
                    t.fill_(1.0 if name == "weight" else 0.0)
                else:
                    t.normal_(0.0, std)
                made[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = b.to(device)


def mark_quantized(model: Any, strategy: Strategy) -> None:
    """Give the random twin what from_pretrained(quantization_config=...) gives a loaded model: peft
    0.12 picks its bnb LoRA layers by is_loaded_in_4bit/8bit; HF Trainer reads hf_quantizer (its
    training check, parameter counts for FLOPs) and leaves a bitsandbytes model where it lies."""
    from transformers import BitsAndBytesConfig
    from transformers.quantizers import AutoHfQuantizer

    config = BitsAndBytesConfig(**quantization_config(strategy))
    model.hf_quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    model.is_quantized = True
    model.quantization_method = config.quant_method
    model.is_loaded_in_4bit = strategy.quant == "nf4"
    model.is_loaded_in_8bit = strategy.quant == "int8"


def peft_int8_compat(model: Any) -> None:
    """peft 0.12's int8 dispatch copies `state.memory_efficient_backward`, which bitsandbytes 0.45+
    dropped (it was always False for frozen base weights)."""
    for module in model.modules():
        state = getattr(module, "state", None)
        if type(module).__name__ == "Linear8bitLt" and state is not None and not hasattr(state, "memory_efficient_backward"):
            state.memory_efficient_backward = False


def build_random(torch: Any, source: ModelSource, ctx: Context, strategy: Strategy, device: Any) -> Any:
    """The random-weight twin with quantized decoder Linears, built without a whole bf16 copy."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = build_config(source, max_positions=ctx.max_positions)
    # Parameters on meta, buffers real (RoPE caches are computed at init and cannot be re-made later).
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 trust_remote_code=source.trust_remote_code)
    model.tie_weights()  # init_empty_weights re-registers each parameter, which unties the head
    std = float(getattr(config, "initializer_range", 0.02))
    quantize_blocks(torch, model, source, quantization_config(strategy), device, std)
    materialise_rest(torch, model, device, std)
    mark_quantized(model, strategy)
    peft_int8_compat(model)
    return model


def load_real(torch: Any, source: ModelSource, strategy: Strategy, local_rank: int) -> Any:
    """Real weights quantized while loading, as users load them (BitsAndBytesConfig, one GPU)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        source.path, quantization_config=BitsAndBytesConfig(**quantization_config(strategy)), torch_dtype=torch.bfloat16,
        device_map={"": local_rank}, trust_remote_code=source.trust_remote_code, attn_implementation="sdpa")
    peft_int8_compat(model)
    return model
