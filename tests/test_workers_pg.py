"""Several search workers sharing one Optuna study in a real PostgreSQL server.

The fixture starts a throwaway PostgreSQL cluster (Debian's package) and stops it afterwards. Without
PostgreSQL these tests skip, unless AUTOFIT_REQUIRE_PG=1 (set by .ci/run): then they fail.

- Two workers on a FAKE probe (deterministic results) name the same winner as one worker does.
- Two real `autofit search` workers (tiny model, CPU) never run a probe twice and agree.
- A worker SIGKILLed mid-probe: after the heartbeat grace period another worker runs that probe
  again; nothing it finished is lost or re-run.
"""

from __future__ import annotations

import csv
import glob
import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.procs import alive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30
LORA = "lora-r8/bf16-pure"
NOCKPT = "lora-r4/fp32/nockpt/z0"


# -- the server ------------------------------------------------------------------------------------
def _unavailable(why: str):
    if os.environ.get("AUTOFIT_REQUIRE_PG") == "1":
        pytest.fail(f"{why}; AUTOFIT_REQUIRE_PG=1 says these tests must run here")
    pytest.skip(why)


@pytest.fixture(scope="module")
def pg_server():
    """postgresql://postgres@127.0.0.1:PORT of a fresh cluster in a temporary directory."""
    from autofit.probe.launcher import free_port

    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not initdbs and not shutil.which("initdb"):
        _unavailable("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    bindir = Path(initdbs[-1] if initdbs else shutil.which("initdb")).parent
    # The server refuses to run as root; tests run as root here and in CI.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="autofit-pg-"))
    if as_pg:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = tmp / "data", free_port()

    def pg(*argv: str) -> None:
        subprocess.run(as_pg + [str(bindir / argv[0]), *argv[1:]], cwd=tmp, check=True, capture_output=True,
                       text=True, timeout=120)

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        pg("pg_ctl", "-D", str(data), "-l", str(tmp / "server.log"), "-w", "-t", "60", "-o",
           f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start")
    except subprocess.CalledProcessError as exc:
        log = (tmp / "server.log").read_text() if (tmp / "server.log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}{log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], cwd=tmp,
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server, request):
    """A fresh database per test."""
    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name).lower()[:50]
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{pg_server}/{name}"


# -- reading the shared study ------------------------------------------------------------------------
def _trials(url: str):
    import optuna

    from autofit.search.study import with_driver

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = with_driver(url)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url).trials


def _results_per_key(trials) -> Counter:
    return Counter(t.user_attrs["probe_key"] for t in trials if "status" in t.user_attrs and "probe_key" in t.user_attrs)


def _csv_keys(run: Path) -> set[str]:
    with open(run / "probes.csv") as f:
        return {f"{r['strategy']}|{r['micro_batch']}|{r['max_token']}|{r['phase']}|{r['repeat']}" for r in csv.DictReader(f)}


def _winner(run: Path) -> tuple[str, int]:
    best = yaml.safe_load((run / "best.yaml").read_text())
    return best["config"]["strategy"], best["config"]["micro_batch"]


# -- two workers on a FAKE probe: the same winner as one worker ----------------------------------------
def _fake_request(run_dir: Path, **kw):
    from autofit.models import resolve_model
    from autofit.search.driver import SearchRequest
    from autofit.search.planner import Limits
    from autofit.search.space import parse_space
    from autofit.spec import Context

    space = parse_space(dict(method="lora", lora={"r": 8}, precision=["bf16-pure"], grad_ckpt=[False, True],
                             zero=[{"stage": 0}], micro_batch=[1, 2, 4, 8, 16, 32, 64], max_token=[512, 1024, 2048]),
                        "test-space")
    # device="cpu": no analytic estimate, so the plan starts from the frugal strategy and its jump leaves
    # cells to explore, which the two workers share.
    return SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=64, device="cpu"),
                         source=resolve_model("THUDM/glm-4-9b-chat"),
                         space=space, max_token=1024, limits=Limits(80 * GiB, 0.08), run_dir=run_dir, explore=2, **kw)


