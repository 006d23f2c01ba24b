"""The file protocol between runner (parent) and worker ranks; stdlib only, used by both sides.

io_dir/plan.json          context, strategy, model source       (parent writes once)
io_dir/req-K.json         {"shape": {...}} or {"stop": true}     (parent, one per probe)
io_dir/res-K.rR.json      rank R's answer to request K            (rank 0 always; others on failure)
io_dir/phase.json         what the worker is doing now            (rank 0; for progress display)
io_dir/ready.json         imports done, waiting for a plan        (rank 0; a standby that is ready)
io_dir/fatal.rR.json      setup failed on rank R (build OOM, bad config...)
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def plan_path(io_dir: Path) -> Path:
    return io_dir / "plan.json"


def ready_path(io_dir: Path) -> Path:
    return io_dir / "ready.json"


def phase_path(io_dir: Path) -> Path:
    return io_dir / "phase.json"


def req_path(io_dir: Path, k: int) -> Path:
    return io_dir / f"req-{k}.json"


def res_path(io_dir: Path, k: int, rank: int) -> Path:
    return io_dir / f"res-{k}.r{rank}.json"


def fatal_path(io_dir: Path, rank: int) -> Path:
    return io_dir / f"fatal.r{rank}.json"


def res_paths(io_dir: Path, k: int) -> list[Path]:
    """Every rank's answer to request k written so far, rank 0 first."""
    return sorted(io_dir.glob(f"res-{k}.r*.json"))


def fatal_paths(io_dir: Path) -> list[Path]:
    return sorted(io_dir.glob("fatal.r*.json"))
