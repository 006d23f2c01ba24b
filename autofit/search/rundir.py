"""A run directory: its files, its lock, and its identity (so --resume never mixes two searches)."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import autofit
from autofit.errors import RunDirError
from autofit.redact import redact_text
from autofit.results import SCHEMA_VERSION
from autofit.writable import write_text


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def probes(self) -> Path:
        return self.path / "probes.csv"

    @property
    def boundaries(self) -> Path:
        return self.path / "boundaries.csv"

    @property
    def best(self) -> Path:
        return self.path / "best.yaml"

    @property
    def ds_config(self) -> Path:
        return self.path / "ds_config.json"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    @property
    def io(self) -> Path:
        return self.path / "probe_io"


class RunLock:
    """An exclusive flock on RUN_DIR/.lock: two searches never interleave in one run dir."""

    def __init__(self, run: RunDir):
        self.path = run.path / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write in run dir {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock file is removed on exit: a lock taken on a file just removed is no lock.
            if os.fstat(self.fd).st_ino != os.stat(self.path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RunDirError(f"{self.path.parent} is in use by another autofit search (pid {holder}); "
                              "wait for it or choose another --run-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()  # while still held: no debris, and no second holder of a removed file
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def gpu_facts() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver}
    except Exception:
        return {"driver": None}


def write_run_json(run: RunDir, identity: dict[str, Any], extra: dict[str, Any]) -> None:
    """(Re)write run.json; fields written earlier (space, context) are kept unless replaced."""
    try:
        previous = json.loads(run.run_json.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        previous = {}
    doc = {
        **(previous if isinstance(previous, dict) else {}),
        "schema": SCHEMA_VERSION,
        "identity": identity,
        "autofit": autofit.__version__,
        "versions": {p: _version(p) for p in ("torch", "transformers", "peft", "deepspeed", "optuna", "accelerate")},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": [redact_text(a) for a in sys.argv],
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **gpu_facts(),
        **extra,
    }
    write_text(run.run_json, json.dumps(doc, indent=2, default=str))


def check_resume(run: RunDir, identity: dict[str, Any], resume: bool) -> None:
    """Refuse to mix searches: a run dir with probes needs --resume, and --resume needs the same search."""
    has_probes = run.probes.exists() and run.probes.stat().st_size > 0
    if resume and not run.run_json.exists() and not has_probes:
        raise RunDirError(f"--resume: {run.path} holds no search to resume (no run.json); drop --resume to start one")
    if not run.run_json.exists():
        if has_probes:
            raise RunDirError(f"{run.path} has probes.csv but no run.json: not a run dir autofit can resume")
        return
    try:
        doc = json.loads(run.run_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{run.run_json} is corrupted (not JSON); move it away or choose another --run-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {run.run_json}: {exc.strerror}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("identity"), dict) or type(doc.get("schema", 0)) is not int:
        raise RunDirError(f"{run.run_json} is not an autofit run.json (identity or schema missing or of the wrong type)")
    if doc.get("schema", 0) > SCHEMA_VERSION:
        raise RunDirError(f"{run.path} was written by a newer autofit (schema {doc['schema']} > {SCHEMA_VERSION}); upgrade autofit")
    if not has_probes:
        return
    if not resume:
        raise RunDirError(f"{run.path} already holds a search; pass --resume to continue it or choose another --run-dir")
    old = doc["identity"]
    order = ["model", "max_token", "space", "global_batch", "device", "gpus", "gpu_memory", "weights", "headroom"]
    diff = [k for k in sorted(set(old) | set(identity), key=lambda k: (order.index(k) if k in order else 99, k))
            if old.get(k) != identity.get(k)]
    if diff:
        k = diff[0]
        raise RunDirError(f"{run.path} is from another search ({k}: {old.get(k)!r}, now {identity.get(k)!r}); "
                          "use a new --run-dir")
