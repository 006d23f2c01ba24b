"""Probe worker: builds the model once, then trains at each shape it is sent until the first OOM.

Run by runner.py as `python -m autofit.probe.worker IO_DIR` (or under torchrun for N GPUs).
It imports nothing from the search. Every probe is real: the transformers model, PEFT, the
DeepSpeed engine or a torch optimizer, configured by autofit.trainconfig exactly as exported.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autofit.capabilities import missing
from autofit.errors import NoGPUError, ProbeError
from autofit.models import ModelSource, build_config, decoder_blocks
from autofit.probe import protocol
from autofit.probe.oom import is_oom, last_line
from autofit.spec import Context, ProbeResult, Shape, Status, Strategy, context_from_dict, strategy_from_dict
from autofit.trainconfig import LEARNING_RATE, autocast_dtype, deepspeed_config, model_dtype, peft_config

POLL_S = 0.02


@dataclass
class Rig:
    """Everything built once per strategy."""

    torch: Any
    ctx: Context
    strategy: Strategy
    device: Any
    model: Any
    engine: Any          # DeepSpeed engine, or None on the torch path
    optimizer: Any       # torch optimizer on the torch path
    scaler: Any          # GradScaler for fp16 on the torch path
    autocast: Any        # torch dtype for autocast, or None
    vocab: int
    sampler: Any
    rank: int
    world: int
    device_name: str
    time_import_s: float
    time_build_s: float


def _fault(where: str, strategy_key: str = "") -> None:
    """Test hook: AUTOFIT_TEST_FAULT=<kind>@<where> makes this worker really misbehave; with
    AUTOFIT_TEST_FAULT_STRATEGY=<text>, only workers whose strategy key contains <text> do; with
    AUTOFIT_TEST_FAULT_RANK=<n>, only that rank (a remote rank dying while the others train)."""
    spec = os.environ.get("AUTOFIT_TEST_FAULT", "")
    if not spec or not spec.endswith("@" + where):
        return
    if os.environ.get("AUTOFIT_TEST_FAULT_STRATEGY", "") not in strategy_key:
        return
    if os.environ.get("AUTOFIT_TEST_FAULT_RANK", str(dist_env()[0])) != str(dist_env()[0]):
        return
    kind = spec.split("@")[0]
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "segv":
        import ctypes

        ctypes.string_at(0)  # a real segmentation fault
    if kind == "sigkill":  # what the kernel's OOM killer does to a process that ate host RAM
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise ValueError("injected test failure")
    if kind == "exit":
        os._exit(3)
    if kind == "rank-oom":  # a rank that dies of an OOM under torchrun: the launcher's error is the log's last line
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 112.00 MiB.\n"
                         "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
        sys.stderr.flush()
        os._exit(1)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun or DeepSpeed's launcher; (0, 1, 0) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_device(torch: Any, ctx: Context, local_rank: int) -> tuple[Any, str]:
    if ctx.device == "cpu":
        return torch.device("cpu"), f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    if not torch.cuda.is_available():
        raise NoGPUError("no CUDA GPU is visible to the probe; use --device cpu to probe on the CPU")
    torch.cuda.set_device(local_rank)
    if ctx.gpu_memory:
        # Emulate a smaller card on a bigger one: the allocator may use the card size minus what is
        # already used (the CUDA context, which a real card pays too), so the device-level total
        # stays within --gpu-memory.
        free, total = torch.cuda.mem_get_info(local_rank)
        room = max(0, ctx.gpu_memory - (total - free))
        torch.cuda.set_per_process_memory_fraction(min(1.0, room / total), local_rank)
    return torch.device("cuda", local_rank), torch.cuda.get_device_name(local_rank)


def build_model(torch: Any, source: ModelSource, ctx: Context, strategy: Strategy, device: Any, ds_cfg: dict | None):
    from transformers import AutoModelForCausalLM

    if strategy.quant != "none":  # never ZeRO-partitioned: Strategy.problems() rules that out
        from autofit.probe import quantize

        model = (quantize.load_real(torch, source, strategy, device.index or 0) if ctx.weights == "real"
                 else quantize.build_random(torch, source, ctx, strategy, device))
        model.config.use_cache = False
        return model
    dtype = getattr(torch, model_dtype(strategy, ctx.num_gpus))
    zero3 = ds_cfg is not None and strategy.zero_stage == 3
    keep = None
    if zero3:
        # Like HF Trainer with ZeRO-3: the model is partitioned as it is built (zero.Init), so a
        # model larger than one GPU can still be built.
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_cfg)  # noqa: F841 - must stay alive during the build
    kw = dict(torch_dtype=dtype, trust_remote_code=source.trust_remote_code, attn_implementation="sdpa")
    if ctx.weights == "real":
        model = AutoModelForCausalLM.from_pretrained(source.path, **kw)
        if not zero3:
            model.to(device)
    else:
        # Random weights made directly on the device: same memory and speed as real ones, seconds
        # instead of minutes of loading.
        config = build_config(source, max_positions=ctx.max_positions)
        with contextlib.nullcontext() if zero3 else device:
            model = AutoModelForCausalLM.from_config(config, **kw)
    model.config.use_cache = False
    return model


@contextlib.contextmanager
def _peft_without_bnb():
    """peft looks for bitsandbytes' layers whenever bitsandbytes is installed, and importing it costs seconds
    (it torch.compiles its kernels); an unquantized model has none of those layers to find."""
    import peft.tuners.lora.model as lora

    saved = lora.is_bnb_available, lora.is_bnb_4bit_available
    lora.is_bnb_available = lora.is_bnb_4bit_available = lambda: False
    try:
        yield
    finally:
        lora.is_bnb_available, lora.is_bnb_4bit_available = saved


def apply_method(model: Any, source: ModelSource, strategy: Strategy) -> Any:
    m = strategy.method
    if strategy.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.kind == "lora":
        from peft import LoraConfig, get_peft_model

        with _peft_without_bnb() if strategy.quant == "none" else contextlib.nullcontext():
            return get_peft_model(model, LoraConfig(**peft_config(strategy, source.lora_targets)))
    if m.kind == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        blocks = decoder_blocks(model, source)
        trainable = list(blocks[-m.freeze_trainable_layers:]) + [model.get_output_embeddings()]
        norm = getattr(getattr(model, "model", model), "norm", None)
        if norm is not None:
            trainable.append(norm)
        for mod in trainable:
            for p in mod.parameters():
                p.requires_grad_(True)
    return model


def apply_loss(model: Any, strategy: Strategy) -> Any:
    """The fused loss patched in after PEFT's wrapping (it reaches through it), before DeepSpeed's."""
    if strategy.loss == "fused":
        from autofit.probe import fused_loss

        fused_loss.patch(model)
    return model


def apply_offload(model: Any, strategy: Strategy) -> Any:
    """Activation offload patched onto the decoder (inside PEFT's wrapper, under DeepSpeed's engine)."""
    if strategy.act_offload:
        from autofit.probe import act_offload

        act_offload.patch(model)
    return model


def trainable_model(torch: Any, source: ModelSource, ctx: Context, strategy: Strategy, device: Any, ds_cfg: dict | None):
    """The model as the strategy trains it, for the probe and `autofit verify` alike."""
    model = build_model(torch, source, ctx, strategy, device, ds_cfg)
    return apply_offload(apply_loss(apply_method(model, source, strategy), strategy), strategy)


def torch_optimizer(torch: Any, strategy: Strategy, params: list[Any]) -> Any:
    """The optimizer of the plain (ZeRO-0) path: what HF Trainer makes for optim=hf_optim(strategy)."""
    if strategy.optim == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=LEARNING_RATE, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)


def import_techniques(strategy: Strategy) -> float:
    """Import the libraries of the strategy's memory techniques (not preimported: most workers never
    need them); returns the seconds spent, counted as import time."""
    t = time.time()
    if strategy.quant != "none" or strategy.optim != "adamw":
        import bitsandbytes  # noqa: F401
    if strategy.loss == "fused":
        import liger_kernel.transformers  # noqa: F401
    return time.time() - t


def setup(plan: dict[str, Any], first_shape: Shape, import_s: float) -> Rig:
    import torch

    ctx = context_from_dict(plan["context"])
    strategy = strategy_from_dict(plan["strategy"])
    source = ModelSource.from_dict(plan["source"])
    rank, world, local_rank = dist_env()
    import transformers  # noqa: F401  (counted as import time)

    uses_ds = strategy.uses_deepspeed(ctx.num_gpus)
    # What DeepSpeed's CPU accelerator cannot do; bitsandbytes' CPU backend stays allowed in a probe
    # (the search leaves it out on the CPU, the tests use it).
    if ctx.device == "cpu" and uses_ds and (lacking := missing(strategy, ctx)):
        raise ProbeError(f"cannot probe {strategy.key()}: {lacking}")
    if uses_ds:
        import deepspeed
    if strategy.method.kind == "lora":
        import peft  # noqa: F401
    device, device_name = setup_device(torch, ctx, local_rank)
    # After set_device: a library that touches CUDA on import then does it on this rank's GPU.
    t_import = import_s + import_techniques(strategy)

    t = time.time()
    _fault("build", strategy.key())
    ds_cfg = deepspeed_config(strategy, ctx, first_shape, hidden_size=source.config.get("hidden_size"))
    if uses_ds and ctx.device == "cpu":
        # gloo is torch's CPU backend. DeepSpeed would also compile its shared-memory all-reduce at the
        # first init (a minute or more), which only inference_all_reduce uses, never training.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
    elif uses_ds:
        deepspeed.init_distributed(dist_backend="nccl")
    model = trainable_model(torch, source, ctx, strategy, device, ds_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    engine = optimizer = scaler = None
    if uses_ds:
        client_opt = None if "optimizer" in ds_cfg else torch_optimizer(torch, strategy, params)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=client_opt, config=ds_cfg)
    else:
        optimizer = torch_optimizer(torch, strategy, params)
        if strategy.precision == "fp16":
            scaler = torch.amp.GradScaler(device.type)
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    from autofit.probe.measure import PeakSampler

    sampler = PeakSampler(local_rank if device.type == "cuda" else None)
    ac = None if uses_ds else autocast_dtype(strategy)
    return Rig(torch=torch, ctx=ctx, strategy=strategy, device=device, model=model, engine=engine,
               optimizer=optimizer, scaler=scaler, autocast=getattr(torch, ac) if ac else None,
               vocab=int(model.get_input_embeddings().num_embeddings) if not (uses_ds and strategy.zero_stage == 3)
               else int(build_config(source).vocab_size),
               sampler=sampler, rank=rank, world=world, device_name=device_name,
               time_import_s=t_import, time_build_s=time.time() - t)


def _set_engine_batch(rig: Rig, shape: Shape, accum: int) -> None:
    """One engine serves every shape; tell it the shape's batch sizes (loss scaling uses them)."""
    cfg = rig.engine._config
    cfg.train_micro_batch_size_per_gpu = shape.micro_batch
    cfg.gradient_accumulation_steps = accum
    cfg.train_batch_size = shape.micro_batch * accum * rig.world


