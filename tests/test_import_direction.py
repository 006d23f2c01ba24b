"""Imports run one way: core <- probe <- search <- report/export/verify/estimate/api <- commands.

Every import in the package is read with `ast`, at module level and inside functions alike (a lazy
import is still a dependency), and none may name a module of a higher layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autofit"

# A module's layer is that of the longest prefix listed here.
LAYERS = {
    # Core: the vocabulary every layer speaks, and the records' formats (probes.csv is written by the
    # search and read by report, export and estimate, so it sits below all of them).
    "autofit.errors": 0, "autofit.units": 0, "autofit.redact": 0, "autofit.writable": 0, "autofit.spec": 0,
    "autofit.trainconfig": 0, "autofit.models": 0, "autofit.hardware": 0, "autofit.hosts": 0,
    "autofit.capabilities": 0, "autofit.memory": 0, "autofit.rundir": 0,
    "autofit.probe": 1,
    "autofit.search": 2,
    "autofit.report": 3, "autofit.export": 3, "autofit.verify": 3, "autofit.estimate": 3, "autofit.api": 3,
    "autofit.cli": 4, "autofit.commands": 4, "autofit.__main__": 4,
}
NAMES = {0: "core", 1: "probe", 2: "search", 3: "report/export/verify/estimate/api", 4: "commands"}

# Upward imports with a reason to stay; each says why.
ALLOWED = {
    # api.search runs the `search` command itself, so its options get the flags' own parsing and checks.
    ("autofit.api", "autofit.cli"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _layer(module: str) -> int | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from autofit.probe import protocol` imports the submodule autofit.probe.protocol
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m.startswith("autofit.")}


def upward_imports(modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in sorted(modules.items()):
        mine = _layer(module)
        if mine is None:  # the package's __init__: the public façade, loads api lazily
            continue
        for target in sorted(_imports(module, path, set(modules))):
            theirs = _layer(target)
            if theirs is not None and theirs > mine and (module, target) not in ALLOWED:
                bad.append(f"{module} ({NAMES[mine]}) imports {target} ({NAMES[theirs]})")
    return bad


def test_every_module_has_a_layer():
    modules = _modules()
    assert modules and [m for m in modules if m != "autofit" and _layer(m) is None] == []


def test_nothing_imports_upward():
    assert upward_imports(_modules()) == []


def test_the_allowed_upward_imports_still_exist():
    """An allow-list entry whose import is gone would silently allow it again later."""
    modules = _modules()
    for importer, target in ALLOWED:
        assert target in _imports(importer, modules[importer], set(modules)), (importer, target)


@pytest.mark.parametrize("importer, line", [
    ("autofit/spec.py", "from autofit.search.planner import Limits\n"),            # core -> search, module level
    ("autofit/probe/oom.py", "def f():\n    from autofit import report\n"),       # probe -> report, in a function
    ("autofit/search/space.py", "def f():\n    import autofit.commands.probe\n"),  # search -> commands
])
def test_an_upward_import_is_caught(tmp_path, importer, line):
    """The check itself: a copy of the package with one upward import added fails it."""
    import shutil

    copy = tmp_path / "autofit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / importer, "a") as f:
        f.write("\n\n" + line)
    modules = {m: copy / p.relative_to(PACKAGE) for m, p in _modules().items()}
    bad = upward_imports(modules)
    assert len(bad) == 1 and bad[0].startswith(importer[:-3].replace("/", ".")), bad
