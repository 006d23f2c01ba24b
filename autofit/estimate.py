"""Predict each strategy's peak GPU memory, and so its wall, from the architecture alone: no GPU.

    autofit estimate --model THUDM/glm-4-9b-chat --max-token 1024 --gpu-memory 24GiB

The prediction counts what one GPU holds at the peak of a training step as autofit's probe worker
trains (transformers 4.40.2, PEFT 0.12, torch AdamW or DeepSpeed, configured by autofit.trainconfig):
weights, gradients, optimizer state, what autograd saves for backward, the fp32 logits of the loss,
and what the caching allocator and the CUDA context add on top. Each term says why where it is
computed. With ``--run-dir`` the peaks measured in that run correct the prediction per strategy.

It is an estimate, and its error is measured: ``python -m autofit.estimate --validate`` compares it
with the probes committed under results/ and writes results/estimate-error/{errors.csv,summary.json}.
torch is imported only to count parameters on the meta device (no memory, no weights).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from autofit.errors import ModelSourceError, RunDirError, UsageError
from autofit.search import memmodel
from autofit.spec import METHODS, Method, Strategy

GiB = 2**30
REPO_ROOT = Path(__file__).resolve().parent.parent
ERROR_DIR = Path("results") / "estimate-error"
VALIDATE_COMMAND = "python -m autofit.estimate --validate"

# ----------------------------------------------------------------------------- constants, and why

# The CUDA context, cuBLAS/cuDNN handles and loaded kernels live outside PyTorch's allocator:
# nvml_peak - peak_reserved was 1.31e9 on the H100 (results/probe-evidence-h100); the H200 shows 1.45e9.
CUDA_CONTEXT = 1.31e9
# DeepSpeed adds NCCL communicators and its own buffers outside the allocator even on one GPU:
# 1.94e9 - 1.31e9 on the same H100 under ZeRO-3.
DEEPSPEED_CONTEXT = 0.63e9
# The caching allocator reserves more than is allocated. The largest source is the loss: fp32
# blocks of T and T-1 rows x vocab are allocated and freed in forward and backward, and a freed
# block cannot serve the next request of a slightly different size, so about 1.7 such blocks stay
# reserved but unused (H100 LoRA probes: 1.71-1.82 blocks at micro-batch 4-16). At small shapes
# about 1 GiB of other slack (optimizer step, cuBLAS workspaces) dominates.
ALLOCATOR_LOGITS_BLOCKS = 1.7
ALLOCATOR_MIN_SLACK = 1.0 * GiB
# The loss of transformers 4.40 (Llama, Qwen2, Mistral, Gemma, Mixtral): logits are upcast to fp32
# (4 B per vocab entry), shifted into a contiguous fp32 copy (4 B), and log_softmax keeps its fp32
# output (4 B): 12 B per token and vocab entry are alive at the loss. Backward of log_softmax holds
# as much again (its output and the incoming and outgoing gradients), after the first two are freed.
LOGITS_BYTES_PER_VOCAB = 12
INT_BYTES_PER_TOKEN = 16  # input_ids (= labels, int64) and the shifted labels' contiguous copy
# ZeRO-3 keeps a gathered parameter when it is used again within the next stage3_max_reuse_distance
# parameters and prefetches up to stage3_max_live_parameters; both default to 1e9 and autofit keeps the
# defaults, so up to about this many parameters stay gathered on each GPU.
ZERO3_MAX_LIVE_PARAMS = 1e9
# ZeRO-3's optimizer step walks its partition in sub-groups of sub_group_size parameters (1e9 by
# default, kept by autofit), converting one sub-group's gradients to fp32 at a time; a sub-group closes
# at the first parameter that reaches the size, so it can be one parameter partition larger.
ZERO3_SUB_GROUP_PARAMS = 1e9
# A run's measured peaks move the prediction only by what they disagree beyond this fraction: small
# probes scatter by a few percent around the model (allocator slack is lumpy at small shapes), and
# extrapolating that scatter to the wall made the held-out error worse, not better (summary.json).
CALIBRATION_NOISE = 0.05

# Which activation feeds a Linear, by its name in the block (Llama/Qwen2/Mistral/Gemma/Mixtral names,
# GLM remote code). The saved-for-backward input of a Linear depends on it.
ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT = "attn_in", "attn_out", "mlp_in", "mlp_out"
_GROUP_OF_NAME = {
    "q_proj": ATTN_IN, "k_proj": ATTN_IN, "v_proj": ATTN_IN, "query_key_value": ATTN_IN, "qkv_proj": ATTN_IN,
    "o_proj": ATTN_OUT, "dense": ATTN_OUT, "out_proj": ATTN_OUT,
    "gate_proj": MLP_IN, "up_proj": MLP_IN, "w1": MLP_IN, "w3": MLP_IN, "gate": MLP_IN, "shared_expert_gate": MLP_IN,
    "dense_h_to_4h": MLP_IN, "gate_up_proj": MLP_IN,
    "down_proj": MLP_OUT, "w2": MLP_OUT, "dense_4h_to_h": MLP_OUT,
}


# ----------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class Linear:
    """One nn.Linear of a decoder block."""

    name: str            # path inside the block, e.g. "self_attn.q_proj"
    group: str           # ATTN_IN | ATTN_OUT | MLP_IN | MLP_OUT: the activation it reads
    in_features: int
    out_features: int
    share: float         # fraction of tokens it sees: top_k / experts for an MoE expert, else 1


@dataclass(frozen=True)
class Arch:
    """The shapes that decide memory, read from the model built on the meta device."""

    name: str
    params: int                   # all parameters, tied ones once (what count_params_meta counts)
    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab: int
    block_params: int             # one decoder block
    block_linear_params: int      # of which nn.Linear weights (what autocast copies to half)
    head_params: int              # the output projection (vocab x hidden), tied or not
    block_linears: tuple[Linear, ...]
    other_linears: tuple[tuple[str, int, int], ...]   # Linear layers outside the blocks: (name, in, out)
    mlp_width: float              # MLP intermediate width per token (top_k x expert width + shared for MoE)
    moe_top_k: int                # 0 for a dense MLP
    sliding_window: int | None    # transformers builds a T x T mask once T reaches it (qwen2, mistral)
    rope_cache_per_position: int  # cos/sin cache elements per position over all layers (4.40 qwen2/mistral)

    @property
    def attn_width(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class Peak:
    """Predicted memory of one GPU at one shape, in bytes, and the terms it is made of."""

    micro_batch: int
    max_token: int
    weights: float           # module parameters resident on this GPU
    gathered: float          # ZeRO-3: parameters gathered for compute on top of this GPU's shard
    gradients: float
    optimizer: float         # AdamW moments, plus DeepSpeed's fp32 master copy
    autocast_copies: float   # half copies of fp32 weights that autocast makes and backward keeps
    activations: float       # what autograd saves, the loss' fp32 logits, masks, RoPE cache
    step_extra: float        # transient of the optimizer step (fp32 gradient partition, AdamW temporary)
    phase: str               # where the peak is: "forward/backward" or "optimizer step"
    allocated: float         # torch.cuda.max_memory_allocated
    reserved: float          # torch.cuda.max_memory_reserved
    device: float            # what NVML shows: reserved plus the CUDA context (and NCCL under DeepSpeed)


@dataclass(frozen=True)
class Calibration:
    """Per-strategy correction from measured device-level peaks: predicted + offset."""

    offset: float
    points: int

    def apply(self, predicted: float) -> float:
        return predicted + self.offset

    def label(self) -> str:
        probes = f"run dir, {self.points} probe{'s' if self.points != 1 else ''}"
        return f"{probes}: agrees" if self.offset == 0 else f"{probes}: {self.offset / GiB:+.1f} GiB"


@dataclass(frozen=True)
class EstimateRow:
    """One strategy: predicted device-level peak (bytes) per micro-batch and the largest that fits."""

    strategy: Strategy
    key: str
    micro_batches: tuple[int, ...]
    peaks: tuple[float, ...]           # device-level, calibrated when `source` says so
    analytic: tuple[Peak, ...]         # the uncalibrated prediction, term by term
    max_micro_batch: int | None        # largest micro-batch predicted under the limit; None: none fits
    source: str                        # "analytic", or "run dir, N probes: agrees" / ": +X.X GiB" (calibrated)


@dataclass(frozen=True)
class Estimate:
    model: str
    max_token: int
    num_gpus: int
    global_batch: int
    budget: int
    limit: float
    rows: tuple[EstimateRow, ...]
    note: str


# ----------------------------------------------------------------------------- the architecture


@functools.lru_cache(maxsize=16)
def _arch_cached(source_json: str) -> Arch:
    from autofit.models import ModelSource

    return _read_arch(ModelSource.from_dict(json.loads(source_json)))


def arch_of(source) -> Arch:
    """The memory-relevant shapes of `source` (a ModelSource), from its model built on the meta device."""
    return _arch_cached(json.dumps(source.to_dict(), sort_keys=True))


def _read_arch(source) -> Arch:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    from autofit.models import build_config

    config = build_config(source, max_positions=1)  # RoPE caches are counted per position below
    try:
        with torch.device("meta"), no_init_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelSourceError(f"cannot build {source.name} on the meta device: {exc}") from None
    model.tie_weights()
    blocks = model
    for attr in source.layers_attr.split("."):
        blocks = getattr(blocks, attr, None)
        if blocks is None:
            raise ModelSourceError(f"{source.name}: no decoder blocks at {source.layers_attr}")
    block = blocks[0]
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    top_k = int(getattr(config, "num_experts_per_tok", 0) or 0) if experts else 0
    linears = tuple(_linear(name, mod, config.hidden_size, top_k / experts if experts else 1.0)
                    for name, mod in block.named_modules() if isinstance(mod, torch.nn.Linear))
    in_blocks = {id(m) for m in blocks.modules()}
    head = model.get_output_embeddings()
    rope = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("cos_cached", "sin_cached")))
    return Arch(
        name=source.name,
        params=sum(p.numel() for p in model.parameters()),
        layers=len(blocks),
        hidden=int(config.hidden_size),
        heads=heads,
        head_dim=head_dim,
        vocab=int(head.out_features),
        block_params=sum(p.numel() for p in block.parameters()),
        block_linear_params=sum(lin.in_features * lin.out_features for lin in linears),
        head_params=int(head.weight.numel()),
        block_linears=linears,
        other_linears=tuple((n, m.in_features, m.out_features) for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and id(m) not in in_blocks),
        mlp_width=sum(lin.in_features * lin.share for lin in linears if lin.group == MLP_OUT),
        moe_top_k=top_k,
        sliding_window=getattr(config, "sliding_window", None),
        rope_cache_per_position=rope,  # built with max_positions=1: elements per position
    )


def _linear(name: str, mod: Any, hidden: int, expert_share: float) -> Linear:
    leaf = name.rsplit(".", 1)[-1]
    group = _GROUP_OF_NAME.get(leaf)
    if group is None:  # unknown name: by where it sits and what it reads
        attn = "attn" in name or "attention" in name
        group = (ATTN_IN if mod.in_features == hidden else ATTN_OUT) if attn else (
            MLP_IN if mod.in_features == hidden else MLP_OUT)
    return Linear(name=name, group=group, in_features=int(mod.in_features), out_features=int(mod.out_features),
                  share=expert_share if ".experts." in f".{name}." else 1.0)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    # PEFT's rule for a list of target_modules: the module's name is a target or ends with ".target".
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_params(arch: Arch, strategy: Strategy, default_targets: tuple[str, ...]) -> int:
    """r x (in + out) for every targeted Linear: LoRA's A (r x in) and B (out x r)."""
    targets = strategy.method.lora_targets or default_targets
    r = strategy.method.lora_r
    per_block = sum(r * (lin.in_features + lin.out_features) for lin in arch.block_linears if _matches(lin.name, targets))
    other = sum(r * (i + o) for n, i, o in arch.other_linears if _matches(n, targets))
    if per_block + other == 0:
        raise UsageError(f"LoRA targets {', '.join(targets)} match no Linear layer of {arch.name}")
    return arch.layers * per_block + other