def _sync(rig: Rig) -> None:
    if rig.device.type == "cuda":
        rig.torch.cuda.synchronize()


def _micro_step(rig: Rig, ids: Any, accum: int, boundary: bool) -> None:
    torch = rig.torch
    if rig.engine is not None:
        rig.engine.set_gradient_accumulation_boundary(boundary)
        loss = rig.engine(input_ids=ids, labels=ids).loss
        rig.engine.backward(loss)
        if not boundary:
            rig.engine.step()  # bookkeeping only off the boundary
        return
    with torch.autocast(rig.device.type, dtype=rig.autocast, enabled=rig.autocast is not None):
        loss = rig.model(input_ids=ids, labels=ids).loss / accum
    (rig.scaler.scale(loss) if rig.scaler else loss).backward()


def _optimizer_step(rig: Rig) -> None:
    torch = rig.torch
    if rig.engine is not None:
        rig.engine.step()
        return
    params = [p for g in rig.optimizer.param_groups for p in g["params"]]
    if rig.scaler:
        rig.scaler.unscale_(rig.optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)  # HF Trainer's max_grad_norm
    if rig.scaler:
        rig.scaler.step(rig.optimizer)
        rig.scaler.update()
    else:
        rig.optimizer.step()
    rig.optimizer.zero_grad(set_to_none=True)


