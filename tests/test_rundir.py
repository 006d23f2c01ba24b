"""autofit.rundir owns the run directory: every committed run dir reads through it, and the packages
below the commands import nothing above them."""

import ast
import dataclasses
from pathlib import Path

import pytest

from autofit.rundir import RunDir
from autofit.rundir.best import Winner
from autofit.spec import ProbeKey, Strategy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BEST = sorted(RESULTS.glob("**/best.yaml"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return mods | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


@pytest.mark.parametrize("package,above", [
    ("rundir", ("autofit.search", "autofit.report", "autofit.export", "autofit.verify", "autofit.cli", "autofit.api",
                "autofit.probe", "torch", "transformers")),
    ("report", ("autofit.cli", "autofit.search", "autofit.probe", "autofit.export", "torch", "transformers", "deepspeed")),
])
def test_imports_point_downward(package, above):
    for path in sorted((ROOT / "autofit" / package).glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(above)}
        assert not bad, (path.name, bad)


def test_nothing_outside_rundir_parses_best_yaml_or_run_json():
    """One reader: the commands go through RunDir, not yaml.safe_load / json.loads of the run's files."""
    for path in [ROOT / "autofit" / n for n in ("export.py", "verify.py", "estimate.py", "api.py")] + \
            sorted((ROOT / "autofit" / "report").glob("*.py")):
        text = path.read_text()
        assert "safe_load" not in text and "json.loads(path" not in text and "DictReader" not in text, path.name


@pytest.mark.parametrize("path", BEST, ids=[str(p.parent.relative_to(RESULTS)) for p in BEST])
def test_every_committed_winner_loads(path):
    w = RunDir(path.parent).best()
    assert isinstance(w, Winner)
    assert w.key == w.document["config"]["strategy"] and Strategy.from_key(w.key).key() == w.key
    assert (w.micro_batch, w.max_token) == (w.document["config"]["micro_batch"], w.document["config"]["max_token"])


def test_probe_keys_order_as_the_tuples_they_replace():
    """Probe keys are sorted to replay a shared study's results; the order is the 5-tuple's."""
    rows = RunDir(RESULTS / "search-2xh100-glm4-full-T1024" / "search").probes()
    keys = [ProbeKey.from_row(r) for r in rows]
    assert len(keys) > 5
    assert sorted(keys) == [ProbeKey(*t) for t in sorted(dataclasses.astuple(k) for k in keys)]
    assert all(ProbeKey.from_text(k.text()) == k for k in keys)
