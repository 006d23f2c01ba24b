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


# -- a large space's grid: the later passes re-measure only the cells that can be compared (FAKE probes)
Q = "lora-r8/bf16-pure/nf4/ckpt/z0"


class _FakeFactory:
    """The grid's StandbyFactory over FakeHardware: a new FAKE worker per strategy and pass."""

    def __init__(self, hw):
        self.hw = hw

    def __call__(self, s):
        from tests.fakes import FakeSession

        class Session(FakeSession):
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        return Session(self.hw, s)

    def tick(self):
        pass

    def close(self):
        pass


def test_a_near_best_repeat_remeasures_only_the_cells_that_can_be_compared(tmp_path, monkeypatch):
    import types

    from autofit.search.planner import Limits
    from autofit.search.progress import Progress
    from autofit.spec import Strategy
    from benchmarks.search_vs_grid import cell_runs, grid, grid_summary, near_best
    from tests.fakes import FakeHardware

    xs, ys, qs = (Strategy.from_key(k) for k in (X, Y, Q))
    # peak = fixed + mb (GiB) at T=1024; a worker's first shape needs 20 GiB more (fresh_extra), so in the
    # repeat, where X starts at mb 8, it runs out of memory and never reaches mb 16.
    hw = FakeHardware(capacity=37.0, fixed={X: 10.0, Y: 5.0, Q: 4.0}, per_token={X: 1 / 1024, Y: 0.5 / 1024, Q: 0.25 / 1024},
                      speed={X: 10000.0, Y: 7000.0, Q: 12000.0}, fresh_extra=20.0)
    import benchmarks.search_vs_grid as svg

    monkeypatch.setattr(svg, "StandbyFactory", lambda *a, **k: _FakeFactory(hw))
    monkeypatch.setattr(svg, "runnable_strategies", lambda space, ctx: ([xs, ys, qs], []))
    limits = Limits(int(40 * 2**30), 0.08)  # the headroom line at 36.8 GiB
    exact = lambda k: Strategy.from_key(k).exact  # noqa: E731
    near = lambda first: near_best(first, limits, 0.2, 1024, exact, also=(Y, 16))  # noqa: E731
    ctx = types.SimpleNamespace(global_batch=16, num_gpus=1)
    space = types.SimpleNamespace(micro_batches=[1, 2, 4, 8, 16])
    g = grid(ctx, None, space, [1024], limits, tmp_path, Progress(), repeats=2, near=near)

    assert g["probes_runs"] == [15, 4]
    # X's best two (8000, 6667 tok/s: within 20% of 8000; mb 4's 5000 is not), the 4/8-bit family's by its
    # own best (Q mb 16, 9600, and mb 8, 8000), and the search's winner Y mb 16 (5600).
    assert g["planned"] == [None, {(X, 8, 1024), (X, 16, 1024), (Q, 8, 1024), (Q, 16, 1024), (Y, 16, 1024)}]
    assert hw.calls[15:] == [(X, 8, 1024), (Y, 16, 1024), (Q, 8, 1024), (Q, 16, 1024)]
    cells = cell_runs(g["passes"], limits, g["planned"])
    assert not cells[(X, 8, 1024)].fits and not cells[(X, 16, 1024)].fits  # out of memory / never reached in pass 2
    assert cells[(Y, 1, 1024)].fits and cells[(Y, 1, 1024)].tokens_per_s == (7000 * 1024 / 5120,)  # not planned again
    assert cells[(Y, 16, 1024)].fits and len(cells[(Y, 16, 1024)].tokens_per_s) == 2
    got = grid_summary(cells, {X, Y}, 1024, {"winner": Y, "winner_micro_batch": 16}, exact)
    assert got["grid"]["best"]["strategy"] == Y and got["grid"]["best"]["micro_batch"] == 16
    assert got["winner_within_spread"] is True and got["grid"]["best_quantized"]["micro_batch"] == 16


def test_a_cut_short_grid_only_run_is_rebuilt_from_its_log_with_the_exact_oracle(tmp_path):
    from benchmarks.search_vs_grid import summarize_cut_short

    src = RESULTS / "eval-h200-glm4-lora-T2048-24GiB-auto-r6-grid"
    for name in ("grid.csv", "grid.log", "summary.json"):
        shutil.copyfile(src / name, tmp_path / name)
    shutil.copytree(src / "search", tmp_path / "search")
    s = summarize_cut_short(tmp_path, tmp_path / "grid.log", 2048, measure_steps=1)
    # From the first pass's stamp (64 s, after the warm-up) to the last line (326 s).
    assert s["grid"]["wall_s_at_least"] == 262.0 and s["grid"]["complete"] is False
    # The search ran without --quantize: NF4 mb 8 (8774 tok/s in grid.csv) is not the oracle's answer.
    assert (s["grid"]["best"]["strategy"], s["grid"]["best"]["micro_batch"]) == ("lora-r8/bf16-pure/ckpt/z0/fused", 2)
    assert s["quality"] == 1.0 and s["grid"]["measure_steps"] == 1
    assert s["time_fraction_at_most"] == round(s["search"]["wall_s"] / 262.0, 3) and s["warm_up_s"] is not None


