"""The run directory's tables: probes.csv (appended as the search goes) and boundaries.csv.

Append-only, each row written whole and fsync'd, so an interruption loses nothing already measured
and never leaves half a row; a resume checks every field. boundaries.csv is replaced whole (temp
file, rename). Reading checks every field and names file and line in one RunDirError.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from autofit.errors import RunDirError
from autofit.spec import ProbeResult, Status, Strategy

STRATEGY_COLUMNS = ["method", "lora_r", "precision", "grad_ckpt", "zero_stage", "offload_optimizer", "offload_params"]
PROBE_COLUMNS = (["trial", "phase", "repeat"] + [f.name for f in dataclasses.fields(ProbeResult)] + STRATEGY_COLUMNS
                 + ["peak_gib", "fits", "finished_at"])
BOUNDARY_COLUMNS = ["strategy", "max_token", "largest_fit_micro_batch", "largest_fit_peak_gib",
                    "first_fail_micro_batch", "first_fail_status", "first_fail_peak_gib", "first_fail_source",
                    "budget_gib", "limit_gib"]


def strategy_columns(s: Strategy) -> dict[str, Any]:
    return {"method": s.method.kind, "lora_r": s.method.lora_r if s.method.kind == "lora" else "",
            "precision": s.precision, "grad_ckpt": s.grad_ckpt, "zero_stage": s.zero_stage,
            "offload_optimizer": s.offload_optimizer, "offload_params": s.offload_params}


def probe_row(result: ProbeResult, strategy: Strategy, trial: int | None = None, fits: bool | None = None,
              finished_at: float | None = None, phase: str = "probe", repeat: int = 0,
              peak: int | None = None) -> dict[str, Any]:
    """One probes.csv row (every column, "" for none)."""
    row = {**result.to_dict(), **strategy_columns(strategy), "trial": "" if trial is None else trial,
           "phase": phase, "repeat": repeat, "peak_gib": "" if peak is None else round(peak / 2**30, 3),
           "fits": "" if fits is None else fits, "finished_at": "" if finished_at is None else round(finished_at, 3)}
    return {k: ("" if row.get(k) is None else row[k]) for k in PROBE_COLUMNS}


def _csv_text(rows: Iterable[dict[str, Any]], columns: list[str], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return buf.getvalue()


def append_probe(path: Path, result: ProbeResult, strategy: Strategy, **row: Any) -> None:
    """Append one row whole or not at all: one write, fsync'd; a failed write (disk full) is cut off
    again, so the file never ends in half a row."""
    append_text(path, _csv_text([probe_row(result, strategy, **row)], PROBE_COLUMNS,
                                header=not path.exists() or path.stat().st_size == 0))


def append_text(path: Path, text: str) -> None:
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise RunDirError(f"cannot write {path}: {exc.strerror}; nothing of this row was kept") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProbeLog:
    """probes.csv as read on --resume: its whole rows (with line numbers) and a last row cut short, if any."""

    rows: list[dict[str, Any]]
    lines: list[int]
    torn_line: int | None = None


def _is_int(v: str) -> bool:
    return v.isascii() and v.isdigit()


def _is_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


_BOOL = {"True", "False"}
_STATUSES = {s.value for s in Status}
_REQUIRED = ("strategy", "micro_batch", "max_token", "status")
# Column -> (check, may be empty). Columns a file lacks are not checked (grids and older runs).
_CHECKS: dict[str, tuple[Callable[[str], bool], bool]] = {
    "strategy": (bool, False), "micro_batch": (_is_int, False), "max_token": (_is_int, False),
    "status": (_STATUSES.__contains__, False), "trial": (_is_int, True), "repeat": (_is_int, True),
    "phase": (lambda v: v.isidentifier(), True), "fits": (_BOOL.__contains__, True),
    "grad_ckpt": (_BOOL.__contains__, True), "offload_optimizer": (_BOOL.__contains__, True),
    "offload_params": (_BOOL.__contains__, True), "lora_r": (_is_int, True), "zero_stage": (_is_int, True),
    "peak_gib": (_is_float, True), "finished_at": (_is_float, True),
    **{f.name: (_is_int, True) for f in dataclasses.fields(ProbeResult)
       if f.name in ("grad_accum", "num_gpus", "worker_pid", "memory_cap", "peak_allocated", "peak_reserved",
                     "nvml_peak", "host_peak")},
    **{f.name: (_is_float, True) for f in dataclasses.fields(ProbeResult)
       if f.name.endswith("_s") or f.name == "tokens_per_s"},
}


def _row_problem(row: dict[str, Any], n_fields: int, n_columns: int) -> str | None:
    if n_fields != n_columns:
        return f"{n_fields} field(s), expected {n_columns}"
    for col, (check, may_be_empty) in _CHECKS.items():
        v = row.get(col)
        if v is None or (v == "" and may_be_empty):
            continue
        if not check(v):
            return f"{col}={v!r}"
    return None


def read_probe_log(path: Path) -> ProbeLog:
    """Every field of every row checked for its type; a malformed row is refused in one line naming
    file and line. A last row without its line end was cut short (crash or full disk mid-write): it is
    set apart as torn, for the caller to repair or drop."""
    if not path.exists():
        return ProbeLog([], [])
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: corrupted (not UTF-8 text)") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))
    records: list[tuple[int, list[str]]] = []
    try:
        start = 1
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise RunDirError(f"{path}: line {reader.line_num} is corrupted ({exc})") from None
    torn = None
    if records and not text.endswith("\n"):
        torn = records.pop()[0]
    if not records:
        return ProbeLog([], [], None)  # at most a header cut short: no probe was recorded
    (_, header), body = records[0], records[1:]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise RunDirError(f"{path}: not a probes.csv written by this autofit (missing columns {missing})")
    rows, lines = [], []
    for line, fields in body:
        row = dict(zip(header, fields))
        problem = _row_problem(row, len(fields), len(header))
        if problem:
            raise RunDirError(f"{path}: line {line} is corrupted ({problem}); move the file away or fix that line")
        rows.append(row)
        lines.append(line)
    return ProbeLog(rows, lines, torn)


def read_probes(path: Path) -> list[dict[str, Any]]:
    """probes.csv rows as dicts (strings), every field checked; a torn last row is refused (a search's
    --resume repairs it)."""
    log = read_probe_log(path)
    if log.torn_line is not None:
        raise RunDirError(f"{path}: line {log.torn_line} was cut short (an interrupted write); "
                          "run the search again with --resume to repair it")
    return log.rows


def rewrite_probes(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace probes.csv in one rename (used to repair it on --resume)."""
    write_rows(path, rows, PROBE_COLUMNS)


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
    """Replace a CSV whole (temp file, fsync, rename); on failure the temp file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(_csv_text(rows, columns, header=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {exc.strerror}") from None


def write_boundaries(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace boundaries.csv whole (rows as the search's boundary_rows builds them)."""
    write_rows(path, rows, BOUNDARY_COLUMNS)


def read_boundaries(path: Path) -> list[dict[str, str]]:
    """boundaries.csv rows as dicts (strings), [] when there is none; the fields a reader relies on
    (strategy, max_token and the numeric ones) are checked."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted CSV ({exc})") from None
    for i, r in enumerate(rows, start=2):
        try:
            if not r.get("strategy") or not str(r.get("max_token", "")).isdigit():
                raise ValueError(f"strategy={r.get('strategy')!r}, max_token={r.get('max_token')!r}")
            for key in ("first_fail_micro_batch", "budget_gib", "limit_gib"):
                number(r, key)
        except ValueError as exc:
            raise RunDirError(f"{path}: line {i} is corrupted ({exc})") from None
    return rows


def number(r: dict[str, str], key: str, scale: float = 1.0) -> float | None:
    """A numeric CSV field (None when empty); ValueError names the field."""
    v = r.get(key)
    if v in (None, ""):
        return None
    try:
        return float(v) / scale
    except ValueError:
        raise ValueError(f"{key}={v!r} is not a number") from None
