"""Outputs checked before work starts: a read-only folder, a file in the way or a full disk is found
in a second, not after minutes of training."""

from __future__ import annotations

import os
from pathlib import Path

from autofit.errors import RunDirError

_TRIAL_BYTES = 4096  # one page: a full disk refuses it even when creating an empty file still works


def check_writable(path: Path, create_parent: bool = False) -> None:
    """Raise RunDirError (one line) unless a file can be written at `path`; leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"cannot write {path}: it is a directory")
    check_writable_dir(path.parent, create=create_parent)


def check_writable_dir(folder: Path, create: bool = False) -> None:
    """Raise RunDirError (one line) unless files can be written in `folder` (made first with `create`)."""
    folder = Path(folder)
    for up in (folder, *folder.parents):
        if up.exists():
            if not up.is_dir():
                raise RunDirError(f"cannot write in {folder}: {up} is a file")
            break
    if not folder.exists():
        if not create:
            raise RunDirError(f"cannot write in {folder}: no such directory")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create {folder}: {exc.strerror}") from None
    trial = folder / f".autofit-write-check-{os.getpid()}"
    try:
        fd = os.open(trial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * _TRIAL_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RunDirError(f"cannot write in {folder}: {exc.strerror}") from None
    finally:
        remove_quietly(trial)


def write_text(path: Path, text: str) -> None:
    """Write a whole file through a temp file and a rename; one line (RunDirError) when it cannot be."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise RunDirError(f"cannot write {path}: {exc.strerror}") from None


def remove_quietly(path: Path) -> None:
    """Remove a temp file if it is there; one that cannot be removed is no reason for a second error."""
    try:
        Path(path).unlink()
    except OSError:
        pass
