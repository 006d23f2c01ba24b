"""Several machines: the DeepSpeed hostfile a multi-node probe is launched with.

Same format as `deepspeed --hostfile`: one `HOSTNAME slots=N` line per machine (N GPUs there; with
--device cpu, N CPU ranks), `#` comments. A probe then runs as one rank per slot through DeepSpeed's
launcher (pdsh over passwordless ssh); a hostfile with a single line launches on this machine, without ssh.
"""

from __future__ import annotations

import re
from pathlib import Path

from autofit.errors import UsageError

_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+)\s+slots\s*=\s*(?P<slots>\d+)$")


def parse_hostfile(path: str | Path) -> tuple[tuple[str, int], ...]:
    """((hostname, slots), ...) in file order; a UsageError naming the file and line otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"--hostfile {p}: cannot read it ({exc.strerror or exc})") from None
    hosts: list[tuple[str, int]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise UsageError(f"--hostfile {p} line {n}: {line!r} is not 'HOSTNAME slots=N'")
        host, slots = m["host"], int(m["slots"])
        if slots < 1:
            raise UsageError(f"--hostfile {p} line {n}: {host} has slots={slots}; it needs at least one GPU")
        if any(h == host for h, _ in hosts):
            raise UsageError(f"--hostfile {p} line {n}: {host} is listed twice")
        hosts.append((host, slots))
    if not hosts:
        raise UsageError(f"--hostfile {p}: no 'HOSTNAME slots=N' line in it")
    return tuple(hosts)
