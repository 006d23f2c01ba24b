"""DeepSpeed's launcher for a hostfile: its command, the environment the ranks on other hosts get,
stopping exactly one probe's ranks everywhere, and what its log says about a host that failed.

No torch here. Several hosts go through DeepSpeed's pdsh runner: pdsh ssh-es into every host and
starts `deepspeed.launcher.launch` there, which starts that host's ranks. pdsh prefixes every line a
host prints with `HOST: ` and reports a host whose command failed as `pdsh@ME: HOST: ssh exited with
exit code N` (255: ssh itself failed).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from autofit.spec import Context, Status

# What a rank on another host needs from this environment. DeepSpeed's runner passes on only
# PYTHON* variables over ssh, and the lines of DS_ENV_FILE (default ~/.deepspeed_env).
_RANK_ENV = ("PATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "TOKENIZERS_PARALLELISM")
_RANK_ENV_PREFIXES = ("AUTOFIT_", "OMP_", "HF_", "TRANSFORMERS_", "TORCH_", "NCCL_", "GLOO_")

_CHECK_FAILED = re.compile(r"host=(?P<host>\S+) was not reachable via ssh")  # DeepSpeed's ssh check
_PDSH_EXIT = re.compile(r"^pdsh@[^:\s]*: (?P<host>[^:\s]+): ssh exited with exit code (?P<code>\d+)", re.M)
_RANK_EXIT = re.compile(r"^(?P<host>[^:\s]+): .*exits with return code = (?P<rc>-?\d+)", re.M)  # launch.py
# A rank that only lost its peer (gloo sees the dead rank's socket close): the peer is the news.
_PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|remote worker crashing")


def launcher_command(ctx: Context, module_args: list[str]) -> list[str]:
    """`python -m MODULE ARGS` on every slot of ctx.hostfile through DeepSpeed's launcher.

    One host: DeepSpeed launches here, without ssh (master 127.0.0.1). Several: pdsh over
    passwordless ssh, the master being ctx.master_addr or the first host's `hostname -I`.
    """
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(ctx.hostfile),
           "--master_port", str(free_port())]
    if len(ctx.hosts) == 1:
        cmd += ["--no_ssh_check", "--master_addr", ctx.master_addr or "127.0.0.1"]
    elif ctx.master_addr:
        cmd += ["--master_addr", ctx.master_addr]
    return cmd + ["--module", *module_args]


def free_port() -> int:
    """A TCP port free on this machine now: the standby worker and the current one each get their own."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def one_process_world() -> dict[str, str]:
    """The launcher's variables for a world of one process on its own port. Without all five,
    DeepSpeed's init_distributed runs MPI discovery, which sets MASTER_PORT=29500: two searches on one
    machine, one per GPU, then fail with EADDRINUSE."""
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def write_rank_env(env: dict[str, str], path: Path) -> Path:
    """DeepSpeed's environment file for the ranks on every host: the user's own .deepspeed_env lines
    (home, then the working directory, as DeepSpeed reads them), then this process's variables above.
    A value the remote shell would expand or split ('"', '$', '`', a line break) is left out."""
    lines = []
    for own in (Path.home() / ".deepspeed_env", Path(".deepspeed_env")):
        if own.is_file():
            lines += [ln for ln in own.read_text().splitlines() if "=" in ln]
    for key, val in sorted(env.items()):
        if (key in _RANK_ENV or key.startswith(_RANK_ENV_PREFIXES)) and not any(c in val for c in '"$`\\\n'):
            lines.append(f"{key}={val}")
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def rank_pattern(io_dir: Path) -> str:
    """pkill's pattern for the processes of the probe in io_dir: its whole absolute path as the command
    line's last word. A suffix such as `run/probe_io/w001` matches other searches' workers too."""
    if not io_dir.is_absolute():
        raise ValueError(f"a probe's io dir must be absolute to be matched on every host: {io_dir}")
    literal = re.sub(r"([.$*+?()[\]{}|\\])", r"[\1]", str(io_dir)).replace("^", r"\^")
    return f"autofit[.]probe[.]worker (.* )?{literal}$"


def local_ranks(io_dir: Path) -> list[int]:
    """The pids on this host whose command line matches rank_pattern(io_dir), this process excluded."""
    pattern = re.compile(rank_pattern(io_dir))
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if int(entry.name) != os.getpid() and pattern.search(b" ".join(argv).decode(errors="replace")):
            found.append(int(entry.name))
    return found


def kill_local_ranks(io_dir: Path, wait_s: float = 10.0) -> list[int]:
    """SIGKILL this probe's processes on this host and wait until they are gone (a dead rank's GPU memory
    is free only then). torchrun starts each rank in a session of its own, so killing torchrun's process
    group leaves a rank that hangs in a collective running, with its GPU memory held, under init."""
    pids = local_ranks(io_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + wait_s
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie has freed its memory
    except (OSError, IndexError):
        return False


def stop_ranks(ctx: Context, io_dir: Path, launcher: subprocess.Popen, grace_s: float) -> None:
    """SIGKILL this probe's launcher and ranks on every host, and nothing else, until the local
    launcher has exited (a host's command may start only after a first round: ssh was still connecting).

    DeepSpeed's runner, on SIGTERM, pkills every `deepspeed.launcher.launch` of this python on every
    host: the standby worker's too. Every process of one probe ends its command line with its own
    io_dir, so that is what is matched here (rank_pattern)."""
    kill = ["pdsh", "-R", "ssh", "-t", "5", "-w", ",".join(h for h, _ in ctx.hosts),
            "pkill -KILL -f " + shlex.quote(rank_pattern(io_dir)) + "; true"]
    deadline = time.time() + grace_s
    while launcher.poll() is None and time.time() < deadline:
        try:
            subprocess.run(kill, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=max(1.0, deadline - time.time()), check=False)
            launcher.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass


def is_peer_lost(error: str) -> bool:
    return bool(_PEER_LOST.search(error or ""))


def host_failure(log: str, hosts: tuple[tuple[str, int], ...]) -> tuple[Status, str] | None:
    """The first host the launcher log shows failing, as (status, one line naming it); None if none.

    A host ssh cannot reach is an error; a rank that died on a signal with no report of its own is a
    crash (SIGKILL: that host's OOM killer, or a kill); one that exited non-zero is an error."""

    def named(shown: str) -> str:  # pdsh shows "node-2" for "node-2.cluster"
        return next((h for h, _ in hosts if h == shown), None) or next(
            (h for h, _ in hosts if h.startswith(shown + ".")), shown)

    m = _CHECK_FAILED.search(log)
    if m:
        return Status.ERROR, f"host {m['host']} is unreachable over ssh (`ssh {m['host']} hostname` failed)"
    for m in _PDSH_EXIT.finditer(log):
        if m["code"] == "255":
            said = re.findall(rf"^{re.escape(m['host'])}: (.*)$", log, re.M)
            why = next((s for s in reversed(said) if re.search(r"ssh|denied|refused|timed out", s, re.I)), None)
            return Status.ERROR, f"host {named(m['host'])} is unreachable over ssh" + (f": {why.strip()[:300]}" if why else "")
    m = _RANK_EXIT.search(log)
    if m:
        host, rc = named(m["host"]), int(m["rc"])
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
            return Status.CRASH, f"host {host}: a rank was killed by {name}"
        return Status.ERROR, f"host {host}: a rank exited with code {rc}"
    m = _PDSH_EXIT.search(log)
    if m:
        return Status.ERROR, f"host {named(m['host'])}: its launcher exited with code {m['code']}"
    return None
