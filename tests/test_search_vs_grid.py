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
