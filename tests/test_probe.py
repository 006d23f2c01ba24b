"""Real probes on the CPU: a tiny Qwen2 the test builds, trained by real worker processes.

Also the failure paths with workers that really hang, really segfault, really get SIGKILLed, really
raise and really fail to allocate. These are not fakes: each test starts a worker process, forked from one
that imported the stack (tests/conftest.py) or, where a test asks, `python -m autofit.probe.worker`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from autofit.models import resolve_model
from autofit.probe.runner import WorkerSession, escalate
from autofit.spec import Context, Method, Shape, Status, Strategy
from tests.procs import alive

pytestmark = pytest.mark.slow


def _ctx(tiny_model_dir: Path, **kw) -> Context:
    base = dict(model=str(tiny_model_dir), device="cpu", gpus=(), global_batch=8, warmup_steps=1, measure_steps=2,
                probe_timeout_s=120, build_timeout_s=120)
    base.update(kw)
    return Context(**base)


def _session(tmp_path, tiny_model_dir, strategy=Strategy(precision="fp32"), env=None, **ctx_kw) -> WorkerSession:
    ctx = _ctx(tiny_model_dir, **ctx_kw)
    return WorkerSession(ctx, strategy, resolve_model(str(tiny_model_dir)), tmp_path / "io", env=env)


@pytest.fixture(scope="module")
def escalated(tmp_path_factory, tiny_model_dir):
    """One warm worker for the tests that only need its probes: three shapes that fit, then one that cannot
    (address space capped 300 MB above the built model), then one that must never run."""
    from autofit.probe import protocol

    env = {"AUTOFIT_TEST_HOST_LIMIT": str(300 * 2**20)}
    # A fresh interpreter, as outside the test suite: its imports are timed (tests/conftest.py exec_workers).
    with pytest.MonkeyPatch.context() as mp, _session(tmp_path_factory.mktemp("warm"), tiny_model_dir, env=env) as s:
        mp.delenv("AUTOFIT_FORK_WORKERS", raising=False)
        results = list(escalate(s, [Shape(1, 64), Shape(2, 64), Shape(4, 64), Shape(64, 512), Shape(128, 512)]))
        # What the worker said once its imports were done, before its plan: what a standby is judged by.
        ready = protocol.read_json(protocol.ready_path(s.io_dir))
    return results, ready


def test_ok_path_fills_every_field_and_reuses_the_worker(escalated):
    escalated, ready = escalated
    results = escalated[:3]
    assert [r.status for r in results] == [Status.OK] * 3
    for r in results:
        assert r.strategy == "lora-r8/fp32/nockpt/z0"
        assert r.grad_accum == 8 // r.micro_batch
        assert 0 < r.micro_step_s < 10 and r.optimizer_step_s >= 0
        assert r.step_s == pytest.approx(r.grad_accum * r.micro_step_s + r.optimizer_step_s, rel=1e-3)
        assert r.tokens_per_s == pytest.approx(8 * 64 / r.step_s, rel=1e-3)
        assert 50 * 2**20 < r.host_peak < 8 * 2**30  # a python process with torch, not a fantasy
        assert r.peak_allocated is None and r.nvml_peak is None  # CPU run: no device memory to report
        assert r.device_name.startswith("cpu")
        assert r.time_import_s > 0.1 and r.time_build_s > 0 and r.time_steps_s > 0
        assert r.weights == "random"
    # one warm worker served every shape: imports and build were paid once
    assert len({r.worker_pid for r in escalated}) == 1
    assert not alive(results[0].worker_pid)
    assert ready["import_s"] > 0.1


def test_real_allocation_failure_is_an_oom_and_ends_the_escalation(escalated):
    escalated, _ = escalated
    assert [r.status for r in escalated] == [Status.OK] * 3 + [Status.OOM]
    assert "memory" in escalated[3].error.lower()


@pytest.mark.parametrize("strategy", [
    Strategy(method=Method(kind="full"), precision="bf16"),
    Strategy(method=Method(kind="freeze", freeze_trainable_layers=1), precision="bf16-pure"),
    Strategy(method=Method(kind="lora", lora_r=4, lora_targets=("q_proj", "v_proj")), precision="bf16-pure", grad_ckpt=True),
], ids=lambda s: s.key())
def test_methods_and_precisions_train(tmp_path, tiny_model_dir, strategy):
    with _session(tmp_path, tiny_model_dir, strategy=strategy) as s:
        r = s.probe(Shape(2, 32))
    assert r.status is Status.OK, r.error
    assert r.tokens_per_s > 0


def test_cpu_offload_is_a_clear_error(tmp_path, tiny_model_dir):
    with _session(tmp_path, tiny_model_dir, strategy=Strategy(zero_stage=2, offload_optimizer=True)) as s:
        r = s.probe(Shape(1, 32))
    assert r.status is Status.ERROR
    assert "offload: ZeRO moves state" in r.error


def test_hang_is_a_timeout_and_leaves_no_process(tmp_path, tiny_model_dir):
    with _session(tmp_path, tiny_model_dir, env={"AUTOFIT_TEST_FAULT": "hang@probe"}, probe_timeout_s=3) as s:
        r = s.probe(Shape(1, 32))
        pid = s.proc.pid
    assert r.status is Status.TIMEOUT and "3s" in r.error
    assert not alive(pid)


def test_hang_while_building_is_a_timeout(tmp_path, tiny_model_dir):
    with _session(tmp_path, tiny_model_dir, env={"AUTOFIT_TEST_FAULT": "hang@build"}, probe_timeout_s=2, build_timeout_s=8) as s:
        r = s.probe(Shape(1, 32))
    assert r.status is Status.TIMEOUT


@pytest.mark.parametrize("forked", [False, True], ids=["spawned", "forked"])
@pytest.mark.parametrize("fault,fragment", [("segv", "SIGSEGV"), ("sigkill", "SIGKILL (host out of memory?")])
def test_worker_that_dies_on_a_signal_is_a_crash(tmp_path, tiny_model_dir, monkeypatch, fault, fragment, forked):
    if not forked:
        monkeypatch.delenv("AUTOFIT_FORK_WORKERS", raising=False)
    with _session(tmp_path, tiny_model_dir, env={"AUTOFIT_TEST_FAULT": f"{fault}@probe"}) as s:
        r = s.probe(Shape(1, 32))
        pid = s.proc.pid
    assert r.status is Status.CRASH
    assert fragment in r.error
    assert not alive(pid)


def test_a_forked_worker_skips_the_imports_and_probes_like_a_spawned_one(tmp_path, tiny_model_dir, escalated, monkeypatch):
    """AUTOFIT_FORK_WORKERS=1 (autofit/probe/forked.py): the worker forks from a process that imported the stack,
    so it reports the imports as (nearly) free where a spawned worker paid them, and measures the same way."""
    spawned, ready = escalated
    monkeypatch.setenv("AUTOFIT_FORK_WORKERS", "1")
    with _session(tmp_path, tiny_model_dir) as s:
        r = s.probe(Shape(1, 64))
        pid = s.proc.pid
    assert r.status is Status.OK and r.worker_pid == pid != os.getpid()
    assert r.time_import_s < 0.1 < ready["import_s"] and r.time_import_s < spawned[0].time_import_s
    assert r.grad_accum == spawned[0].grad_accum and r.time_build_s > 0 and r.host_peak > 50 * 2**20
    assert not alive(pid)


def test_a_worker_that_died_of_an_oom_reports_the_oom_not_the_launcher_s_last_line(tmp_path, tiny_model_dir):
    with _session(tmp_path, tiny_model_dir, env={"AUTOFIT_TEST_FAULT": "rank-oom@probe"}) as s:
        r = s.probe(Shape(1, 32))
    assert r.status is Status.OOM
    assert r.error.startswith("torch.OutOfMemoryError: CUDA out of memory")


def test_unknown_exception_is_an_error_with_its_last_line(tmp_path, tiny_model_dir):
    with _session(tmp_path, tiny_model_dir, env={"AUTOFIT_TEST_FAULT": "raise@probe"}) as s:
        r = s.probe(Shape(1, 32))
    assert r.status is Status.ERROR
    assert r.error == "ValueError: injected test failure"


def test_real_weights_load_from_a_local_directory(tmp_path):
    """--weights real: the user's own weights, loaded from their directory (a tiny model saved here)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tests.conftest import TINY

    d = tmp_path / "with-weights"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2Config(**TINY)).save_pretrained(d)
    source = resolve_model(str(d))
    assert source.has_weights
    ctx = Context(model=str(d), weights="real", device="cpu", gpus=(), global_batch=4, probe_timeout_s=120, build_timeout_s=120)
    with WorkerSession(ctx, Strategy(precision="fp32"), source, tmp_path / "io") as s:
        r = s.probe(Shape(2, 32))
    assert r.status is Status.OK, r.error
    assert r.weights == "real"


