"""The planner's host-memory rule: an offload strategy whose checkpointing sibling was killed by SIGKILL
(the host's OOM killer) before it ever ran is not built again. Evidence: a REPLAY of the GLM-4-9B full
fine-tuning search on 2 x H200 (results/search-2xh200-glm4-full-T1024), and FAKE probes for the rule's
edges. Neither is a probe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from autofit.models import resolve_model
from autofit.rundir.records import read_probes, result_from_row
from autofit.search.planner import Limits, Planner
from autofit.search.prior import AnalyticPrior
from autofit.search.space import load_space
from autofit.spec import Context, ProbeResult, Shape, Status

GiB = 2**30
RUN = Path(__file__).resolve().parents[1] / "results" / "search-2xh200-glm4-full-T1024"
GLM = "THUDM/glm-4-9b-chat"
KILLED = "worker killed by SIGKILL (host out of memory? the kernel's OOM killer sends SIGKILL)"


def _planner(answer, gpus=2, limits=Limits(int(140.401 * GiB), 0.08)):
    asked = []

    def measure(s, shape: Shape, phase, repeat):
        asked.append((s.key(), shape.micro_batch, phase))
        return answer(s.key(), shape)

    source = resolve_model(GLM)
    prior = AnalyticPrior(source, replace(Context(model=GLM), device="cuda", gpus=tuple(range(gpus)), global_batch=16))
    space = load_space("full-zero")
    return Planner(space.strategies(gpus), space.micro_batches, (1024,), 1024, 16 // gpus, limits, measure,
                   slope_prior=prior.slope, estimate=prior.peak), asked


def test_replay_2xh200_no_offload_build_is_spent():
    rows = read_probes(RUN / "search" / "probes.csv")
    escalated = {(r["strategy"], int(r["micro_batch"])): result_from_row(r) for r in rows if r["phase"] == "escalate"}
    confirmed = {(r["strategy"], int(r["micro_batch"])): result_from_row(r) for r in rows if r["phase"] == "confirm"}

    def answer(key, shape):  # what that machine measured; cells it never ran are answered OOM
        return escalated.get((key, shape.micro_batch)) or ProbeResult(
            strategy=key, micro_batch=shape.micro_batch, max_token=shape.max_token, status=Status.OOM)

    planner, asked = _planner(lambda k, sh: answer(k, sh))
    planner._measure = lambda s, shape, phase, repeat: (
        asked.append((s.key(), shape.micro_batch, phase))
        or (confirmed.get((s.key(), shape.micro_batch)) if phase == "confirm" else None) or answer(s.key(), shape))
    out = planner.run()
    keys = [k for k, _, _ in asked]
    # ZeRO-2 without offload fits, so neither offload build is spent: the real search lost 195 s to the
    # first and 190 s to the second, each killed by the host's OOM killer (its search.log).
    assert not [k for k in keys if "/off" in k]
    assert "last resort" in out.strategies["full/bf16/nockpt/z2/offopt"].skipped
    # The rest of the ranking is what the machine produced: ZeRO-2 with checkpointing at micro-batch 2.
    assert out.winner is not None and out.winner[0].key() == "full/bf16/ckpt/z2" and out.winner[1] == 2


def _fake(crash_key: str, ok_first: bool = False, only_offload_fits: bool = True):
    """FAKE probes: crash_key is killed (after one good run if ok_first); strategies without offload
    go out of GPU memory (if only_offload_fits); the rest fit at 10 GiB."""
    seen = set()

    def answer(key, shape):
        if only_offload_fits and "/off" not in key:
            return ProbeResult(strategy=key, micro_batch=shape.micro_batch, max_token=shape.max_token, status=Status.OOM)
        if key == crash_key and not (ok_first and key not in seen):
            return ProbeResult(strategy=key, micro_batch=shape.micro_batch, max_token=shape.max_token,
                               status=Status.CRASH, error=KILLED)
        seen.add(key)
        return ProbeResult(strategy=key, micro_batch=shape.micro_batch, max_token=shape.max_token, status=Status.OK,
                           tokens_per_s=100.0 * shape.micro_batch, step_s=1.0, peak_allocated=10 * GiB,
                           peak_reserved=10 * GiB, nvml_peak=10 * GiB)
    return answer


def test_the_rule_needs_every_run_of_the_sibling_killed_and_an_offload_strategy():
    # On a huge fake card nothing is estimated out (the fake decides); the killed strategy's sibling is skipped.
    big = Limits(int(10_000 * GiB), 0.08)
    planner, asked = _planner(_fake("full/bf16/nockpt/z2/offopt"), limits=big)
    out = planner.run()
    assert "SIGKILL" in out.strategies["full/bf16/ckpt/z2/offopt"].skipped
    # A sibling that ran before it was killed (at a larger micro-batch) says nothing about the build.
    planner, asked = _planner(_fake("full/bf16/nockpt/z2/offopt", ok_first=True), limits=big)
    out = planner.run()
    assert "SIGKILL" not in out.strategies["full/bf16/ckpt/z2/offopt"].skipped
    assert "full/bf16/ckpt/z2/offopt" in [k for k, _, _ in asked]
    # Without offload a SIGKILL is not a host-memory verdict on the sibling.
    planner, asked = _planner(_fake("full/bf16/nockpt/z2", only_offload_fits=False), limits=big)
    out = planner.run()
    assert not any("SIGKILL" in so.skipped for so in out.strategies.values())
