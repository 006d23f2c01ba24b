"""What a probe worker's start costs, library by library, and which imports take GPU memory.

    python -m benchmarks.worker_startup --runs 3 --out DIR/worker_startup.json

Each run is a fresh interpreter that imports the worker's libraries one at a time, in the worker's
order, and after each reads NVML's per-process GPU memory: an import that creates a CUDA context
cannot be preimported by a standby worker while another worker is being measured on the same GPU.
The last stage creates the CUDA context on purpose (what setup_device costs)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

STAGES = ["torch", "transformers", "peft", "deepspeed", "liger_kernel.transformers", "bitsandbytes", "cuda_context"]

CHILD = r"""
import importlib, json, os, sys, time
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]))
def gpu_mib():
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
        if p.pid == os.getpid():
            return (p.usedGpuMemory or 0) / 2**20
    return 0.0
out = []
for name in sys.argv[1:]:
    t = time.perf_counter()
    if name == "cuda_context":
        import torch
        torch.cuda.set_device(0)
        torch.ones(1, device="cuda")
        torch.cuda.synchronize()
    else:
        importlib.import_module(name)
    out.append({"stage": name, "s": round(time.perf_counter() - t, 3), "gpu_mib": gpu_mib()})
print(json.dumps(out))
"""


def one_run() -> list[dict]:
    r = subprocess.run([sys.executable, "-c", CHILD, *STAGES], capture_output=True, text=True, env=dict(os.environ))
    if r.returncode != 0:
        raise SystemExit(f"worker_startup: child failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    runs = [one_run() for _ in range(a.runs)]
    summary = {s: {"median_s": statistics.median(r[i]["s"] for r in runs),
                   "runs_s": [r[i]["s"] for r in runs],
                   "gpu_mib_after": max(r[i]["gpu_mib"] for r in runs)} for i, s in enumerate(STAGES)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"stages": summary, "runs": runs}, indent=1) + "\n")
    for s, v in summary.items():
        print(f"{s:28s} {v['median_s']:6.2f} s  {v['runs_s']}  GPU after: {v['gpu_mib_after']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