def _speculated(monkeypatch, tmp_path, cuda: str | None, plan_after: int | None, fail: set[str] = frozenset()) -> list[str]:
    """The libraries a worker imports ahead of its plan; the plan file appears after `plan_after` of them."""
    import importlib

    from autofit.probe import protocol, worker

    names: list[str] = []
    real = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name not in worker.SPECULATIVE:  # importlib is global: everything else imports as usual
            return real(name, *args, **kwargs)
        names.append(name)
        if plan_after is not None and len(names) >= plan_after:
            protocol.plan_path(tmp_path).write_text("{}")
        if name in fail:
            raise RuntimeError(f"{name} is broken here")

    if cuda is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda)
    monkeypatch.setattr(worker.importlib, "import_module", import_module)
    if plan_after == 0:
        protocol.plan_path(tmp_path).write_text("{}")
    worker._preimport(tmp_path)
    return names


def test_a_standby_imports_the_techniques_until_its_plan_arrives(monkeypatch, tmp_path):
    from autofit.probe.worker import SPECULATIVE

    # On a GPU and no plan yet: every technique's library, a broken one skipped (setup reports it if needed).
    assert _speculated(monkeypatch, tmp_path, "0", None, fail={"liger_kernel.transformers"}) == list(SPECULATIVE)


