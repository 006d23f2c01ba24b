"""Search logic against a FAKE probe with known walls (unit tests; no training happens here)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from autofit.errors import Interrupted, RunDirError
from autofit.models import resolve_model
from autofit.search.driver import SearchRequest, run_search
from autofit.search.planner import Limits
from autofit.search.progress import Progress
from autofit.search.space import parse_space
from autofit.spec import Context, Shape, Strategy
from tests.fakes import FakeHardware, FakeSession

GiB = 2**30
LORA = "lora-r8/bf16-pure"


def _space(**over):
    doc = dict(method="lora", lora={"r": 8}, precision=["bf16-pure"], grad_ckpt=[False, True], zero=[{"stage": 0}],
               micro_batch=[1, 2, 4, 8, 16, 32, 64], max_token=[512, 1024, 2048])
    doc.update(over)
    return parse_space(doc, "test-space")


def _hw(**over) -> FakeHardware:
    # GLM-4-9B-like numbers (GiB): nockpt wall between mb 4 and 8 at T=1024, ckpt between 16 and 32.
    hw = FakeHardware(capacity=80.0,
                      fixed={f"{LORA}/nockpt/z0": 20.0, f"{LORA}/ckpt/z0": 19.0},
                      per_token={f"{LORA}/nockpt/z0": 9.0 / 1024, f"{LORA}/ckpt/z0": 2.9 / 1024},
                      speed={f"{LORA}/nockpt/z0": 10000.0, f"{LORA}/ckpt/z0": 7600.0})
    for k, v in over.items():
        setattr(hw, k, v)
    return hw


def _run(tmp_path, hw, space=None, max_token=1024, budget=80 * GiB, resume=False, global_batch=64, device="cuda", **kw):
    # device="cpu": no analytic estimate (AnalyticPrior is for GPU searches), so the most frugal strategy goes first.
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=global_batch, device=device),
                        source=resolve_model("THUDM/glm-4-9b-chat"),
                        space=space or _space(), max_token=max_token, limits=Limits(budget, 0.08),
                        run_dir=tmp_path / "run", resume=resume, **kw)
    return run_search(req, factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))


def _boundaries(tmp_path):
    with open(tmp_path / "run" / "boundaries.csv") as f:
        return {(r["strategy"], int(r["max_token"])): r for r in csv.DictReader(f)}


def test_walls_found_exactly_and_winner_correct(tmp_path):
    hw = _hw()
    res = _run(tmp_path, hw)
    b = _boundaries(tmp_path)
    # limit = 73.6 GiB: nockpt fits mb 4 (56 GiB), mb 8 would need 92; ckpt fits 16 (65.4), 32 would need 111.8.
    nockpt, ckpt = b[(f"{LORA}/nockpt/z0", 1024)], b[(f"{LORA}/ckpt/z0", 1024)]
    assert (nockpt["largest_fit_micro_batch"], nockpt["first_fail_micro_batch"]) == ("4", "8")
    assert (ckpt["largest_fit_micro_batch"], ckpt["first_fail_micro_batch"]) == ("16", "32")
    # Both walls are far enough over the limit that the memory model settles them without a probe.
    assert nockpt["first_fail_source"] == ckpt["first_fail_source"] == "predicted"
    assert (f"{LORA}/nockpt/z0", 8, 1024) not in hw.calls and (f"{LORA}/ckpt/z0", 32, 1024) not in hw.calls
    # The exhaustive answer: max tokens/s among every fitting (strategy, mb).
    fitting = [(hw.tokens_per_s(s, sh), s.key(), sh.micro_batch)
               for s in _space().strategies(1) for sh in [Shape(m, 1024) for m in (1, 2, 4, 8, 16, 32, 64)]
               if hw.peak(s, sh) <= 80 * 0.92]
    _, key, mb = max(fitting)
    assert (res.best["config"]["strategy"], res.best["config"]["micro_batch"]) == (key, mb)
    # The estimate predicts the fastest strategy fits at micro-batch 1, so it goes first: after one probe
    # the analytic slope (autofit.search.prior, GLM-4's architecture; the fake's slopes are within 7% of
    # it) jumps straight to its predicted wall (4); checkpointing, slower at equal shape, starts above it.
    escalation = [c for c in hw.calls if c[2] == 1024]
    assert escalation[:2] == [(f"{LORA}/nockpt/z0", m, 1024) for m in (1, 4)]
    assert escalation[2:4] == [(f"{LORA}/ckpt/z0", m, 1024) for m in (8, 16)]
    # Far fewer probes than the 12-cell grid at this max_token (exploration included).
    assert res.probes_run <= 8


def test_wall_near_the_limit_is_probed_not_predicted(tmp_path):
    # nockpt at mb 8 needs 78 GiB: over the 73.6 GiB limit but within the model's 15% margin,
    # so it is measured (and OOMs on an 80 GiB card? no: it runs and lands over the headroom).
    hw = _hw(per_token={f"{LORA}/nockpt/z0": 7.25 / 1024, f"{LORA}/ckpt/z0": 2.9 / 1024})
    _run(tmp_path, hw)
    nockpt = _boundaries(tmp_path)[(f"{LORA}/nockpt/z0", 1024)]
    assert (nockpt["largest_fit_micro_batch"], nockpt["first_fail_micro_batch"]) == ("4", "8")
    assert nockpt["first_fail_status"] == "over-headroom" and nockpt["first_fail_source"] == "measured"
    assert float(nockpt["first_fail_peak_gib"]) == pytest.approx(78.0, abs=0.01)


def test_best_yaml_and_files(tmp_path):
    res = _run(tmp_path, _hw())
    run = tmp_path / "run"
    for name in ("probes.csv", "boundaries.csv", "best.yaml", "run.json", "study.db"):
        assert (run / name).exists(), name
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert best["training_args"]["per_device_train_batch_size"] == best["config"]["micro_batch"]
    assert best["training_args"]["gradient_accumulation_steps"] * best["config"]["micro_batch"] == 64
    assert best["peft"]["r"] == 8 and best["deepspeed"] is None
    assert best["measured"]["peak_gib"] <= best["hardware"]["limit_gib"]
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_every_probe_is_a_trial_and_oom_is_infeasible(tmp_path):
    import optuna

    # nockpt mb 8 needs 82.4 GiB: within the model's margin, so it is probed, and OOMs on 80 GiB.
    res = _run(tmp_path, _hw(per_token={f"{LORA}/nockpt/z0": 7.8 / 1024, f"{LORA}/ckpt/z0": 2.9 / 1024}))
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    probed = [t for t in study.trials if "status" in t.user_attrs]
    assert len(probed) == res.probes_run
    ooms = [t for t in probed if t.user_attrs["status"] == "oom"]
    assert ooms and all(t.state.name == "COMPLETE" and t.constraints["memory_over_limit_gib"] > 0 for t in ooms)
    assert all(t.constraints["memory_over_limit_gib"] <= 0 for t in probed if t.user_attrs["status"] == "ok" and t.user_attrs["peak"] <= t.user_attrs["limit"])


def test_nothing_fits_reports_largest_max_token(tmp_path):
    # A 24 GiB card: at T=2048 even checkpointed mb 1 exceeds the limit (22.1 GiB).
    res = _run(tmp_path, _hw(capacity=24.0), max_token=2048, budget=24 * GiB)
    out = res.outcome
    assert out.largest_fitting_max_token == 1024
    assert "nothing fits at max_token 2048" in out.note and "1024" in out.note
    assert res.best["config"]["max_token"] == 1024 and res.best["search"]["max_token_requested"] == 2048


def test_saturated_strategy_skips_slower_ones(tmp_path):
    off = "z3/offopt/offparam"
    keys = [f"{LORA}/nockpt/z0", f"{LORA}/ckpt/z0", f"{LORA}/nockpt/{off}", f"{LORA}/ckpt/{off}"]
    hw = FakeHardware(capacity=80.0, saturation_tokens=8.0,  # flat throughput: bigger batches gain nothing
                      fixed=dict(zip(keys, [20.0, 19.0, 4.0, 3.5])),
                      per_token=dict(zip(keys, [9.0 / 1024, 2.9 / 1024, 9.0 / 1024, 2.9 / 1024])),
                      speed=dict(zip(keys, [10000.0, 7600.0, 3000.0, 2500.0])))
    space = _space(zero=[{"stage": 0}, {"stage": 3, "offload_optimizer": True, "offload_params": True}])
    res = _run(tmp_path, hw, space=space)
    # The frugal one ran first (it confirms the search can run at all); after the fastest one
    # proved flat, the two strategies that are slower at equal micro-batch were not probed.
    for k in (f"{LORA}/ckpt/z0", f"{LORA}/nockpt/{off}"):
        assert "cannot beat" in res.outcome.strategies[k].skipped
        assert not [c for c in hw.calls if c[0] == k]
    assert res.best["config"]["strategy"] == f"{LORA}/nockpt/z0"


def test_strategy_errors_do_not_stop_the_search(tmp_path):
    hw = _hw(error_for={f"{LORA}/nockpt/z0"})
    res = _run(tmp_path, hw)
    assert res.best["config"]["strategy"] == f"{LORA}/ckpt/z0"


def test_interrupt_then_resume_reruns_nothing(tmp_path):
    hw = _hw(interrupt_at=3)
    with pytest.raises(Interrupted, match="--resume"):
        _run(tmp_path, hw)
    first = list(hw.calls)
    assert len(first) == 3
    rows = list(csv.DictReader(open(tmp_path / "run" / "probes.csv")))
    assert len(rows) == 3
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"
    # A second search in the same dir without --resume is refused; with it, nothing is re-run.
    with pytest.raises(RunDirError, match="--resume"):
        _run(tmp_path, _hw())
    hw2 = _hw()
    res = _run(tmp_path, hw2, resume=True)
    # Every probe key (strategy, shape, phase, repeat) ran once: the resumed run re-ran none of the three
    # (the winner's "fresh" re-measurement is a key of its own, even where its shape ran before).
    keys = [(r["strategy"], r["micro_batch"], r["max_token"], r["phase"], r["repeat"])
            for r in csv.DictReader(open(tmp_path / "run" / "probes.csv"))]
    assert len(keys) == len(set(keys)) == 3 + len(hw2.calls)
    assert keys[:3] == [(r["strategy"], r["micro_batch"], r["max_token"], r["phase"], r["repeat"]) for r in rows]
    assert res.probes_reused == 3
    # And the result equals an uninterrupted search's.
    fresh = _run(tmp_path / "fresh", _hw())
    assert res.best["config"] == fresh.best["config"]


def test_resume_refuses_another_search(tmp_path):
    _run(tmp_path, _hw())
    with pytest.raises(RunDirError, match="another search"):
        _run(tmp_path, _hw(), max_token=2048, resume=True)


def test_budget_exhausted_still_writes_results(tmp_path):
    res = _run(tmp_path, _hw(), budget_s=1e-9)
    assert res.outcome.budget_exhausted or res.probes_run <= 2
    assert (tmp_path / "run" / "probes.csv").exists()


def test_exploration_skips_cells_that_cannot_win(tmp_path):
    # ckpt jumps 2 -> 16, leaving 4 and 8 open; both of their measured neighbours are far below
    # the winner (nockpt mb 4), so the sampler is not given them.
    hw = _hw(speed={f"{LORA}/nockpt/z0": 14000.0, f"{LORA}/ckpt/z0": 7600.0})
    res = _run(tmp_path, hw, explore=2, device="cpu")
    assert not [c for c in hw.calls if c[0] == f"{LORA}/ckpt/z0" and c[1] in (4, 8)]
    assert (res.best["config"]["strategy"], res.best["config"]["micro_batch"]) == (f"{LORA}/nockpt/z0", 4)


def test_exploration_skips_cells_below_a_rising_upper_neighbour(tmp_path):
    # ckpt at mb 16 is the best and its jump (2 -> 16; no analytic slope on the CPU, so two points first)
    # left 4 and 8 open; throughput rises from mb 1 to mb 16, so neither can beat mb 16: not explored.
    hw = _hw()
    res = _run(tmp_path, hw, explore=2, device="cpu")
    assert not [c for c in hw.calls if c[0] == f"{LORA}/ckpt/z0" and c[1] in (4, 8)]
    assert (res.best["config"]["strategy"], res.best["config"]["micro_batch"]) == (f"{LORA}/ckpt/z0", 16)


def test_exploration_probes_open_cells_that_might_win(tmp_path):
    # Here ckpt's throughput falls from mb 1 to mb 16 and mb 1 is the best so far: the curve peaked
    # somewhere in between, so the cells the jump skipped (2, 4, 8) may win and are explored.
    ck = f"{LORA}/ckpt/z0"
    hw = _hw(tokens_at={(ck, 1): 6000.0, (ck, 2): 6300.0, (ck, 4): 6600.0, (ck, 8): 6400.0, (ck, 16): 5800.0})
    res = _run(tmp_path, hw, explore=3, device="cpu")
    explored = [c for c in hw.calls if c[0] == ck and c[1] in (2, 4, 8)]
    assert {c[1] for c in explored} == {2, 4, 8}  # explored, then the close ones re-measured
    assert (res.best["config"]["strategy"], res.best["config"]["micro_batch"]) == (ck, 4)


def test_a_peak_within_noise_of_the_budget_never_wins(tmp_path):
    # --headroom 0: nockpt mb 4 peaks at 79.5 of 80 GiB (it runs), yet it must not win.
    hw = _hw(per_token={f"{LORA}/nockpt/z0": 14.875 / 1024, f"{LORA}/ckpt/z0": 2.9 / 1024},
             speed={f"{LORA}/nockpt/z0": 20000.0, f"{LORA}/ckpt/z0": 7600.0})
    req_limits = Limits(80 * GiB, 0.0)
    assert req_limits.limit == pytest.approx(80 * GiB * 0.98)
    req = SearchRequest(ctx=Context(model="THUDM/glm-4-9b-chat", global_batch=64), source=resolve_model("THUDM/glm-4-9b-chat"),
                        space=_space(), max_token=1024, limits=req_limits, run_dir=tmp_path / "run")
    res = run_search(req, factory=lambda s: FakeSession(hw, s), progress=Progress(quiet=True))
    assert hw.peak(Strategy(grad_ckpt=False), Shape(4, 1024)) == pytest.approx(79.5)
    assert not (res.best["config"]["strategy"] == f"{LORA}/nockpt/z0" and res.best["config"]["micro_batch"] == 4)
    assert res.best["measured"]["peak_gib"] <= 80 * 0.98


def test_a_broken_frugal_strategy_is_not_a_memory_wall(tmp_path):
    # The frugal strategy errors (not OOM): the faster one must still be escalated from micro-batch 1.
    hw = _hw(error_for={f"{LORA}/ckpt/z0"})
    res = _run(tmp_path, hw)
    assert (f"{LORA}/nockpt/z0", 1, 1024) in hw.calls
    assert res.best["config"]["strategy"] == f"{LORA}/nockpt/z0"


def _rows(tmp_path):
    return list(csv.DictReader(open(tmp_path / "run" / "probes.csv")))


def test_winner_is_remeasured_alone_in_a_fresh_worker(tmp_path):
    hw = _hw()
    res = _run(tmp_path, hw)
    cfg = res.best["config"]
    cell = (cfg["strategy"], cfg["micro_batch"], 1024)
    fresh = [r for r in _rows(tmp_path) if r["phase"] == "fresh"]
    assert [(r["strategy"], int(r["micro_batch"]), int(r["max_token"])) for r in fresh] == [cell]
    # Its own worker (a new fake pid) that ran nothing else; the escalation's worker had run mb 1 first.
    pids = [r["worker_pid"] for r in _rows(tmp_path)]
    assert pids.count(fresh[0]["worker_pid"]) == 1
    assert hw.calls.count(cell) == 2 and res.best["measured"]["measurements"] == 2
    # Resumed, the check is not run again.
    hw2 = _hw()
    _run(tmp_path, hw2, resume=True)
    assert hw2.calls == []


def test_winner_over_the_limit_in_a_fresh_worker_gives_way(tmp_path):
    # A worker's first shape needs 9 GiB more: ckpt mb 16 (65.4 GiB after mb 1) needs 74.4 alone, over the
    # 73.6 GiB limit, so the user's training would cross the headroom line. The next candidate wins.
    hw = _hw(fresh_extra=9.0)
    res = _run(tmp_path, hw)
    rows = _rows(tmp_path)
    fresh = [r for r in rows if r["phase"] == "fresh"]
    assert (fresh[0]["strategy"], fresh[0]["micro_batch"], fresh[0]["fits"]) == (f"{LORA}/ckpt/z0", "16", "False")
    cfg = res.best["config"]
    assert (cfg["strategy"], cfg["micro_batch"]) != (f"{LORA}/ckpt/z0", 16)
    # The winner's peak is its fresh-worker figure (the larger), within the limit.
    last = fresh[-1]
    assert (last["strategy"], int(last["micro_batch"]), last["fits"]) == (cfg["strategy"], cfg["micro_batch"], "True")
    assert res.best["measured"]["peak_gib"] == pytest.approx(float(last["peak_gib"]), abs=1e-3)
    assert res.best["measured"]["peak_gib"] <= 73.6


@pytest.mark.parametrize("status, winner_mb", [("crash", 4), ("timeout", 4), ("oom", 2)])
def test_fresh_check_failure_drops_the_winner_only_on_oom(status, winner_mb):
    # One strategy, mb 1/2/4 fit after each other in one worker; mb 8 is an OOM. The fresh probe of mb 4
    # fails: an OOM there is a memory verdict (mb 2 wins, after its own fresh check); a crash or a timeout
    # is not (mb 4 stands on the escalation's figure).
    from autofit.search.planner import Planner
    from autofit.spec import ProbeResult, Status

    s = _space(grad_ckpt=[True]).strategies(1)[0]
    asked = []

    def measure(st, shape, phase, repeat):
        asked.append((shape.micro_batch, phase))
        base = dict(strategy=st.key(), micro_batch=shape.micro_batch, max_token=shape.max_token)
        if shape.micro_batch >= 8 or (phase == "fresh" and shape.micro_batch == 4):
            bad = Status(status) if phase == "fresh" else Status.OOM
            return ProbeResult(**base, status=bad, error="fake")
        gib = int((10 + 5 * shape.micro_batch) * GiB)
        return ProbeResult(**base, status=Status.OK, step_s=1.0, tokens_per_s=1000.0 * shape.micro_batch,
                           peak_reserved=gib, nvml_peak=gib, worker_pid=2 if phase == "fresh" else 1)

    p = Planner([s], (1, 2, 4, 8), (1024,), 1024, 64, Limits(80 * GiB, 0.08), measure)
    out = p.run()
    assert out.winner[1] == winner_mb
    assert (4, "fresh") in asked and ((2, "fresh") in asked) == (status == "oom")


def test_an_interrupt_after_the_row_is_written_counts_it_as_saved(tmp_path, monkeypatch):
    from autofit.search import study as studymod

    real, calls = studymod.record, []

    def record_then_ctrl_c(*a, **kw):  # Ctrl-C lands between the probes.csv row and the study's record
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(studymod, "record", record_then_ctrl_c)
    with pytest.raises(Interrupted) as info:
        _run(tmp_path, _hw())
    rows = list(csv.DictReader(open(tmp_path / "run" / "probes.csv")))
    assert len(rows) == 3 and str(info.value).startswith("interrupted: 3 finished probe(s) saved")
    monkeypatch.undo()
    hw = _hw()
    res = _run(tmp_path, hw, resume=True)
    assert res.probes_reused == 3 and (rows[2]["strategy"], int(rows[2]["micro_batch"]), 1024) not in hw.calls


@pytest.mark.parametrize("at_once", [True, False])
def test_a_probe_s_attributes_are_stored_whole_and_in_one_transaction(tmp_path, monkeypatch, at_once):
    """record() writes a probe's attributes in one transaction with the installed Optuna (each of Optuna's
    set_user_attr is its own); where its internals differ, one by one. The study holds the same either way."""
    import optuna
    from sqlalchemy import event

    from autofit.search import study as st
    from autofit.spec import ProbeResult, Status

    if not at_once:
        monkeypatch.setattr(st, "_set_user_attrs_at_once", lambda *a: False)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    key = "lora-r8/bf16-pure/nockpt/z0"
    study, dists, rdb = st.open_study(url, "s", [key], (1, 2), (1024,))
    study.enqueue_trial({"strategy": key, "micro_batch": 2, "max_token": 1024})
    trial = study.ask(dists)
    commits = []
    event.listen(rdb.engine, "commit", lambda conn: commits.append(1))
    r = ProbeResult(key, 2, 1024, Status.OK, tokens_per_s=1234.5, step_s=1.0, nvml_peak=10 * 2**30, host_peak=2**30)
    st.record(study, trial, r, 10 * 2**30, 20 * 2**30, "escalate", 0)
    want = st.attrs(r, 10 * 2**30, 20 * 2**30, "escalate", 0)
    stored = optuna.load_study(study_name="s", storage=url).trials[0]
    assert stored.user_attrs == want and stored.value == 1234.5
    assert (len(commits) < len(want)) == at_once, len(commits)
