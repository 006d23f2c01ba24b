"""benchmarks/techniques_table.py over the committed 24 GiB evidence (results/bench-*-24GiB-auto)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.techniques_table import consumer_winner, row, techniques_table
from autofit.search.planner import Limits

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_every_committed_scenario_has_a_row_with_its_baseline():
    folders = sorted(RESULTS.glob("*-24GiB-auto"))
    assert folders
    table = techniques_table()
    for f in folders:
        assert f.name in table
        r = row(f)
        assert r["consumer"] is not None and r["exact"][2] > r["consumer"][2]


def test_the_baseline_is_the_fastest_consumer_probe_under_the_headroom(tmp_path):
    (tmp_path / "consumer.jsonl").write_text(
        '{"strategy": "s", "micro_batch": 1, "status": "ok", "tokens_per_s": 10, "nvml_peak": 1000}\n'
        '{"strategy": "s", "micro_batch": 2, "status": "ok", "tokens_per_s": 20, "nvml_peak": 2000}\n'
        '{"strategy": "s", "micro_batch": 4, "status": "oom", "tokens_per_s": null}\n')
    assert consumer_winner(tmp_path, Limits(2500, 0.08))["micro_batch"] == 2
    assert consumer_winner(tmp_path, Limits(2000, 0.08))["micro_batch"] == 1   # mb 2 is over the 1840 limit
    assert consumer_winner(tmp_path, Limits(500, 0.08)) is None
