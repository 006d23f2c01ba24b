"""`autofit verify RUN_DIR`: train the winner for longer through HF Trainer, with the exported files,
and compare its peak memory and tokens/s with what the search measured.

This is the check that what was probed is what the user will get: the model is built as the probe
built it, but training goes through transformers.Trainer with best.yaml's training_args, its PEFT
config and RUN_DIR/ds_config.json, on synthetic full-length batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from autofit.errors import AutofitError, NoGPUError, RunDirError, UsageError, raise_problems
from autofit.hardware import detect_gpus, visible_mask
from autofit.rundir import RunDir
from autofit.rundir.best import Winner

PEAK_TOLERANCE = 0.05
WARMUP_STEPS = 2  # optimizer steps excluded from the timing (allocator growth, kernel selection)


class VerifyFailed(AutofitError):
    """The winner's longer run broke the budget or disagreed with the probe."""


@dataclass(frozen=True)
class Verification:
    strategy: str
    micro_batch: int
    max_token: int
    steps: int
    device: str                # the GPU this run trained on (torch's name), "cpu" on the CPU
    tokens_per_s: float
    probe_tokens_per_s: float
    tokens_per_s_ratio: float
    peak_gib: float
    probe_peak_gib: float
    peak_diff: float           # (verify - probe) / probe
    budget_gib: float
    peak_reserved_gib: float | None
    nvml_peak_gib: float | None
    host_peak_gib: float
    passed: bool
    problems: tuple[str, ...]
    # Live tensors (torch.cuda.max_memory_allocated, max over ranks): with reserved, tells a gap in live
    # memory from one in the allocator's cache.
    peak_allocated_gib: float | None = None
    probe_peak_allocated_gib: float | None = None
    probe_peak_reserved_gib: float | None = None
    # The GPU the search measured on (best.yaml), when verify ran on another model of GPU: the memory
    # verdict still holds (same budget, same allocations), the tokens/s ratio compares two GPUs.
    search_device: str | None = None


def judge(peak: float, probe_peak: float, allocated: float | None, probe_allocated: float | None,
          budget: float, tolerance: float) -> list[str]:
    """verify's verdict on the memory (GiB): the problems, none when it passed.

    - over the budget: fails.
    - the device-level peak over the probe's by more than `tolerance`: fails (it eats the headroom).
    - under it by more than `tolerance`: fails unless the live tensors (max_memory_allocated) agree within
      `tolerance`. Then the gap is the allocator's cache, which is larger in a probe whose worker ran a
      smaller micro-batch first (results/bench-2xh200-qwen2-1.5b-full-T1024): the search was conservative.
      Without both allocated figures (an older best.yaml) it fails.
    """
    problems = []
    if peak > budget:
        problems.append(f"peak {peak:.2f} GiB exceeds the budget {budget} GiB")
    diff = (peak - probe_peak) / probe_peak
    if diff > tolerance:
        problems.append(f"peak {peak:.2f} GiB is {diff:+.1%} over the probe's {probe_peak} GiB (tolerance {tolerance:.0%}): "
                        "it eats into the headroom")
    elif diff < -tolerance:
        if allocated is None or not probe_allocated:
            problems.append(f"peak {peak:.2f} GiB differs from the probe's {probe_peak} GiB by {diff:+.1%} "
                            f"(tolerance {tolerance:.0%}; no allocated figures to tell the allocator's cache from live memory)")
        elif abs(allocated - probe_allocated) / probe_allocated > tolerance:
            problems.append(f"peak {peak:.2f} GiB is {diff:+.1%} under the probe's {probe_peak} GiB and allocated "
                            f"{allocated:.2f} GiB differs from the probe's {probe_allocated} GiB by "
                            f"{(allocated - probe_allocated) / probe_allocated:+.1%}: the probe did not train what HF Trainer trains")
    return problems


# What verify rebuilds the probe's context from, beyond what every winner holds.
_CONTEXT_KEYS = (("model", "weights_probed"), ("hardware", "device"), ("hardware", "gpus"), ("hardware", "gpu"),
                 ("hardware", "memory_budget_gib"), ("search", "global_batch"))


