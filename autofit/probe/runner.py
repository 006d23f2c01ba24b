"""Parent side of probing: start a worker for one strategy, send it shapes, classify what comes back.

No torch here. A worker that hangs is killed at its deadline (timeout); one that dies on a signal
(segfault, the host OOM killer under CPU offload) is a crash; neither takes the caller down.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import autofit
from autofit.errors import ProbeError
from autofit.hardware import device_mask
from autofit.models import ModelSource
from autofit.probe import forked, protocol
from autofit.probe.launcher import (
    host_failure, is_peer_lost, kill_local_ranks, launcher_command, one_process_world, stop_ranks, write_rank_env,
)
from autofit.probe.oom import oom_line
from autofit.spec import Context, ProbeResult, Shape, Status, Strategy, to_jsonable

_PROJECT_ROOT = str(Path(autofit.__file__).resolve().parent.parent)
POLL_S = 0.05
FRESH_MEASURE_STEPS = 2  # StandbyFactory.fresh
GRACE_S = 10.0  # after a failure: time for the ranks to exit on their own before being killed


def importable_here(env: dict[str, str]) -> dict[str, str]:
    """Put this autofit first on env's PYTHONPATH, so a child process runs the same code as its parent
    (a checkout that is not installed, or one beside another checkout's editable install)."""
    env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned worker
    except OSError:
        pass


def omp_threads_per_rank(ranks: int, environ: dict[str, str]) -> str | None:
    """OMP_NUM_THREADS for ranks sharing this machine, or None to leave the user's setting alone.

    torchrun sets OMP_NUM_THREADS=1 for every rank when it is unset, and DeepSpeed's CPU Adam (the
    optimizer step under offload_optimizer) is an OpenMP loop: one thread makes offload strategies
    several times slower than the cores allow (results/omp-offload-2xh200). Each rank gets its share
    of the cores this process may run on."""
    if "OMP_NUM_THREADS" in environ or ranks <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return str(max(1, cores // ranks))


class WorkerSession:
    """One warm worker (one process, or N ranks under torchrun) serving one strategy."""

    def __init__(self, ctx: Context, strategy: Strategy | None, source: ModelSource, io_dir: Path,
                 env: dict[str, str] | None = None):
        self.ctx, self.strategy, self.source = ctx, strategy, source
        self.io_dir = Path(io_dir).absolute()  # in the command line: stop_ranks matches it there
        self.extra_env = env or {}
        self.proc: subprocess.Popen | forked.ForkedProcess | None = None
        self.planned = False
        self.k = 0
        self.dead = False
        # Set when a probe failed because of one host (unreachable, or a rank there died without a
        # report): the one line naming it, which `autofit probe` ends with.
        self.host_error: str | None = None
        # Called while a probe runs (StandbyFactory.tick): a standby spawned as soon as it may be, not at
        # the next probe, is ready sooner for the strategy that follows.
        self.while_waiting: Callable[[], None] | None = None

    @property
    def multi_host(self) -> bool:
        return len(self.ctx.hosts) > 1

    @property
    def under_torchrun(self) -> bool:
        return not self.ctx.hostfile and self.ctx.device == "cuda" and self.ctx.num_gpus > 1

    # -- lifecycle ------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        worker = ["-m", "autofit.probe.worker", str(self.io_dir)]
        if self.ctx.hostfile:
            return launcher_command(self.ctx, worker[1:])
        if self.under_torchrun:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.ctx.num_gpus}", *worker]
        return [sys.executable, *worker]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        importable_here(env)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # A probe never touches a GPU it was not given.
        # --gpus counts in this process's numbering, so an outer CUDA_VISIBLE_DEVICES is honoured.
        env["CUDA_VISIBLE_DEVICES"] = device_mask(self.ctx.gpus) if self.ctx.device == "cuda" else ""
        local_ranks = max(slots for _, slots in self.ctx.hosts) if self.ctx.hosts else self.ctx.num_gpus
        omp = omp_threads_per_rank(local_ranks, env)
        if omp:
            env["OMP_NUM_THREADS"] = omp
        if not self.ctx.hostfile and not self.under_torchrun:  # a plain process: its own world of one
            env.update(one_process_world())
        if self.ctx.hostfile and self.ctx.device == "cuda":
            # DeepSpeed's launcher gives each host's ranks that host's slots; a mask set here would
            # make it ignore the hostfile's GPU counts on this machine.
            del env["CUDA_VISIBLE_DEVICES"]
        env.update(self.extra_env)
        if self.multi_host:
            env["DS_ENV_FILE"] = str(write_rank_env(env, self.io_dir / "deepspeed_env"))
        return env

    def spawn(self) -> None:
        """Start the process. It imports the stack, then waits for a plan: spawned early, it is a
        standby that has already paid the imports when its strategy is assigned."""
        self.io_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.io_dir.glob("*.json"):
            stale.unlink()
        if forked.enabled(os.environ) and self.ctx.device == "cpu" and not self.ctx.hostfile:  # one plain process
            self.proc = forked.start([str(self.io_dir)], self._env(), str(self.io_dir / "worker.log"))
            return
        log = open(self.io_dir / "worker.log", "ab")
        try:
            self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self._env(), start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ProbeError(f"cannot start the probe worker: {exc}") from exc
        finally:
            log.close()

    def assign(self, strategy: Strategy) -> None:
        self.strategy = strategy
        protocol.write_json(protocol.plan_path(self.io_dir), {
            "context": to_jsonable(self.ctx), "strategy": to_jsonable(strategy), "source": self.source.to_dict()})
        self.planned = True

    def start(self) -> None:
        self.spawn()
        self.assign(self.strategy)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.multi_host:
            # Ranks on other machines are not in our process group: stop this probe's there first.
            stop_ranks(self.ctx, self.io_dir, self.proc, GRACE_S)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the launcher's group
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not get ignored
            pass
        # torchrun's ranks are not in its group: one left hanging in a collective keeps its GPU memory,
        # and every later probe on that GPU fails to build.
        kill_local_ranks(self.io_dir)
        self.dead = True

    def close(self) -> None:
        """Ask a healthy worker to exit; kill it if it does not within a few seconds."""
        if self.proc is not None and not self.dead and self.proc.poll() is None:
            protocol.write_json(protocol.req_path(self.io_dir, self.k), {"stop": True})
            try:
                self.proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> "WorkerSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def phase(self) -> dict | None:
        return protocol.read_json(protocol.phase_path(self.io_dir))

    def ready(self) -> bool:
        """Spawned and done importing: a plan assigned now starts building at once."""
        return protocol.ready_path(self.io_dir).exists()

    # -- probing --------------------------------------------------------------------------------
    def probe(self, shape: Shape) -> ProbeResult:
        """Run one shape. Never raises for what the probe did; returns its classified result."""
        if self.dead:
            raise ProbeError("this worker already stopped; start a new session for the next strategy")
        first = self.k == 0  # the first probe of a worker also pays the model build
        if self.proc is None:
            self.spawn()
        if not self.planned:
            self.assign(self.strategy)
        protocol.write_json(protocol.req_path(self.io_dir, self.k), {"shape": to_jsonable(shape)})
        limit = self.ctx.probe_timeout_s + (self.ctx.build_timeout_s if first else 0.0)
        result = self._await(shape, time.time() + limit, limit)
        self.k += 1
        if not result.ok:
            self._finish_after_failure()
        return result

    def _await(self, shape: Shape, deadline: float, limit: float) -> ProbeResult:
        base = dict(strategy=self.strategy.key(), micro_batch=shape.micro_batch, max_token=shape.max_token,
                    grad_accum=self.ctx.grad_accum(shape.micro_batch), num_gpus=self.ctx.num_gpus,
                    weights=self.ctx.weights, worker_pid=self.proc.pid if self.proc else None)
        next_log_read = time.time() + 1.0
        while True:
            answers = [protocol.read_json(p) for p in protocol.res_paths(self.io_dir, self.k)]
            answers = [a for a in answers if a]
            # Any rank's failure decides (other ranks may hang in a collective); a rank's own failure
            # before one that only saw its peer vanish.
            failed = sorted((a for a in answers if a["status"] != Status.OK.value), key=lambda a: is_peer_lost(a["error"]))
            if failed:
                return self._blame_host(ProbeResult.from_dict(failed[0]), base)
            if answers:
                return ProbeResult.from_dict(answers[0])
            fatal = [protocol.read_json(p) for p in protocol.fatal_paths(self.io_dir)]
            fatal = [f for f in fatal if f]
            if fatal:
                return ProbeResult(**base, status=Status(fatal[0]["status"]), error="during setup: " + fatal[0]["error"])
            if self.proc.poll() is not None:
                time.sleep(0.2)  # a result written just before exit
                if protocol.res_paths(self.io_dir, self.k) or protocol.fatal_paths(self.io_dir):
                    continue
                return self._host_result(base) or self._classify_exit(base)
            if self.multi_host and time.time() > next_log_read:
                # A host that cannot be reached, or a rank that died there, leaves the others waiting
                # in the rendezvous or a collective: the launcher's log is the only news.
                next_log_read = time.time() + 1.0
                if host_failure(self.log_tail(65536), self.ctx.hosts):
                    time.sleep(0.5)  # a rank's own report, written before its exit was logged
                    if any(self.io_dir.glob(f"res-{self.k}.r*.json")) or any(self.io_dir.glob("fatal.r*.json")):
                        continue
                    self.kill()
                    return self._host_result(base)
            phase = self.phase()
            if phase and phase.get("phase") == "probing" and phase.get("k") == self.k:
                # The build is over: from here the probe's own time limit applies.
                deadline = min(deadline, phase["t"] + self.ctx.probe_timeout_s)
                limit = self.ctx.probe_timeout_s
            if time.time() > deadline:
                self.kill()
                return self._host_result(base) or ProbeResult(
                    **base, status=Status.TIMEOUT, error=f"no result within {limit:.0f}s; worker killed")
            if self.while_waiting is not None:
                self.while_waiting()
            time.sleep(POLL_S)

    def _blame_host(self, result: ProbeResult, base: dict) -> ProbeResult:
        """A rank that only lost its peer is not the story: wait for the launcher to say which host's
        rank died (it exits once every host's ranks have), and report that instead."""
        if not (self.multi_host and is_peer_lost(result.error)):
            return result
        try:
            self.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        return self._host_result(base) or result

    def _host_result(self, base: dict) -> ProbeResult | None:
        found = host_failure(self.log_tail(65536), self.ctx.hosts) if self.multi_host else None
        if found is None:
            return None
        status, self.host_error = found
        return ProbeResult(**base, status=status, error=self.host_error)

    def _classify_exit(self, base: dict) -> ProbeResult:
        rc = self.proc.returncode
        tail = self.log_tail()
        self.dead = True
        sig = -rc if rc < 0 else _signal_in_log(tail)
        if sig:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
            hint = " (host out of memory? the kernel's OOM killer sends SIGKILL)" if sig == signal.SIGKILL else ""
            return ProbeResult(**base, status=Status.CRASH, error=f"worker killed by {name}{hint}")
        if line := oom_line(tail):
            return ProbeResult(**base, status=Status.OOM, error=line[:500])
        return ProbeResult(**base, status=Status.ERROR, error=f"worker exited with code {rc}: {_last_error_line(tail)}")

    def _finish_after_failure(self) -> None:
        try:
            self.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def log_tail(self, nbytes: int = 8000) -> str:
        try:
            with open(self.io_dir / "worker.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def _signal_in_log(tail: str) -> int | None:
    """torchrun reports a rank killed by a signal as 'exitcode: -11' / 'Signal 11 (SIGSEGV)'."""
    import re

    m = re.search(r"exitcode\s*:\s*-(\d+)", tail) or re.search(r"Signal (\d+) \(SIG", tail)
    return int(m.group(1)) if m else None


def _last_error_line(tail: str) -> str:
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:500]
    return (lines[-1] if lines else "no output")[:500]


class StandbyFactory:
    """Makes the sessions a search needs, keeping standby workers spawned ahead of time.

    Starting a worker costs the imports (torch, transformers, peft and on a GPU the techniques' libraries:
    about 10 s on the H200 machine); a standby pays them while the current worker probes. On a GPU a
    second standby is started once the first is ready (tick, while a probe runs), and a ready one taken is
    replaced at once: a fresh check takes one and the next family's first strategy follows within seconds,
    too soon for a worker spawned then. A standby touches no GPU until its strategy arrives, which happens
    only after the previous worker has exited.
    """

    def __init__(self, ctx: Context, source: ModelSource, io_root: Path, env: dict[str, str] | None = None,
                 standby: bool = True):
        self.ctx, self.source, self.io_root, self.env, self.use_standby = ctx, source, Path(io_root), env, standby
        self.n = 0
        self.standbys: list[WorkerSession] = []
        # On the CPU a standby's imports compete with the probe itself for the cores: one is enough there.
        self.depth = 2 if ctx.device == "cuda" else 1

    def _new(self) -> WorkerSession:
        self.n += 1
        return WorkerSession(self.ctx, None, self.source, self.io_root / f"w{self.n:03d}", env=self.env)

    def prepare(self) -> None:
        """Spawn the first worker as the search starts: its imports are the first probe's longest wait."""
        if not self.standbys:
            self._spawn_standby()

    def _spawn_standby(self) -> None:
        if self.use_standby:
            session = self._new()
            session.spawn()
            self.standbys.append(session)

    def tick(self) -> None:
        """Called between probes and while one runs: the second standby, once every standby is ready (not
        sooner: the first worker's own imports are the first probe's wait)."""
        if 0 < len(self.standbys) < self.depth and all(s.ready() for s in self.standbys):
            self._spawn_standby()

    def __call__(self, strategy: Strategy) -> WorkerSession:
        return self._take(strategy, self.ctx)

    def _take(self, strategy: Strategy, ctx: Context, standby: bool = True) -> WorkerSession:
        session = self.standbys.pop(0) if self.standbys else self._new()
        session.ctx = ctx  # read only when the plan is written (assign): the standby may take another
        session.while_waiting = self.tick
        if session.proc is None:
            session.spawn()
        session.assign(strategy)
        if not standby:
            self.close()  # nothing follows: the standbys left would only cost their imports
        elif not self.standbys or (session.ready() and len(self.standbys) < self.depth):
            # A ready worker taken is replaced at once: a fresh check and the next family's first strategy
            # take two standbys within seconds, and one spawned at the next tick was still importing.
            self._spawn_standby()
        return session

    def fresh(self, strategy: Strategy, standby: bool = False) -> WorkerSession:
        """A worker for the search's fresh-worker check of its winner (autofit.search.planner): at least
        FRESH_MEASURE_STEPS measured steps, since one measured step read the peak below HF Trainer's
        (results/fresh-check-h200-glm4-lora-T2048-24GiB). The check ends a family's search, so standbys
        follow it only when the caller says another family does (an unused one costs its imports)."""
        return self._take(strategy, replace(self.ctx, measure_steps=max(FRESH_MEASURE_STEPS, self.ctx.measure_steps)),
                          standby)

    def close(self) -> None:
        for session in self.standbys:
            session.kill()
        self.standbys = []


def escalate(session: WorkerSession, shapes: Iterable[Shape]) -> Iterator[ProbeResult]:
    """Probe shapes in order until the first one that does not succeed (the wall)."""
    for shape in shapes:
        result = session.probe(shape)
        yield result
        if not result.ok:
            return