def _fake_hw():
    from tests.fakes import FakeHardware

    # ckpt's throughput peaks between the micro-batches its escalation measured before jumping to
    # 16: the cells it jumped over are explored, so the workers share the exploration too.
    ck = f"{LORA}/ckpt/z0"
    return FakeHardware(capacity=80.0, fixed={f"{LORA}/nockpt/z0": 20.0, ck: 19.0},
                        per_token={f"{LORA}/nockpt/z0": 9.0 / 1024, ck: 2.9 / 1024},
                        speed={f"{LORA}/nockpt/z0": 10000.0, ck: 7600.0},
                        tokens_at={(ck, 1): 6200.0, (ck, 2): 6000.0, (ck, 4): 6600.0, (ck, 8): 6400.0, (ck, 16): 5800.0})


def _fake_worker(url: str, run_dir: str, barrier, out) -> None:
    """One worker process: a fake probe that takes a while, so the two workers overlap."""
    from autofit.search.driver import run_search
    from autofit.search.progress import Progress
    from tests.fakes import FakeSession

    class Slow(FakeSession):
        def probe(self, shape):
            time.sleep(0.4)
            return super().probe(shape)

    hw = _fake_hw()
    barrier.wait(timeout=120)
    res = run_search(_fake_request(Path(run_dir), storage=url, heartbeat_s=1), factory=lambda s: Slow(hw, s),
                     progress=Progress(quiet=True))
    out.put((run_dir, res.best["config"], res.best["measured"]["tokens_per_s"], res.probes_run))


def test_two_fake_workers_name_the_same_winner_as_one(tmp_path, pg_url):
    from autofit.search.driver import run_search
    from autofit.search.progress import Progress
    from tests.fakes import FakeSession

    hw = _fake_hw()
    alone = run_search(_fake_request(tmp_path / "alone"), factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fake_worker, args=(pg_url, str(tmp_path / f"w{i}"), barrier, out)) for i in range(2)]
    for p in procs:
        p.start()
    got, deadline = [], time.time() + 300
    while len(got) < len(procs):
        assert time.time() < deadline, "the workers did not finish"
        try:
            got.append(out.get(timeout=1))
        except queue.Empty:
            assert all(p.exitcode in (None, 0) for p in procs), "a worker failed (its traceback is above)"
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    # Every worker names the same winner. It is alone's, or a faster cell: while one worker's probe is
    # in flight the other escalates past it step by step, so a shared study can only know more cells
    # (this fake's throughput dips at mb=8 after mb=4, which alone's two exploration probes can miss).
    assert len({json.dumps(config, sort_keys=True) for _, config, _, _ in got}) == 1, got
    assert len({tps for _, _, tps, _ in got}) == 1
    assert got[0][2] >= alone.best["measured"]["tokens_per_s"]
    assert all(n >= 1 for *_, n in got)  # both did some of the work
    trials = _trials(pg_url)
    per_key = _results_per_key(trials)
    assert any(k.endswith("|explore|0") for k in per_key)
    assert per_key and max(per_key.values()) == 1  # no probe ran twice
    assert sum(n for *_, n in got) == len(per_key)
    for run_dir, *_ in got:
        assert _csv_keys(Path(run_dir)) == set(per_key)  # each run dir holds every finished probe
    assert not [t for t in trials if t.state.name == "RUNNING"]


# -- real workers: tiny model on the CPU ---------------------------------------------------------------
def _search(run: Path, url: str, *extra: str, **env: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "autofit", "search", "--model", "autofit/tiny-qwen2", "--device", "cpu",
            "--max-token", "64", "--space", "cpu-tiny", "--global-batch", "2", "--budget", "5m",
            "--storage", url, "--heartbeat", "1", "--run-dir", str(run), *extra]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), AUTOFIT_FORCE_NO_GPU="1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(argv, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return out + err


