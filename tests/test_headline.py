"""benchmarks/headline.py: the README headline and the every-search, hold-out and reproduction tables,
from synthetic folders made in tmp_path and from the committed results/."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import headline
from benchmarks.scenario import scenario_from_dict
from tests.test_baselines import A, _synthetic_scenario

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def _row(table: str, folder: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if f"[{folder}]" in ln or f"`{folder}`" in ln)
    return [c.strip() for c in line.strip("|").split("|")]


def test_headline_shows_each_baseline_in_its_column_and_unsafe_speed_as_such(tmp_path):
    _synthetic_scenario(tmp_path / "bench-x")
    table = headline.headline(tmp_path, scenarios={})
    assert len(table.splitlines()) == 3
    cells = _row(table, "bench-x")
    cols = [c for c, _ in headline.BASELINE_COLUMNS]
    by = dict(zip(cols, cells[7:7 + len(cols)]))
    # hand (older procedure, ‡) sits with doubling + checkpointing: 5600 (the grid's figure for B mb 8) / 4000.
    assert by["HF, doubling + ckpt"] == "140.0% ‡"
    # The synthetic hf-auto ran B, with checkpointing: that column, own measurement (*), over the headroom line.
    assert by["HF auto_find_batch_size + ckpt"] == "75.0%*, over headroom"
    assert by["HF auto_find_batch_size"] == "not run"
    assert by["seed recipe"] == by["LLaMA-Factory defaults"] == "not run"
    assert cells[4] == "100.0% (one pass: no spread)" and cells[-1] == "yes"
    assert "unlike: max_tokens unrecorded, 2 steps/probe" in cells[6]


def test_a_tainted_baseline_shows_no_figure(tmp_path):
    _synthetic_scenario(tmp_path / "bench-x")
    (tmp_path / "bench-x" / "tainted.yaml").write_text("reason: another job's process on the GPU\nbaselines: [hand]\n")
    cells = _row(headline.headline(tmp_path, scenarios={}), "bench-x")
    by = dict(zip([c for c, _ in headline.BASELINE_COLUMNS], cells[7:]))
    assert by["HF, doubling + ckpt"] == "tainted †"  # was 140.0% ‡ (the test above)
    assert by["HF auto_find_batch_size + ckpt"] == "75.0%*, over headroom"  # the others as measured


def test_a_repeated_like_for_like_grid_shows_its_spread(tmp_path):
    d = tmp_path / "bench-x"
    _synthetic_scenario(d)
    s = json.loads((d / "summary.json").read_text())
    s["warm_up_s"] = 40.0
    s["grid"].update(max_tokens=[1024], measure_steps=1, repeats=2, warm_up_s=5.0,
                     best={"strategy": A, "micro_batch": 4, "tokens_per_s": 4000.0, "tokens_per_s_runs": [3900.0, 4100.0],
                           "spread": 0.05})
    s.update(winner_within_spread=True, time_fraction=0.25, time_fraction_with_warm_up=0.439)
    (d / "summary.json").write_text(json.dumps(s))
    cells = _row(headline.headline(tmp_path, scenarios={}), "bench-x")
    assert cells[2] == "warm (40 s warm-up excluded)"
    assert cells[4] == "100.0% (within the spread, best cell ±2.5%)"
    assert cells[5] == "200 s, 8, 2 passes"
    assert cells[6] == "25%; 44% with warm-ups (like for like)"
    # A large space's second pass over the cells near the best only; a reused grid's caveat from its scenario.
    s["grid"].update(repeat_near=0.2, probes_runs=[8, 3])
    (d / "summary.json").write_text(json.dumps(s))
    sc = scenario_from_dict("x", {"model": "org/M", "max_token": 1024, "steps": ["search"], "results": "bench-x",
                                  "grid_from": "results/bench-y", "grid_caveat": "its grid's workers are older"})
    cells = _row(headline.headline(tmp_path, scenarios={"x": sc}), "bench-x")
    assert cells[5] == "200 s, 8, 2 passes (then 3 near the best)"
    assert cells[6] == "25%; 44% with warm-ups (like for like; its grid's workers are older)"
    s["grid"]["leases"] = 2
    (d / "summary.json").write_text(json.dumps(s))
    cells = _row(headline.headline(tmp_path, scenarios={"x": sc}), "bench-x")
    assert cells[6] == "25%; 44% with warm-ups (like for like; grid over 2 leases; its grid's workers are older)"


def test_a_scenario_without_its_folder_is_not_run(tmp_path):
    _synthetic_scenario(tmp_path / "bench-x")
    sc = scenario_from_dict("h200-new", {"model": "org/M", "max_token": 2048, "steps": ["search", "grid"],
                                         "gpu": "NVIDIA H200", "results": "eval-h200-new"})
    cells = _row(headline.headline(tmp_path, scenarios={"h200-new": sc}), "h200-new")
    assert cells[1] == "1 x H200" and set(cells[2:]) == {headline.NOT_RUN}
    (tmp_path / "eval-h200-new").mkdir()  # an empty folder has run nothing
    assert set(_row(headline.headline(tmp_path, scenarios={"h200-new": sc}), "h200-new")[2:]) == {headline.NOT_RUN}
    # Its search ran, its grid not yet: the search is shown, not judged.
    (tmp_path / "eval-h200-new" / "summary.json").write_text(json.dumps(
        {"model": "org/M", "max_token": 2048, "warm_up_s": 12.0, "search": {"wall_s": 186.0, "probes": 11}}))
    cells = _row(headline.headline(tmp_path, scenarios={"h200-new": sc}), "eval-h200-new")
    assert cells[2:5] == ["warm (12 s warm-up excluded)", "186 s, 11", "grid not run"] and cells[-1] == "-"
    # A grid that started and stopped before its end says so: the same command resumes it.
    (tmp_path / "eval-h200-new" / "grid.csv").write_text("strategy\n")
    cells = _row(headline.headline(tmp_path, scenarios={"h200-new": sc}), "eval-h200-new")
    assert cells[4] == "grid cut short (resumable)"


def test_committed_headline_has_every_judged_search_and_today_s_scenarios():
    table = headline.headline(RESULTS)
    # The one search below the grid's best, with what it ran beside.
    concurrent = _row(table, "grid-2xh100-qwen2-1.5b-full-T1024")
    assert concurrent[2] == "beside another job" and concurrent[4].startswith("89.8%")
    assert concurrent[1] == "2 x H100 80GB" and concurrent[5].startswith("≥ 830 s")
    # Cold runs are rows too, and the one like-for-like grid so far says so.
    assert _row(table, "bench-h100-glm4-lora-T1024-cold")[2] == "cold"
    assert "(like for like)" in _row(table, "eval-h200-glm4-lora-T2048-24GiB-auto")[6]
    # A run a later scenario supersedes leaves the headline (results/README.md keeps every search).
    assert "bench-h200-glm4-lora-T2048-24GiB-auto-r2" not in table
    assert "unlike: 4 max_tokens, 2 steps/probe" in _row(table, "bench-h100-glm4-lora-T1024-cold")[6]
    for name in ("h200-glm4-lora-T2048-24GiB-auto", "h200-qwen2-7b-lora-T4096-24GiB-auto", "h200-glm4-lora-T1024-auto",
                 "2xh200-qwen2-7b-full-T2048-auto"):
        if not (RESULTS / f"eval-{name}").exists():
            assert _row(table, name)[3] == headline.NOT_RUN


def test_every_committed_search_is_listed_once():
    table = headline.every_search(RESULTS)
    run_dirs = {str(p.parent.relative_to(RESULTS)) for p in RESULTS.glob("*/search*/best.yaml")
                if not p.parent.parent.name.startswith("verify-")}
    listed = {ln.split("](")[0].lstrip("| [") for ln in table.splitlines()[2:]}
    # A search with a summary.json is listed by its folder, its run dir inside it.
    covered = {d for d in run_dirs if d in listed or d.rsplit("/", 1)[0] in listed}
    assert covered == run_dirs
    assert len(listed) == len(table.splitlines()) - 2  # no search twice
    assert "fresh-check-h200-glm4-lora-T2048-24GiB/run2" in listed  # read from its log: its folder did not come back
    assert _row(table, "search-4xh200-glm4-full-T1024/search")[-1] == "no grid"


def test_holdout_figures_come_from_the_committed_file():
    h = json.loads((RESULTS / "estimate-error" / "holdout.json").read_text())
    sentence = headline.holdout_sentence(RESULTS)
    assert f"median {h['device_peak']['median_abs_pct']:.1f}%" in sentence
    assert f"worst under-prediction {h['device_peak']['worst_under_pct']:.1f}%" in sentence
    assert headline.holdout_sentence(Path("/nonexistent")).endswith("not run.")


def test_reproduce_names_a_scenario_for_every_committed_folder():
    table = headline.reproduce(RESULTS)
    rows = table.splitlines()[2:]
    assert rows and all("python -m benchmarks.run " in r for r in rows)