def trainable_params(arch: Arch, strategy: Strategy, default_targets: tuple[str, ...]) -> int:
    m = strategy.method
    if m.kind == "lora":
        return lora_params(arch, strategy, default_targets)
    if m.kind == "freeze":  # the worker trains the last N blocks, the output projection and the final norm
        return min(m.freeze_trainable_layers, arch.layers) * arch.block_params + arch.head_params + arch.hidden
    return arch.params


# ----------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class _Precision:
    weight: int       # bytes per module weight (trainconfig.model_dtype)
    act: int          # bytes of matmul outputs and attention tensors
    autocast: bool    # torch path: HF Trainer's bf16=/fp16= run the forward under torch.autocast
    adapter: int      # bytes per LoRA adapter weight
    deepspeed: bool
    zero3: bool       # DeepSpeed's ZeRO-3 engine: zero.Init patched F.linear (the memory-efficient one)


def _precision(strategy: Strategy, num_gpus: int) -> _Precision:
    from autofit.trainconfig import autocast_dtype, model_dtype

    ds = strategy.uses_deepspeed(num_gpus)
    zero3 = ds and strategy.zero_stage == 3
    weight = 4 if model_dtype(strategy, num_gpus) == "float32" else 2
    autocast = not ds and autocast_dtype(strategy) is not None
    # PEFT 0.12 keeps adapters in fp32 over half weights (autocast_adapter_dtype); DeepSpeed's engine
    # then casts the whole module, adapters included, to its half dtype, except under ZeRO-3, where
    # the adapters (created after zero.Init) stay fp32 (the real engine, run on the CPU, saves fp32
    # copies of each adapter's input: benchmarks/saved_activations.py reproduces its count).
    adapter = weight if ds and not zero3 else 4
    return _Precision(weight=weight, act=2 if (autocast or weight == 2) else 4, autocast=autocast,
                      adapter=adapter, deepspeed=ds, zero3=zero3)