def _load_best(run_dir: Path) -> Winner:
    w = RunDir(Path(run_dir)).best()
    missing = [".".join(k) for k in _CONTEXT_KEYS if not isinstance(w.document.get(k[0]), dict) or k[1] not in w.document[k[0]]]
    if missing:
        raise RunDirError(f"{w.run_dir / 'best.yaml'} is not an autofit best.yaml (missing {', '.join(missing)})")
    return w


def _context(w: Winner):
    from autofit.spec import Context

    best, hw = w.document, w.document["hardware"]
    return Context(model=w.model_id, weights=best["model"]["weights_probed"], trust_remote_code=w.trust_remote_code,
                   device=hw["device"], gpus=tuple(hw["gpus"]),
                   gpu_memory=int(hw["memory_budget_gib"] * 2**30) if hw.get("emulated_gpu_memory") else None,
                   global_batch=best["search"]["global_batch"], max_positions=w.max_token)


class SyntheticTokens:
    """Every sample at full length: the worst case real data can reach (as in the probes)."""

    def __init__(self, n: int, length: int, vocab: int):
        import torch

        self.n, self.ids = n, torch.randint(0, vocab, (length,))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids, "labels": self.ids, "attention_mask": self.ids.new_ones(self.ids.shape)}


def _step_timer(torch: Any, on_cuda: bool):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (HF calls on_step_begin once per accumulation cycle)."""

        def __init__(self) -> None:
            self.durations: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            if on_cuda:
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if on_cuda:
                torch.cuda.synchronize()
            self.durations.append(time.perf_counter() - self._t)

    return StepTimer()


def visible_gpus(gpus: tuple[int, ...], environ: dict[str, str], installed: int | None = None) -> str:
    """CUDA_VISIBLE_DEVICES for the verify run: the GPUs the search measured on (best.yaml, in the
    machine's numbering), or the first N of an outer CUDA_VISIBLE_DEVICES, which wins (to verify on
    other cards of the same model). Without a mask HF Trainer takes every visible GPU in one process,
    i.e. torch DataParallel: a different run from the one measured, and the trap autofit exists to avoid.
    On a machine without those indices (`installed` GPUs, from NVML), the first N stand in."""
    outer = visible_mask(environ) or []  # an empty mask, as an unset one, leaves the choice to best.yaml
    if not outer:
        if installed is not None and max(gpus, default=0) >= installed:
            if installed < len(gpus):
                raise NoGPUError(f"this winner was measured on {len(gpus)} GPUs; this machine has {installed}")
            return ",".join(map(str, range(len(gpus))))
        return ",".join(map(str, gpus))
    if len(outer) < len(gpus):
        raise UsageError(f"the winner was measured on {len(gpus)} GPUs, but CUDA_VISIBLE_DEVICES="
                         f"{environ['CUDA_VISIBLE_DEVICES']} shows {len(outer)}")
    return ",".join(outer[:len(gpus)])


def _installed() -> int | None:
    """GPUs on this machine, by NVML (no CUDA context: the mask must be set before torch starts it)."""
    return len(detect_gpus()) or None


def distributed_command(run_dir: Path, steps: int, tolerance: float, nproc: int) -> list[str]:
    """verify itself, once per GPU under torchrun (as the probes ran): each rank trains its ZeRO share."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "autofit", "verify", str(run_dir), "--steps", str(steps), "--tolerance", str(tolerance)]


