"""probes.csv as a record that cannot tear: rows written whole, every field read with its type, a torn
last row repaired from the study on --resume (search against the FAKE probe of tests/fakes.py)."""

from __future__ import annotations

import csv
import errno
import os
import shutil

import pytest

from autofit.errors import Interrupted, RunDirError
from autofit.models import resolve_model
from autofit.rundir.records import PROBE_COLUMNS, append_probe, read_probe_log, read_probes
from autofit.search.driver import SearchRequest, run_search
from autofit.search.planner import Limits
from autofit.search.progress import Progress
from autofit.spec import Context, Method, ProbeResult, Status, Strategy
from tests.fakes import FakeSession
from tests.test_search_logic import _hw, _space

S = Strategy(method=Method(kind="lora", lora_r=8), precision="bf16-pure")
OK = ProbeResult(strategy=S.key(), micro_batch=2, max_token=64, status=Status.OK, tokens_per_s=12.5,
                 step_s=1.0, host_peak=460652544, error="a, \"quoted\"\nerror")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_row_is_read_back_with_every_field(tmp_path):
    p = tmp_path / "probes.csv"
    append_probe(p, OK, S, trial=3, fits=True, finished_at=1.5, phase="escalate", repeat=0, peak=460652544)
    append_probe(p, OK, S, trial=4)
    rows = read_probes(p)
    assert [r["trial"] for r in rows] == ["3", "4"]
    assert rows[0]["host_peak"] == "460652544" and rows[0]["error"] == OK.error


@pytest.mark.parametrize("column,value", [("max_token", "64.5"), ("host_peak", "4606x"), ("status", "maybe"),
                                          ("fits", "yes"), ("tokens_per_s", "nan"), ("trial", "-1")])
def test_a_malformed_field_is_refused_naming_file_and_line(tmp_path, column, value):
    p = tmp_path / "probes.csv"
    for trial in (1, 2):
        append_probe(p, OK, S, trial=trial)
    rows = _rows(p)
    rows[1][column] = value
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROBE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    # The error field holds a newline: the second record starts on line 4.
    with pytest.raises(RunDirError, match=rf"probes.csv: line 4 is corrupted \({column}="):
        read_probes(p)


def test_a_row_missing_fields_is_refused(tmp_path):
    p = tmp_path / "probes.csv"
    append_probe(p, OK, S, trial=1)
    text = p.read_text()
    p.write_text(text + text.splitlines(keepends=True)[-1].split(",", 3)[0] + "\r\n")
    with pytest.raises(RunDirError, match=r"line \d+ is corrupted \(1 field\(s\), expected"):
        read_probes(p)


def test_a_cut_last_row_is_set_apart_as_torn(tmp_path):
    p = tmp_path / "probes.csv"
    append_probe(p, OK, S, trial=1)
    append_probe(p, OK, S, trial=2)
    p.write_bytes(p.read_bytes()[:-30])
    log = read_probe_log(p)
    assert [r["trial"] for r in log.rows] == ["1"] and log.torn_line == 4
    with pytest.raises(RunDirError, match="line 4 was cut short"):
        read_probes(p)


def test_a_failed_append_leaves_no_half_row(tmp_path, monkeypatch):
    p = tmp_path / "probes.csv"
    append_probe(p, OK, S, trial=1)
    before = p.read_bytes()
    real_write = os.write

    def short_then_full(fd, data):  # a disk that fills up mid-row
        if len(data) > 20:
            return real_write(fd, data[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(RunDirError, match="No space left on device"):
        append_probe(p, OK, S, trial=2)
    monkeypatch.undo()
    assert p.read_bytes() == before


def _search(run_dir, hw, resume=False):
    """A small FAKE search (one strategy, four micro-batches): about 0.2 s to resume."""
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=64), source=_GLM, space=_SMALL,
                        max_token=1024, limits=Limits(80 * 2**30, 0.08), run_dir=run_dir, resume=resume, explore=0)
    return run_search(req, factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))


_GLM = resolve_model("THUDM/glm-4-9b-chat")
_SMALL = _space(grad_ckpt=[False], micro_batch=[1, 2, 4, 8], max_token=[1024])


def _measured(path):
    return [{k: v for k, v in r.items() if k != "finished_at"} for r in _rows(path)]


@pytest.mark.slow
def test_resume_repairs_a_last_row_cut_at_every_byte(tmp_path):
    """The row is fsync'd before the study hears of it, so the study holds every whole probe: a probes.csv
    whose last row was cut anywhere resumes to the same rows, re-running nothing."""
    done = tmp_path / "done"
    first = _search(done, _hw())
    data = (done / "probes.csv").read_bytes()
    last = data.rstrip(b"\r\n").rfind(b"\n") + 1
    want = _measured(done / "probes.csv")
    case = tmp_path / "case"
    for cut in range(last, len(data)):
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(done, case)
        (case / "probes.csv").write_bytes(data[:cut])
        hw = _hw()
        res = _search(case, hw, resume=True)
        assert _measured(case / "probes.csv") == want, cut
        assert hw.calls == [] and res.best["config"] == first.best["config"], cut


def test_a_torn_row_the_study_never_heard_of_runs_again(tmp_path):
    """Killed mid-write: half a row, and a study that never recorded it. The half row goes, the probe
    runs again, and the file holds whole rows only."""
    hw = _hw(interrupt_at=2)
    with pytest.raises(Interrupted):
        _search(tmp_path, hw)
    p = tmp_path / "probes.csv"
    rows = _rows(p)
    with open(p, "ab") as f:
        f.write(b"99,escalate,0,lora-r8/bf16-pure/nockpt/z0,4,1024,ok,16,0.2")
    hw2 = _hw()
    _search(tmp_path, hw2, resume=True)
    after = _rows(p)
    assert after[:2] == rows and len(after) == 2 + len(hw2.calls)
    assert ("lora-r8/bf16-pure/nockpt/z0", 4, 1024) in hw2.calls


def test_a_row_that_disagrees_with_the_study_is_refused(tmp_path):
    _search(tmp_path, _hw())
    p = tmp_path / "probes.csv"
    rows = _rows(p)
    rows[0]["host_peak"] = str(int(rows[0]["host_peak"]) // 100)  # a cut figure that still parses
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROBE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(RunDirError, match=r"probes.csv: line 2 disagrees with the study .*host_peak"):
        _search(tmp_path, _hw(), resume=True)


def test_a_study_written_before_probe_keys_gains_no_duplicate_trials(tmp_path, monkeypatch):
    import optuna

    import autofit.search.ledger as ledger
    import autofit.search.workers as workers

    with monkeypatch.context() as m:  # the study of an older autofit: trials carry no probe key
        m.setattr(workers, "KEY_ATTR", "not_a_probe_key")
        m.setattr(ledger, "KEY_ATTR", "not_a_probe_key")
        _search(tmp_path, _hw())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    name = optuna.get_all_study_summaries(storage)[0].study_name
    before = len(optuna.load_study(study_name=name, storage=storage).trials)
    hw = _hw()
    _search(tmp_path, hw, resume=True)
    assert hw.calls == [] and len(optuna.load_study(study_name=name, storage=storage).trials) == before
