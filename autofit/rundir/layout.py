"""A run directory: its files and readers, its lock, and its identity (so --resume never mixes two searches)."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autofit.errors import RunDirError
from autofit.spec import ProbeResult

if TYPE_CHECKING:
    from autofit.rundir.best import Winner

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunDir:
    """A run directory: where each file lives, and its typed readers (each validates its file and
    names it in a RunDirError). Writers: records (probes, boundaries) and best (best.yaml, run.json)."""

    path: Path

    @classmethod
    def existing(cls, path: str | os.PathLike) -> "RunDir":
        """A run dir to read: it must exist and be a directory."""
        path = Path(path)
        if not path.exists():
            raise RunDirError(f"run dir {path} does not exist")
        if not path.is_dir():
            raise RunDirError(f"run dir {path} is not a directory; give the run directory that holds probes.csv")
        return cls(path)

    # -- files ------------------------------------------------------------------------------------
    @property
    def probes_csv(self) -> Path:
        return self.path / "probes.csv"

    @property
    def boundaries_csv(self) -> Path:
        return self.path / "boundaries.csv"

    @property
    def best_yaml(self) -> Path:
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

    # -- readers ----------------------------------------------------------------------------------
    def probes(self) -> list[dict[str, Any]]:
        """probes.csv rows (strings), every field checked; it must exist."""
        from autofit.rundir.records import read_probes

        if not self.probes_csv.exists():
            raise RunDirError(f"{self.path}: no probes.csv here; is this a run directory written by `autofit search`?")
        return read_probes(self.probes_csv)

    def probe_results(self) -> list[ProbeResult]:
        from autofit.rundir.records import result_from_row

        return [result_from_row(row) for row in self.probes()]

    def boundaries(self) -> list[dict[str, str]]:
        """boundaries.csv rows (strings), [] before the search wrote one."""
        from autofit.rundir.records import read_boundaries

        return read_boundaries(self.boundaries_csv)

    def best(self) -> "Winner":
        """The winner in best.yaml, validated whole (every problem named in one RunDirError)."""
        from autofit.rundir.best import load_winner

        return load_winner(self)

    def best_document(self) -> dict[str, Any]:
        """best.yaml as a mapping, {} when the search named no winner; the values a reader shows are
        type-checked, the rest is as written (older files lack some sections)."""
        from autofit.rundir.best import read_best_document

        return read_best_document(self.best_yaml)

    def run(self) -> dict[str, Any]:
        """run.json as a mapping, {} when there is none; its identity is checked."""
        from autofit.rundir.best import read_run_json

        return read_run_json(self.run_json)

    def write_best(self, doc: dict[str, Any]) -> None:
        from autofit.rundir.best import write_best

        write_best(self, doc)


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


def check_resume(run: RunDir, identity: dict[str, Any], resume: bool) -> None:
    """Refuse to mix searches: a run dir with probes needs --resume, and --resume needs the same search."""
    has_probes = run.probes_csv.exists() and run.probes_csv.stat().st_size > 0
    if resume and not run.run_json.exists() and not has_probes:
        raise RunDirError(f"--resume: {run.path} holds no search to resume (no run.json); drop --resume to start one")
    if not run.run_json.exists():
        if has_probes:
            raise RunDirError(f"{run.path} has probes.csv but no run.json: not a run dir autofit can resume")
        return
    doc = run.run()
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
