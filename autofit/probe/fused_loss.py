"""Fused linear cross-entropy for training (Strategy.loss == "fused").

The loss is computed from the decoder's last hidden state and the output projection's weight,
chunk by chunk (liger-kernel's LigerFusedLinearCrossEntropyLoss), so the full logits never exist.
One patch serves the probe worker and `autofit verify`: it replaces the causal LM's `forward` on
the instance, which PEFT's wrappers, DeepSpeed's engine and HF Trainer all call through.
"""

from __future__ import annotations

import types
from typing import Any, Callable

from autofit.errors import ModelSourceError

IGNORE_INDEX = -100  # HF's CrossEntropyLoss default: label positions the loss skips

# (output weight (V, H), hidden states (N, H), targets (N,), output bias or None) -> mean loss over
# the targets that are not IGNORE_INDEX: LigerFusedLinearCrossEntropyLoss's call signature.
LinearCrossEntropy = Callable[[Any, Any, Any, Any], Any]


def liger_loss() -> LinearCrossEntropy:
    """liger-kernel's fused loss with HF's settings (mean over the labelled tokens). Triton: CUDA only."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(lm: Any, what: str = "fused loss") -> Any:
    """The decoder stack whose first output is the last hidden state (`model.model` in llama-style LMs)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if decoder is None:
        raise ModelSourceError(f"{what}: {type(lm).__name__} has no decoder autofit can find "
                               "(no get_decoder() and no base_model_prefix module)")
    return decoder


def output_projection(lm: Any) -> tuple[Any, Any]:
    """(weight, bias) of the output projection, as the logits would use them."""
    import torch

    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        # PEFT's modules_to_save trains a copy of the head: the copy in use is the one to read.
        active = head.active_adapter
        head = head.original_module if head.disable_adapters or active not in head.modules_to_save else head.modules_to_save[active]
    # A LoRA-wrapped or quantized head would need its adapter or dequantization in the loss.
    if not isinstance(head, torch.nn.Linear) or not head.weight.is_floating_point():
        raise ModelSourceError(f"fused loss: {type(lm).__name__}'s output projection is "
                               f"{type(head).__name__ if head is not None else 'missing'}, not a plain "
                               "floating-point Linear the fused loss can read (LoRA or quantization on the head?)")
    return head.weight, head.bias


def shifted_targets(labels: Any) -> Any:
    """labels[t + 1] at position t, IGNORE_INDEX at the last: HF's shift, without copying the hidden states."""
    import torch

    pad = labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def fused_forward(lm: Any, loss_fn: LinearCrossEntropy, input_ids: Any, labels: Any, kwargs: dict[str, Any]) -> Any:
    """The decoder, then the loss straight from its last hidden state; the output has no logits."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    kwargs = {k: v for k, v in kwargs.items() if k not in ("return_dict", "num_items_in_batch")}
    out = decoder_of(lm)(input_ids=input_ids, return_dict=True, **kwargs)
    hidden = out[0]
    weight, bias = output_projection(lm)
    target = shifted_targets(labels).to(hidden.device)
    loss = loss_fn(weight, hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1), bias)
    return CausalLMOutputWithPast(loss=loss, logits=None)


def patch(model: Any, loss_fn: LinearCrossEntropy | None = None) -> None:
    """Make training forwards with labels compute the fused loss; anything else (no labels, eval)
    runs the model's own forward. Checks now that the decoder and head can be found."""
    lm = causal_lm(model)
    if getattr(lm.config, "output_router_logits", False):
        raise ModelSourceError("fused loss: this MoE config adds the router's auxiliary loss (output_router_logits), "
                               "which the fused loss does not compute")
    decoder_of(lm)
    output_projection(lm)
    fn = loss_fn or liger_loss()
    original = lm.forward

    def forward(self: Any, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        if labels is None or not self.training:
            return original(input_ids=input_ids, labels=labels, **kwargs)
        return fused_forward(self, fn, input_ids, labels, kwargs)

    lm.forward = types.MethodType(forward, lm)
