"""Live progress on stderr: the probe in flight (shape, phase, seconds), the last result, the best."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from autofit.spec import ProbeResult, Shape, Strategy


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = 0
        self.best: tuple[float, str] | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.t0 = time.time()

    def _emit(self, text: str, end: str = "\n") -> None:
        if self.quiet:
            return
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(prefix + text + end)
        self.stream.flush()

    def log(self, msg: str) -> None:
        self._emit(f"[{time.time() - self.t0:6.0f}s] {msg}")

    def start(self, s: Strategy, shape: Shape, phase: str, worker_phase: Callable[[], dict | None]) -> None:
        self.n += 1
        label = f"probe {self.n:3d} {phase:8s} {s.key()} mb={shape.micro_batch} T={shape.max_token}"
        if not self.tty:
            self._emit(f"[{time.time() - self.t0:6.0f}s] {label} ...")
            return
        self._stop.clear()
        started = time.time()

        def tick() -> None:
            while not self._stop.wait(0.5):
                wp = (worker_phase() or {}).get("phase", "starting")
                self._emit(f"[{time.time() - self.t0:6.0f}s] {label}  {wp} {time.time() - started:5.0f}s", end="")

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def done(self, r: ProbeResult, fits: bool, peak: int | None, cached: bool = False) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join()
            self._ticker = None
        if fits and (self.best is None or r.tokens_per_s > self.best[0]):
            self.best = (r.tokens_per_s, f"{r.strategy} mb={r.micro_batch}")
        peak_s = f"{peak / 2**30:6.2f} GiB" if peak else "     - GiB"
        what = (f"{r.tokens_per_s:9.1f} tok/s" if r.ok else r.status.value.upper()).rjust(15)
        verdict = "fits" if fits else ("over headroom" if r.ok else (r.error[:80] or r.status.value))
        best = f"  best: {self.best[0]:.1f} tok/s ({self.best[1]})" if self.best else ""
        tag = " (from probes.csv)" if cached else ""
        self._emit(f"[{time.time() - self.t0:6.0f}s]   {r.strategy} mb={r.micro_batch} T={r.max_token}: {what} {peak_s}  {verdict}{tag}{best}")
