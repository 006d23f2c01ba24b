"""Exact and quantized families, dominance, estimate-first start and left-out techniques, against a
FAKE probe with known walls (unit tests of the search logic; no training happens here)."""

from __future__ import annotations

from autofit.models import resolve_model
from autofit.search.driver import SearchRequest, run_search
from autofit.search.planner import Limits, combine, dominating_twins, memory_rank, never_faster, never_more_memory
from autofit.search.progress import Progress
from autofit.search.space import parse_space
from autofit.spec import Context, Shape, Strategy
from tests.fakes import FakeHardware, FakeSession

GiB = 2**30
L = "lora-r8/bf16-pure"


def _space():
    return parse_space(dict(method="lora", lora={"r": 8}, precision=["bf16-pure"], grad_ckpt=[False, True],
                            zero=[{"stage": 0}], loss=["fused", "hf"], quant=["none", "nf4"],
                            micro_batch=[1, 2, 4, 8, 16], max_token=[2048]), "fam-space")


def _hw() -> FakeHardware:
    # A 24 GiB card, 9 B model at T=2048 (GiB): bf16 weights ~18 + activations; nf4 weights ~7.
    fixed = {f"{L}/nockpt/z0": 19.0, f"{L}/nockpt/z0/fused": 18.5, f"{L}/ckpt/z0": 18.5, f"{L}/ckpt/z0/fused": 18.0,
             f"{L}/nf4/nockpt/z0": 7.5, f"{L}/nf4/nockpt/z0/fused": 7.0, f"{L}/nf4/ckpt/z0": 7.0,
             f"{L}/nf4/ckpt/z0/fused": 6.5}
    per_token = {k: (6.0 if "nockpt" in k else 0.6) / 2048 + (0.0 if "fused" in k else 2.5 / 2048) for k in fixed}
    speed = {k: (9000.0 if "nockpt" in k else 7000.0) * (1.35 if "nf4" in k else 1.0) for k in fixed}
    return FakeHardware(capacity=24.0, fixed=fixed, per_token=per_token, speed=speed, saturation_tokens=2048.0)


import pytest


@pytest.fixture(autouse=True)
def _libraries_installed(monkeypatch):
    # The fake GPU "has" liger-kernel and bitsandbytes whatever this machine has installed.
    monkeypatch.setattr("autofit.capabilities._installed", lambda module: True)


def _run(tmp_path, hw, quantize=False, device="cuda"):
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=16, device=device),
                        source=resolve_model("THUDM/glm-4-9b-chat"), space=_space(), max_token=2048,
                        limits=Limits(24 * GiB, 0.08), run_dir=tmp_path / "run", quantize=quantize)
    return run_search(req, factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))


def test_relations_between_techniques():
    hf, fused = Strategy(grad_ckpt=True), Strategy(grad_ckpt=True, loss="fused")
    assert dominating_twins(hf) == [fused] and dominating_twins(fused) == []
    assert never_faster(hf, fused) and never_faster(fused, hf)          # same speed either way
    assert never_more_memory(fused, hf) and not never_more_memory(hf, fused)
    assert dominating_twins(Strategy(quant="int8", loss="fused")) == [Strategy(quant="nf4", loss="fused")]
    z3 = Strategy(grad_ckpt=True, zero_stage=3, offload_optimizer=True, offload_params=True)
    assert never_faster(z3, fused) and not never_more_memory(z3, fused)  # offload is slower, not leaner in the loss
    assert max([hf, fused, Strategy(loss="fused")], key=memory_rank) == fused


def _skipped_in_fake(tmp_path, hw, **kw):
    # The fake's hf twins are never probed once the fused one ran: dominance.
    res = _run(tmp_path, hw, **kw)
    return res, {k for k, *_ in hw.calls}


def test_exact_winner_by_default_and_the_quantized_one_reported(tmp_path):
    hw = _hw()
    res, probed = _skipped_in_fake(tmp_path, hw)
    assert res.best["config"]["numerics"] == "exact" and "nf4" not in res.best["config"]["strategy"]
    # Fused twins dominate: no hf-loss strategy is ever probed.
    assert not [k for k in probed if not k.endswith("/fused")]
    # The exhaustive exact answer among the fake's cells.
    alt = res.best["alternative"]
    assert alt["numerics"] == "quantized" and alt["speedup_vs_winner"] > 1
    assert "rerun with --quantize" in res.summary
    exact_cells = [(hw.tokens_per_s(s, sh), s.key(), sh.micro_batch) for s in _space().strategies(1) if s.exact
                   for sh in [Shape(m, 2048) for m in (1, 2, 4, 8, 16)] if hw.peak(s, sh) <= 24 * 0.92]
    _, key, mb = max(exact_cells)
    assert (res.best["config"]["strategy"], res.best["config"]["micro_batch"]) == (key, mb)


