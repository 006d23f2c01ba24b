"""Unwritable outputs found before work starts; a full disk mid-search in one line; no debris after a
failed start. Searches here run against the FAKE probe of tests/fakes.py (no training)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofit.cli import cli
from autofit.errors import RunDirError
from tests.test_cli_errors import SEARCH, _run_dir
from tests.test_search_logic import _hw, _run


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): creating or writing a file under `folder` fails as on a read-only mount
    (chmod would not do: the tests may run as root, whom permission bits do not stop)."""
    real_open = os.open
    folders: list[str] = []

    def guarded(path, flags, *a, **kw):
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
        if writes and any(os.path.abspath(path).startswith(f + os.sep) for f in folders):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", guarded)
    return lambda folder: folders.append(os.path.abspath(folder))


def _one_line(result, fragment: str) -> str:
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(err.splitlines()) == 1 and fragment in err, err
    return err


def test_resume_on_a_read_only_run_dir_is_one_line(tmp_path, monkeypatch, read_only):
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    run = _run_dir(tmp_path)
    read_only(run)
    _one_line(CliRunner().invoke(cli, [*SEARCH, "--run-dir", run, "--resume"]), "Read-only file system")


def test_report_checks_its_folder_before_drawing(tmp_path, monkeypatch, read_only):
    import autofit.report as report

    _run(tmp_path, _hw())
    monkeypatch.setattr(report, "render_figures", lambda run: pytest.fail("drew figures it could not write"))
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    _one_line(CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(out)]), f"cannot write in {out}")


def test_verify_checks_verify_json_before_training(tmp_path, monkeypatch, read_only):
    import autofit.verify as verify

    _run(tmp_path, _hw())
    monkeypatch.setattr(verify, "verify_run", lambda *a: pytest.fail("trained before knowing it could write verify.json"))
    read_only(tmp_path / "run")
    _one_line(CliRunner().invoke(cli, ["verify", str(tmp_path / "run")]), "cannot write in")


def test_a_failed_start_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for run in (fresh, existing):
        _one_line(CliRunner().invoke(cli, [*SEARCH, "--run-dir", str(run), "--storage", "bogus://x"]), "cannot open Optuna")
    assert not fresh.exists() and list(existing.iterdir()) == []


def test_a_start_that_fails_after_making_the_study_removes_it(tmp_path, monkeypatch):
    from autofit.search.driver import _Search

    def corrupted(self):
        raise RunDirError("probes.csv: line 2 is corrupted")

    monkeypatch.setattr(_Search, "_load_previous", corrupted)
    with pytest.raises(RunDirError):
        _run(tmp_path, _hw())
    assert not (tmp_path / "run").exists()


def _study_full_at(monkeypatch, n: int) -> None:
    """The study's n-th record fails as SQLite does on a full disk."""
    import optuna

    from autofit.search import study as studymod

    real, calls = studymod.record, []

    def record(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                from OSError("(sqlite3.OperationalError) database or disk is full")
        return real(*a, **kw)

    monkeypatch.setattr(studymod, "record", record)


def _disk_full_at(monkeypatch, n: int) -> None:
    """The n-th probes.csv append finds the disk full."""
    import autofit.rundir.records as results

    real, calls = results.append_text, []

    def append_text(path, text):
        calls.append(1)
        if len(calls) == n:
            real_write = os.write
            os.write = lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            try:
                return real(path, text)
            finally:
                os.write = real_write
        return real(path, text)

    monkeypatch.setattr(results, "append_text", append_text)


@pytest.mark.parametrize("fault,fragment", [(_study_full_at, "the Optuna storage failed: (sqlite3.OperationalError) "
                                                             "database or disk is full"),
                                            (_disk_full_at, "probes.csv: No space left on device")])
def test_a_full_disk_mid_search_is_one_line_and_resumable(tmp_path, monkeypatch, fault, fragment):
    fault(monkeypatch, 4)
    with pytest.raises(RunDirError, match="make room and run the same command with --resume") as info:
        _run(tmp_path, _hw())
    assert fragment in str(info.value) and len(str(info.value).splitlines()) == 1
    run = tmp_path / "run"
    doc = json.loads((run / "run.json").read_text())
    assert doc["status"] == "failed" and fragment in doc["error"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
    monkeypatch.undo()
    rows = (run / "probes.csv").read_text().count("\n") - 1
    assert f"{rows} finished probe(s) are saved" in str(info.value)
    hw = _hw()
    res = _run(tmp_path, hw, resume=True)
    assert res.probes_reused == rows and res.best is not None


def test_run_json_records_the_command_without_its_password(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["autofit", "search", "--storage", "postgresql://me:hunter2@db/autofit"])
    _run(tmp_path, _hw())
    text = (tmp_path / "run" / "run.json").read_text()
    assert "hunter2" not in text and "postgresql://me:***@db/autofit" in text