def _verify_distributed(run_dir: Path, steps: int, tolerance: float, gpus: tuple[int, ...]) -> Verification:
    """Run the ranks, then read what rank 0 wrote: verify.json is the one record of the run."""
    import torch  # only counts the GPUs; CUDA is initialised in the ranks, under their mask

    if torch.cuda.device_count() < len(gpus):
        raise NoGPUError(f"this winner was measured on {len(gpus)} GPUs; this machine shows {torch.cuda.device_count()}")
    from autofit.probe.runner import importable_here, omp_threads_per_rank

    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible_gpus(gpus, dict(os.environ), _installed()), PYTHONUNBUFFERED="1")
    omp = omp_threads_per_rank(len(gpus), env)  # as the probes ran: torchrun would say 1
    if omp:
        env["OMP_NUM_THREADS"] = omp
    importable_here(env)
    out = run_dir / "verify.json"
    before = _stamp(out)  # an earlier run's record is not this one's
    rc = subprocess.run(distributed_command(run_dir, steps, tolerance, len(gpus)), env=env).returncode
    if out.exists() and _stamp(out) != before:
        return Verification(**{k: tuple(v) if k == "problems" else v for k, v in json.loads(out.read_text()).items()})
    raise VerifyFailed(f"verify's {len(gpus)} ranks exited with code {rc} before writing {out.name}; "
                       f"their output above says why")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Which version of a file this is. Not mtime against a clock read before: the filesystem's coarse
    timestamps can put a file written after that read a few milliseconds before it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class VerifyArgs:
    """What `autofit verify` takes; raises every problem with its values in one UsageError."""

    run_dir: Path
    steps: int = 200
    tolerance: float = PEAK_TOLERANCE

    def __post_init__(self) -> None:
        problems = []
        if self.steps <= WARMUP_STEPS:
            problems.append(f"--steps must be more than {WARMUP_STEPS} (the warm-up steps are not timed)")
        if not self.tolerance >= 0:  # NaN too
            problems.append(f"--tolerance must be a fraction >= 0 (0.1 allows 10%), got {self.tolerance}")
        raise_problems(problems)


@contextlib.contextmanager
def _oom_is_the_verdict(ctx: Any) -> Iterator[None]:
    """Running out of memory under HF Trainer is verify's answer (the winner does not fit there), in one
    line. Under --gpu-memory what other processes hold on the card counts against the cap, as on a real
    card of that size: the OOM's own message names them."""
    try:
        yield
    except Exception as exc:
        from autofit.probe.oom import is_oom, last_line

        if not is_oom(exc):
            raise
        cap = " (under --gpu-memory, memory other processes hold on this GPU counts too)" if ctx.gpu_memory else ""
        raise VerifyFailed(f"verify failed: the winner ran out of memory under HF Trainer{cap}: {last_line(exc)}") from exc


