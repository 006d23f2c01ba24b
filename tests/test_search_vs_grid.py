"""benchmarks/search_vs_grid.py's --grid-from: a search re-measured against a grid committed earlier."""

import json
import shutil
from pathlib import Path

from benchmarks.search_vs_grid import reuse_grid

RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_reuse_grid_finds_the_winner_and_keeps_a_cut_short_grid_a_bound(tmp_path):
    src = RESULTS / "bench-h100-glm4-lora-T1024-24GiB"
    search = {"wall_s": 150.0, "winner": "lora-r8/bf16-pure/ckpt/z3/offopt/offparam", "winner_micro_batch": 4}
    part = reuse_grid(src, tmp_path, search, 1024)
    assert (tmp_path / "grid.csv").read_bytes() == (src / "grid.csv").read_bytes()
    assert part["grid"]["reused_from"] == src.name
    assert (tmp_path / part["grid"]["log"]).exists()  # the stamps its wall time was read from
    assert part["grid"]["search_winner_tokens_per_s_in_grid"] == 1374.9
    assert part["quality"] == 1.0
    assert "time_fraction" not in part  # that grid was stopped early: only an upper bound is honest
    assert part["time_fraction_at_most"] == round(150.0 / 603.0, 3)


def test_reuse_grid_scores_a_slower_winner_and_a_complete_grid(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(RESULTS / "bench-h100-glm4-lora-T1024", src, ignore=shutil.ignore_patterns("search"))
    out = tmp_path / "out"
    out.mkdir()
    search = {"wall_s": 46.92, "winner": "lora-r8/bf16-pure/ckpt/z0", "winner_micro_batch": 8}
    part = reuse_grid(src, out, search, 1024)
    grid = json.loads((src / "summary.json").read_text())["grid"]
    grid_best = grid["best"]["tokens_per_s"]
    assert 0 < part["quality"] < 1
    assert part["quality"] == round(part["grid"]["search_winner_tokens_per_s_in_grid"] / grid_best, 4)
    assert part["time_fraction"] == round(46.92 / grid["wall_s"], 3)


def test_reuse_grid_refuses_a_grid_from_another_gpu_model(tmp_path):
    src = RESULTS / "grid-2xh100-qwen2-1.5b-full-T1024"
    search = {"wall_s": 300.0, "winner": "full/bf16/ckpt/z2", "winner_micro_batch": 16}
    try:
        reuse_grid(src, tmp_path, search, 1024, gpu="NVIDIA H200")
    except SystemExit as e:
        assert "NVIDIA H100 80GB HBM3" in str(e) and "NVIDIA H200" in str(e)
    else:
        raise AssertionError("an H100 grid was accepted for an H200 search")
    assert reuse_grid(src, tmp_path, search, 1024, gpu="NVIDIA H100 80GB HBM3")["quality"] == 1.0


# -- repeated grid passes: spreads, the oracle's answer, the timing rule (no GPU: probe results made here)
def _r(key: str, mb: int, tps: float | None, peak_gib: float = 10.0):
    from autofit.spec import ProbeResult, Status

    if tps is None:
        return ProbeResult(key, mb, 1024, Status.OOM, error="out of memory")
    return ProbeResult(key, mb, 1024, Status.OK, tokens_per_s=tps, nvml_peak=int(peak_gib * 2**30))


X, Y = "lora-r8/bf16-pure/nockpt/z0", "lora-r8/bf16-pure/ckpt/z0"


def test_cells_over_passes_fit_only_when_every_pass_fits_and_spread_is_max_minus_min_over_median():
    from autofit.search.planner import Limits
    from benchmarks.search_vs_grid import cell_runs

    limits = Limits(int(20 * 2**30), 0.08)  # line at 18.4 GiB
    passes = [{(X, 1, 1024): _r(X, 1, 1000.0), (X, 2, 1024): _r(X, 2, 1900.0, 18.0), (Y, 1, 1024): _r(Y, 1, 800.0)},
              {(X, 1, 1024): _r(X, 1, 1100.0), (X, 2, 1024): _r(X, 2, 2100.0, 19.0), (Y, 1, 1024): _r(Y, 1, None)}]
    cells = cell_runs(passes, limits)
    assert cells[(X, 1, 1024)].fits and cells[(X, 1, 1024)].median == 1050.0
    assert abs(cells[(X, 1, 1024)].spread - 100 / 1050) < 1e-9
    assert not cells[(X, 2, 1024)].fits  # over the line in one pass
    assert not cells[(Y, 1, 1024)].fits and cells[(Y, 1, 1024)].tokens_per_s == (800.0,)  # out of memory once


def test_the_winner_is_the_grid_s_best_within_the_spread_and_quality_uses_medians():
    from autofit.search.planner import Limits
    from autofit.spec import Strategy
    from benchmarks.search_vs_grid import cell_runs, grid_summary

    limits = Limits(int(80 * 2**30), 0.08)
    passes = [{(X, 4, 1024): _r(X, 4, 5000.0), (Y, 8, 1024): _r(Y, 8, 4700.0)},
              {(X, 4, 1024): _r(X, 4, 4700.0), (Y, 8, 1024): _r(Y, 8, 4900.0)}]
    cells = cell_runs(passes, limits)
    exact = lambda k: Strategy.from_key(k).exact  # noqa: E731
    got = grid_summary(cells, {X, Y}, 1024, {"winner": Y, "winner_micro_batch": 8}, exact)
    # X's median (4850) beats Y's (4800), but Y's faster pass (4900) reaches X's slower one (4700).
    assert got["grid"]["best"]["strategy"] == X and got["grid"]["best"]["tokens_per_s_runs"] == [5000.0, 4700.0]
    assert got["quality"] == round(4800 / 4850, 4) and got["grid"]["best"]["spread"] == round(300 / 4850, 4)
    assert got["winner_within_spread"] is True and got["grid"]["search_winner_tokens_per_s_runs"] == [4700.0, 4900.0]
    slow = [{(X, 4, 1024): _r(X, 4, 5000.0), (Y, 8, 1024): _r(Y, 8, 4000.0)},
            {(X, 4, 1024): _r(X, 4, 4900.0), (Y, 8, 1024): _r(Y, 8, 4100.0)}]
    got = grid_summary(cell_runs(slow, limits), {X, Y}, 1024, {"winner": Y, "winner_micro_batch": 8}, exact)
    assert got["winner_within_spread"] is False and got["quality"] == round(4050 / 4950, 4)
    one = grid_summary(cell_runs(slow[:1], limits), {X, Y}, 1024, {"winner": Y, "winner_micro_batch": 8}, exact)
    assert "winner_within_spread" not in one and "tokens_per_s_runs" not in one["grid"]["best"]


def test_time_rule_is_the_same_for_both_sides():
    from benchmarks.search_vs_grid import time_rule

    warm = {"warm_up_s": 40.0, "search": {"wall_s": 100.0}, "grid": {"wall_s": 300.0, "warm_up_s": 10.0}}
    assert time_rule(warm) == {"time_rule": "both after a warm-up, excluded from both", "time_fraction_with_warm_up": 0.452}
    assert time_rule({"warm_up_s": None, "search": {"wall_s": 1.0}, "grid": {"wall_s": 2.0}})["time_rule"] == "both from a cold start"
    assert time_rule({"warm_up_s": 5.0, "search": {"wall_s": 1.0}, "grid": {"wall_s": 2.0}})["time_rule"].startswith("mixed")


def test_reuse_grid_judges_a_two_pass_grid_by_its_spread(tmp_path):
    # The committed grid measured the winner's cell at 7658 and 6092 tokens/s in its two passes; a later
    # search naming that cell is the grid's best (median over median), within the spread, not 111%.
    src = RESULTS / "eval-h200-glm4-lora-T2048-24GiB-auto"
    search = {"wall_s": 88.1, "winner": "lora-r8/bf16-pure/ckpt/z0/fused", "winner_micro_batch": 2}
    part = reuse_grid(src, tmp_path, search, 2048)
    assert part["grid"]["search_winner_tokens_per_s_runs"] == [7657.66, 6091.96]
    assert part["quality"] == 1.0 and part["winner_within_spread"] is True
    slower = dict(search, winner="lora-r8/bf16-pure/nf4/ckpt/z0/fused", winner_micro_batch=2)
    part = reuse_grid(src, tmp_path, slower, 2048)
    assert part["quality"] < 1 and part["winner_within_spread"] is False
