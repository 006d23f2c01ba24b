"""Several hosts for real (issue 21): `autofit probe --hostfile` on two "hosts" of this machine, reached
over ssh by pdsh and DeepSpeed's launcher, as on a cluster. `.ci/loopback-ssh` makes them: sshd on
127.0.0.1 for root with a throwaway key, and the ssh aliases autofit-a and autofit-b. Where they do not
answer these tests skip, unless AUTOFIT_REQUIRE_MULTIHOST=1 (set by .ci/run): then they fail."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autofit.probe.launcher import stop_ranks
from autofit.spec import Context

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ("autofit-a", "autofit-b")


@pytest.fixture(scope="module")
def loopback() -> None:
    why = None
    if not shutil.which("pdsh"):
        why = "pdsh is not installed"
    else:
        try:
            r = subprocess.run(["pdsh", "-S", "-R", "ssh", "-t", "5", "-w", ",".join(HOSTS), "true"], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
            if r.returncode:
                why = f"ssh to {' and '.join(HOSTS)} fails ({r.stderr.strip().splitlines()[-1:]}); run .ci/loopback-ssh"
        except subprocess.TimeoutExpired:
            why = f"ssh to {' and '.join(HOSTS)} does not answer within 60 s; run .ci/loopback-ssh"
    if why:
        if os.environ.get("AUTOFIT_REQUIRE_MULTIHOST") == "1":
            pytest.fail(f"{why}; AUTOFIT_REQUIRE_MULTIHOST=1 says these tests must run here")
        pytest.skip(why)


def _probe(tmp_path: Path, model: Path, hosts: str, **env: str) -> subprocess.CompletedProcess:
    """`autofit probe` of the tiny model across the hostfile's hosts, from tmp_path (every host's
    working directory: DeepSpeed's runner cds there on each)."""
    (tmp_path / "hostfile").write_text(hosts)
    argv = [sys.executable, "-m", "autofit", "probe", "--model", str(model), "--device", "cpu",
            "--hostfile", "hostfile", "--master-addr", "127.0.0.1", "--max-token", "32", "--micro-batch", "1",
            "--global-batch", "2", "--warmup-steps", "1", "--measure-steps", "1", "--precision", "fp32",
            "--timeout", "3m", "--json", "--out", "probes.csv"]
    # One thread per rank: both "hosts" share this machine's cores.
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(argv, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=480)


def _left_behind(tmp_path: Path) -> list[str]:
    """Processes of this test's probe still running on any "host" (they all share this machine)."""
    r = subprocess.run(["pgrep", "-af", f"autofit[.]probe[.]worker .*{tmp_path}/"], capture_output=True, text=True)
    return r.stdout.splitlines()


def _rows(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "probes.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_probe_runs_one_rank_on_each_of_two_hosts_through_pdsh(loopback, tmp_path, tiny_model_dir):
    r = _probe(tmp_path, tiny_model_dir, "autofit-a slots=1\nautofit-b slots=1\n")
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["num_gpus"] == 2 and row["tokens_per_s"] > 0, row
    assert row["grad_accum"] == 1  # global batch 2 = micro-batch 1 x 2 ranks: both hosts trained
    assert [(x["status"], x["num_gpus"]) for x in _rows(tmp_path)] == [("ok", "2")]
    assert not list(tmp_path.glob(".autofit-probe-*")) and not _left_behind(tmp_path)


def test_a_killed_remote_rank_is_one_line_naming_its_host(loopback, tmp_path, tiny_model_dir):
    t = time.time()
    r = _probe(tmp_path, tiny_model_dir, "autofit-a slots=1\nautofit-b slots=1\n",
               AUTOFIT_TEST_FAULT="sigkill@probe", AUTOFIT_TEST_FAULT_RANK="1")
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == "autofit: error: host autofit-b: a rank was killed by SIGKILL", r.stderr[-3000:]
    assert time.time() - t < 150  # classified when it happened, not at the 3-minute probe timeout
    assert [(x["status"], x["error"]) for x in _rows(tmp_path)] == [("crash", "host autofit-b: a rank was killed by SIGKILL")]
    assert not _left_behind(tmp_path)


def test_an_unreachable_host_is_one_line_naming_it(loopback, tmp_path, tiny_model_dir):
    r = _probe(tmp_path, tiny_model_dir, "autofit-a slots=1\nnowhere.invalid slots=1\n")  # pdsh's ssh fails
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        "autofit: error: host nowhere.invalid is unreachable over ssh: ssh: Could not resolve hostname"), r.stderr
    assert not _left_behind(tmp_path)


def test_a_search_records_an_unreachable_host_as_the_probe_s_error(loopback, tmp_path, tiny_model_dir):
    """First in the hostfile: DeepSpeed's own ssh check fails, before pdsh starts anything."""
    (tmp_path / "hostfile").write_text("nowhere.invalid slots=1\nautofit-a slots=1\n")
    r = subprocess.run([sys.executable, "-m", "autofit", "search", "--model", str(tiny_model_dir), "--device", "cpu",
                        "--max-token", "64", "--space", "cpu-tiny", "--hostfile", "hostfile", "--master-addr", "127.0.0.1",
                        "--global-batch", "4", "--budget", "3m", "--run-dir", "run"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=480, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]  # "no configuration fits" is an answer
    why = "host nowhere.invalid is unreachable over ssh (`ssh nowhere.invalid hostname` failed)"
    with open(tmp_path / "run" / "probes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(x["status"], x["error"]) for x in rows} == {("error", why)}
    assert why in r.stdout and not _left_behind(tmp_path)


def test_stopping_a_probe_kills_its_ranks_on_every_host_and_no_other_probe_s(loopback, tmp_path):
    """DeepSpeed's runner, on SIGTERM, pkills every launcher of this python on every host: the standby
    worker's too. autofit stops only the processes whose command line ends with the probe's io dir."""
    code = "import time; time.sleep(120)"
    procs = {name: subprocess.Popen([sys.executable, "-c", code, "autofit.probe.worker", "--local_rank=0",
                                     str(tmp_path / name)], start_new_session=True)
             for name in ("w001", "w0010", "w002")}
    launcher = subprocess.Popen([sys.executable, "-c", code, "--module", "autofit.probe.worker", str(tmp_path / "w001")])
    try:
        stop_ranks(Context(model="m", device="cpu", gpus=(), hostfile="h", hosts=((HOSTS[0], 1), (HOSTS[1], 1))),
                   tmp_path / "w001", launcher, grace_s=20)
        assert launcher.poll() is not None and procs["w001"].wait(timeout=10) == -9
        assert procs["w0010"].poll() is None and procs["w002"].poll() is None
    finally:
        for p in [*procs.values(), launcher]:
            p.kill()