def verify_run(run_dir: Path, steps: int = 200, tolerance: float = PEAK_TOLERANCE) -> Verification:
    VerifyArgs(run_dir, steps, tolerance)  # raises on bad values
    winner = _load_best(run_dir)
    best, hosts = winner.document, winner.hosts
    if hosts:
        # One process on this machine cannot reproduce a world spread over several: the batch, the
        # ZeRO partitions and the peaks would all differ from what was measured.
        raise RunDirError(f"{run_dir} was searched across machines ({', '.join(map(str, hosts))}); verify trains on "
                          f"this machine only: train it with `deepspeed --hostfile` and the exported config instead")
    strategy, ctx = winner.strategy, _context(winner)
    from autofit.probe.worker import dist_env  # no torch at import: the mask below comes first

    _, world, local_rank = dist_env()
    if ctx.device == "cuda":
        if len(ctx.gpus) > 1 and world == 1:
            return _verify_distributed(run_dir, steps, tolerance, ctx.gpus)
        if world == 1:  # before torch initialises CUDA: one process sees exactly its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus(ctx.gpus, dict(os.environ), _installed())
    if world == 1 and strategy.uses_deepspeed(ctx.num_gpus):
        from autofit.probe.launcher import one_process_world

        os.environ.update(one_process_world())
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from autofit.models import build_config, resolve_model
    from autofit.probe.measure import PeakSampler
    from autofit.probe.worker import max_over_ranks, setup_device, trainable_model
    from autofit.spec import compared_peak

    on_cuda = ctx.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise NoGPUError("this winner was measured on a GPU; verify needs one too")
    device, here = setup_device(torch, ctx, local_rank)  # here: the device's name, as the probes record it
    source = resolve_model(ctx.model, trust_remote_code=ctx.trust_remote_code)
    ds_path = run_dir / "ds_config.json"
    with _oom_is_the_verdict(ctx), tempfile.TemporaryDirectory(prefix="autofit-verify-") as out:
        args = dict(best["training_args"], output_dir=out, max_steps=steps, disable_tqdm=True,
                    dataloader_num_workers=0, use_cpu=not on_cuda, save_strategy="no", report_to="none")
        if args.get("deepspeed"):
            if not ds_path.exists():
                raise RunDirError(f"{ds_path} not found, but best.yaml trains with DeepSpeed")
            args["deepspeed"] = str(ds_path)
        # TrainingArguments first: with ZeRO-3 it makes the model build partitioned, as for the user.
        targs = TrainingArguments(**args)
        # The config as HF filled it in ("auto" batch sizes resolved): ZeRO-3's partitioned build parses
        # it before the Trainer exists, and DeepSpeed rejects the raw "auto" strings.
        ds_cfg = targs.hf_deepspeed_config.config if args.get("deepspeed") else None
        # Built, quantized, loss- and offload-patched as the probe did (autofit/probe/worker.py).
        model = trainable_model(torch, source, ctx, strategy, device, ds_cfg)
        vocab = int(build_config(source).vocab_size)
        c = best["config"]
        n_gpus = max(1, len(ctx.gpus)) if on_cuda else 1
        data = SyntheticTokens(steps * c["micro_batch"] * c["gradient_accumulation"] * n_gpus, c["max_token"], vocab)
        timer = _step_timer(torch, on_cuda)
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=default_data_collator, callbacks=[timer])
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        sampler = PeakSampler(local_rank if on_cuda else None)
        sampler.reset()
        try:
            trainer.train()
        finally:
            sampler.close()
    step_s = statistics.median(timer.durations[WARMUP_STEPS:] or timer.durations)
    tps = c["micro_batch"] * c["gradient_accumulation"] * n_gpus * c["max_token"] / step_s
    reserved = torch.cuda.max_memory_reserved() if on_cuda else None
    allocated = torch.cuda.max_memory_allocated() if on_cuda else None
    # Peaks are per GPU, the max over ranks, as the probes report them (0 stands for "not measured").
    n, r, a, h = max_over_ranks(torch, device, world,
                                [sampler.nvml_peak or 0, reserved or 0, allocated or 0, sampler.host_peak])
    nvml, reserved, allocated, host = int(n) or None, int(r) or None, int(a) or None, int(h)
    peak = compared_peak(nvml, reserved, host)  # the figure the search compared
    m, hw = best["measured"], best["hardware"]
    gib = 2**30
    diff = (peak / gib - m["peak_gib"]) / m["peak_gib"]
    # On the CPU the peak is the process's RSS, which the Trainer process and the probe worker do not
    # share a baseline for; the comparison is reported, not enforced (infinite tolerance).
    problems = judge(peak / gib, m["peak_gib"], allocated / gib if allocated else None, m.get("peak_allocated_gib"),
                     hw["memory_budget_gib"], tolerance if on_cuda else float("inf"))
    return Verification(strategy=c["strategy"], micro_batch=c["micro_batch"], max_token=c["max_token"], steps=steps,
                        device=here, search_device=hw["gpu"] if here != hw["gpu"] else None, tokens_per_s=round(tps, 1), probe_tokens_per_s=m["tokens_per_s"],
                        tokens_per_s_ratio=round(tps / m["tokens_per_s"], 4), peak_gib=round(peak / gib, 3),
                        probe_peak_gib=m["peak_gib"], peak_diff=round(diff, 4), budget_gib=hw["memory_budget_gib"],
                        peak_reserved_gib=round(reserved / gib, 3) if reserved else None,
                        nvml_peak_gib=round(nvml / gib, 3) if nvml else None, host_peak_gib=round(host / gib, 3),
                        passed=not problems, problems=tuple(problems),
                        peak_allocated_gib=round(allocated / gib, 3) if allocated else None,
                        probe_peak_allocated_gib=m.get("peak_allocated_gib"), probe_peak_reserved_gib=m.get("peak_reserved_gib"))
