"""Every shipped search space loads and validates; validation names file, key and value."""

from __future__ import annotations

import pytest

from autofit.errors import SearchSpaceError
from autofit.search.space import SPACES_DIR, load_space, parse_space, runnable_strategies
from autofit.spec import Context

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


CPU = Context(model="autofit/tiny-qwen2", device="cpu", gpus=())


def test_the_cpu_runs_zero_and_leaves_out_offload_once_with_its_reason():
    # capabilities owns what runs here: ZeRO over gloo does on the CPU, offload does not.
    space = parse_space({"method": "full", "precision": ["fp32"], "grad_ckpt": [False, True], "micro_batch": [1],
                         "max_token": [64], "zero": [{"stage": 0}, {"stage": 3},
                                                     {"stage": 3, "offload_optimizer": True}]}, "z.yaml")
    keep, unavailable = runnable_strategies(space, CPU)
    assert {s.zero_stage for s in keep} == {0, 3} and not [s for s in keep if s.offload_optimizer]
    assert len(unavailable) == 1 and unavailable[0].startswith("offload:")


@pytest.mark.parametrize("zero,fragment", [
    ([{"stage": 3, "offload_optimizer": True}], "no strategy can run on the CPU: offload:"),
    ([{"stage": 2}], "in one CPU process, ZeRO 1 and 2 shard nothing"),
])
def test_nothing_runnable_is_one_error_saying_why(zero, fragment):
    space = parse_space({"precision": ["fp32"], "micro_batch": [1], "max_token": [64], "zero": zero}, "n.yaml")
    with pytest.raises(SearchSpaceError, match=fragment):
        runnable_strategies(space, CPU)


def test_all_problems_reported_at_once():
    with pytest.raises(SearchSpaceError) as e:
        parse_space({"method": "qlora", "precision": ["fp8"], "micro_batch": [], "max_token": [1024], "bogus": 1}, "x.yaml")
    msg = str(e.value)
    for fragment in ("x.yaml: unknown key 'bogus'", "key 'method'", "key 'precision'", "key 'micro_batch'"):
        assert fragment in msg


def test_auto_space_takes_the_methods_section_and_the_gpu_count():
    lora1 = {s.key() for s in load_space("auto").strategies(1)}
    assert "lora-r8/bf16-pure/nockpt/z0/fused" in lora1 and "lora-r8/bf16-pure/nf4/ckpt/z0/fused" in lora1
    assert "lora-r8/bf16-pure/ckpt/z3/offopt/offparam" in lora1          # the last resort is still there
    assert not [k for k in lora1 if "/z3" in k and ("fused" in k or "nf4" in k or "int8" in k)]  # cannot run
    lora2 = {s.key() for s in load_space("auto", num_gpus=2).strategies(2)}
    assert "lora-r8/bf16-pure/nockpt/z2/fused" in lora2 and "lora-r8/bf16-pure/nockpt/z2/fused" not in lora1
    full = load_space("auto", method="full", num_gpus=2).strategies(2)
    assert {s.method.kind for s in full} == {"full"} and not [s for s in full if s.quant != "none"]
    assert [s for s in full if s.optim == "adamw8bit" and s.zero_stage == 0]
    assert len(lora1) >= 12 and len(full) >= 20


def test_new_dimensions_are_validated():
    with pytest.raises(SearchSpaceError) as e:
        parse_space({"loss": ["liger"], "quant": ["fp4"], "optimizer": "adamw", "micro_batch": [1], "max_token": [64]}, "y.yaml")
    msg = str(e.value)
    assert "key 'loss'" in msg and "key 'quant'" in msg and "key 'optimizer'" in msg


def test_a_space_without_new_dimensions_keeps_its_identity():
    # Run dirs searched before the dimensions existed must still resume: their space hash is unchanged.
    space = load_space("default")
    assert set(space.identity()) == {"name", "method", "precisions", "grad_ckpt", "zero", "micro_batches",
                                     "max_tokens", "description"}
    assert "losses" in load_space("auto").identity()
