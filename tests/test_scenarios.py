"""benchmarks/scenarios.yaml and benchmarks/run.py on the CPU: the committed scenarios load and
validate, every committed results folder has the scenario that reproduces it, the commands a dry run
prints parse with the commands they call, and a run skips finished and failed steps when restarted."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import baselines, run, search_vs_grid
from benchmarks.scenario import ScenarioError, load_scenarios, scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent
# Today's GPU runs (issue 20): each must exist with these steps.
REQUIRED = {
    "h200-glm4-lora-T2048-24GiB-auto": {"search", "search-quantize", "grid", "baselines", "verify"},
    "h200-qwen2-7b-lora-T4096-24GiB-auto": {"search", "search-quantize", "grid", "baselines", "verify"},
    "h200-glm4-lora-T1024-auto": {"search", "grid"},
    "2xh200-qwen2-7b-full-T2048-auto": {"search"},
}


def _dry(name: str, out: Path) -> list[list[str]]:
    p = subprocess.run([sys.executable, "-m", "benchmarks.run", name, "--out", str(out), "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [shlex.split(line.split(" && ")[-1].split(" > ")[0]) for line in p.stdout.splitlines() if not line.startswith("#")]


def test_the_committed_scenarios_load_and_today_s_runs_are_there():
    scenarios = load_scenarios()
    for name, steps in REQUIRED.items():
        assert steps <= set(scenarios[name].steps), name
    big = scenarios["h200-glm4-lora-T2048-24GiB-auto"]
    assert big.repeats >= 2 and big.grid_at == (2048,) and big.grid_measure_steps == 1 and big.gpu_memory == "24GiB"
    assert {"seed", "hf-double", "hf-double-ckpt", "hf-auto", "hf-auto-ckpt", "llamafactory"} <= set(big.baselines)
    full = scenarios["2xh200-qwen2-7b-full-T2048-auto"]
    assert full.method == "full" and full.num_gpus == 2


def test_every_committed_results_folder_names_the_scenario_that_reproduces_it():
    folders = {p.name for p in (ROOT / "results").iterdir() if p.is_dir() and not p.name.startswith("demo-")}
    mapped = {s.results for s in load_scenarios().values()}
    assert folders - mapped == set()


@pytest.mark.parametrize("entry, words", [
    ({"model": "m", "max_token": 8, "steps": ["search"], "colour": 1}, "unknown field(s) colour"),
    ({"model": "m", "max_token": 8, "steps": ["serch"]}, "unknown step(s) serch"),
    ({"model": "m", "max_token": 0, "steps": ["search"]}, "max_token is a positive integer"),
    ({"model": "m", "max_token": 8, "steps": ["search"], "gpu_memory": "24"}, "gpu_memory '24'"),
    ({"model": "m", "max_token": 8, "steps": ["baselines"]}, "needs a baselines list"),
    ({"model": "m", "max_token": 8, "steps": ["baselines"], "baselines": ["magic"]}, "baselines is a list"),
    ({"max_token": 8, "steps": ["search"]}, "model is required"),
    ({"model": "m", "max_token": 8, "steps": ["grid"], "repeat_near": 1.5}, "repeat_near is a fraction"),
    ({"model": "m", "max_token": 8, "steps": ["search"], "grid_caveat": "older"}, "grid_caveat is a sentence"),
])
def test_a_bad_entry_is_refused_with_its_name_and_field(entry, words):
    with pytest.raises(ScenarioError, match="scenario 'x'") as e:
        scenario_from_dict("x", entry)
    assert words in str(e.value)


def test_dry_run_commands_parse_with_the_commands_they_call(tmp_path):
    from autofit.cli import cli  # the click group `python -m autofit` runs

    for name in REQUIRED:
        for argv in _dry(name, tmp_path / name):
            assert argv[0] == sys.executable and argv[1] == "-m", argv
            mod, args = argv[2], argv[3:]
            if mod == "benchmarks.search_vs_grid":
                a = search_vs_grid.build_parser().parse_args(args)
                assert a.out == tmp_path / name
            elif mod == "benchmarks.baselines":
                a = baselines.build_parser().parse_args(args)
                assert set(a.only.split(",")) <= set(baselines.BASELINES)
            elif mod == "autofit" and args[0] in ("search", "probe"):
                ctx = cli.make_context("autofit", list(args[:1]))
                cli.get_command(ctx, args[0]).make_context(args[0], list(args[1:]), parent=ctx)
            else:
                assert mod == "autofit" and args[0] == "verify", argv


def test_the_grid_of_today_s_24gib_run_is_the_search_s_question_measured_twice(tmp_path):
    cmds = _dry("h200-glm4-lora-T2048-24GiB-auto", tmp_path)
    grid = next(c for c in cmds if "--grid-only" in c)
    a = search_vs_grid.build_parser().parse_args(grid[3:])
    search = search_vs_grid.build_parser().parse_args(next(c for c in cmds if "--skip-grid" in c)[3:])
    assert (a.grid_tokens, a.grid_measure_steps, a.repeats) == ("2048", 1, 2)
    assert (a.model, a.max_token, a.space, a.gpu_memory, a.global_batch) == \
        (search.model, search.max_token, search.space, search.gpu_memory, search.global_batch)
    assert a.no_warm_up == search.no_warm_up  # one timing rule for both
    assert a.repeat_near is None  # a whole second pass


def test_a_large_space_s_second_pass_is_near_best_only(tmp_path):
    cmds = _dry("2xh200-glm4-lora-T2048-auto", tmp_path)
    a = search_vs_grid.build_parser().parse_args(next(c for c in cmds if "--grid-only" in c)[3:])
    assert (a.repeats, a.repeat_near, a.gpus) == (2, 0.2, "0,1")


def test_a_restarted_run_skips_finished_and_failed_steps(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("scenarios:\n  t:\n    model: m\n    max_token: 8\n    steps: [a, b]\n    commands:\n"
                    "      a: \"echo ran >> {out}/a.count\"\n      b: \"echo ran >> {out}/b.count; exit 3\"\n")
    out = tmp_path / "out"

    def go() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmarks.run", "t", "--file", str(spec), "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    first = go()
    assert first.returncode == 1 and "b failed: rc=3" in first.stdout
    assert (out / "a.done").exists() and (out / "b.failed").exists()
    again = go()
    assert again.returncode == 1  # b still failed, and not run again
    assert (out / "a.count").read_text() == "ran\n" and (out / "b.count").read_text() == "ran\n"
    (out / "b.failed").unlink()
    go()
    assert (out / "b.count").read_text() == "ran\nran\n" and (out / "a.count").read_text() == "ran\n"
    dry = subprocess.run([sys.executable, "-m", "benchmarks.run", "t", "--file", str(spec), "--out", str(out), "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "# a (skipped: done)" in dry.stdout and "# b (skipped: failed)" in dry.stdout


def test_unknown_scenario_or_step_is_one_line_and_exit_2(tmp_path):
    for args in (["nope", "--out", str(tmp_path)], ["h200-glm4-lora-T1024-auto", "--out", str(tmp_path), "--steps", "verify"]):
        p = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert run.main(["nope", "--out", str(tmp_path)]) == 2


def test_a_step_names_the_processes_already_on_its_gpus():
    gpus = "0, GPU-aaa\n1, GPU-bbb\n"
    apps = "GPU-aaa, 5593, 15360 MiB\nGPU-bbb, 6001, 518 MiB\n"
    assert run.processes_on(gpus, apps, "0") == ["pid 5593 (15360 MiB) on GPU 0"]
    assert run.processes_on(gpus, apps, "GPU-bbb") == ["pid 6001 (518 MiB) on GPU 1"]
    assert len(run.processes_on(gpus, apps, None)) == 2
    assert run.processes_on(gpus, "", "1") == []


def test_a_step_does_not_start_while_other_processes_hold_its_gpus(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    step = run.Step("a", (f"echo ran >> {out}/a.count",), shell=True)
    held = ["pid 5627 (142904 MiB) on GPU 1"]
    monkeypatch.setattr(run, "_others_on_the_gpus", lambda: list(held))
    monkeypatch.setattr(run, "OTHERS_WAIT_S", 0.0)
    assert run.run_step(step, out) is False
    assert not (out / "a.count").exists() and not (out / "a.done").exists() and not (out / "a.failed").exists()
    assert "not started: other processes hold its GPUs (pid 5627" in (out / "steps.log").read_text()
    held.clear()  # gone: the same command runs it
    assert run.run_step(step, out) is True and (out / "a.count").read_text() == "ran\n"
