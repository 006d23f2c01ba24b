"""Predict one GPU's peak memory for a strategy and shape from the architecture alone: no GPU, no files.

The prediction counts what one GPU holds at the peak of a training step as autofit's probe worker
trains (transformers 4.40.2, PEFT 0.12, torch AdamW, bitsandbytes or DeepSpeed, configured by
autofit.trainconfig): weights (bf16, or 4/8-bit for the blocks' Linear layers), gradients, optimizer
state (32- or 8-bit), what autograd saves for backward, the loss (HF's fp32 logits, or the fused
loss's chunks), and what the caching allocator and the CUDA context add on top. Each term says why
where it is computed. Its measured error is benchmarks/estimate_validation.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from autofit.errors import UsageError
from autofit.memory.arch import ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT, Arch
from autofit.spec import Strategy

GiB = 2**30

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
# bitsandbytes base weights (trainconfig.quantization_config) quantize the Linear weights of the decoder
# blocks only; embeddings, norms, biases and the output projection stay in the model dtype. NF4 with
# double quantization: 4 bits a weight, an 8-bit absmax per block of 64 and an fp32 absmax per 256 blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# LLM.int8 (Linear8bitLt, has_fp16_weights=False): an int8 weight and an fp32 scale per output row.
INT8_BYTES_PER_PARAM = 1
INT8_BYTES_PER_ROW = 4
# bitsandbytes' 8-bit AdamW keeps both moments in uint8, in blocks of 256 with an fp32 absmax per block
# and moment. Tensors under its min_8bit_size (4096 elements: biases, small norms) keep fp32 moments:
# a few kilobytes per block, left out.
ADAMW8BIT_BYTES_PER_PARAM = 2 * (1 + 4 / 256)


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
    activations: float       # what autograd saves, the loss (fp32 logits or fused chunks), masks, RoPE
                             # cache, and the one 4/8-bit weight dequantized at a time
    step_extra: float        # transient of the optimizer step (fp32 gradient partition, AdamW temporary)
    phase: str               # where the peak is: "forward/backward" or "optimizer step"
    allocated: float         # torch.cuda.max_memory_allocated
    reserved: float          # torch.cuda.max_memory_reserved
    device: float            # what NVML shows: reserved plus the CUDA context (and NCCL under DeepSpeed)
    host_activations: float = 0.0  # activation offload: the saved activations waiting in pinned host memory


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
    # LLM.int8's matmul (MatMul8bitLt) also saves its input whenever that input needs a gradient.
    keeps_input = base_trainable or p.zero3 or strategy.quant == "int8"
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
    """Activation memory at the peak of forward/backward for one micro-batch, in bytes: at the loss,
    or while a block runs backward (recomputed first under checkpointing), whichever is larger."""
    p = _precision(strategy, num_gpus)
    targets = strategy.method.lora_targets or default_targets
    n = _grad_layers(arch, strategy, targets)
    h = arch.hidden
    block = _block_bytes(arch, strategy, p, targets)
    head_trainable = strategy.method.kind in ("full", "freeze")
    # The head is a Linear too; the fused loss computes its gradients in forward instead of saving its input.
    head_input = (head_trainable or p.zero3) and strategy.loss == "hf"
    final = (4 * h + (p.weight * h if head_trainable else 0)
             + (_input_bytes(h, p.weight, 1.0, 0.0, p, False) if head_input else 0)) if n else 0.0
    tokens = micro_batch * max_token
    loss, loss_fixed = _loss_bytes(arch, strategy, p, tokens)
    # Under LoRA or freeze the first block that needs gradients reads an input that needs none, so
    # its first norm keeps nothing.
    first = -4 * h if n and strategy.method.kind != "full" else 0.0
    # A block's backward adds the gradients of its two widest intermediates (or LLM.int8's quantized
    # copies of a Linear's input and its int32 product, when larger) and one dequantized weight.
    transient = max(2 * p.act * arch.mlp_width, _int8_transient(arch, strategy))
    dequantized = _dequantized_bytes(arch, strategy, p)
    if strategy.grad_ckpt and strategy.act_offload:
        # The blocks' inputs and the final norm's saved tensors wait on the host (host_activation_bytes); the
        # input of the block that runs backward comes back to be recomputed from.
        head = _input_bytes(h, p.weight, 1.0, 0.0, p, False) if head_input and n else 0.0
        at_loss, in_block = head + loss, p.weight * h + block + transient
    elif strategy.grad_ckpt:
        # Checkpointing keeps each block's input (the residual stream, in the weights' dtype); the block
        # that runs backward is recomputed with its saved tensors.
        kept = n * p.weight * h
        at_loss, in_block = kept + final + loss, kept + block + transient
    else:
        at_loss, in_block = n * block + first + final + loss, n * block + first + transient
    peak = max(at_loss * tokens + loss_fixed, in_block * tokens + dequantized) if n else loss * tokens + loss_fixed
    mask = 0.0
    if arch.sliding_window and max_token >= arch.sliding_window:
        # 4.40 materialises the causal mask (micro-batch x T x T, model dtype) once T reaches the
        # sliding window (Qwen2/Mistral), shared by every layer.
        mask = micro_batch * max_token * max_token * p.weight
    return peak + mask


def host_activation_bytes(arch: Arch, strategy: Strategy, num_gpus: int, micro_batch: int, max_token: int,
                          default_targets: tuple[str, ...]) -> float:
    """Pinned host memory that activation offload fills during one micro-batch's forward: each checkpointed
    block's input and the final norm's saved input (act_offload.py copies what the decoder saves)."""
    if not (strategy.grad_ckpt and strategy.act_offload):
        return 0.0
    p = _precision(strategy, num_gpus)
    n = _grad_layers(arch, strategy, strategy.method.lora_targets or default_targets)
    norm = 4 * arch.hidden + (p.weight * arch.hidden if strategy.method.kind in ("full", "freeze") else 0)
    return (n * p.weight * arch.hidden + norm) * micro_batch * max_token if n else 0.0


def _loss_bytes(arch: Arch, strategy: Strategy, p: _Precision, tokens: int) -> tuple[float, float]:
    """What the loss holds at its peak: (bytes per token, bytes in all)."""
    if strategy.loss == "hf":
        return LOGITS_BYTES_PER_VOCAB * arch.vocab + INT_BYTES_PER_TOKEN, 0.0
    # liger-kernel's fused linear cross-entropy: the last hidden states, their shifted contiguous copy and
    # the gradient it computes in forward (hidden dtype), an fp32 loss per token; the logits of one chunk
    # at a time; and, for a trainable head, its weight gradient, also computed in forward.
    head_grad = arch.head_params * p.weight if strategy.method.kind in ("full", "freeze") else 0.0
    chunk = fused_chunk_rows(arch, tokens) * arch.vocab * p.act
    return 3 * p.weight * arch.hidden + 4 + INT_BYTES_PER_TOKEN, chunk + head_grad


def fused_chunk_rows(arch: Arch, tokens: int) -> int:
    """Tokens per chunk of liger-kernel 0.8.5's LigerFusedLinearCrossEntropyFunction (chunk_mem_const 1):
    next_power_of_2(ceil(tokens / ceil(vocab / hidden))), at most tokens, so that one chunk's logits are
    about the size of the hidden states (up to twice)."""
    inc = -(-arch.vocab // arch.hidden)
    return min(1 << (-(-tokens // inc) - 1).bit_length(), tokens)


def _int8_transient(arch: Arch, strategy: Strategy) -> float:
    """Bytes per token that LLM.int8's matmul allocates for its widest Linear: the input cast to fp16 and
    quantized to int8, and the int32 product before it is scaled back."""
    if strategy.quant != "int8":
        return 0.0
    return max(((2 + 1) * lin.in_features + 4 * lin.out_features) * lin.share for lin in arch.block_linears)


def _dequantized_bytes(arch: Arch, strategy: Strategy, p: _Precision) -> float:
    """A 4/8-bit Linear dequantizes its weight to a bf16 transient for its matmul (NF4 in forward and
    backward, LLM.int8 in backward), one layer at a time: the largest one."""
    if strategy.quant == "none":
        return 0.0
    return max(lin.in_features * lin.out_features for lin in arch.block_linears) * p.weight


def base_weight_bytes(arch: Arch, strategy: Strategy, weight: int) -> float:
    """The module's own weights (no adapters), with the blocks' Linear weights in 4/8 bits when quantized."""
    if strategy.quant == "none":
        return arch.params * weight
    quantized = arch.layers * arch.block_linear_params
    if strategy.quant == "nf4":
        packed = NF4_BYTES_PER_PARAM * quantized
    else:
        packed = INT8_BYTES_PER_PARAM * quantized + INT8_BYTES_PER_ROW * arch.layers * sum(
            lin.out_features for lin in arch.block_linears)
    return (arch.params - quantized) * weight + packed


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
    # The fused loss allocates chunk buffers of one size at every step, which the allocator reuses.
    slack = ALLOCATOR_MIN_SLACK if strategy.loss == "fused" else max(
        ALLOCATOR_MIN_SLACK, ALLOCATOR_LOGITS_BLOCKS * micro_batch * max_token * arch.vocab * 4)
    reserved = max(allocated + slack, fb + slack + flat)
    return Peak(micro_batch=micro_batch, max_token=max_token, weights=weights, gathered=gathered, gradients=grads,
                optimizer=optimizer, autocast_copies=copies, activations=acts, step_extra=step_extra,
                phase="forward/backward" if fb >= step else "optimizer step",
                allocated=allocated, reserved=reserved, device=reserved + context,
                host_activations=host_activation_bytes(arch, strategy, num_gpus, micro_batch, max_token, default_targets))


def _torch_state(arch: Arch, strategy: Strategy, p: _Precision, trainable: int, lora: int, grad_accum: int):
    """Plain torch AdamW or bitsandbytes' 8-bit AdamW on one GPU (what the worker and HF Trainer run
    without DeepSpeed)."""
    weights = base_weight_bytes(arch, strategy, p.weight) + lora * p.adapter
    per_param = p.adapter if lora else p.weight   # gradients and AdamW moments take the parameter's dtype
    grads = trainable * per_param
    # The worker zeroes gradients with set_to_none after each optimizer step, so they exist during
    # forward/backward only from the second micro-step of an accumulation on.
    grads_in_fb = grads if grad_accum > 1 else 0.0
    if strategy.optim == "adamw8bit":
        # Its fused kernel updates the 8-bit state in place: no temporary.
        return weights, 0.0, grads, grads_in_fb, ADAMW8BIT_BYTES_PER_PARAM * trainable, 0.0
    optimizer = 2 * trainable * per_param
    # foreach AdamW allocates sqrt(exp_avg_sq) for all parameters at once during the step.
    step_extra = trainable * per_param
    return weights, 0.0, grads, grads_in_fb, optimizer, step_extra


def _deepspeed_state(arch: Arch, strategy: Strategy, n: int, p: _Precision, trainable: int, lora: int):
    """DeepSpeed engine as trainconfig.deepspeed_config sets it up (weights in the module's dtype)."""
    z = strategy.zero_stage
    module = base_weight_bytes(arch, strategy, p.weight) + lora * p.weight  # adapters cast to half too
    weights, gathered = module, 0.0
    if z == 3:
        # Parameters are sharded over the GPUs (or on the host with offload_params); the ones in use
        # are gathered, and up to ZERO3_MAX_LIVE_PARAMS of them stay gathered (see there).
        weights = 0.0 if strategy.offload_params else module / n
        gathered = min(arch.params, ZERO3_MAX_LIVE_PARAMS) * p.weight
    shard = n if z >= 1 else 1
    # The optimizer holds AdamW's two fp32 moments (8-bit ones with adamw8bit, a client optimizer at
    # stage 0) and an fp32 master copy of the trainable parameters (ZeRO 1-3 clone one even for fp32
    # weights; stage 0 only for half weights), sharded by ZeRO 1-3, on the host with offload_optimizer.
    master = 4 * trainable if (p.weight == 2 or z >= 1) else 0
    moments = ADAMW8BIT_BYTES_PER_PARAM * trainable if strategy.optim == "adamw8bit" else 8 * trainable
    optimizer = 0.0 if strategy.offload_optimizer else (master + moments) / shard
    bucket = 2 * arch.hidden * arch.hidden * p.weight if z >= 1 else 0.0  # reduce bucket (hidden^2), double-buffered
    if z == 0:
        # bf16 at stage 0 accumulates gradients in fp32 (DeepSpeed's BF16_Optimizer).
        grads = trainable * (4 if strategy.precision in ("bf16", "bf16-pure") else p.weight)
    elif z == 1:
        grads = trainable * p.weight + bucket       # stage 1 keeps full gradients, shards the rest
    else:
        grads = (0.0 if strategy.offload_optimizer else trainable * p.weight / n) + bucket
    # The step converts this GPU's gradient partition to fp32 and AdamW allocates one temporary of the
    # same size (ZeRO-3: one sub-group at a time; 8-bit AdamW updates in place, no temporary); with
    # offload the step runs on the host.
    stepped = trainable / shard
    if z == 3:
        stepped = min(stepped, ZERO3_SUB_GROUP_PARAMS + arch.head_params / shard)
    temporary = 0 if strategy.optim == "adamw8bit" else 4
    step_extra = 0.0 if strategy.offload_optimizer else (4 + temporary) * stepped
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
