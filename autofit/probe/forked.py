"""CPU probe workers forked from a template process that imported the stack once, instead of each worker
starting a fresh interpreter that imports torch, transformers and peft (4-5 s of CPU on a 2-core machine).

The template is multiprocessing's forkserver with that stack preloaded: one per process that starts
workers, gone after that process and its workers are. Opt in with AUTOFIT_FORK_WORKERS=1 (the test suite
does: its ~50 CPU workers' imports were a third of its time). CPU only: on a GPU, standbys already hide
the imports, and a process that may have touched CUDA must not be forked. Plain one-process workers only:
torchrun and DeepSpeed's launcher start their ranks themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import subprocess
import sys
import threading

ENV = "AUTOFIT_FORK_WORKERS"


def enabled(environ: dict[str, str]) -> bool:
    return environ.get(ENV) == "1"


class ForkedProcess:
    """The part of subprocess.Popen that WorkerSession uses (pid, poll, wait, returncode), for a forked
    worker. Its exit code has Popen's meaning: negative for the signal that killed it."""

    def __init__(self, process: multiprocessing.Process):
        self._process, self.pid = process, process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self._process.exitcode


def start(argv: list[str], env: dict[str, str], log_path: str) -> ForkedProcess:
    """Fork a worker running autofit.probe.worker.main(argv) with `env` as its whole environment and its
    output appended to log_path."""
    from autofit.probe.worker import STACK

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(STACK))
    # daemon: the parent's exit terminates a worker it left running, instead of waiting for it
    process = ctx.Process(target=_run, args=(argv, env, log_path, os.getpid()), daemon=True)
    process.start()
    return ForkedProcess(process)


def _die_with(pid: int) -> None:
    """Exit when process `pid` does. A forked worker's parent is the template, which lives on while any
    worker does (each holds the template's keep-alive pipe): the runner's death is watched instead."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run(argv: list[str], env: dict[str, str], log_path: str, runner: int) -> None:  # pragma: no cover - the child
    os.setsid()  # a group of its own, as start_new_session gives a spawned worker: the runner's killpg
    _die_with(runner)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(env)
    import torch

    # OpenMP read the template's environment when torch loaded it; the worker's thread count is set here.
    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from autofit.probe import worker

    code = worker.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
