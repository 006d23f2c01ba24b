"""Typed contracts between the search, the probe runner and the probe worker.

A *strategy* is everything about how we train except the tensor shape; a *shape* is
(micro_batch, max_token). One warm worker process serves one strategy and many shapes, so the
model is built once per strategy. Everything here is plain data that round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-pure")
METHODS = ("lora", "full", "freeze")
LOSSES = ("hf", "fused")            # fused: liger-kernel's linear cross-entropy, the logits never whole
QUANTS = ("none", "nf4", "int8")    # base weights: bf16, or bitsandbytes 4-bit NF4 / LLM.int8
OPTIMIZERS = ("adamw", "adamw8bit")  # torch AdamW, or bitsandbytes' 8-bit AdamW (state in 8 bits)


class Status(str, enum.Enum):
    OK = "ok"
    OOM = "oom"          # the GPU (or a library on it) ran out of memory: a wall, not a failure
    ERROR = "error"      # an exception that is not OOM; its last line is kept
    TIMEOUT = "timeout"  # no answer within the probe's time limit; the worker was killed
    CRASH = "crash"      # the worker died on a signal (segfault, host OOM killer) or vanished


@dataclass(frozen=True)
class Method:
    kind: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None: the architecture's default targets
    freeze_trainable_layers: int = 2             # freeze: train only the last N blocks and the head

    def label(self) -> str:
        if self.kind == "lora":
            return f"lora-r{self.lora_r}"
        if self.kind == "freeze":
            return f"freeze-last{self.freeze_trainable_layers}"
        return "full"


@dataclass(frozen=True)
class Strategy:
    method: Method = field(default_factory=Method)
    precision: str = "bf16-pure"
    grad_ckpt: bool = False
    act_offload: bool = False  # checkpointed activations in pinned host memory (probe/act_offload.py)
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    loss: str = "hf"
    quant: str = "none"
    optim: str = "adamw"

    def key(self) -> str:
        """A short, stable name used in tables, CSVs and worker logs; from_key reads it back.

        A dimension at its default adds nothing, so keys written before it existed stay valid.
        """
        parts = [self.method.label(), self.precision]
        if self.quant != "none":
            parts.append(self.quant)
        parts.append("ckpt" if self.grad_ckpt else "nockpt")
        if self.act_offload:
            parts.append("actoff")
        parts.append(f"z{self.zero_stage}")
        if self.offload_optimizer:
            parts.append("offopt")
        if self.offload_params:
            parts.append("offparam")
        if self.loss != "hf":
            parts.append(self.loss)
        if self.optim != "adamw":
            parts.append(self.optim)
        return "/".join(parts)

    @classmethod
    def from_key(cls, key: str, method: Method | None = None) -> "Strategy":
        """The one decoder of key(). `method` supplies what the key does not name (LoRA alpha,
        targets); its kind and r/N must agree with the key's."""
        parts = key.split("/")
        if len(parts) < 4:
            raise ValueError(f"not a strategy key: {key!r}")
        label, precision, rest = parts[0], parts[1], parts[2:]
        kind, lora_r, freeze_n = _decode_method(label, key)
        base = method or Method()
        m = dataclasses.replace(base, kind=kind, lora_r=lora_r if lora_r is not None else base.lora_r,
                                freeze_trainable_layers=freeze_n if freeze_n is not None else base.freeze_trainable_layers)
        if precision not in PRECISIONS:
            raise ValueError(f"strategy key {key!r}: unknown precision {precision!r}")
        kw: dict[str, Any] = {"method": m, "precision": precision}
        if rest and rest[0] in QUANTS:
            kw["quant"] = rest.pop(0)
        if not rest or rest[0] not in ("ckpt", "nockpt"):
            raise ValueError(f"strategy key {key!r}: expected ckpt or nockpt after the precision")
        kw["grad_ckpt"] = rest.pop(0) == "ckpt"
        if rest and rest[0] == "actoff":
            kw["act_offload"] = bool(rest.pop(0))
        if not rest or len(rest[0]) != 2 or rest[0][0] != "z" or rest[0][1] not in "0123":
            raise ValueError(f"strategy key {key!r}: expected a ZeRO stage z0-z3")
        kw["zero_stage"] = int(rest.pop(0)[1])
        flags = {"offopt": ("offload_optimizer", True), "offparam": ("offload_params", True),
                 **{v: ("loss", v) for v in LOSSES if v != "hf"}, **{v: ("optim", v) for v in OPTIMIZERS if v != "adamw"}}
        for part in rest:
            if part not in flags:
                raise ValueError(f"strategy key {key!r}: unknown part {part!r}")
            name, value = flags[part]
            kw[name] = value
        s = cls(**kw)
        if s.key() != key:
            raise ValueError(f"strategy key {key!r} is not in canonical order (expected {s.key()!r})")
        return s

    @property
    def exact(self) -> bool:
        """Numerically the training the user asked for: bf16 base weights and full-precision optimizer
        state (the fused loss computes the same loss and gradients, up to rounding)."""
        return self.quant == "none" and self.optim == "adamw"

    def problems(self) -> list[str]:
        """Combinations that cannot run; empty when this strategy can."""
        out = []
        if self.quant != "none":
            if self.method.kind != "lora":
                out.append(f"{self.quant} base weights are frozen: only LoRA trains on them (QLoRA)")
            if self.zero_stage != 0 or self.offload_optimizer or self.offload_params:
                out.append(f"{self.quant} base weights cannot be partitioned or offloaded by DeepSpeed ZeRO")
            if self.precision != "bf16-pure":
                out.append(f"{self.quant} base weights compute in bf16: precision must be bf16-pure")
        if self.loss == "fused" and self.zero_stage == 3:
            out.append("the fused loss reads the output projection's weight directly, which ZeRO-3 partitions")
        if self.optim != "adamw" and (self.zero_stage != 0 or self.offload_optimizer):
            out.append(f"{self.optim} is a torch optimizer for the plain (ZeRO-0) path; DeepSpeed's ZeRO owns the optimizer otherwise")
        if self.act_offload and not self.grad_ckpt:
            out.append("activation offload moves the checkpointed layers' inputs to the host: it needs gradient checkpointing")
        if self.offload_params and self.zero_stage != 3:
            out.append("offloading parameters needs ZeRO-3")
        if self.offload_optimizer and self.zero_stage == 0:
            out.append("offloading the optimizer needs ZeRO 1-3")
        return out

    @property
    def offloads(self) -> bool:
        """ZeRO moves optimizer state or weights to the host's memory."""
        return self.offload_optimizer or self.offload_params

    def uses_deepspeed(self, num_gpus: int) -> bool:
        # Same rule as HF Trainer: DeepSpeed only when asked for (a ZeRO stage or offload);
        # several GPUs without ZeRO still go through the DeepSpeed engine at stage 0 (DDP-like),
        # never torch DataParallel, which copies the whole model to every card.
        return self.zero_stage > 0 or self.offloads or num_gpus > 1