def test_two_cpu_workers_share_one_study(tmp_path, pg_url):
    runs = [tmp_path / "w0", tmp_path / "w1"]
    procs = [_search(run, pg_url) for run in runs]
    logs = [_finish(p) for p in procs]
    trials = _trials(pg_url)
    per_key = _results_per_key(trials)
    assert per_key and max(per_key.values()) == 1, per_key  # no probe ran twice
    assert _winner(runs[0]) == _winner(runs[1])
    for run in runs:
        assert _csv_keys(run) == set(per_key)  # every finished probe is in each run dir
    assert not [t for t in trials if t.state.name == "RUNNING"]
    ran = [int(re.search(r"(\d+) probe\(s\) run", log).group(1)) for log in logs]
    assert sum(ran) == len(per_key)  # each finished probe was run by exactly one of them


def test_a_killed_worker_s_probe_runs_again_elsewhere(tmp_path, pg_url):
    a, b = tmp_path / "a", tmp_path / "b"
    # Worker A finishes the checkpointed probes, then hangs in its first nockpt probe: SIGKILL it there.
    proc = _search(a, pg_url, AUTOFIT_TEST_FAULT="hang@probe", AUTOFIT_TEST_FAULT_STRATEGY="nockpt")
    deadline, hung = time.time() + 300, None
    while hung is None:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
        try:
            trials = _trials(pg_url)
        except Exception:  # the study is not created yet
            continue
        hung = next((t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("probe_key", "").startswith(NOCKPT)), None)
    finished_by_a = {t.user_attrs["probe_key"]: t.number for t in trials if "status" in t.user_attrs}
    assert finished_by_a
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # A's probe workers went with it, the hung one too (each wrote its pid when ready).
    pids = [json.loads(p.read_text())["pid"] for p in a.glob("probe_io/*/ready.json") if p.stat().st_size]
    deadline = time.time() + 15
    while [pid for pid in pids if alive(pid)] and time.time() < deadline:
        time.sleep(0.2)
    assert pids and not [pid for pid in pids if alive(pid)]

    # Worker B, started after the kill: reuses what A finished and, once A's heartbeat is stale,
    # runs A's in-flight probe itself.
    _finish(_search(b, pg_url))
    trials = _trials(pg_url)
    per_key = _results_per_key(trials)
    assert max(per_key.values()) == 1  # nothing ran twice
    dead = next(t for t in trials if t.number == hung.number)
    assert dead.state.name == "FAIL" and "status" not in dead.user_attrs  # failed by the heartbeat, no result
    assert hung.user_attrs["probe_key"] in per_key  # ... and run again by B
    for key, number in finished_by_a.items():  # nothing A finished was lost or re-run
        assert [t.number for t in trials if t.user_attrs.get("probe_key") == key and "status" in t.user_attrs] == [number]
    assert _csv_keys(b) == set(per_key)

    # A restarted in its own run dir runs nothing new and names the same winner.
    log = _finish(_search(a, pg_url, "--resume"))
    assert "0 probe(s) run" in log
    assert _winner(a) == _winner(b)
    assert _results_per_key(_trials(pg_url)) == per_key


def test_missing_postgres_driver_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from autofit.cli import cli

    for driver in ("psycopg", "psycopg2"):  # import -> ImportError, as if not installed
        monkeypatch.setitem(sys.modules, driver, None)
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    res = CliRunner().invoke(cli, ["search", "--model", "autofit/tiny-qwen2", "--device", "cpu", "--max-token", "64",
                                   "--space", "cpu-tiny", "--run-dir", str(tmp_path / "r"),
                                   "--storage", "postgresql://u:secret@127.0.0.1:1/db"])
    assert res.exit_code == 2
    assert "cannot open Optuna storage" in res.stderr and "autofit[postgres]" in res.stderr
    assert "secret" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
