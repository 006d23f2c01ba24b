"""Shared fixtures: tiny models the tests build and save themselves (nothing is downloaded)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Two pytest-xdist workers, each with its probe workers, share a few cores: one OpenMP thread per process
# keeps them from spin-waiting on each other (a tiny model gains nothing from more; 3x slower probes without).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# CPU probe workers fork from one process that imported the stack (autofit/probe/forked.py), instead of
# each importing it (4-5 s of CPU a worker); tests of the spawned worker itself ask for exec_workers.
os.environ.setdefault("AUTOFIT_FORK_WORKERS", "1")

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False)


@pytest.fixture
def exec_workers(monkeypatch):
    """Probe workers started as fresh interpreters, as outside the test suite."""
    monkeypatch.delenv("AUTOFIT_FORK_WORKERS", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model directory: config.json only (random weights are built by the probe)."""
    from transformers import Qwen2Config

    d = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2Config(**TINY).save_pretrained(d)
    return d


@pytest.fixture(scope="session", autouse=True)
def _optuna_schema_head_found_once():
    """Optuna finds its schema's head revision by running its alembic scripts at every storage open (0.1 s;
    the FAKE searches here open a study hundreds of times). The head is a constant of the installed Optuna:
    found once, each database's own version is still checked against it at every open."""
    from optuna.storages._rdb.storage import _VersionManager

    real, head = _VersionManager.get_head_version, []

    def get_head_version(self) -> str:
        head[:] = head or [real(self)]
        return head[0]

    mp = pytest.MonkeyPatch()
    mp.setattr(_VersionManager, "get_head_version", get_head_version)
    yield
    mp.undo()


def _temp_root_in_memory() -> None:
    """tmp_path in memory where the machine has a roomy, executable tmpfs and nobody chose a temp dir: the
    searches here commit to SQLite and fsync probes.csv thousands of times, each a wait of milliseconds on a
    disk (40% of the FAKE-search modules' wall). The code still makes every fsync; only the wait goes."""
    shm = "/dev/shm"
    if "TMPDIR" in os.environ or "PYTEST_DEBUG_TEMPROOT" in os.environ or not os.path.isdir(shm):
        return
    try:
        st = os.statvfs(shm)
    except OSError:
        return
    roomy = st.f_bavail * st.f_frsize >= 2 * 2**30  # a full run leaves about 40 MB
    if roomy and os.access(shm, os.W_OK) and not st.f_flag & os.ST_NOEXEC:  # test_wheel runs a venv from it
        os.environ["PYTEST_DEBUG_TEMPROOT"] = shm  # pytest's own setting: numbered dirs, the last 3 kept


def pytest_configure(config: pytest.Config) -> None:
    """Compile autofit and benchmarks once, in the controller: the suite starts a hundred-odd Python processes
    that import them, and with PYTHONDONTWRITEBYTECODE set each would compile them again (0.1-0.2 s apiece).
    The controller also picks the temp root that pytest-xdist hands its workers."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        import compileall

        _temp_root_in_memory()
        root = Path(__file__).resolve().parent.parent
        for package in ("autofit", "benchmarks"):
            compileall.compile_dir(root / package, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with the most slow tests first. Under pytest-xdist (make test) each worker takes one whole
    module at a time, in this order: a long module taken last would leave the other worker idle."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: tests keep their order within a module
