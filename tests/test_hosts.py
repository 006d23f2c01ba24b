"""Several machines (issue 6): the hostfile, the DeepSpeed launcher command, and a real probe launched
through DeepSpeed's launcher from a one-host hostfile (what can be tested on one machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autofit.errors import UsageError
from autofit.hosts import parse_hostfile
from autofit.models import resolve_model
from autofit.probe.launcher import host_failure, is_peer_lost, rank_pattern, write_rank_env
from autofit.probe.runner import WorkerSession, launcher_command
from autofit.spec import Context, Shape, Status, Strategy, context_from_dict, to_jsonable

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "hostfile"
    p.write_text(text)
    return p


def test_hostfile_parses_deepspeed_format_with_comments(tmp_path):
    p = _write(tmp_path, "# two nodes of 8\nnode-1 slots=8\n\nnode-2.cluster  slots = 8   # second\n")
    assert parse_hostfile(p) == (("node-1", 8), ("node-2.cluster", 8))


@pytest.mark.parametrize("text, fragment", [
    ("node-1\n", "line 1: 'node-1' is not 'HOSTNAME slots=N'"),
    ("node-1 slots=4\nnode-2 gpus=4\n", "line 2"),
    ("node-1 slots=0\n", "slots=0"),
    ("node-1 slots=4\nnode-1 slots=4\n", "listed twice"),
    ("# nothing\n\n", "no 'HOSTNAME slots=N' line"),
])
def test_malformed_hostfile_is_a_usage_error_naming_file_and_line(tmp_path, text, fragment):
    p = _write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        parse_hostfile(p)
    assert str(p) in str(err.value) and fragment in str(err.value)


def test_missing_hostfile_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "autofit", "probe", "--model", "autofit/tiny-qwen2", "--device", "cpu",
                        "--hostfile", str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--hostfile" in r.stderr and "cannot read" in r.stderr


def test_offload_on_cpu_ranks_is_refused_in_one_line(tmp_path):
    p = _write(tmp_path, "localhost slots=2\n")
    r = subprocess.run([sys.executable, "-m", "autofit", "probe", "--model", "autofit/tiny-qwen2", "--device", "cpu",
                        "--hostfile", str(p), "--zero", "2", "--offload-optimizer"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "offload: ZeRO moves state" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_what_cpu_ranks_cannot_run_is_named_once():
    from autofit.capabilities import missing

    ranks = Context(model="m", device="cpu", gpus=(), hostfile="/h", hosts=(("a", 1), ("b", 1)))
    assert missing(Strategy(zero_stage=2), ranks) is None and missing(Strategy(zero_stage=3, precision="bf16"), ranks) is None
    assert missing(Strategy(zero_stage=1, precision="bf16"), Context(model="m", device="cpu", gpus=())) is None
    assert "fp16 under DeepSpeed" in missing(Strategy(precision="fp16"), ranks)  # stage 0 over 2 ranks is DeepSpeed too
    assert missing(Strategy(precision="fp16"), Context(model="m", device="cpu", gpus=())) is None  # one process: torch
    assert "offload" in missing(Strategy(zero_stage=3, offload_params=True), ranks)
    assert missing(Strategy(zero_stage=3, offload_params=True), Context(model="m", device="cuda")) is None


def test_world_is_every_host_s_slots_and_survives_the_json_round_trip():
    ctx = Context(model="m", hostfile="/shared/hosts", hosts=(("a", 8), ("b", 8)), master_addr="10.0.0.1", global_batch=64)
    assert ctx.num_gpus == 16
    assert ctx.grad_accum(2) == 2  # 2 x 16 ranks x 2 = 64
    assert context_from_dict(to_jsonable(ctx)) == ctx


def test_launcher_command_for_one_host_needs_no_ssh_and_for_several_uses_the_hostfile():
    one = launcher_command(Context(model="m", hostfile="/h", hosts=(("gpu-box", 4),)), ["autofit.probe.worker", "io"])
    assert one[1:4] == ["-m", "deepspeed.launcher.runner", "--hostfile"] and "/h" in one
    assert "--no_ssh_check" in one and one[one.index("--master_addr") + 1] == "127.0.0.1"
    assert one[-3:] == ["--module", "autofit.probe.worker", "io"]
    two = launcher_command(Context(model="m", hostfile="/h", hosts=(("a", 8), ("b", 8)), master_addr="10.0.0.1"),
                           ["autofit.probe.worker", "io"])
    assert "--no_ssh_check" not in two and two[two.index("--master_addr") + 1] == "10.0.0.1"
    auto = launcher_command(Context(model="m", hostfile="/h", hosts=(("a", 8), ("b", 8))), ["x"])
    assert "--master_addr" not in auto  # DeepSpeed asks the first host (`hostname -I` over ssh)
    ports = {int(c[c.index("--master_port") + 1]) for c in (one, two, auto)}
    assert len(ports) == 3  # the standby worker and the current one never share a rendezvous port


@pytest.mark.slow
def test_real_probe_through_deepspeed_launcher_from_a_one_host_hostfile(tmp_path, tiny_model_dir):
    p = _write(tmp_path, "localhost slots=1\n")
    ctx = Context(model=str(tiny_model_dir), device="cpu", gpus=(), global_batch=4, warmup_steps=1, measure_steps=1,
                  hostfile=str(p), hosts=parse_hostfile(p))
    with WorkerSession(ctx, Strategy(precision="fp32"), resolve_model(str(tiny_model_dir)), tmp_path / "io") as s:
        r = s.probe(Shape(1, 32))
    assert r.status is Status.OK and r.tokens_per_s > 0 and r.num_gpus == 1
    log = (tmp_path / "io" / "worker.log").read_text()
    assert "deepspeed.launcher.launch" in log or "WORLD INFO DICT" in log, log[-2000:]


# What DeepSpeed's pdsh runner logged in the real runs of tests/test_multihost.py (pdsh prefixes each
# host's lines with its name, shortened at the first dot).
KILLED = ("autofit-b: [2026-11-30 07:43:41,499] [ERROR] [launch.py:259:sigkill_handler] ['/venv/bin/python', '-u', "
          "'-m', 'autofit.probe.worker', '--local_rank=0', '/tmp/io'] exits with return code = -9\n"
          "pdsh@vm: autofit-b: ssh exited with exit code 247\n")
UNRESOLVED = ("nowhere: ssh: Could not resolve hostname nowhere.invalid: Name or service not known\n"
              "pdsh@vm: nowhere: ssh exited with exit code 255\n")
FIRST_UNREACHABLE = ("RuntimeError: Using hostfile at /h but host=nowhere.invalid was not reachable via ssh. If you are "
                     "running with a single node please remove /h or setup passwordless ssh.\n")
AB = (("autofit-a", 1), ("autofit-b", 1))


@pytest.mark.parametrize("log, hosts, status, line", [
    (KILLED, AB, Status.CRASH, "host autofit-b: a rank was killed by SIGKILL"),
    (KILLED.replace("= -9", "= 3").replace("247", "3"), AB, Status.ERROR, "host autofit-b: a rank exited with code 3"),
    (UNRESOLVED, (("autofit-a", 1), ("nowhere.invalid", 1)), Status.ERROR,
     "host nowhere.invalid is unreachable over ssh: ssh: Could not resolve hostname nowhere.invalid: Name or service not known"),
    (FIRST_UNREACHABLE, (("nowhere.invalid", 1), ("autofit-a", 1)), Status.ERROR,
     "host nowhere.invalid is unreachable over ssh (`ssh nowhere.invalid hostname` failed)"),
    ("pdsh@vm: node-2: ssh exited with exit code 1\n", (("node-1", 8), ("node-2.cluster", 8)), Status.ERROR,
     "host node-2.cluster: its launcher exited with code 1"),
])
def test_the_launcher_log_names_the_host_that_failed(log, hosts, status, line):
    assert host_failure("autofit-a: [INFO] WORLD INFO DICT: {}\n" + log, hosts) == (status, line)


def test_a_healthy_launch_log_names_no_host():
    log = "autofit-a: [INFO] [launch.py:285:main] Process 13923 exits successfully.\n"
    assert host_failure(log, AB) is None


def test_a_rank_that_only_lost_its_peer_is_not_the_cause():
    gloo = ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:34197. This is typically caused by a remote worker crashing.")
    assert is_peer_lost(gloo) and not is_peer_lost("CUDA out of memory") and not is_peer_lost(None)


def test_stopping_a_probe_matches_its_own_processes_only_not_another_search_s_with_the_same_run_dir_name(tmp_path):
    """pkill's pattern, tried with pgrep here (tests/test_multihost.py runs it over pdsh): a search whose
    run dir was given as `run` once SIGKILLed the workers of every other search on the host whose run dir
    also ended in `run` (test_faults' beside test_multihost under pytest-xdist)."""
    own = tmp_path / "a" / "run" / "probe_io" / "w001"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    cmds = {"launcher": [*sleep, "--module", "autofit.probe.worker", str(own)],
            "rank": [*sleep, "-u", "-m", "autofit.probe.worker", "--local_rank=0", str(own)],
            "other search, same run dir name": [*sleep, "-m", "autofit.probe.worker", str(tmp_path / "b" / "run" / "probe_io" / "w001")],
            "other search, path ending in this one": [*sleep, "-m", "autofit.probe.worker", f"{tmp_path}/x{own}"],
            "next worker of this search": [*sleep, "-m", "autofit.probe.worker", f"{own}0"]}
    procs = {name: subprocess.Popen(cmd) for name, cmd in cmds.items()}
    try:
        found = subprocess.run(["pgrep", "-f", rank_pattern(own)], capture_output=True, text=True).stdout.split()
        assert sorted(name for name, p in procs.items() if str(p.pid) in found) == ["launcher", "rank"]
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    with pytest.raises(ValueError, match="absolute"):
        rank_pattern(Path("run/probe_io/w001"))


def test_killing_a_worker_kills_its_ranks_that_torchrun_started_in_sessions_of_their_own(tmp_path):
    """torchrun starts each rank with start_new_session: SIGKILL to torchrun's group once left a rank
    hanging in a collective under init, holding 142 GB of GPU 1, and every later probe failed to build."""
    io = tmp_path / "probe_io" / "w009"
    io.mkdir(parents=True)
    rank = [sys.executable, "-c", "import time; time.sleep(60)", "-u", "-m", "autofit.probe.worker", str(io)]
    launcher = ("import subprocess, sys, time\n"
                f"p = subprocess.Popen({rank!r}, start_new_session=True)\n"
                f"open({str(io / 'rank.pid')!r}, 'w').write(str(p.pid))\n"
                "time.sleep(60)\n")
    session = WorkerSession(Context(model="m", device="cpu", gpus=()), None, None, io)
    session.proc = subprocess.Popen([sys.executable, "-c", launcher, "-m", "autofit.probe.worker", str(io)],
                                    start_new_session=True)
    deadline = time.time() + 20
    while not (io / "rank.pid").exists() or not (io / "rank.pid").read_text():
        assert time.time() < deadline, "the fake launcher never started its rank"
        time.sleep(0.05)
    pid = int((io / "rank.pid").read_text())
    assert os.getsid(pid) != os.getsid(session.proc.pid)  # out of reach of the launcher's group kill
    session.kill()
    assert session.proc.returncode is not None
    assert not _running(pid), "the rank outlived its worker"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it, its memory already freed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_worker_s_command_line_names_its_io_dir_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session = WorkerSession(Context(model="m", device="cpu", gpus=()), None, None, Path("run/probe_io/w001"))
    assert session._command()[-1] == str(tmp_path / "run" / "probe_io" / "w001")


def test_ranks_on_other_hosts_get_this_environment_through_deepspeed_s_env_file(tmp_path, monkeypatch):
    """DeepSpeed's pdsh runner passes only PYTHON* variables over ssh, plus the lines of DS_ENV_FILE."""
    for d, line in (("home", "NCCL_IB_DISABLE=1\n"), ("work", "GLOO_SOCKET_IFNAME=lo\n")):
        (tmp_path / d).mkdir()
        (tmp_path / d / ".deepspeed_env").write_text(line)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    env = {"PATH": "/venv/bin:/usr/bin", "OMP_NUM_THREADS": "1", "AUTOFIT_TEST_FAULT": "sigkill@probe",
           "CUDA_VISIBLE_DEVICES": "", "HOME": "/root", "PS1": "$ ", "AUTOFIT_ODD": 'say "hi"'}
    text = write_rank_env(env, tmp_path / "ds_env").read_text()
    assert text.splitlines() == ["NCCL_IB_DISABLE=1", "GLOO_SOCKET_IFNAME=lo",  # the user's own files first
                                 "AUTOFIT_TEST_FAULT=sigkill@probe", "CUDA_VISIBLE_DEVICES=",
                                 "OMP_NUM_THREADS=1", "PATH=/venv/bin:/usr/bin"]
    hosts = WorkerSession(Context(model="m", device="cpu", gpus=(), hostfile="/h", hosts=AB), None, None, tmp_path)._env()
    assert Path(hosts["DS_ENV_FILE"]) == tmp_path / "deepspeed_env"
    one = WorkerSession(Context(model="m", device="cpu", gpus=(), hostfile="/h", hosts=(("a", 2),)), None, None, tmp_path)
    assert "DS_ENV_FILE" not in one._env()  # one host launches here, in this environment


def test_each_rank_gets_its_share_of_the_cores_for_cpu_adam_not_torchrun_s_one_thread(monkeypatch, tmp_path):
    """torchrun sets OMP_NUM_THREADS=1 for every rank when it is unset; CPU Adam under offload is an
    OpenMP loop (results/omp-offload-2xh200: one thread made its step 3.3x slower)."""
    from autofit.probe.runner import omp_threads_per_rank

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert omp_threads_per_rank(2, {}) == "16"
    assert omp_threads_per_rank(3, {}) == "10"
    assert omp_threads_per_rank(64, {}) == "1"
    assert omp_threads_per_rank(1, {}) is None  # one process: OpenMP already takes every core
    assert omp_threads_per_rank(2, {"OMP_NUM_THREADS": "4"}) is None  # the user's choice stands

    src = None  # the environment does not depend on the model
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    two = WorkerSession(Context(model="m", device="cuda", gpus=(0, 1)), None, src, tmp_path)._env()
    assert two["OMP_NUM_THREADS"] == "16" and two["CUDA_VISIBLE_DEVICES"] == "0,1"
    one = WorkerSession(Context(model="m", device="cuda", gpus=(3,)), None, src, tmp_path)._env()
    assert "OMP_NUM_THREADS" not in one
    hosts = WorkerSession(Context(model="m", device="cuda", hostfile="/h", hosts=(("a", 8), ("b", 8))), None, src, tmp_path)._env()
    assert hosts["OMP_NUM_THREADS"] == "4"  # 8 ranks on this host, not 16
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert WorkerSession(Context(model="m", device="cuda", gpus=(0, 1)), None, src, tmp_path)._env()["OMP_NUM_THREADS"] == "2"
