"""Runs a search: run dir, lock, Optuna study, warm worker sessions, resume, outputs.

Order of writes for each probe: probes.csv row (fsync'd) first, then the study, then
boundaries.csv. probes.csv is the source of truth on --resume; the study is reconciled with it.
"""

from __future__ import annotations

import hashlib
import signal
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from autofit.errors import Interrupted, RunDirError
from autofit.models import ModelSource
from autofit.results import append_probe, read_probes, result_from_row
from autofit.search import outputs, study as studymod
from autofit.search.planner import Limits, Outcome, Planner, peak_of
from autofit.search.progress import Progress
from autofit.search.rundir import RunDir, RunLock, check_resume, write_run_json
from autofit.search.space import SearchSpace
from autofit.spec import Context, ProbeResult, Shape, Strategy, to_jsonable


class Session(Protocol):
    dead: bool

    def probe(self, shape: Shape) -> ProbeResult: ...
    def close(self) -> None: ...
    def phase(self) -> dict | None: ...


SessionFactory = Callable[[Strategy], Session]  # may also have close() (e.g. to stop a standby worker)


@dataclass(frozen=True)
class SearchRequest:
    ctx: Context
    source: ModelSource
    space: SearchSpace
    max_token: int
    limits: Limits
    run_dir: Path
    budget_s: float | None = None
    resume: bool = False
    storage: str | None = None
    explore: int = 2
    worker_env: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        space_hash = hashlib.sha256(repr(to_jsonable(self.space)).encode()).hexdigest()[:12]
        c = self.ctx
        return {"model": self.source.name, "max_token": self.max_token, "global_batch": c.global_batch,
                "device": c.device, "gpus": list(c.gpus), "gpu_memory": c.gpu_memory, "weights": c.weights,
                "space": f"{self.space.name}:{space_hash}", "headroom": self.limits.headroom}


@dataclass
class SearchResult:
    outcome: Outcome
    run: RunDir
    probes_run: int
    probes_reused: int
    wall_time_s: float
    best: dict[str, Any] | None
    summary: str


