"""`deepspeed` as DeepSpeed's autotuner calls it for each experiment, with `--include` mapped through the
GPUs the baseline was given (AUTOFIT_DS_GPUS: the machine's GPU numbers, comma-separated).

DeepSpeed 0.19.8's autotuner keeps only the number of GPUs it was given and numbers them 0..n-1
(autotuning/autotuner.py `_get_resource_manager`, scheduler.py `Node`): given GPU 1 of a machine, every
experiment ran on GPU 0, beside another job (results/eval-h200-glm4-lora-T2048-24GiB-auto/tainted.yaml).

    python -m benchmarks.ds_shim [deepspeed launcher arguments]
"""

from __future__ import annotations

import os
import runpy
import sys


def remap_include(args: list[str], gpus: list[str]) -> list[str]:
    """args with each `--include host:slots[@host:slots]` slot i replaced by gpus[i]."""
    out = list(args)
    for i in range(len(out) - 1):
        if out[i] != "--include":
            continue
        parts = []
        for part in out[i + 1].split("@"):
            host, sep, slots = part.partition(":")
            if sep and all(s.isdigit() and int(s) < len(gpus) for s in slots.split(",")):
                slots = ",".join(gpus[int(s)] for s in slots.split(","))
            parts.append(host + sep + slots)
        out[i + 1] = "@".join(parts)
    return out


def main() -> None:
    gpus = [g for g in os.environ.get("AUTOFIT_DS_GPUS", "").split(",") if g]
    sys.argv = ["deepspeed"] + remap_include(sys.argv[1:], gpus)
    runpy.run_module("deepspeed.launcher.runner", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
