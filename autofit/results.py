"""Run-directory files written as the search goes: probes.csv, boundaries.csv, best.yaml, run.json.

Append-only and flushed per row, so an interruption loses nothing already measured.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

from autofit.errors import RunDirError
from autofit.spec import ProbeResult, Status, Strategy

SCHEMA_VERSION = 1
STRATEGY_COLUMNS = ["method", "lora_r", "precision", "grad_ckpt", "zero_stage", "offload_optimizer", "offload_params"]
PROBE_COLUMNS = (["trial", "phase", "repeat"] + [f.name for f in dataclasses.fields(ProbeResult)] + STRATEGY_COLUMNS
                 + ["peak_gib", "fits", "finished_at"])


def strategy_columns(s: Strategy) -> dict[str, Any]:
    return {"method": s.method.kind, "lora_r": s.method.lora_r if s.method.kind == "lora" else "",
            "precision": s.precision, "grad_ckpt": s.grad_ckpt, "zero_stage": s.zero_stage,
            "offload_optimizer": s.offload_optimizer, "offload_params": s.offload_params}


def append_probe(path: Path, result: ProbeResult, strategy: Strategy, trial: int | None = None,
                 fits: bool | None = None, finished_at: float | None = None, phase: str = "probe",
                 repeat: int = 0, peak: int | None = None) -> None:
    new = not path.exists() or path.stat().st_size == 0
    row = {**result.to_dict(), **strategy_columns(strategy), "trial": "" if trial is None else trial,
           "phase": phase, "repeat": repeat, "peak_gib": "" if peak is None else round(peak / 2**30, 3),
           "fits": "" if fits is None else fits, "finished_at": "" if finished_at is None else round(finished_at, 3)}
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROBE_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in PROBE_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def read_probes(path: Path) -> list[dict[str, Any]]:
    """probes.csv rows as dicts (strings), validated against the schema."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            missing = [c for c in ("strategy", "micro_batch", "max_token", "status") if c not in reader.fieldnames]
            if missing:
                raise RunDirError(f"{path}: not a probes.csv written by this autofit (missing columns {missing})")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted CSV ({exc})") from None
    for i, r in enumerate(rows, start=2):
        if r.get("status") not in {s.value for s in Status} or not str(r.get("micro_batch", "")).isdigit():
            raise RunDirError(f"{path}: line {i} is corrupted (status={r.get('status')!r}, micro_batch={r.get('micro_batch')!r})")
    return rows


def result_from_row(row: dict[str, Any]) -> ProbeResult:
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(ProbeResult):
        v = row.get(f.name, "")
        if v in ("", None):
            continue
        if f.name == "status":
            kw[f.name] = Status(v)
        elif f.name in ("strategy", "error", "device_name", "weights"):
            kw[f.name] = v
        elif f.name in ("micro_batch", "max_token", "grad_accum", "num_gpus", "worker_pid", "memory_cap",
                        "peak_allocated", "peak_reserved", "nvml_peak", "host_peak"):
            kw[f.name] = int(float(v))
        else:
            kw[f.name] = float(v)
    return ProbeResult(**kw)


def write_rows(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    os.replace(tmp, path)