def _reset_memory(rig: Rig) -> None:
    torch = rig.torch
    if rig.optimizer is not None:
        rig.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if rig.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rig.sampler.reset()


def max_over_ranks(torch: Any, device: Any, world: int, values: list[float]) -> list[float]:
    """Each value's maximum over the ranks (peaks are per GPU: the largest rank's), on every rank."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def run_shape(rig: Rig, shape: Shape) -> ProbeResult:
    """Warm-up then measured optimizer steps at this shape; times and peaks, or how it failed."""
    torch, ctx = rig.torch, rig.ctx
    accum = ctx.grad_accum(shape.micro_batch)
    # Accumulation changes time, not memory: run at most max_micro_per_step micro-steps per
    # optimizer step and extrapolate the rest from the measured micro-step time.
    per_step = min(accum, ctx.max_micro_per_step)
    base = dict(strategy=rig.strategy.key(), micro_batch=shape.micro_batch, max_token=shape.max_token,
                grad_accum=accum, device_name=rig.device_name, num_gpus=rig.world, weights=ctx.weights,
                memory_cap=ctx.gpu_memory,
                time_import_s=round(rig.time_import_s, 3), time_build_s=round(rig.time_build_s, 3),
                worker_pid=os.getpid())
    t_start = time.time()
    micro, boundary_micro, opt = [], [], []
    try:
        if rig.engine is not None:
            _set_engine_batch(rig, shape, accum)
        _reset_memory(rig)
        _fault("probe", rig.strategy.key())
        ids = torch.randint(0, rig.vocab, (shape.micro_batch, shape.max_token), device=rig.device)
        for step in range(ctx.warmup_steps + ctx.measure_steps):
            measured = step >= ctx.warmup_steps
            for i in range(per_step):
                last = i == per_step - 1
                t = time.perf_counter()
                _micro_step(rig, ids, accum, boundary=last)
                _sync(rig)
                if measured:
                    (boundary_micro if last else micro).append(time.perf_counter() - t)
            t = time.perf_counter()
            _optimizer_step(rig)
            _sync(rig)
            if measured:
                opt.append(time.perf_counter() - t)
    except Exception as exc:  # classified, reported, and the worker exits: memory may be fragmented
        status = Status.OOM if is_oom(exc) else Status.ERROR
        return ProbeResult(**base, status=status, error=last_line(exc), time_steps_s=round(time.time() - t_start, 3))

    micro_s = statistics.median(micro) if micro else statistics.median(boundary_micro)
    # What one optimizer step costs beyond its micro-steps: the boundary micro-step's extra work
    # (gradient all-reduce / reduce-scatter) plus the optimizer itself (incl. offload transfers).
    extra = [b + o - micro_s for b, o in zip(boundary_micro, opt)] if micro else opt
    opt_s = max(0.0, statistics.median(extra))
    step_s = accum * micro_s + opt_s
    if rig.device.type == "cuda":
        alloc, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    else:
        alloc = reserved = None
    nvml = rig.sampler.nvml_peak
    host = rig.sampler.host_peak
    step_s, micro_s, opt_s, a, r, n, h = max_over_ranks(
        rig.torch, rig.device, rig.world, [step_s, micro_s, opt_s, alloc or 0, reserved or 0, nvml or 0, host])
    samples = shape.micro_batch * accum * rig.world
    return ProbeResult(
        **base, status=Status.OK, micro_step_s=round(micro_s, 6), optimizer_step_s=round(opt_s, 6),
        step_s=round(step_s, 6), tokens_per_s=round(samples * shape.max_token / step_s, 2),
        peak_allocated=int(a) if alloc is not None else None, peak_reserved=int(r) if reserved is not None else None,
        nvml_peak=int(n) if nvml else None, host_peak=int(h), time_steps_s=round(time.time() - t_start, 3))


def _wait_request(io_dir: Path, k: int) -> dict[str, Any]:
    path = protocol.req_path(io_dir, k)
    while True:
        req = protocol.read_json(path)
        if req is not None:
            return req
        if os.getppid() == 1:  # parent is gone: never linger as an orphan holding a GPU
            sys.exit(4)
        time.sleep(POLL_S)


def limit_host_memory() -> None:
    """Test hook: AUTOFIT_TEST_HOST_LIMIT=<bytes> caps address-space growth after the build, so a
    CPU probe meets a real allocation failure (the host-OOM path) at a small shape."""
    extra = os.environ.get("AUTOFIT_TEST_HOST_LIMIT")
    if extra:
        import resource

        import psutil

        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + int(extra), resource.RLIM_INFINITY))


# Imported ahead of the plan on a GPU machine, most often needed first: every auto-space strategy on a GPU but
# ZeRO's offload ones uses liger's fused loss (3.7 s to import on the H200 machine), the 4/8-bit family
# bitsandbytes (2.6 s), DeepSpeed 0.3 s. None takes GPU memory (results/worker-startup-h200).
SPECULATIVE = ("liger_kernel.transformers", "deepspeed", "bitsandbytes")
# What every probe needs, imported before the plan (and preloaded by the template forked workers come from).
STACK = ("torch", "transformers", "peft")


def _preimport(io_dir: Path) -> float:
    """What a probe may need, imported before the plan arrives: a standby worker pays this while another
    worker is still probing. Once the plan is here, the rest is left to setup, which imports only what the
    plan's strategy uses. No CUDA call happens here, so no GPU memory is taken."""
    t = time.time()
    for name in STACK:
        importlib.import_module(name)
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        for name in SPECULATIVE:
            if protocol.plan_path(io_dir).exists():
                break
            try:
                importlib.import_module(name)
            except Exception:  # missing or broken here: setup's own import says so if the strategy needs it
                pass
    return time.time() - t