class _Pool:
    """At most one live worker: GPU memory belongs to one strategy at a time."""

    def __init__(self, factory: SessionFactory):
        self.factory = factory
        self.key: str | None = None
        self.session: Session | None = None
        self.count = 0

    def get(self, s: Strategy) -> Session:
        if self.session is not None and (self.key != s.key() or self.session.dead):
            self.release()
        if self.session is None:
            self.count += 1
            self.session = self.factory(s)
            self.key = s.key()
        return self.session

    def release(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self.key = None, None

    def close(self) -> None:
        self.release()
        getattr(self.factory, "close", lambda: None)()


def run_search(req: SearchRequest, factory: SessionFactory | None = None, progress: Progress | None = None,
               header: str | None = None) -> SearchResult:
    """Run (or resume) a search. `header` is printed once every input has been validated."""
    run = RunDir(Path(req.run_dir))
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--run-dir {run.path} exists and is not a directory")
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run dir {run.path}: {exc.strerror}") from None
    progress = progress or Progress()
    with RunLock(run):
        check_resume(run, req.identity(), req.resume)
        return _Search(req, run, factory, progress).go(header)


class _Search:
    def __init__(self, req: SearchRequest, run: RunDir, factory: SessionFactory | None, progress: Progress):
        self.req, self.run, self.progress = req, run, progress
        # Walls are mapped at the requested max_token and at the space's; the largest sets the RoPE cache.
        tokens = sorted(set(req.space.max_tokens) | {req.max_token})
        self.ctx = replace(req.ctx, max_positions=max(tokens))
        self.tokens = tuple(tokens)
        self.strategies = req.space.strategies(self.ctx.num_gpus)
        self.by_key = {s.key(): s for s in self.strategies}
        if factory is None:
            from autofit.probe.runner import StandbyFactory

            factory = StandbyFactory(self.ctx, req.source, run.io, env=req.worker_env)
        self.pool = _Pool(factory)
        self.cache: dict[tuple, ProbeResult] = {}
        self.probes_run = 0
        self.t0 = time.time()

    # -- setup ----------------------------------------------------------------------------------
    def _open_study(self):
        storage = self.req.storage or f"sqlite:///{self.run.study_db.resolve()}"
        self.study, self.dists = studymod.open_study(storage, f"autofit-{self.req.identity()['space']}",
                                                     [s.key() for s in self.strategies], self.req.space.micro_batches,
                                                     self.tokens)

    def _load_previous(self) -> None:
        """Reload finished probes and make the study agree with probes.csv."""
        from optuna.trial import TrialState

        rows = read_probes(self.run.probes)
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for row in rows:
            key = (row["strategy"], int(row["micro_batch"]), int(row["max_token"]), row["phase"], int(row["repeat"] or 0))
            r = result_from_row(row)
            self.cache[key] = r
            s = self.by_key.get(row["strategy"])
            t = trials.get(int(row["trial"])) if row["trial"] else None
            if s is not None and (t is None or t.state == TrialState.RUNNING):
                # The driver died between writing the row and telling the study.
                if t is not None:
                    self.study.tell(t.number, state=TrialState.FAIL)
                studymod.add_finished(self.study, self.dists, s, Shape(key[1], key[2]), r, peak_of(r),
                                      self.req.limits.limit, key[3], key[4])
        stale = studymod.fail_stale_running(self.study)
        if stale:
            self.progress.log(f"{stale} probe(s) were in flight when the last run died; they run again")
        if rows:
            self.progress.log(f"resuming: {len(rows)} finished probe(s) from {self.run.probes} will not run again")

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, s: Strategy, shape: Shape, phase: str, repeat: int, trial=None) -> ProbeResult:
        key = (s.key(), shape.micro_batch, shape.max_token, phase, repeat)
        limits = self.req.limits
        if key in self.cache:
            r = self.cache[key]
            if trial is not None:
                self.study.tell(trial, state=_pruned(), skip_if_finished=True)
            self.progress.done(r, limits.fits(r), peak_of(r), cached=True)
            return r
        if trial is None:
            self.study.enqueue_trial(studymod.params(s, shape), skip_if_exists=False)
            trial = self.study.ask(self.dists)
        session = self.pool.get(s)
        self.progress.start(s, shape, phase, session.phase)
        r = session.probe(shape)
        self.probes_run += 1
        peak = peak_of(r)
        append_probe(self.run.probes, r, s, trial=trial.number, fits=limits.fits(r), finished_at=time.time(),
                     phase=phase, repeat=repeat, peak=peak)
        self.cache[key] = r
        studymod.record(self.study, trial, r, peak, limits.limit, phase, repeat)
        outputs.write_boundaries(self.run.boundaries, self.cache, limits)
        self.progress.done(r, limits.fits(r), peak)
        return r

    def explore(self, planner: Planner, out: Outcome) -> None:
        """TPE proposes among what the escalation left open (max_token fixed to the target)."""
        import optuna

        cells = {(s.key(), mb) for s, mb in planner.open_cells(out)}
        if not cells or self.req.explore <= 0:
            return
        self.progress.log(f"exploring with TPE: {len(cells)} open cell(s), at most {self.req.explore} probe(s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = optuna.samplers.PartialFixedSampler(
                {"max_token": planner.target}, studymod.make_sampler(seed=len(self.study.trials)))
        probes = 0
        for _ in range(20):
            if probes >= self.req.explore or not cells or planner.out_of_time():
                break
            trial = self.study.ask(self.dists)
            k, mb = trial.params["strategy"], trial.params["micro_batch"]
            if (k, mb) not in cells:
                trial.set_user_attr("not_run", "known, implied by a wall, or covered by a faster strategy")
                self.study.tell(trial, state=_pruned())
                continue
            cells.discard((k, mb))
            r = self.measure(self.by_key[k], Shape(mb, planner.target), "explore", 0, trial=trial)
            planner.results[(k, mb, planner.target, "explore", 0)] = r
            probes += 1

    # -- the whole search -----------------------------------------------------------------------
    def go(self, header: str | None = None) -> SearchResult:
        self._open_study()
        self._load_previous()
        if header:
            self.progress.log(header)
        write_run_json(self.run, self.req.identity(), {"status": "running", "space": to_jsonable(self.req.space),
                                                       "context": to_jsonable(self.ctx)})
        deadline = self.t0 + self.req.budget_s if self.req.budget_s else None
        space = self.req.space
        cap = max(1, self.ctx.global_batch // self.ctx.num_gpus)
        planner = Planner(self.strategies, space.micro_batches, self.tokens, self.req.max_token, cap, self.req.limits,
                          lambda s, shape, ph, rep: self.measure(s, shape, ph, rep), deadline=deadline,
                          log=self.progress.log)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            out = planner.run(explore=self.explore)
        except KeyboardInterrupt:
            self._stop_after_interrupt(planner)
            raise Interrupted(f"interrupted: {len(self.cache)} finished probe(s) saved in {self.run.path}; "
                              "run the same command with --resume to continue") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.pool.close()
        return self._finish(out, planner)

    def _stop_after_interrupt(self, planner: Planner) -> None:
        self.pool.close()
        studymod.fail_stale_running(self.study)
        outputs.write_boundaries(self.run.boundaries, self.cache, self.req.limits)
        write_run_json(self.run, self.req.identity(), {"status": "interrupted", "probes": len(self.cache)})

    def _finish(self, out: Outcome, planner: Planner) -> SearchResult:
        wall = time.time() - self.t0
        results = planner.results
        best = outputs.best_document(out, self.ctx, self.req.source, self.req.limits, results, self.req.space.name,
                                     wall, self.probes_run)
        if best:
            outputs.write_best(self.run, best)
        outputs.write_boundaries(self.run.boundaries, self.cache, self.req.limits, out)
        write_run_json(self.run, self.req.identity(), {
            "status": "done", "probes_run": self.probes_run, "probes_total": len(self.cache), "wall_time_s": round(wall, 1),
            "workers_started": self.pool.count, "winner": best["config"] if best else None, "note": out.note or None})
        return SearchResult(outcome=out, run=self.run, probes_run=self.probes_run,
                            probes_reused=len(self.cache) - self.probes_run, wall_time_s=wall, best=best,
                            summary=outputs.summary_table(out, self.cache, self.req.limits))


def _pruned():
    from optuna.trial import TrialState

    return TrialState.PRUNED


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: stop cleanly, keep everything
    raise KeyboardInterrupt