# ----------------------------------------------------------------------------- activations


def _input_bytes(width: float, in_bytes: int, trainable: float, lora: float, p: _Precision, dropout: bool,
                 counted: bool = False) -> float:
    """Bytes per token that backward keeps of one activation read by several Linear layers.

    A frozen Linear keeps nothing of its input (its weight gradient is not needed). A trainable one
    keeps it; so does LoRA's A. Under autocast, an fp32 input is cast to half once per Linear (the
    cast cache is for weights only), so each keeps its own copy; LoRA first casts x to its fp32
    adapter dtype and autocast casts that back, so each adapter keeps its own half copy. Otherwise
    they all keep the one shared tensor (nothing more when it is `counted` already).
    """
    copies, shared = 0.0, False
    if trainable:
        if p.autocast and in_bytes == 4:
            copies += trainable * p.act * width
        else:
            shared = True
    if lora:
        if p.autocast or p.adapter != in_bytes:
            copies += lora * (p.act if p.autocast else p.adapter) * width
        else:
            shared = True
        if dropout:  # nn.Dropout keeps a bool mask of its input
            copies += lora * width
    return copies + (in_bytes * width if shared and not counted else 0.0)


def _block_bytes(arch: Arch, strategy: Strategy, p: _Precision, targets: tuple[str, ...]) -> float:
    """Bytes per token that autograd saves for one decoder block whose outputs need gradients."""
    h, a, m = arch.hidden, arch.attn_width, strategy.method
    base_trainable = m.kind in ("full", "freeze")
    # ZeRO-3 replaces F.linear with its memory-efficient LinearFunctionForZeroStage3, which saves every
    # Linear's input, frozen or not (benchmarks/saved_activations.py counts it on the CPU: +h + mlp_width per
    # token and block for GLM-4 LoRA on q/k/v/o). So under ZeRO-3 a frozen Linear keeps its input too.
    keeps_input = base_trainable or p.zero3
    # RMSNorm (4.40) upcasts its input to fp32 and keeps it for pow/mul; a trainable norm weight also
    # keeps the normalised input it multiplies.
    norms = 2 * 4 * h + (2 * p.weight * h if base_trainable else 0)
    # sdpa (flash / memory-efficient, linear in T) keeps q after RoPE, k and v repeated to all heads
    # (4.40 repeats them before sdpa), its output and fp32 logsumexp; RoPE's mul keeps cos and sin.
    # The output is stored token-major, so o_proj's input is the same tensor, not a copy.
    attn = 4 * p.act * a + 4 * arch.heads + 2 * p.act * arch.head_dim
    # SwiGLU/GeGLU: act keeps the gate output, the product keeps act's output and up's output.
    # MoE: each routed token also keeps the expert output that the routing weight multiplies.
    mlp = 3 * p.act * arch.mlp_width + arch.moe_top_k * p.act * h
    width = {ATTN_IN: (h, p.weight), ATTN_OUT: (a, p.act), MLP_IN: (h, p.weight), MLP_OUT: (arch.mlp_width, p.act)}
    inputs = 0.0
    for group, (w, in_bytes) in width.items():
        lins = [lin for lin in arch.block_linears if lin.group == group]
        trainable = sum(lin.share for lin in lins) if keeps_input else 0.0
        lora = sum(lin.share for lin in lins if _matches(lin.name, targets)) if m.kind == "lora" else 0.0
        # o_proj reads sdpa's output, which attn counts already.
        inputs += _input_bytes(w, in_bytes, trainable, lora, p, m.lora_dropout > 0, counted=group == ATTN_OUT)
    # LoRA's B keeps A's r-wide output, in the adapters' dtype (autocast: half).
    lora_r = sum(lin.share for lin in arch.block_linears if _matches(lin.name, targets)) * m.lora_r \
        * (p.act if p.autocast else p.adapter) if m.kind == "lora" else 0.0
    return norms + attn + mlp + inputs + lora_r


def _grad_layers(arch: Arch, strategy: Strategy, targets: tuple[str, ...]) -> int:
    """Blocks whose activations need gradients: a frozen prefix records no autograd graph at all."""
    m = strategy.method
    if m.kind == "freeze":
        return min(m.freeze_trainable_layers, arch.layers)
    if m.kind == "lora" and not any(_matches(lin.name, targets) for lin in arch.block_linears):
        return 0
    return arch.layers


def activation_bytes(arch: Arch, strategy: Strategy, num_gpus: int, micro_batch: int, max_token: int,
                     default_targets: tuple[str, ...]) -> float:
    """Activation memory at the peak of forward/backward for one micro-batch, in bytes."""
    p = _precision(strategy, num_gpus)
    targets = strategy.method.lora_targets or default_targets
    n = _grad_layers(arch, strategy, targets)
    h = arch.hidden
    block = _block_bytes(arch, strategy, p, targets)
    head_trainable = strategy.method.kind in ("full", "freeze")
    head_input = head_trainable or p.zero3   # the head is a Linear too
    final = (4 * h + (p.weight * h if head_trainable else 0)
             + (_input_bytes(h, p.weight, 1.0, 0.0, p, False) if head_input else 0)) if n else 0.0
    loss = LOGITS_BYTES_PER_VOCAB * arch.vocab + INT_BYTES_PER_TOKEN
    # Under LoRA or freeze the first block that needs gradients reads an input that needs none, so
    # its first norm keeps nothing.
    first = -4 * h if n and strategy.method.kind != "full" else 0.0
    if strategy.grad_ckpt:
        # Checkpointing keeps each block's input (the residual stream, in the weights' dtype). The peak
        # is at the loss, or while one block is recomputed and runs backward (its saved tensors plus
        # the gradients of its two widest intermediates), whichever is larger.
        kept = n * p.weight * h
        per_token = max(kept + final + loss, kept + block + 2 * p.act * arch.mlp_width) if n else loss
    else:
        per_token = n * block + first + final + loss
    tokens = micro_batch * max_token
    mask = 0.0
    if arch.sliding_window and max_token >= arch.sliding_window:
        # 4.40 materialises the causal mask (micro-batch x T x T, model dtype) once T reaches the
        # sliding window (Qwen2/Mistral), shared by every layer.
        mask = micro_batch * max_token * max_token * p.weight
    return per_token * tokens + mask


