"""Run one scenario of benchmarks/scenarios.yaml on whatever GPU is here, into a results folder.

    python -m benchmarks.run SCENARIO --out DIR [--steps search,grid,...] [--dry-run]
    python -m benchmarks.run --list

Each step runs once: its output goes to DIR/STEP.log and it leaves DIR/STEP.done or DIR/STEP.failed, so
a run restarted on a fresh machine with the same DIR (or polled across device calls) never repeats a
finished or failed step (delete the marker to run it again). DIR gets the layout the tables read:
summary.json, search/, grid.csv, baselines.json, search-quantize/, consumer.jsonl, verify.json in the
run dirs. `--dry-run` prints the commands without running anything (no GPU needed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from benchmarks.scenario import ROOT, SCENARIOS, STEPS, Scenario, ScenarioError, load_scenarios


@dataclass(frozen=True)
class Step:
    name: str                      # DIR/NAME.log, NAME.done, NAME.failed
    argv: tuple[str, ...]          # run without a shell, unless shell is set
    shell: bool = False
    stdout: str | None = None      # a file under DIR that receives stdout (stderr still goes to the log)
    copy_from: str | None = None   # a folder under DIR copied to copy_to before the first attempt
    copy_to: str | None = None

    def show(self) -> str:
        cmd = self.argv[0] if self.shell else shlex.join(self.argv)
        pre = f"cp -r {self.copy_from} {self.copy_to} && " if self.copy_from else ""
        return pre + cmd + (f" > {self.stdout}" if self.stdout else "")


def _py(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def _autofit_flags(sc: Scenario) -> list[str]:
    """The scenario as `autofit search` / `autofit probe` take it (no --space for probe)."""
    f = ["--model", sc.model, "--max-token", str(sc.max_token), "--global-batch", str(sc.global_batch)]
    if sc.gpu_memory:
        f += ["--gpu-memory", sc.gpu_memory]
    if sc.gpus:
        f += ["--gpus", sc.gpus]
    return f


def steps_of(sc: Scenario, out: Path, only: list[str] | None = None) -> list[Step]:
    """The commands of a scenario's steps, in the order STEPS puts them (custom commands last, in the
    YAML's order): the grid reads the search's summary, verify its run dirs."""
    chosen = [s for s in STEPS if s in sc.steps] + [s for s in sc.steps if s not in STEPS]
    if only:
        chosen = [s for s in chosen if s in only]
    o = str(out)
    cold = [] if sc.warm_up else ["--no-warm-up"]
    method = ["--method", sc.method] if sc.method else []
    custom = dict(sc.commands)
    steps: list[Step] = []
    for name in chosen:
        if name == "search":
            judge = ["--grid-from", sc.grid_from] if sc.grid_from else ["--skip-grid"]
            steps.append(Step(name, (*_py("benchmarks.search_vs_grid"), *sc.flags(), "--budget", sc.budget, *judge,
                                     *cold, "--out", o)))
        elif name == "search-quantize":
            # The same run dir resumed: the same probes, plus what --quantize lets win.
            steps.append(Step(name, (*_py("autofit"), "search", *_autofit_flags(sc), "--space", sc.space, *method,
                                     "--budget", sc.budget, "--run-dir", f"{o}/search-quantize", "--resume", "--quantize"),
                              copy_from=f"{o}/search", copy_to=f"{o}/search-quantize"))
        elif name == "consumer":
            # The seed recipe's last resort under a cap (ZeRO-3, optimizer and parameters on the CPU,
            # checkpointing), probed on this machine: the baseline the techniques table divides by.
            steps.append(Step(name, (*_py("autofit"), "probe", *_autofit_flags(sc), *method, "--grad-ckpt", "--zero", "3",
                                     "--offload-optimizer", "--offload-params", "--micro-batch", "1,2,4",
                                     "--measure-steps", "2", "--json"), stdout=f"{o}/consumer.jsonl"))
        elif name == "grid":
            steps.append(Step(name, (*_py("benchmarks.search_vs_grid"), *sc.flags(), "--grid-only",
                                     "--grid-tokens", ",".join(map(str, sc.grid_at)),
                                     "--grid-measure-steps", str(sc.grid_measure_steps), "--repeats", str(sc.repeats),
                                     *(["--repeat-near", str(sc.repeat_near)] if sc.repeat_near else []),
                                     *cold, "--out", o)))
        elif name == "baselines":
            # One step per baseline: a restart resumes after the last finished one (baselines.json adds up).
            for b in sc.baselines:
                steps.append(Step(f"baselines-{b}", (*_py("benchmarks.baselines"), *sc.flags(), "--only", b,
                                                     "--ds-timeout", str(sc.ds_timeout), "--out", o)))
        elif name == "verify":
            for run_dir in ("search", "search-quantize"):
                if run_dir == "search" or "search-quantize" in sc.steps:
                    steps.append(Step(f"verify-{run_dir}", (*_py("autofit"), "verify", f"{o}/{run_dir}",
                                                            "--steps", str(sc.verify_steps))))
        else:
            cmd = custom[name].replace("{out}", shlex.quote(o)).replace("{py}", shlex.quote(sys.executable))
            steps.append(Step(name, (cmd,), shell=True))
    return steps


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _log(out: Path, line: str) -> None:
    print(line, flush=True)
    with open(out / "steps.log", "a") as f:
        f.write(line + "\n")


def processes_on(gpu_csv: str, apps_csv: str, mask: str | None) -> list[str]:
    """The compute processes nvidia-smi lists on this job's GPUs (the mask's entries, machine indices or
    UUIDs; all GPUs without one), from `--query-gpu=index,uuid` and `--query-compute-apps=gpu_uuid,pid,
    used_memory` (csv, noheader)."""
    index = {}
    for line in gpu_csv.splitlines():
        if line.strip():
            i, uuid = (x.strip() for x in line.split(",", 1))
            index[uuid] = i
    mine = set(index) if not mask else {u for u, i in index.items() if i in mask.split(",") or u in mask.split(",")}
    found = []
    for line in apps_csv.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 3 and parts[0] in mine:
            found.append(f"pid {parts[1]} ({parts[2]}) on GPU {index[parts[0]]}")
    return found


OTHERS_WAIT_S = 30.0


def _others_on_the_gpus() -> list[str]:
    """Processes on this job's GPUs between steps, when none of its own run: another job's, or one a
    step left behind. Steps measured beside one are not evidence (DeepSpeed's autotuner once ran its
    experiments on another job's GPU: benchmarks/ds_shim.py)."""
    query = ["nvidia-smi", "--format=csv,noheader"]
    try:
        gpus = subprocess.run(query + ["--query-gpu=index,uuid"], capture_output=True, text=True, timeout=30).stdout
        apps = subprocess.run(query + ["--query-compute-apps=gpu_uuid,pid,used_memory"], capture_output=True,
                              text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return processes_on(gpus, apps, os.environ.get("CUDA_VISIBLE_DEVICES"))


def run_step(step: Step, out: Path) -> bool | None:
    """Run one step unless its marker exists. True: done now; False: failed now; None: skipped."""
    if (out / f"{step.name}.done").exists() or (out / f"{step.name}.failed").exists():
        return None
    if step.copy_from:
        shutil.rmtree(step.copy_to, ignore_errors=True)  # a copy an interrupted attempt left half-made
        shutil.copytree(step.copy_from, step.copy_to)
    _log(out, f"### {time.strftime('%H:%M:%S')} {step.name}: {step.show()}")
    deadline = time.time() + OTHERS_WAIT_S  # the last step's workers may still be exiting
    while (others := _others_on_the_gpus()) and time.time() < deadline:
        time.sleep(2)
    if others:
        # Beside a rank another probe left behind, every probe of a full fine-tuning grid failed to build
        # (results/eval-2xh200-qwen2-7b-full-T2048-full-zero/search-beside-leaked-rank): not evidence.
        _log(out, f"### {step.name} not started: other processes hold its GPUs ({'; '.join(others)}); no marker, "
                  "so the same command runs it once they are gone")
        return False
    # Appended: a step cut short on one machine and run again on the next (a resumed grid) keeps both logs.
    with open(out / f"{step.name}.log", "a") as log:
        stdout = open(step.stdout, "w") if step.stdout else log
        try:
            rc = subprocess.run(step.argv[0] if step.shell else list(step.argv), shell=step.shell, cwd=ROOT, env=_env(),
                                stdout=stdout, stderr=log, stdin=subprocess.DEVNULL).returncode
        finally:
            if step.stdout:
                stdout.close()
    for probe_io in out.glob("search*/probe_io"):  # worker scratch, not a result
        shutil.rmtree(probe_io, ignore_errors=True)
    ok = rc == 0
    (out / f"{step.name}.{'done' if ok else 'failed'}").touch()
    if not ok:
        _log(out, f"{step.name} failed: rc={rc}")
    return ok


def _plain(sc: Scenario) -> dict:
    """The scenario as run, for DIR/scenario.yaml (tuples as YAML lists)."""
    d = {k: v for k, v in asdict(sc).items() if k != "name"}
    d["commands"] = dict(sc.commands)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _device() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        names = [n.strip() for n in names if n.strip()]
        return f"{len(names)} x {names[0]}" if names else "no GPU"
    except (OSError, subprocess.SubprocessError):
        return "no GPU (no nvidia-smi)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", default=None, help=f"comma-separated subset of the scenario's steps ({', '.join(STEPS)}, "
                                                  "or its own commands); default: all of them")
    ap.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    ap.add_argument("--list", action="store_true", help="list the scenarios and the results folder each wrote")
    ap.add_argument("--file", type=Path, default=SCENARIOS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        scenarios = load_scenarios(a.file)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.list:
        for sc in scenarios.values():
            print(f"{sc.name:45s} {','.join(sc.steps):60s} {sc.results or '-'}")
        return 0
    if a.scenario not in scenarios:
        print(f"error: unknown scenario {a.scenario!r}; `python -m benchmarks.run --list` names them", file=sys.stderr)
        return 2
    sc = scenarios[a.scenario]
    out = a.out or (Path("/tmp/benchmarks") / sc.name if a.dry_run else None)
    if out is None:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    only = [s.strip() for s in a.steps.split(",")] if a.steps else None
    bad = [s for s in only or [] if s not in sc.steps]
    if bad:
        print(f"error: --steps {', '.join(bad)}: scenario {sc.name} has {', '.join(sc.steps)}", file=sys.stderr)
        return 2
    out = out.resolve()
    steps = steps_of(sc, out, only)
    if a.dry_run:
        for st in steps:
            mark = next((m for m in ("done", "failed") if (out / f"{st.name}.{m}").exists()), None)
            print(f"# {st.name}{f' (skipped: {mark})' if mark else ''}\n{st.show()}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.yaml").write_text(yaml.safe_dump({sc.name: _plain(sc)}, sort_keys=False))
    _log(out, f"### {time.strftime('%H:%M:%S')} scenario {sc.name} on {_device()}")
    failed = [st.name for st in steps if run_step(st, out) is False]
    failed += [st.name for st in steps if (out / f"{st.name}.failed").exists() and st.name not in failed]
    _log(out, f"### {time.strftime('%H:%M:%S')} scenario {sc.name} " + (f"failed steps: {', '.join(failed)}" if failed else "done"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