def _decode_method(label: str, key: str) -> tuple[str, int | None, int | None]:
    if label == "full":
        return "full", None, None
    for prefix, kind in (("lora-r", "lora"), ("freeze-last", "freeze")):
        if label.startswith(prefix) and label[len(prefix):].isdigit():
            n = int(label[len(prefix):])
            return (kind, n, None) if kind == "lora" else (kind, None, n)
    raise ValueError(f"strategy key {key!r}: unknown method {label!r}")


@dataclass(frozen=True, order=True)
class Shape:
    micro_batch: int
    max_token: int


@dataclass(frozen=True, order=True)
class ProbeKey:
    """One probe of a search: which strategy at which shape, in which phase of the search, which
    repeat. The key a result is stored under in the planner, the driver's cache, the study and probes.csv."""

    strategy: str              # Strategy.key()
    micro_batch: int
    max_token: int
    phase: str = "escalate"    # escalate | explore | confirm | fresh
    repeat: int = 0

    @classmethod
    def of(cls, s: Strategy, shape: Shape, phase: str = "escalate", repeat: int = 0) -> "ProbeKey":
        return cls(s.key(), shape.micro_batch, shape.max_token, phase, repeat)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ProbeKey":
        """The key of a probes.csv row (fields as read, strings; an empty repeat is 0)."""
        return cls(row["strategy"], int(row["micro_batch"]), int(row["max_token"]), row["phase"], int(row["repeat"] or 0))

    @classmethod
    def from_text(cls, text: str) -> "ProbeKey":
        s, mb, t, phase, repeat = text.split("|")
        return cls(s, int(mb), int(t), phase, int(repeat))

    def text(self) -> str:
        """The study's `probe_key` attribute; from_text reads it back."""
        return f"{self.strategy}|{self.micro_batch}|{self.max_token}|{self.phase}|{self.repeat}"

    @property
    def shape(self) -> Shape:
        return Shape(self.micro_batch, self.max_token)

    @property
    def cell(self) -> tuple[str, int]:
        """(strategy, micro_batch): the search's cell at one max_token."""
        return self.strategy, self.micro_batch