# ----------------------------------------------------------------------------- the peak


def predict(arch: Arch, strategy: Strategy, num_gpus: int, micro_batch: int, max_token: int,
            grad_accum: int, default_targets: tuple[str, ...]) -> Peak:
    """The analytic peak of one GPU for `strategy` at (micro_batch, max_token)."""
    p = _precision(strategy, num_gpus)
    trainable = trainable_params(arch, strategy, default_targets)
    lora = trainable if strategy.method.kind == "lora" else 0
    state = _deepspeed_state(arch, strategy, num_gpus, p, trainable, lora) if p.deepspeed \
        else _torch_state(arch, strategy, p, trainable, lora, grad_accum)
    weights, gathered, grads, grads_in_fb, optimizer, step_extra = state
    acts = activation_bytes(arch, strategy, num_gpus, micro_batch, max_token, default_targets)
    # 4.40 Qwen2/Mistral precompute RoPE cos/sin per layer, capped by the worker at the longest T.
    acts += arch.rope_cache_per_position * max_token * p.weight
    copies = _autocast_copies(arch, strategy, p, default_targets)
    context = CUDA_CONTEXT + (DEEPSPEED_CONTEXT if p.deepspeed else 0.0)
    # ZeRO 1-3 step on flat partitions: each transient is one tensor larger than any block freed by
    # forward/backward, so the allocator grows its pool by them instead of reusing freed blocks.
    flat = step_extra if p.deepspeed and strategy.zero_stage >= 1 else 0.0
    fb = weights + gathered + grads_in_fb + optimizer + copies + acts
    step = weights + grads + optimizer + step_extra
    allocated = max(fb, step)
    slack = max(ALLOCATOR_MIN_SLACK, ALLOCATOR_LOGITS_BLOCKS * micro_batch * max_token * arch.vocab * 4)
    reserved = max(allocated + slack, fb + slack + flat)
    return Peak(micro_batch=micro_batch, max_token=max_token, weights=weights, gathered=gathered, gradients=grads,
                optimizer=optimizer, autocast_copies=copies, activations=acts, step_extra=step_extra,
                phase="forward/backward" if fb >= step else "optimizer step",
                allocated=allocated, reserved=reserved, device=reserved + context)


def _torch_state(arch: Arch, strategy: Strategy, p: _Precision, trainable: int, lora: int, grad_accum: int):
    """Plain torch AdamW on one GPU (what the worker and HF Trainer run without DeepSpeed)."""
    weights = arch.params * p.weight + lora * p.adapter
    per_param = p.adapter if lora else p.weight   # gradients and AdamW moments take the parameter's dtype
    grads = trainable * per_param
    # The worker zeroes gradients with set_to_none after each optimizer step, so they exist during
    # forward/backward only from the second micro-step of an accumulation on.
    grads_in_fb = grads if grad_accum > 1 else 0.0
    optimizer = 2 * trainable * per_param
    # foreach AdamW allocates sqrt(exp_avg_sq) for all parameters at once during the step.
    step_extra = trainable * per_param
    return weights, 0.0, grads, grads_in_fb, optimizer, step_extra


def _deepspeed_state(arch: Arch, strategy: Strategy, n: int, p: _Precision, trainable: int, lora: int):
    """DeepSpeed engine as trainconfig.deepspeed_config sets it up (weights in the module's dtype)."""
    z = strategy.zero_stage
    module = (arch.params + lora) * p.weight       # DeepSpeed casts the module, adapters too, to half
    weights, gathered = module, 0.0
    if z == 3:
        # Parameters are sharded over the GPUs (or on the host with offload_params); the ones in use
        # are gathered, and up to ZERO3_MAX_LIVE_PARAMS of them stay gathered (see there).
        weights = 0.0 if strategy.offload_params else module / n
        gathered = min(arch.params, ZERO3_MAX_LIVE_PARAMS) * p.weight
    shard = n if z >= 1 else 1
    # The optimizer holds AdamW's two fp32 moments and an fp32 master copy of the trainable
    # parameters (ZeRO 1-3 clone one even for fp32 weights; stage 0 only for half weights), sharded
    # by ZeRO 1-3, on the host with offload_optimizer.
    master = 4 * trainable if (p.weight == 2 or z >= 1) else 0
    optimizer = 0.0 if strategy.offload_optimizer else (master + 8 * trainable) / shard
    bucket = 2 * arch.hidden * arch.hidden * p.weight if z >= 1 else 0.0  # reduce bucket (hidden^2), double-buffered
    if z == 0:
        # bf16 at stage 0 accumulates gradients in fp32 (DeepSpeed's BF16_Optimizer).
        grads = trainable * (4 if strategy.precision in ("bf16", "bf16-pure") else p.weight)
    elif z == 1:
        grads = trainable * p.weight + bucket       # stage 1 keeps full gradients, shards the rest
    else:
        grads = (0.0 if strategy.offload_optimizer else trainable * p.weight / n) + bucket
    # The step converts this GPU's gradient partition to fp32 and AdamW allocates one temporary of the
    # same size (ZeRO-3: one sub-group at a time); with offload the step runs on the host.
    stepped = trainable / shard
    if z == 3:
        stepped = min(stepped, ZERO3_SUB_GROUP_PARAMS + arch.head_params / shard)
    step_extra = 0.0 if strategy.offload_optimizer else (4 + 4) * stepped
    return weights, gathered, grads, grads, optimizer, step_extra


def _autocast_copies(arch: Arch, strategy: Strategy, p: _Precision, default_targets: tuple[str, ...]) -> float:
    """Autocast casts fp32 weights to half at every use, and backward keeps each copy to compute its
    input's gradient: every Linear of the blocks that need gradients (one block at a time with
    checkpointing) and the output projection when the weights are fp32, and PEFT's fp32 adapters."""
    if not p.autocast:
        return 0.0
    targets = strategy.method.lora_targets or default_targets
    n = _grad_layers(arch, strategy, targets)
    if n == 0:
        return 0.0
    per_block, other = 0.0, 0.0
    if p.weight == 4:
        per_block, other = arch.block_linear_params, arch.head_params
    if strategy.method.kind == "lora" and p.adapter == 4:
        r = strategy.method.lora_r
        per_block += sum(r * (lin.in_features + lin.out_features) for lin in arch.block_linears
                         if _matches(lin.name, targets))
    return p.act * ((1 if strategy.grad_ckpt else n) * per_block + other)