def _wait_plan(io_dir: Path) -> dict[str, Any]:
    while True:
        plan = protocol.read_json(protocol.plan_path(io_dir))
        if plan is not None:
            return plan
        if os.getppid() == 1:
            sys.exit(4)
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    io_dir = Path([a for a in argv if not a.startswith("--local_rank")][0])
    rank, _, _ = dist_env()
    import_s = _preimport(io_dir)
    if rank == 0:
        protocol.write_json(protocol.ready_path(io_dir), {"t": time.time(), "import_s": round(import_s, 3), "pid": os.getpid()})
    plan = _wait_plan(io_dir)
    req = _wait_request(io_dir, 0)
    if req.get("stop"):
        return 0
    if rank == 0:
        protocol.write_json(protocol.phase_path(io_dir), {"phase": "building", "t": time.time()})
    try:
        rig = setup(plan, Shape(**req["shape"]), import_s)
    except Exception as exc:
        status = Status.OOM if is_oom(exc) else Status.ERROR
        protocol.write_json(protocol.fatal_path(io_dir, rank), {"status": status.value, "error": last_line(exc)})
        return 1
    limit_host_memory()
    k = 0
    while True:
        if rank == 0:
            protocol.write_json(protocol.phase_path(io_dir), {"phase": "probing", "k": k, "shape": req["shape"], "t": time.time()})
        result = run_shape(rig, Shape(**req["shape"]))
        if rank == 0 or not result.ok:
            protocol.write_json(protocol.res_path(io_dir, k, rank), result.to_dict())
        if not result.ok:
            return 0
        k += 1
        req = _wait_request(io_dir, k)
        if req.get("stop"):
            rig.sampler.close()
            return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Every result is on disk by now. Skipping the interpreter's teardown (torch, DeepSpeed and the
    # CUDA context, 1-2 s) hands the GPU to the next strategy's worker sooner; the OS frees it all.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