class Candidate(NamedTuple):
    """A fitting configuration at the target max_token, as the planner ranks them."""

    strategy: str              # Strategy.key()
    micro_batch: int
    tokens_per_s: float
    peak: int                  # bytes, the compared peak


@dataclass(frozen=True)
class Context:
    """What stays fixed for a whole search: model, hardware, global batch, measurement lengths."""

    model: str
    weights: str = "random"            # random | real
    trust_remote_code: bool = False
    device: str = "cuda"               # cuda | cpu
    gpus: tuple[int, ...] = (0,)
    gpu_memory: int | None = None      # bytes the probe may use per GPU (emulates a smaller card)
    global_batch: int = 16             # samples per optimizer step; sets gradient accumulation
    warmup_steps: int = 1              # optimizer steps not measured
    measure_steps: int = 2             # optimizer steps measured
    max_micro_per_step: int = 2        # micro-steps actually run per measured optimizer step
    max_positions: int | None = None   # longest max_token probed: caps the RoPE cache transformers precomputes
    probe_timeout_s: float = 300.0
    build_timeout_s: float = 600.0
    # Several machines (--hostfile): ((hostname, GPUs there), ...); a probe runs one rank per GPU of
    # every host through DeepSpeed's launcher. Empty: this machine only.
    hostfile: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()
    master_addr: str | None = None

    @property
    def num_gpus(self) -> int:
        """GPUs (ranks) a probe runs on, over every host: global batch and tokens/s count them all."""
        if self.hosts:
            return sum(slots for _, slots in self.hosts)
        return len(self.gpus) if self.device == "cuda" else 1

    def grad_accum(self, micro_batch: int) -> int:
        """Gradient accumulation that makes micro_batch x GPUs x accum reach the global batch."""
        per_step = micro_batch * self.num_gpus
        return max(1, -(-self.global_batch // per_step))


@dataclass(frozen=True)
class ProbeResult:
    strategy: str
    micro_batch: int
    max_token: int
    status: Status
    grad_accum: int = 0
    micro_step_s: float | None = None      # median forward+backward of one micro-batch
    optimizer_step_s: float | None = None  # median optimizer step (incl. ZeRO gather/offload)
    step_s: float | None = None            # one global-batch optimizer step: accum x micro + optimizer
    tokens_per_s: float | None = None      # global batch x max_token / step_s
    peak_allocated: int | None = None      # bytes, max over ranks
    peak_reserved: int | None = None       # bytes, max over ranks
    nvml_peak: int | None = None           # bytes, device-level (CUDA context, NCCL buffers too)
    host_peak: int | None = None           # bytes of host RSS (matters with CPU offload)
    error: str = ""
    device_name: str = ""
    num_gpus: int = 1
    weights: str = "random"
    memory_cap: int | None = None          # --gpu-memory the probe ran under (emulated card), if any
    time_import_s: float | None = None
    time_build_s: float | None = None
    time_steps_s: float | None = None
    worker_pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeResult":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["status"] = Status(kw["status"])
        return cls(**kw)


def target_problems(max_token: int, headroom: float) -> list[str]:
    """What --max-token and --headroom must be, in every command that takes both (search, estimate)."""
    problems = []
    if max_token < 1:
        problems.append(f"--max-token must be positive, got {max_token}")
    if not 0 <= headroom < 1:
        problems.append(f"--headroom must be in [0, 1), got {headroom}")
    return problems


def compared_peak(nvml: float | None, reserved: float | None, host: float | None) -> float | None:
    """The memory figure compared with the budget (any unit): device-level when we have it (counts
    the CUDA context and NCCL buffers), else the allocator's reserved peak, else host RSS (CPU runs)."""
    device = [x for x in (nvml, reserved) if x]
    return max(device) if device else host


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (nested) to plain dicts; tuples to lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def strategy_from_dict(d: dict[str, Any]) -> Strategy:
    m = dict(d["method"])
    if m.get("lora_targets") is not None:
        m["lora_targets"] = tuple(m["lora_targets"])
    return Strategy(**{**d, "method": Method(**m)})


def context_from_dict(d: dict[str, Any]) -> Context:
    hosts = tuple((str(h), int(n)) for h, n in d.get("hosts") or ())
    return Context(**{**d, "gpus": tuple(d["gpus"]), "hosts": hosts})
