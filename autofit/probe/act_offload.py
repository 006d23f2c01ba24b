"""Activation offload (Strategy.act_offload): what the decoder's forward saves for backward waits in host memory.

With gradient checkpointing on, autograd keeps little of the decoder's forward beyond each block's
input (the residual stream, micro_batch x T x hidden per block). This patch runs the decoder's forward
under saved-tensor hooks that copy each saved tensor into pinned host memory and copy it back when the
backward needs it; the backward, and the checkpoint's recompute in it, run outside the hooks. Same idea as
torchtune's enable_activation_offloading, axolotl's `activation_offloading: hidden_states`, LLaMA-Factory's
`use_unsloth_gc`. One patch serves the probe worker and `autofit verify`, like fused_loss.py.

What it costs: in every micro-step, one device-to-host copy of the blocks' inputs during the forward and
one host-to-device copy during the backward (2 x layers x micro_batch x T x hidden x 2 bytes over PCIe,
on the compute stream: no overlap with compute), and as much pinned host memory per micro-batch. What it
saves: all but one block input on the GPU (memory.analytic counts it). Whether it pays at long contexts
is for a GPU to measure: it is not in the auto space yet.

Only the decoder runs under the hooks: the output projection and the loss read its output at once, so
sending their tensors out and back would cost a transfer for nothing (torchtune keeps its output layer on
the GPU for the same reason). Parameters are never copied: they stay where they are for the backward
(torch's save_on_cpu would copy a frozen weight that F.linear saves, every step).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

from autofit.probe.fused_loss import causal_lm, decoder_of

# A copy's fixed cost outweighs what a tiny tensor (a scalar, a small index) frees (torchtune's threshold).
MIN_BYTES = 1024


@dataclass
class Stats:
    """What the hooks moved, for tests: tensors (their shapes) and bytes copied to the host, tensors brought back."""

    packed: int = 0
    packed_bytes: int = 0
    unpacked: int = 0
    shapes: list[tuple[int, ...]] = field(default_factory=list)


@contextlib.contextmanager
def offloading(torch: Any, min_bytes: int = MIN_BYTES, stats: Stats | None = None) -> Any:
    """Saved-tensor hooks that keep what autograd saves in host memory (pinned for CUDA tensors) meanwhile."""
    seen: dict[int, tuple[Any, Any]] = {}  # one copy of a tensor saved by several ops (a mask every block reads)

    def pack(t: Any) -> Any:
        # A weight, or a view of one (F.linear's matmul saves weight.t()), is kept as it is.
        weight = isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)
        if weight or t.layout != torch.strided or t.numel() * t.element_size() < min_bytes:
            return t
        hit = seen.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        pinned = t.device.type == "cuda"
        host = torch.empty(t.size(), dtype=t.dtype, pin_memory=pinned)
        # Asynchronous into pinned memory, on the stream that computed t: ordered before t's memory is reused.
        host.copy_(t, non_blocking=pinned)
        packed = (t.device, host)
        seen[id(t)] = (weakref.ref(t), packed)
        if stats is not None:
            stats.packed += 1
            stats.shapes.append(tuple(t.shape))
            stats.packed_bytes += t.numel() * t.element_size()
        return packed

    def unpack(packed: Any) -> Any:
        if not isinstance(packed, tuple):
            return packed
        device, host = packed
        if stats is not None:
            stats.unpacked += 1
        return host.to(device, non_blocking=host.is_pinned())

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        seen.clear()  # the graph holds the copies from here on; the backward frees them


def patch(model: Any, min_bytes: int = MIN_BYTES, stats: Stats | None = None) -> None:
    """Run the decoder's training forwards under `offloading`; eval and no-grad forwards run as they were.
    Reaches through PEFT's wrapper; DeepSpeed's engine and HF Trainer call through the same module."""
    import torch

    decoder = decoder_of(causal_lm(model), "activation offload")
    original = decoder.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not (decoder.training and torch.is_grad_enabled()):
            return original(*args, **kwargs)
        with offloading(torch, min_bytes, stats):
            return original(*args, **kwargs)

    decoder.forward = forward
