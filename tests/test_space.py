"""Every shipped search space loads and validates; validation names file, key and value."""

from __future__ import annotations

import pytest

from autofit.errors import SearchSpaceError
from autofit.search.space import SPACES_DIR, load_space, parse_space

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


def test_the_required_spaces_ship():
    assert {p.stem for p in SHIPPED} >= {"default", "consumer-24gb", "full-zero", "multi-gpu", "cpu-tiny"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_loads(path):
    space = load_space(str(path))
    assert space.strategies(1) and space.strategies(4)
    assert list(space.micro_batches) == sorted(space.micro_batches)
    assert path.read_text().lstrip().startswith("#"), "spaces carry a header comment with the command that uses them"
    assert "autofit search" in path.read_text().splitlines()[1] + path.read_text().splitlines()[2]


def test_single_gpu_drops_zero_stages_that_partition_nothing():
    space = load_space("full-zero")
    one = {s.key() for s in space.strategies(1)}
    assert not [k for k in one if k.endswith("/z2")]          # ZeRO-2 without offload saves nothing on 1 GPU
    assert [k for k in one if "/z2/offopt" in k]               # with offload it does
    assert len(space.strategies(2)) > len(space.strategies(1))


def test_all_problems_reported_at_once():
    with pytest.raises(SearchSpaceError) as e:
        parse_space({"method": "qlora", "precision": ["fp8"], "micro_batch": [], "max_token": [1024], "bogus": 1}, "x.yaml")
    msg = str(e.value)
    for fragment in ("x.yaml: unknown key 'bogus'", "key 'method'", "key 'precision'", "key 'micro_batch'"):
        assert fragment in msg