def test_quantize_lets_the_faster_quantized_configuration_win(tmp_path):
    res = _run(tmp_path, _hw(), quantize=True)
    assert res.best["config"]["numerics"] == "quantized" and "/nf4/" in res.best["config"]["strategy"]
    assert res.best["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert res.best["alternative"]["numerics"] == "exact"


def test_nothing_exact_fits_but_the_quantized_one_is_named(tmp_path):
    hw = _hw()
    for k in list(hw.fixed):
        if "nf4" not in k:
            hw.fixed[k] = 30.0  # bf16 weights alone exceed the card
    res = _run(tmp_path, hw)
    assert res.best is None
    assert "rerun with --quantize" in res.summary and "fits" in res.summary


def test_techniques_this_machine_cannot_run_are_left_out_once(tmp_path):
    # On the CPU the fused loss and bitsandbytes cannot run: reported once each, never probed.
    hw = _hw()
    res = _run(tmp_path, hw, device="cpu")
    assert {k for k, *_ in hw.calls} <= {f"{L}/nockpt/z0", f"{L}/ckpt/z0"}
    import json

    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(run["unavailable"]) == 2 and any("fused loss" in u for u in run["unavailable"])
    assert res.best["config"]["loss"] == "hf"


def test_combine_keeps_both_families_strategies():
    from autofit.search.planner import Outcome

    a, b = Outcome(2048, 2048), Outcome(2048, 2048)
    assert combine(a, None, False) is a and combine(None, b, True) is b


def _offload_space():
    return parse_space(dict(method="lora", lora={"r": 8}, precision=["bf16-pure"], grad_ckpt=[True],
                            zero=[{"stage": 0}, {"stage": 3, "offload_optimizer": True, "offload_params": True}],
                            loss=["fused", "hf"], micro_batch=[1, 2, 4, 8, 16], max_token=[2048]), "offload-space")


def _offload_hw(z0_fixed: float) -> FakeHardware:
    z0, z0hf, off = f"{L}/ckpt/z0/fused", f"{L}/ckpt/z0", f"{L}/ckpt/z3/offopt/offparam"
    # The fake's offload runs 80% as fast as ZeRO-0 at equal shape: it would win at micro-batch 8 against
    # ZeRO-0 at micro-batch 1, which the last-resort rule accepts to lose (results/ never saw it).
    return FakeHardware(capacity=24.0, fixed={z0: z0_fixed, z0hf: z0_fixed + 1, off: 4.0},
                        per_token=dict.fromkeys((z0, z0hf, off), 2.0 / 2048),
                        speed={z0: 9000.0, z0hf: 9000.0, off: 7200.0}, saturation_tokens=2048.0)


def test_offload_is_probed_only_when_nothing_without_it_fits(tmp_path):
    req = dict(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=16, device="cuda"),
               source=resolve_model("THUDM/glm-4-9b-chat"), space=_offload_space(), max_token=2048,
               limits=Limits(24 * GiB, 0.08))
    hw = _offload_hw(z0_fixed=18.0)  # ZeRO-0 fits micro-batch 1 and 2
    res = run_search(SearchRequest(run_dir=tmp_path / "a", **req), factory=lambda s: FakeSession(hw, s),
                     progress=Progress(quiet=True))
    assert not [k for k, *_ in hw.calls if "offparam" in k]
    assert res.best["config"]["strategy"] == f"{L}/ckpt/z0/fused"
    hw = _offload_hw(z0_fixed=23.0)  # ZeRO-0 fits nothing: offload is the answer
    res = run_search(SearchRequest(run_dir=tmp_path / "b", **req), factory=lambda s: FakeSession(hw, s),
                     progress=Progress(quiet=True))
    assert res.best["config"]["strategy"] == f"{L}/ckpt/z3/offopt/offparam"


def test_a_skipped_twin_rules_out_the_strategy_it_dominates(tmp_path):
    # Uncapped: the exact fused strategy fits the largest micro-batch, so the 4-bit fused one is skipped
    # (it cannot start above that wall); its hf-loss twin, never faster and never leaner, must not be
    # probed either (results/bench-h200-glm4-lora-T1024-auto-r2 spent 19 s on such a probe).
    keys = [f"{L}/{q}{c}/z0{f}" for q in ("", "nf4/") for c in ("nockpt", "ckpt") for f in ("/fused", "")]
    hw = FakeHardware(capacity=80.0, fixed=dict.fromkeys(keys, 18.0), per_token=dict.fromkeys(keys, 0.5 / 2048),
                      speed=dict.fromkeys(keys, 9000.0), saturation_tokens=2048.0)
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=16, device="cuda"),
                        source=resolve_model("THUDM/glm-4-9b-chat"), space=_space(), max_token=2048,
                        limits=Limits(80 * GiB, 0.08), run_dir=tmp_path / "run")
    res = run_search(req, factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))
    assert {k for k, *_ in hw.calls} == {f"{L}/nockpt/z0/fused"}
    assert f"{L}/nf4/nockpt/z0/fused was skipped" in res.summary


class _Factory:
    """FAKE sessions; records whether each fresh check asked for a standby worker after it."""

    def __init__(self, hw: FakeHardware):
        self.hw, self.fresh_standby = hw, []

    def __call__(self, s: Strategy) -> FakeSession:
        return FakeSession(self.hw, s)

    def fresh(self, s: Strategy, standby: bool = False) -> FakeSession:
        self.fresh_standby.append((s.exact, standby))
        return FakeSession(self.hw, s)


def test_a_standby_follows_the_fresh_check_only_where_another_family_s_probes_come_next(tmp_path):
    factory = _Factory(_hw())
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=16, device="cuda"),
                        source=resolve_model("THUDM/glm-4-9b-chat"), space=_space(), max_token=2048,
                        limits=Limits(24 * GiB, 0.08), run_dir=tmp_path / "run", quantize=True)
    run_search(req, factory=factory, progress=Progress(quiet=True))
    # The exact family's check is followed by the 4/8-bit family; the last check by nothing.
    assert factory.fresh_standby[0] == (True, True) and factory.fresh_standby[-1] == (False, False)