def test_a_worker_whose_plan_is_here_imports_only_what_it_needs(monkeypatch, tmp_path):
    from autofit.probe import protocol

    assert _speculated(monkeypatch, tmp_path, "0", 0) == []
    protocol.plan_path(tmp_path).unlink()
    assert _speculated(monkeypatch, tmp_path, "0", 1) == ["liger_kernel.transformers"]


def test_no_speculative_imports_without_a_gpu(monkeypatch, tmp_path):
    assert _speculated(monkeypatch, tmp_path, None, None) == []
    assert _speculated(monkeypatch, tmp_path, "", None) == []


class _FakeWorker:
    """A FAKE worker session for the standby bookkeeping only: no process; `ready` is set by the test."""
    made: list["_FakeWorker"] = []

    def __init__(self, ctx, strategy, source, io_dir, env=None):
        self.ctx, self.io_dir, self.proc, self.is_ready, self.killed, self.strategy = ctx, io_dir, None, False, False, None
        _FakeWorker.made.append(self)

    def spawn(self):
        self.proc = object()

    def assign(self, strategy):
        self.strategy = strategy

    def ready(self):
        return self.is_ready

    def kill(self):
        self.killed = True


def test_a_second_standby_starts_once_the_first_is_ready_and_none_after_the_last_fresh_check(monkeypatch, tmp_path):
    from autofit.probe import runner

    monkeypatch.setattr(runner, "WorkerSession", _FakeWorker)
    _FakeWorker.made = []
    f = runner.StandbyFactory(Context(model="m", device="cuda", gpus=(0,)), None, tmp_path)
    f.prepare()
    first = f(Strategy())
    assert first is _FakeWorker.made[0] and len(f.standbys) == 1  # the next one spawned as the first is taken
    assert first.while_waiting == f.tick  # the second standby may start while the first probe runs
    f.tick()
    assert len(f.standbys) == 1  # not ready yet: the first worker's imports come first
    f.standbys[0].is_ready = True
    f.tick()
    f.tick()
    assert len(f.standbys) == 2  # two at most
    checked = f.fresh(Strategy(grad_ckpt=True), standby=True)
    assert checked is _FakeWorker.made[1]  # the oldest, most ready, first
    assert f.standbys == _FakeWorker.made[2:4]  # a ready one taken is replaced at once, not at the next tick
    f.standbys[0].is_ready = True
    f.tick()
    assert len(f.standbys) == 2
    last = f.fresh(Strategy(grad_ckpt=True), standby=False)
    assert last is _FakeWorker.made[2] and f.standbys == [] and _FakeWorker.made[3].killed
    f.tick()
    assert f.standbys == []  # nothing follows the last fresh check
    cpu = runner.StandbyFactory(Context(model="m", device="cpu"), None, tmp_path)
    cpu.prepare()
    cpu.standbys[0].is_ready = True
    cpu.tick()
    assert len(cpu.standbys) == 1  # on the CPU one standby: its imports compete with the probe for the cores


class _Running:
    """A FAKE process that is still running: the session waits on its answer file."""
    pid = 0

    def poll(self):
        return None


def test_a_session_waiting_on_its_probe_lets_the_factory_start_a_standby(tmp_path):
    """The hook runs while the probe runs, not only between probes: here the answer arrives only after it ran."""
    from autofit.probe import protocol

    s = WorkerSession(Context(model="m"), Strategy(), None, tmp_path)
    s.proc, s.planned = _Running(), True
    calls = []

    def tick():
        calls.append(1)
        if len(calls) == 3:  # the probe ends after a few polls
            protocol.write_json(protocol.res_path(s.io_dir, 0, 0), {
                "strategy": "x", "micro_batch": 1, "max_token": 8, "status": "ok", "tokens_per_s": 1.0})

    s.while_waiting = tick
    got = s._await(Shape(1, 8), deadline=time.time() + 5, limit=5)
    assert got.status is Status.OK and len(calls) == 3