def test_a_grid_cut_short_resumes_in_the_next_lease_without_repeating_a_finished_escalation(tmp_path, monkeypatch):
    import types

    import pytest

    import benchmarks.search_vs_grid as svg
    from autofit.rundir.records import read_probes
    from autofit.search.planner import Limits
    from autofit.search.progress import Progress
    from autofit.spec import Strategy
    from tests.fakes import FakeHardware

    xs, ys = Strategy.from_key(X), Strategy.from_key(Y)
    hw = FakeHardware(capacity=37.0, fixed={X: 10.0, Y: 5.0}, per_token={X: 1 / 1024, Y: 0.5 / 1024},
                      speed={X: 10000.0, Y: 7000.0}, interrupt_at=6)  # the machine is lost during Y's 2nd probe
    monkeypatch.setattr(svg, "StandbyFactory", lambda *a, **k: _FakeFactory(hw))
    monkeypatch.setattr(svg, "runnable_strategies", lambda space, ctx: ([xs, ys], []))
    ctx, space = types.SimpleNamespace(global_batch=16, num_gpus=1), types.SimpleNamespace(micro_batches=[1, 2, 4, 8, 16])
    limits = Limits(int(40 * 2**30), 0.08)
    with pytest.raises(KeyboardInterrupt):
        svg.grid(ctx, None, space, [1024], limits, tmp_path, Progress())
    assert len(read_probes(tmp_path / "grid.csv")) == 6  # X's five, Y's first
    # The next lease, 20 minutes later (the spans are moved back to say so).
    spans = (tmp_path / svg.SPANS).read_text().splitlines()
    sp = json.loads(spans[0])
    sp.update(start=sp["start"] - 1200, end=sp["end"] - 1200)
    (tmp_path / svg.SPANS).write_text(json.dumps(sp) + "\n")
    hw.interrupt_at, hw.calls = None, []
    g = svg.grid(ctx, None, space, [1024], limits, tmp_path, Progress())
    assert hw.calls == [(Y, m, 1024) for m in (1, 2, 4, 8, 16)]  # Y again whole, X not again
    rows = read_probes(tmp_path / "grid.csv")
    assert sorted((r["strategy"], int(r["micro_batch"])) for r in rows) == sorted(
        [(X, m) for m in (1, 2, 4, 8, 16)] + [(Y, m) for m in (1, 2, 4, 8, 16)])
    assert g["probes_runs"] == [10] and g["leases"] == 2 and len(g["passes"][0]) == 10
    spans = [json.loads(line) for line in (tmp_path / svg.SPANS).read_text().splitlines()][:-1]  # then "done"
    assert g["wall_s_runs"] == [round(sum(s["end"] - s["start"] for s in spans), 1)]
    # A finished grid is not resumed: the same command measures it anew.
    hw.calls = []
    svg.grid(ctx, None, space, [1024], limits, tmp_path, Progress())
    assert len(hw.calls) == 10 and len(read_probes(tmp_path / "grid.csv")) == 10


def test_the_grid_and_the_search_each_start_from_empty_jit_caches_of_their_own(tmp_path, monkeypatch):
    """A grid run after its search once found liger's Triton kernels built: 3-4 s less on its first fused probe."""
    import os
    import types

    import benchmarks.search_vs_grid as svg
    from autofit.search.planner import Limits
    from autofit.search.progress import Progress
    from autofit.spec import Strategy
    from tests.fakes import FakeHardware

    hw = FakeHardware(capacity=37.0, fixed={X: 10.0}, per_token={X: 1 / 1024}, speed={X: 10000.0})
    seen = []

    class Factory(_FakeFactory):
        def __call__(self, s):  # what a worker spawned now inherits
            seen.append({k: os.environ.get(k) for k in svg.JIT_CACHES})
            return super().__call__(s)

    monkeypatch.setattr(svg, "StandbyFactory", lambda *a, **k: Factory(hw))
    monkeypatch.setattr(svg, "runnable_strategies", lambda space, ctx: ([Strategy.from_key(X)], []))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "warm"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "out").mkdir()
    ctx, space = types.SimpleNamespace(global_batch=16, num_gpus=1), types.SimpleNamespace(micro_batches=[1, 2])
    for _ in range(2):  # one grid after another, as the search and its grid run
        svg.grid(ctx, None, space, [1024], Limits(int(40 * 2**30), 0.08), tmp_path / "out", Progress())
    first, second = seen
    assert set(first.values()).isdisjoint(second.values()) and str(tmp_path / "warm") not in first.values()
    assert all(v and not os.path.exists(v) for v in (*first.values(), *second.values()))  # gone after each
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "warm") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ
