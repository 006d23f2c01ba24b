"""Faults during a real search on the CPU (tiny model, real worker processes, real signals).

In each: the search continues or stops cleanly, probes.csv and the Optuna study agree, no finished
probe is lost or re-run, and no worker process outlives the search.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOCKPT = "lora-r4/fp32/nockpt/z0"


def _argv(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autofit", "search", "--model", "autofit/tiny-qwen2", "--device", "cpu",
            "--max-token", "64", "--space", "cpu-tiny", "--global-batch", "2", "--explore", "0",
            "--run-dir", str(run), *extra]


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUTOFIT_FORCE_NO_GPU="1", PYTHONUNBUFFERED="1")
    env.update(kw)
    return env


def _default_sigint() -> None:
    """Ctrl-C reaches the search as it would from a terminal. A suite started in the background by a
    non-interactive shell (`pytest &`) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: the search would rightly ignore the test's SIGINT and the test hang."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _rows(run: Path) -> list[dict]:
    with open(run / "probes.csv") as f:
        return list(csv.DictReader(f))


def _keys(rows):
    return [(r["strategy"], r["micro_batch"], r["max_token"], r["phase"], r["repeat"]) for r in rows]


def _workers_of(run: Path) -> list[psutil.Process]:
    """The search's live workers: by command line (spawned) or by the pid each wrote when ready (forked from
    the template process, whose command line it keeps)."""
    forked = {json.loads(p.read_text())["pid"] for p in run.glob("probe_io/*/ready.json") if p.stat().st_size}
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            spawned = any(str(run) in part for part in cmd) and "autofit.probe.worker" in " ".join(cmd)
            if (spawned or p.pid in forked) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _study_agrees(run: Path) -> None:
    url = f"sqlite:///{run / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    probed = [t for t in study.trials if "status" in t.user_attrs]
    rows = _rows(run)
    assert sorted((t.params["strategy"], t.params["micro_batch"], t.user_attrs["status"]) for t in probed) == \
        sorted((r["strategy"], int(r["micro_batch"]), r["status"]) for r in rows)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


@pytest.mark.parametrize("fault,status,fragment", [
    ("segv", "crash", "SIGSEGV"),
    ("sigkill", "crash", "SIGKILL"),
    ("hang", "timeout", "no result within"),
    ("raise", "error", "injected test failure"),
])
def test_a_failing_worker_does_not_stop_the_search(tmp_path, fault, status, fragment):
    run = tmp_path / "run"
    # Healthy probes of the tiny model at global batch 2 (two micro-steps at most) take under a second
    # (0.3-0.7 s in a full two-worker suite); the limit only has to catch the hang.
    timeout = "6s" if fault == "hang" else "60s"
    proc = subprocess.run(_argv(run, "--probe-timeout", timeout), env=_env(AUTOFIT_TEST_FAULT=f"{fault}@probe",
                          AUTOFIT_TEST_FAULT_STRATEGY="nockpt"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(run)
    bad = [r for r in rows if r["strategy"] == NOCKPT]
    assert len(bad) == 1 and bad[0]["status"] == status and fragment in bad[0]["error"]
    assert (run / "best.yaml").exists(), (proc.stdout[-3000:], [(r["strategy"], r["micro_batch"], r["status"], r["error"]) for r in rows])
    best = (run / "best.yaml").read_text()
    assert "strategy: lora-r4/fp32/ckpt/z0" in best  # the healthy strategy still wins
    _study_agrees(run)
    assert not _workers_of(run)


def _start_and_wait_for_hang(run: Path) -> subprocess.Popen:
    """A search whose nockpt worker hangs mid-probe; returns once that probe is in flight."""
    proc = subprocess.Popen(_argv(run, "--probe-timeout", "10m"), env=_env(AUTOFIT_TEST_FAULT="hang@probe",
                            AUTOFIT_TEST_FAULT_STRATEGY="nockpt"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 240
    while time.time() < deadline:
        phases = [json.loads(p.read_text()) for p in run.glob("probe_io/*/phase.json") if p.stat().st_size]
        plans = {p.parent: json.loads(p.read_text())["strategy"]["grad_ckpt"] for p in run.glob("probe_io/*/plan.json")}
        hung = [p for p in run.glob("probe_io/*/phase.json") if plans.get(p.parent) is False]
        if hung and phases and json.loads(hung[0].read_text()).get("phase") == "probing":
            time.sleep(1.0)
            return proc
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the hanging probe never started")


def test_sigkill_of_the_driver_mid_probe_then_resume_reruns_nothing(tmp_path):
    run = tmp_path / "run"
    proc = _start_and_wait_for_hang(run)
    before = _rows(run)
    assert before and all(r["strategy"] != NOCKPT for r in before)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The worker dies with its parent (PR_SET_PDEATHSIG): nothing is left holding memory or a GPU.
    deadline = time.time() + 15
    while _workers_of(run) and time.time() < deadline:
        time.sleep(0.2)
    assert not _workers_of(run)
    # Resume without the fault: everything finished before the kill is reused, nothing re-run.
    done = subprocess.run(_argv(run, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _rows(run)
    assert after[: len(before)] == before
    assert len(set(_keys(after))) == len(after)  # no probe ran twice
    assert f"{len(before)} reused" in done.stdout
    _study_agrees(run)
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_ctrl_c_stops_cleanly_and_keeps_everything(tmp_path):
    run = tmp_path / "run"
    proc = _start_and_wait_for_hang(run)
    before = _rows(run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith(f"autofit: interrupted: {len(before)} finished probe(s) saved")
    assert "--resume" in err and "Traceback" not in err
    assert _rows(run) == before
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert (run / "boundaries.csv").exists()
    assert not _workers_of(run)
    _study_agrees(run)