# ----------------------------------------------------------------------------- calibration


def calibrate(points: list[tuple[Peak, float]]) -> Calibration | None:
    """Offset from (predicted peak, measured device-level peak) pairs of one strategy.

    The mean disagreement is applied only beyond CALIBRATION_NOISE of the prediction: a run that
    agrees with the model within its measured scatter leaves it alone, one that does not (DeepSpeed's
    allocator, an architecture the model misreads) moves every prediction by the excess.
    """
    if not points:
        return None
    residual = statistics.fmean(measured - pk.device for pk, measured in points)
    band = CALIBRATION_NOISE * statistics.fmean(pk.device for pk, _ in points)
    offset = math.copysign(max(0.0, abs(residual) - band), residual)
    return Calibration(offset=offset, points=len(points))


def _run_points(run_dir: Path, num_gpus: int) -> dict[str, list[tuple[int, int, float]]]:
    """Measured (micro_batch, max_token, device-level peak) per strategy key in a run's probes.csv."""
    from autofit.results import read_probes, result_from_row
    from autofit.search.planner import peak_of
    from autofit.search.rundir import RunDir

    path = RunDir(Path(run_dir)).probes
    if not Path(run_dir).is_dir():
        raise RunDirError(f"--run-dir {run_dir} is not a directory")
    if not path.exists():
        raise RunDirError(f"{run_dir} has no probes.csv: not an autofit run directory")
    out: dict[str, list[tuple[int, int, float]]] = {}
    for row in read_probes(path):
        r = result_from_row(row)
        peak = peak_of(r)
        if r.ok and peak and r.num_gpus == num_gpus:
            out.setdefault(r.strategy, []).append((r.micro_batch, r.max_token, float(peak)))
    return out


# ----------------------------------------------------------------------------- the command's function


