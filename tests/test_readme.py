"""The README's result tables are exactly what the committed results files regenerate."""

from pathlib import Path

from benchmarks import readme_tables


def test_results_readme_tables_match_results():
    text = readme_tables.RESULTS_README.read_text()
    block = text[text.index(readme_tables.START): text.index(readme_tables.END) + len(readme_tables.END)]
    assert block == f"{readme_tables.START}\n{readme_tables.render()}\n{readme_tables.END}"


def test_results_readme_links_resolve():
    """results/README.md links relative to results/: every local target exists."""
    import re

    text = readme_tables.RESULTS_README.read_text()
    targets = [t for t in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in t]
    missing = [t for t in targets if not (readme_tables.RESULTS_README.parent / t).exists()]
    assert targets and not missing, missing


def test_readme_headline_matches_results():
    text = (readme_tables.ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    head = text[text.index(readme_tables.HEAD_START): text.index(readme_tables.HEAD_END) + len(readme_tables.HEAD_END)]
    assert head == f"{readme_tables.HEAD_START}\n{readme_tables.render_headline()}\n{readme_tables.HEAD_END}"
    # The headline sits right after the two commands, before any usage.
    assert text.index("make test") < text.index(readme_tables.HEAD_START) < text.index("## Using it")


def test_readme_names_the_two_commands():
    text = (readme_tables.ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text


def test_verify_is_matched_to_a_scenario_only_for_the_same_winner_and_budget():
    import json

    from benchmarks.scenario_table import verified_elsewhere

    results = Path(__file__).resolve().parent.parent / "results"
    s = json.loads((results / "bench-h100-glm4-lora-T1024" / "summary.json").read_text())
    assert verified_elsewhere(results, s).name == "verify-h100-glm4-lora-T1024"
    assert verified_elsewhere(results, {**s, "budget_gib": 24.0}) is None
    assert verified_elsewhere(results, {**s, "search": {**s["search"], "winner_micro_batch": 8}}) is None
    assert verified_elsewhere(results, {**s, "gpu": "NVIDIA H200"}) is None
