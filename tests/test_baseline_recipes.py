"""The baselines' decision logic (benchmarks/baselines.py recipes) on the CPU, driven by a fake probe:
what each recipe tries, what it picks, and whether the pick crosses the headroom line."""

from __future__ import annotations

from pathlib import Path

from autofit.search.planner import Limits
from autofit.search.space import load_space
from autofit.spec import ProbeResult, Status, Strategy
from benchmarks import baselines

GIB = 2**30


class FakeProbe:
    """Stands in for autofit's worker: escalates a strategy's micro-batches, each cell's outcome read
    from `table` ((strategy key, micro-batch) -> peak GiB; absent: out of memory), stopping after the
    first that does not run, as runner.escalate does. Records every call."""

    def __init__(self, table: dict[tuple[str, int], float]):
        self.table = table
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, s: Strategy, mbs: list[int]) -> list[ProbeResult]:
        self.calls.append((s.key(), list(mbs)))
        out = []
        for mb in mbs:
            peak = self.table.get((s.key(), mb))
            if peak is None:
                out.append(ProbeResult(s.key(), mb, 1024, Status.OOM, error="CUDA out of memory"))
                break
            out.append(ProbeResult(s.key(), mb, 1024, Status.OK, tokens_per_s=1000.0 * mb, nvml_peak=int(peak * GIB)))
        return out


def _scenario(tmp_path: Path, method: str = "lora", global_batch: int = 16, budget_gib: float = 24.0) -> baselines.Scenario:
    class Ctx:  # only what the recipes read
        num_gpus = 1
        measure_steps = 2

    Ctx.global_batch = global_batch
    space = load_space("auto", method=method, num_gpus=1)
    return baselines.Scenario(ctx=Ctx(), source=None, space=space, max_token=1024,
                              limits=Limits(int(budget_gib * GIB), 0.08), out=tmp_path)


CKPT = "lora-r8/bf16-pure/ckpt/z0"
NOCKPT = "lora-r8/bf16-pure/nockpt/z0"
OFFLOAD = "lora-r8/bf16-pure/ckpt/z3/offopt/offparam"


def test_doubling_without_checkpointing_picks_the_largest_that_ran_and_flags_the_headroom(tmp_path):
    sc = _scenario(tmp_path)  # limit: 24 x 0.92 = 22.08 GiB
    fake = FakeProbe({(NOCKPT, 1): 12.0, (NOCKPT, 2): 18.0, (NOCKPT, 4): 23.0})
    e = baselines.recipe_doubling(sc, fake, grad_ckpt=False)
    assert fake.calls == [(NOCKPT, [1, 2, 4, 8, 16])]
    assert e["status"] == "ok" and e["strategy"] == NOCKPT
    # Its user sees mb 4 train (mb 8 runs out of memory), so picks it, although its peak is over the line.
    assert e["micro_batch"] == 4 and e["tokens_per_s"] == 4000.0 and e["fits"] is False
    assert [t["status"] for t in e["tried"]] == ["ok", "ok", "ok", "oom"] and e["probes"] == 4
    assert e["source"].startswith("https://")


def test_doubling_with_checkpointing_is_the_same_procedure_on_the_checkpointed_strategy(tmp_path):
    sc = _scenario(tmp_path, global_batch=4)
    fake = FakeProbe({(CKPT, 1): 5.0, (CKPT, 2): 6.0, (CKPT, 4): 8.0})
    e = baselines.recipe_doubling(sc, fake, grad_ckpt=True)
    assert fake.calls == [(CKPT, [1, 2, 4])]  # capped at the global batch per GPU
    assert e["name"] == "hf-double-ckpt" and e["micro_batch"] == 4 and e["fits"] is True


def test_doubling_that_never_runs_has_no_answer(tmp_path):
    e = baselines.recipe_doubling(_scenario(tmp_path), FakeProbe({}), grad_ckpt=False)
    assert e["status"] == "failed" and "micro-batch 1" in e["reason"] and "oom" in e["reason"]


def test_seed_stays_at_micro_batch_1_with_checkpointing_when_that_runs(tmp_path):
    fake = FakeProbe({(CKPT, 1): 20.0, (CKPT, 2): 21.0})
    e = baselines.recipe_seed(_scenario(tmp_path), fake)
    assert fake.calls == [(CKPT, [1])]
    assert e["strategy"] == CKPT and e["micro_batch"] == 1 and e["fits"] is True and "fell_back" not in e


def test_seed_falls_back_to_zero3_offload_only_on_an_oom(tmp_path):
    fake = FakeProbe({(OFFLOAD, 1): 9.0})
    e = baselines.recipe_seed(_scenario(tmp_path), fake)
    assert fake.calls == [(CKPT, [1]), (OFFLOAD, [1])]
    assert e["strategy"] == OFFLOAD and e["micro_batch"] == 1 and e["fits"] is True
    assert [t["strategy"] for t in e["tried"]] == [CKPT, OFFLOAD] and e["probes"] == 2
    # Over the headroom line but running: its user keeps it (no fallback), flagged.
    over = baselines.recipe_seed(_scenario(tmp_path), FakeProbe({(CKPT, 1): 23.5}))
    assert over["strategy"] == CKPT and over["fits"] is False


def test_llamafactory_defaults_per_method(tmp_path):
    lora = FakeProbe({(CKPT, 1): 10.0})
    e = baselines.recipe_llamafactory(_scenario(tmp_path), lora)
    assert lora.calls == [(CKPT, [1])] and e["micro_batch"] == 1 and e["status"] == "ok"
    full = FakeProbe({})
    f = baselines.recipe_llamafactory(_scenario(tmp_path, method="full"), full)
    assert full.calls == [("full/bf16/ckpt/z3", [1])] and f["status"] == "failed"
    assert "llama3_lora_sft.yaml" in e["source"]


def test_every_baseline_names_its_source():
    assert set(baselines.SOURCES) == set(baselines.BASELINES)
    assert all("https://" in src for src in baselines.SOURCES.values())