def estimate(model: str, max_token: int, gpu_memory: str | int = "24GiB", global_batch: int = 32,
             space: str = "default", method: str | None = None, run_dir: str | Path | None = None,
             num_gpus: int = 1, headroom: float = 0.08, trust_remote_code: bool = False) -> Estimate:
    """Predicted peaks and walls for every strategy of `space` on `num_gpus` GPUs of `gpu_memory` each."""
    from autofit.models import check_max_token, resolve_model
    from autofit.search.planner import Limits
    from autofit.search.space import load_space
    from autofit.units import parse_memory

    problems = []
    if max_token < 1:
        problems.append(f"--max-token must be positive, got {max_token}")
    if global_batch < 1:
        problems.append(f"--global-batch must be at least 1, got {global_batch}")
    if num_gpus < 1:
        problems.append(f"--num-gpus must be at least 1, got {num_gpus}")
    if not 0 <= headroom < 1:
        problems.append(f"--headroom must be in [0, 1), got {headroom}")
    if method is not None and method not in METHODS:
        problems.append(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if problems:
        raise UsageError("; ".join(problems))
    budget = gpu_memory if isinstance(gpu_memory, int) else parse_memory(gpu_memory)
    sp = load_space(space)
    if method:
        sp = sp.with_method(method)
    source = resolve_model(model, trust_remote_code=trust_remote_code)
    check_max_token(source, max_token)
    arch = arch_of(source)
    measured = _run_points(Path(run_dir), num_gpus) if run_dir is not None else {}
    limit = Limits(budget=budget, headroom=headroom).limit
    cap = max(1, global_batch // num_gpus)
    mbs = tuple(mb for mb in sp.micro_batches if mb <= cap) or (1,)
    rows = tuple(_row(arch, s, num_gpus, mbs, max_token, global_batch, source.lora_targets, measured.get(s.key(), []),
                      limit) for s in sp.strategies(num_gpus))
    used = sum(1 for r in rows if r.source != "analytic")
    note = _note(run_dir, used, len(rows))
    return Estimate(model=source.name, max_token=max_token, num_gpus=num_gpus, global_batch=global_batch,
                    budget=budget, limit=limit, rows=rows, note=note)


def _row(arch: Arch, s: Strategy, n: int, mbs: tuple[int, ...], max_token: int, global_batch: int,
         targets: tuple[str, ...], points: list[tuple[int, int, float]], limit: float) -> EstimateRow:
    def at(mb: int, t: int) -> Peak:
        return predict(arch, s, n, mb, t, max(1, -(-global_batch // (mb * n))), targets)

    analytic = tuple(at(mb, max_token) for mb in mbs)
    cal = calibrate([(at(mb, t), peak) for mb, t, peak in points])
    peaks = tuple(cal.apply(pk.device) if cal else pk.device for pk in analytic)
    fitting = [mb for mb, peak in zip(mbs, peaks) if peak <= limit]
    return EstimateRow(strategy=s, key=s.key(), micro_batches=mbs, peaks=peaks, analytic=analytic,
                       max_micro_batch=max(fitting) if fitting else None,
                       source=cal.label() if cal else "analytic")


def _note(run_dir: str | Path | None, used: int, total: int) -> str:
    line = ("estimate, not a measurement: predicted from the architecture" if not used
            else f"estimate, not a measurement: {used} of {total} strategies calibrated on {run_dir}")
    err = measured_error()
    if err:
        line += (f".\nMeasured error (vs nvml peak, {err['rows']} probes on {err['devices']}): median "
                 f"{err['median_pct']:.1f}%, max {err['max_pct_torch']:.1f}% without DeepSpeed and "
                 f"{err['max_pct_deepspeed']:.1f}% with it (predicted low); calibrated on a run's small probes, "
                 f"max {err['calibrated_max_pct']:.1f}% ({VALIDATE_COMMAND})")
    return line + ". Confirm with 'autofit search'."


def measured_error() -> dict[str, Any] | None:
    """Headline error from the committed results/estimate-error/summary.json (None outside a checkout)."""
    path = REPO_ROOT / ERROR_DIR / "summary.json"
    try:
        doc = json.loads(path.read_text())
        return doc["headline"]
    except (OSError, ValueError, KeyError):
        return None


def render(est: Estimate) -> str:
    """The table `autofit estimate` prints."""
    mbs = est.rows[0].micro_batches if est.rows else ()
    key_w = max([len("strategy")] + [len(r.key) for r in est.rows])
    head = f"{'strategy':<{key_w}}  " + "".join(f"{'mb' + str(mb):>8}" for mb in mbs) + f"  {'fits up to':>10}  source"
    lines = [f"{est.model}, T={est.max_token}, {est.num_gpus} GPU(s) of {est.budget / GiB:.1f} GiB, "
             f"limit {est.limit / GiB:.1f} GiB per GPU, global batch {est.global_batch}; predicted peak per GPU (GiB)",
             head, "-" * len(head)]
    for r in est.rows:
        cells = "".join(f"{p / GiB:>7.1f}{'*' if p > est.limit else ' '}" for p in r.peaks)
        fit = f"mb {r.max_micro_batch}" if r.max_micro_batch else "none"
        lines.append(f"{r.key:<{key_w}}  {cells}  {fit:>10}  {r.source}")
    lines.append("* over the limit")
    lines.append(est.note)
    return "\n".join(lines)


@click.command("estimate")
@click.option("--model", required=True, help="Hub id (e.g. THUDM/glm-4-9b-chat), local directory, or built-in table name.")
@click.option("--max-token", type=int, required=True, help="Sequence length of every sample.")
@click.option("--gpu-memory", default="24GiB", show_default=True, help="Memory of one GPU, e.g. 24GiB, 80GB.")
@click.option("--global-batch", type=int, default=32, show_default=True, help="Samples per optimizer step (caps the micro-batch).")
@click.option("--space", default="default", show_default=True, help="Search space: a YAML file or a shipped name (search_spaces/).")
@click.option("--method", type=click.Choice(list(METHODS)), default=None, help="Override the space's method.")
@click.option("--num-gpus", type=int, default=1, show_default=True, help="GPUs the run would use (ZeRO shards over them).")
@click.option("--headroom", type=float, default=0.08, show_default=True, help="Fraction of memory kept free, as in search.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Calibrate each strategy on the peaks measured in this search's run directory.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model directory's own modelling code.")
def estimate_cmd(model, max_token, gpu_memory, global_batch, space, method, num_gpus, headroom, run_dir, trust_remote_code):
    """Predict each strategy's peak memory and wall without a GPU (an estimate; 'search' measures)."""
    # AutofitErrors propagate: the CLI group turns them into one line and exit code 2.
    click.echo(render(estimate(model, max_token, gpu_memory=gpu_memory, global_batch=global_batch, space=space,
                               method=method, run_dir=run_dir, num_gpus=num_gpus, headroom=headroom,
                               trust_remote_code=trust_remote_code)))


# ----------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Measured:
    """One committed probe: which file, which model, what it measured."""

    file: str
    model: str
    strategy: Strategy
    micro_batch: int
    max_token: int
    grad_accum: int
    num_gpus: int
    device_name: str
    session: str            # the worker that ran it: one strategy escalating until its first OOM
    ok: bool
    allocated: float | None
    reserved: float | None
    nvml: float | None
    capacity: float | None  # what an OOM in this probe's session was measured against (bytes), see _capacities
    capped: bool            # capacity is the allocator limit under --gpu-memory, not the card


# Committed measurements, and which model each method ran on (from the files' probe.log / summary.json).
VALIDATION_SETS = (
    ("results/probe-evidence-h100/probes.csv", {"lora": "THUDM/glm-4-9b-chat", "full": "Qwen/Qwen2-1.5B"}),
    ("results/bench-h200-glm4-lora-T1024/grid.csv", {"lora": "THUDM/glm-4-9b-chat"}),
    ("results/probe-evidence-2gpu-zero2/probes.csv", {"full": "Qwen/Qwen2-1.5B"}),
    ("results/grid-2xh100-qwen2-1.5b-full-T1024/grid.csv", {"full": "Qwen/Qwen2-1.5B"}),
    ("results/search-2xh100-glm4-full-T1024/search/probes.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/search-4xh100-glm4-full-T1024/search/probes.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/search-2xh200-glm4-full-T1024/search/probes.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/verify-gap-2xh200/probes.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/search-4xh200-glm4-full-T1024/search/probes.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/search-4xh200-glm4-full-T1024/skipped-runners-up.csv", {"full": "THUDM/glm-4-9b-chat"}),
    ("results/bench-h100-glm4-lora-T2048-24GiB/grid.csv", {"lora": "THUDM/glm-4-9b-chat"}),
    ("results/bench-h100-glm4-lora-T1024-24GiB/grid.csv", {"lora": "THUDM/glm-4-9b-chat"}),
    ("results/bench-2xh200-qwen2-1.5b-full-T1024/grid.csv", {"full": "Qwen/Qwen2-1.5B"}),
)
# Calibration is validated as a search would use it: a strategy's first, smallest probes calibrate
# the prediction of its larger micro-batches (micro-batch 1 alone where only 1 and 4 were run).
CALIBRATION_MICRO_BATCHES = (1, 2)
_TOTAL = re.compile(r"total capacity of ([\d.]+) GiB")
_ALLOWED = re.compile(r"([\d.]+) GiB allowed")


def _strategy_of(row: dict[str, str]) -> Strategy:
    kind = row["method"]
    method = Method(kind=kind, lora_r=int(row["lora_r"]) if kind == "lora" else 8)
    s = Strategy(method=method, precision=row["precision"], grad_ckpt=row["grad_ckpt"] == "True",
                 zero_stage=int(row["zero_stage"]), offload_optimizer=row["offload_optimizer"] == "True",
                 offload_params=row["offload_params"] == "True")
    if s.key() != row["strategy"]:
        raise ValueError(f"strategy columns {s.key()} disagree with {row['strategy']}")
    return s


def load_measured(root: Path = REPO_ROOT) -> list[Measured]:
    """Every ok/oom probe of VALIDATION_SETS (a strategy re-probed in another session counts again)."""
    out: list[Measured] = []
    files = {}
    for rel, _ in VALIDATION_SETS:
        with open(root / rel, newline="") as f:
            files[rel] = [r for r in csv.DictReader(f) if r["status"] in ("ok", "oom")]
    # Card totals are shared across files; a worker pid's cap is not (pids repeat across machines).
    cards = {k: v for k, v in _capacities([r for rows in files.values() for r in rows]).items() if not k.isdigit()}
    for rel, models in VALIDATION_SETS:
        rows = files[rel]
        capacity = {**cards, **_capacities(rows)}
        for r in rows:
            num = lambda k: float(r[k]) if r.get(k) else None  # noqa: E731
            cap, capped = capacity.get(r["worker_pid"], capacity.get(r["device_name"], (None, False)))
            out.append(Measured(file=rel, model=models[r["method"]], strategy=_strategy_of(r),
                                micro_batch=int(r["micro_batch"]), max_token=int(r["max_token"]),
                                grad_accum=int(r["grad_accum"]), num_gpus=int(r["num_gpus"]),
                                device_name=r["device_name"], session=f"{rel}#{r['worker_pid']}", ok=r["status"] == "ok",
                                allocated=num("peak_allocated"), reserved=num("peak_reserved"), nvml=num("nvml_peak"),
                                capacity=cap, capped=capped))
    return out


def _capacities(rows: list[dict[str, str]]) -> dict[str, tuple[float, bool]]:
    """What each probe session's OOM was measured against, by worker pid; and each card's total.

    Under --gpu-memory the OOM message says '... GiB allowed': the allocator's cap, compared with
    reserved memory. Otherwise it names the card's total capacity, compared with the device-level
    peak. Sessions that never hit a wall get their card's total (keyed by device name).
    """
    out: dict[str, tuple[float, bool]] = {}
    for r in rows:
        allowed, total = _ALLOWED.search(r["error"]), _TOTAL.search(r["error"])
        if total:
            out.setdefault(r["device_name"], (float(total.group(1)) * GiB, False))
        if r["status"] == "oom" and (allowed or total):
            out[r["worker_pid"]] = (float(allowed.group(1)) * GiB, True) if allowed else out[r["device_name"]]
    return out


def _pct(pred: float, meas: float | None) -> float | None:
    return None if not meas else 100.0 * (pred - meas) / meas


def validate(root: Path = REPO_ROOT) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predicted vs measured peaks for every committed probe: (rows for errors.csv, summary)."""
    from autofit.models import resolve_model

    measured = load_measured(root)
    sources = {m.model: resolve_model(m.model) for m in measured}
    archs = {name: arch_of(src) for name, src in sources.items()}

    def peak(m: Measured) -> Peak:
        return predict(archs[m.model], m.strategy, m.num_gpus, m.micro_batch, m.max_token, m.grad_accum,
                       sources[m.model].lora_targets)

    peaks = {id(m): peak(m) for m in measured}
    roles = _calibration_roles(measured)
    cals = {k: calibrate([(peaks[id(m)], m.nvml) for m in measured if roles.get(id(m)) == ("calibration", k)])
            for k in {role[1] for role in roles.values()}}
    rows = [_error_row(m, peaks[id(m)], roles.get(id(m)), cals) for m in measured]
    return rows, _summary(rows, measured, roles)


def _calibration_roles(measured: list[Measured]) -> dict[int, tuple[str, tuple[str, str]]]:
    """id(probe) -> ("calibration" | "held-out", (file, strategy)) for strategies with both kinds."""
    groups: dict[tuple[str, str], list[Measured]] = {}
    for m in measured:
        if m.ok and m.nvml:
            groups.setdefault((m.file, m.strategy.key()), []).append(m)
    roles = {}
    for key, ms in groups.items():
        smallest = min(m.micro_batch for m in ms)
        fit = [m for m in ms if m.micro_batch in CALIBRATION_MICRO_BATCHES or m.micro_batch == smallest]
        held = [m for m in ms if m.micro_batch not in {f.micro_batch for f in fit}]
        if held:
            roles.update({id(m): ("calibration", key) for m in fit})
            roles.update({id(m): ("held-out", key) for m in held})
    return roles


def _error_row(m: Measured, pk: Peak, role: tuple | None, cals: dict) -> dict[str, Any]:
    cal = cals.get(role[1]) if role else None
    cal_pred = cal.apply(pk.device) if cal else None
    fits = pk.reserved <= m.capacity if m.capped else (pk.device <= m.capacity if m.capacity else None)
    g = lambda x: None if x is None else round(x / GiB, 3)  # noqa: E731
    r = lambda x: None if x is None else round(x, 2)  # noqa: E731
    return {
        "file": m.file, "session": m.session.rsplit("#", 1)[1], "model": m.model, "device": m.device_name,
        "num_gpus": m.num_gpus,
        "strategy": m.strategy.key(), "deepspeed": m.strategy.uses_deepspeed(m.num_gpus),
        "micro_batch": m.micro_batch, "max_token": m.max_token, "status": "ok" if m.ok else "oom", "phase": pk.phase,
        "measured_allocated_gib": g(m.allocated), "predicted_allocated_gib": g(pk.allocated),
        "err_allocated_pct": r(_pct(pk.allocated, m.allocated)),
        "measured_reserved_gib": g(m.reserved), "predicted_reserved_gib": g(pk.reserved),
        "err_reserved_pct": r(_pct(pk.reserved, m.reserved)),
        "measured_nvml_gib": g(m.nvml), "predicted_device_gib": g(pk.device),
        "err_nvml_pct": r(_pct(pk.device, m.nvml)),
        "capacity_gib": g(m.capacity), "capacity_is": "allocator cap" if m.capped else "card",
        "predicted_fits": fits, "outcome_agrees": None if fits is None else fits == m.ok,
        "calibration_role": role[0] if role else "",
        "calibrated_device_gib": g(cal_pred) if role and role[0] == "held-out" else None,
        "err_nvml_calibrated_pct": r(_pct(cal_pred, m.nvml)) if role and role[0] == "held-out" else None,
    }


def _stats(values: list[float | None]) -> dict[str, Any]:
    vals = [abs(v) for v in values if v is not None]
    if not vals:
        return {"rows": 0}
    return {"rows": len(vals), "median_abs_pct": round(statistics.median(vals), 2), "max_abs_pct": round(max(vals), 2)}


def _summary(rows: list[dict[str, Any]], measured: list[Measured], roles: dict) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    cols = ("allocated", "reserved", "nvml")
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["model"], r["strategy"], r["device"], r["num_gpus"]), []).append(r)
    per_strategy = [{"model": k[0], "strategy": k[1], "device": k[2], "num_gpus": k[3],
                     **{c: _stats([r[f"err_{c}_pct"] for r in v]) for c in cols}} for k, v in sorted(groups.items())]
    overall = {c: _stats([r[f"err_{c}_pct"] for r in ok]) for c in cols}
    calib = _calibration_summary(rows, measured, roles)
    agree = [r["outcome_agrees"] for r in rows if r["outcome_agrees"] is not None]
    return {
        "command": VALIDATE_COMMAND,
        "what": "analytic peak of autofit.estimate.predict, uncalibrated, vs peaks measured by real probes "
                "(error = (predicted - measured) / measured). predicted_allocated vs peak_allocated, "
                "predicted_reserved vs peak_reserved, predicted_device (reserved + CUDA context) vs nvml_peak.",
        "headline": {"rows": overall["nvml"]["rows"], "devices": ", ".join(sorted({r["device"] for r in ok})),
                     "median_pct": overall["nvml"].get("median_abs_pct"), "max_pct": overall["nvml"].get("max_abs_pct"),
                     "max_pct_torch": _stats([r["err_nvml_pct"] for r in ok if not r["deepspeed"]]).get("max_abs_pct"),
                     "max_pct_deepspeed": _stats([r["err_nvml_pct"] for r in ok if r["deepspeed"]]).get("max_abs_pct"),
                     "calibrated_median_pct": calib["held_out"]["calibrated"].get("median_abs_pct"),
                     "calibrated_max_pct": calib["held_out"]["calibrated"].get("max_abs_pct")},
        "overall": overall,
        "glm4_lora": {c: _stats([r[f"err_{c}_pct"] for r in ok if r["model"] == "THUDM/glm-4-9b-chat"
                                   and r["strategy"].startswith("lora")]) for c in cols},
        "per_strategy": per_strategy,
        "calibration": calib,
        "walls": {"outcomes_predicted_right": sum(agree), "outcomes": len(agree),
                  "note": "every ok/oom probe: predicted to fit its card (or its --gpu-memory cap) iff it ran",
                  "sessions": _walls(rows)},
        "constants": {"cuda_context": CUDA_CONTEXT, "deepspeed_context": DEEPSPEED_CONTEXT,
                      "allocator_logits_blocks": ALLOCATOR_LOGITS_BLOCKS, "allocator_min_slack": ALLOCATOR_MIN_SLACK,
                      "logits_bytes_per_vocab": LOGITS_BYTES_PER_VOCAB, "zero3_max_live_params": ZERO3_MAX_LIVE_PARAMS,
                      "calibration_noise": CALIBRATION_NOISE},
        "constants_from": "cuda_context, deepspeed_context and the two allocator terms were read off "
                          "results/probe-evidence-h100 (in-sample for them); every other term is counted from the "
                          "architecture, and the H200 grid and the 2-GPU ZeRO-2 rows set no constant",
        "sources": [rel for rel, _ in VALIDATION_SETS],
    }


def _calibration_summary(rows: list[dict[str, Any]], measured: list[Measured], roles: dict) -> dict[str, Any]:
    """Held-out error before and after calibration, and two simpler calibrations for comparison."""
    held = [r for r in rows if r["calibration_role"] == "held-out"]
    naive, alone = _naive_calibrations(measured, roles)
    by_file = {}
    for rel, _ in VALIDATION_SETS:
        hs = [r for r in held if r["file"] == rel]
        by_file[rel] = {"uncalibrated": _stats([r["err_nvml_pct"] for r in hs]),
                        "calibrated": _stats([r["err_nvml_calibrated_pct"] for r in hs])}
    return {
        "protocol": "per file and strategy: calibrate on its micro-batch 1 and 2 probes (every max_token; "
                    "micro-batch 1 alone where only 1 and 4 ran), predict its larger micro-batches; against nvml_peak",
        "method": f"calibrate(): mean (measured - predicted) of the calibration probes, applied only beyond "
                  f"{CALIBRATION_NOISE:.0%} of the prediction",
        "held_out": {"uncalibrated": _stats([r["err_nvml_pct"] for r in held]),
                     "calibrated": _stats([r["err_nvml_calibrated_pct"] for r in held]),
                     "full_offset_no_noise_band": _stats(naive),
                     "memmodel_fit_alone": _stats(alone)},
        "by_file": by_file,
    }


def _naive_calibrations(measured: list[Measured], roles: dict) -> tuple[list[float], list[float]]:
    """Held-out errors (%) of the plain mean offset, and of memmodel.fit on the measured peaks alone
    (the search's linear model; where the calibration probes have one token count, the offset)."""
    from autofit.models import resolve_model

    archs = {n: (arch_of(resolve_model(n)), resolve_model(n).lora_targets) for n in {m.model for m in measured}}

    def device(m: Measured) -> float:
        a, t = archs[m.model]
        return predict(a, m.strategy, m.num_gpus, m.micro_batch, m.max_token, m.grad_accum, t).device

    naive, alone = [], []
    for key in {role[1] for role in roles.values()}:
        fit = [m for m in measured if roles.get(id(m)) == ("calibration", key)]
        held = [m for m in measured if roles.get(id(m)) == ("held-out", key)]
        offset = statistics.fmean(m.nvml - device(m) for m in fit)
        line = memmodel.fit([(m.micro_batch, m.max_token, m.nvml) for m in fit])
        for m in held:
            naive.append(_pct(device(m) + offset, m.nvml))
            alone.append(_pct(line.predict(m.micro_batch, m.max_token) if line else device(m) + offset, m.nvml))
    return naive, alone


def _walls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per probe session that hit an OOM: the largest micro-batch measured to fit vs predicted to fit."""
    sessions: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["capacity_gib"] is not None:
            sessions.setdefault((r["file"], r["session"]), []).append(r)
    out = []
    for (file, session), rs in sorted(sessions.items()):
        if all(r["status"] == "ok" for r in rs):
            continue
        out.append({"file": file, "session": session, "device": rs[0]["device"], "strategy": rs[0]["strategy"],
                    "max_token": rs[0]["max_token"], "capacity_gib": rs[0]["capacity_gib"],
                    "capacity_is": rs[0]["capacity_is"],
                    "measured_largest_fit": max([r["micro_batch"] for r in rs if r["status"] == "ok"], default=0),
                    "predicted_largest_fit": max([r["micro_batch"] for r in rs if r["predicted_fits"]], default=0),
                    "micro_batches_tried": sorted({r["micro_batch"] for r in rs})})
    return out


def write_validation(root: Path = REPO_ROOT, out_dir: Path | None = None) -> dict[str, Any]:
    """Regenerate errors.csv and summary.json; returns the summary."""
    rows, summary = validate(root)
    out = out_dir or root / ERROR_DIR
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@click.command()
@click.option("--validate", "do_validate", is_flag=True, help="Compare with the committed probes; write results/estimate-error/.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.pass_context
def _module_main(ctx, do_validate: bool, out: Path | None) -> None:
    if not do_validate:
        click.echo(ctx.get_help())
        return
    s = write_validation(out_dir=out)
    h, c = s["headline"], s["calibration"]["held_out"]
    click.echo(f"wrote {out or ERROR_DIR}/errors.csv and summary.json: {h['rows']} measured peaks, nvml error "
               f"median {h['median_pct']}%, max {h['max_pct']}%; held-out uncalibrated {c['uncalibrated']}, "
               f"calibrated {c['calibrated']}")


if __name__ == "__main__":
    _module_main()
