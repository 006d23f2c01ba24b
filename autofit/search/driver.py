"""Runs a search: run dir, lock, Optuna study, warm worker sessions, resume, outputs.

Each probe is written to probes.csv and the study in the order its ledger keeps (ledger.py: a local
SQLite study, or one shared by several workers), then to boundaries.csv.

With a shared study the planner is replayed in passes: a probe that another worker is running answers
the pass with a placeholder (so this worker goes on with probes further along the plan) and the pass
is tried again; only a pass that met no placeholder decides the winner, so every worker names the same one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from autofit.errors import AutofitError, Interrupted, RunDirError, StorageError
from autofit.models import ModelSource
from autofit.rundir.records import append_probe, read_probe_log
from autofit.search import outputs, study as studymod
from autofit.search.ledger import ledger_for
from autofit.search.planner import Limits, Outcome, Planner, combine, families, peak_of
from autofit.search.prior import AnalyticPrior
from autofit.search.progress import Progress
from autofit.rundir import RunDir, RunLock, check_resume
from autofit.rundir.best import write_run_json
from autofit.search.space import SearchSpace, runnable_strategies
from autofit.search.workers import Claim
from autofit.writable import check_writable_dir, remove_quietly
from autofit.spec import Context, ProbeKey, ProbeResult, Shape, Status, Strategy, to_jsonable

POLL_S = 1.0  # how often a worker waiting on another's probe looks at the study again


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
    heartbeat_s: int = 10  # shared storage only: a worker silent for 3x this long is presumed dead
    quantize: bool = False  # 4/8-bit configurations may win (they are measured and reported either way)

    def identity(self) -> dict[str, Any]:
        space_hash = hashlib.sha256(repr(self.space.identity()).encode()).hexdigest()[:12]
        c = self.ctx
        return {"model": self.source.name, "max_token": self.max_token, "global_batch": c.global_batch,
                "device": c.device, "gpus": list(c.gpus), "gpu_memory": c.gpu_memory, "weights": c.weights,
                "space": f"{self.space.name}:{space_hash}", "headroom": self.limits.headroom,
                **({"hosts": [list(h) for h in c.hosts]} if c.hosts else {})}

    def study_name(self) -> str:
        """Workers share a study when they run the same search; which GPU each uses does not matter."""
        ident = {k: v for k, v in self.identity().items() if k != "gpus"} | {"num_gpus": self.ctx.num_gpus}
        if self.storage is None:
            return f"autofit-{ident['space']}"
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"autofit-{ident['space']}-{digest}"


@dataclass
class SearchResult:
    outcome: Outcome
    run: RunDir
    probes_run: int
    probes_reused: int
    wall_time_s: float
    best: dict[str, Any] | None
    summary: str


class _Wait(Exception):
    """A planner pass needs a result another worker is still measuring: pass again later."""


class _Pool:
    """At most one live worker: GPU memory belongs to one strategy at a time."""

    def __init__(self, factory: SessionFactory):
        self.factory = factory
        self.key: str | None = None
        self.session: Session | None = None
        self.count = 0
        self.more_after_fresh = True  # another family's probes follow a fresh check: keep a standby for them

    def get(self, s: Strategy, fresh: bool = False) -> Session:
        """The live worker for s, or a new one; `fresh`: always a new one, alone with its shape as the user's
        training starts (planner._fresh_check), made by the factory's `fresh` when it has one."""
        if self.session is not None and (fresh or self.key != s.key() or self.session.dead):
            self.release()
        getattr(self.factory, "tick", lambda: None)()
        if self.session is None:
            self.count += 1
            fresh_of = getattr(self.factory, "fresh", None)
            self.session = (fresh_of(s, standby=self.more_after_fresh) if fresh and fresh_of else self.factory(s))
            self.key = s.key()
        return self.session

    def release(self, kill: bool = False) -> None:
        """Stop the live worker: ask it to exit (close), or, with `kill` (after Ctrl-C, when it is mid-probe
        and would not answer the stop request before close's 10 s grace), kill it at once (a multi-host
        one still gets SIGTERM first)."""
        if self.session is not None:
            (getattr(self.session, "kill", self.session.close) if kill else self.session.close)()
        self.session, self.key = None, None

    def close(self, kill: bool = False) -> None:
        self.release(kill)
        getattr(self.factory, "close", lambda: None)()


def run_search(req: SearchRequest, factory: SessionFactory | None = None, progress: Progress | None = None,
               header: str | None = None) -> SearchResult:
    """Run (or resume) a search. `header` is printed once every input has been validated."""
    run = RunDir(Path(req.run_dir))
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--run-dir {run.path} exists and is not a directory")
    new = [p for p in (run.path, run.study_db, run.run_json, run.io) if not p.exists()]
    check_writable_dir(run.path, create=True)  # read-only, a file in the way, a full disk: said before anything starts
    progress = progress or Progress()
    try:
        with RunLock(run):
            check_resume(run, req.identity(), req.resume)
            return _Search(req, run, factory, progress).go(header)
    except AutofitError as exc:
        if not isinstance(exc, Interrupted) and not (run.probes_csv.exists() and run.probes_csv.stat().st_size):
            _remove_new(new)
        raise


def _remove_new(paths: list[Path]) -> None:
    """A start that failed before any probe leaves nothing it created behind (a study.db, an empty run dir)."""
    import shutil

    for p in reversed(paths):  # the run dir last, and only when nothing else is in it
        if p.is_dir() and p.name == "probe_io":
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir():
            try:
                p.rmdir()
            except OSError:
                pass
        else:
            remove_quietly(p)


class _Search:
    def __init__(self, req: SearchRequest, run: RunDir, factory: SessionFactory | None, progress: Progress):
        self.req, self.run, self.progress = req, run, progress
        # Walls are mapped at the requested max_token and at the space's; the largest sets the RoPE cache.
        tokens = sorted(set(req.space.max_tokens) | {req.max_token})
        self.ctx = replace(req.ctx, max_positions=max(tokens))
        self.tokens = tuple(tokens)
        # None runnable: one line, not Optuna's ValueError. Techniques this machine lacks are left out, once each.
        self.strategies, self.unavailable = runnable_strategies(req.space, self.ctx)
        self.by_key = {s.key(): s for s in self.strategies}
        if factory is None:
            from autofit.probe.runner import StandbyFactory

            factory = StandbyFactory(self.ctx, req.source, run.io, env=req.worker_env)
        self.pool = _Pool(factory)
        self.cache: dict[tuple, ProbeResult] = {}
        self.probes_run = 0
        self.t0 = time.time()
        self.worker = f"{socket.gethostname()}:{run.path.resolve()}"
        self.busy: dict[ProbeKey, int] = {}  # keys this pass found in flight elsewhere -> their trial numbers
        self.mirrored: set[ProbeKey] = set()  # keys with a row in probes.csv
        self.announced: set[ProbeKey] = set()  # keys whose result was printed
        self.logged: set[str] = set()
        self.inflight: Claim | None = None
        self.started = False               # run.json says "running": a failure from here on is recorded there
        self.ledger = ledger_for(self)

    # -- setup ----------------------------------------------------------------------------------
    def _open_study(self):
        self.study, self.dists, self.board = self.ledger.open()

    def _load_previous(self) -> None:
        """Reload finished probes (the ledger makes the study and probes.csv agree)."""
        self.ledger.load_previous(read_probe_log(self.run.probes_csv))

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, s: Strategy, shape: Shape, phase: str, repeat: int) -> ProbeResult:
        key = ProbeKey.of(s, shape, phase, repeat)
        r = self._known(key)
        if r is not None:
            return r
        if phase == "fresh" and self.busy:
            # This pass met probes in flight on other workers: its candidates may not be the final ones,
            # and a fresh check of the wrong one would be a probe no complete pass asks for.
            raise _Wait
        claim = None if self.board.busy(key) is not None else self.board.claim(key, studymod.params(s, shape))
        if claim is None:  # another worker has it (or has just finished it)
            return self._known(key) or self._in_flight(key)
        session = self.pool.get(s, fresh=phase == "fresh")
        self.progress.start(s, shape, phase, session.phase)
        self.inflight = claim
        with self.board.beating(claim):
            r = session.probe(shape)
        self.probes_run += 1
        saved = self._save(key, s, claim, r)
        self.inflight = None
        return r if saved else (self._known(key) or self._in_flight(key))

    def _save(self, key: ProbeKey, s: Strategy, claim: Claim, r: ProbeResult) -> bool:
        limits, peak = self.req.limits, peak_of(r)
        row = dict(trial=claim.number, fits=limits.fits(r), finished_at=time.time(), phase=key.phase, repeat=key.repeat, peak=peak)
        if not self.ledger.record(key, s, claim, r, row):
            return False
        self.cache[key] = r
        self.mirrored.add(key)
        self.announced.add(key)
        outputs.write_boundaries(self.run.boundaries_csv, self.cache, limits)
        self.progress.done(r, limits.fits(r), peak)
        return True

    def _known(self, key: ProbeKey) -> ProbeResult | None:
        """A finished result for key: this run's, or (shared study) any worker's, mirrored into probes.csv."""
        r = self.cache.get(key)
        if r is None:
            self.board.refresh()
            got = self.board.result(key)
            if got is None:
                return None
            trial, r = got
            self.cache[key] = r
            s = self.by_key.get(key.strategy)
            if key not in self.mirrored and s is not None:
                done = trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()
                append_probe(self.run.probes_csv, r, s, trial=trial.number, fits=self.req.limits.fits(r), finished_at=done,
                             phase=key.phase, repeat=key.repeat, peak=peak_of(r))
                self.mirrored.add(key)
        if key not in self.announced:
            self.announced.add(key)
            self.progress.done(r, self.req.limits.fits(r), peak_of(r), cached=True)
        return r

    def _in_flight(self, key: ProbeKey) -> ProbeResult:
        """A placeholder for a probe another worker is running: this pass goes on without it (a crash is
        no memory wall, so it caps nothing) and is replayed once the real result is in."""
        number = self.board.busy(key)
        if key not in self.busy:
            self.busy[key] = -1 if number is None else number
            msg = (f"{key.strategy} mb={key.micro_batch} T={key.max_token} ({key.phase}) is being probed by another worker"
                   + (f" (trial {number})" if number is not None else "") + "; going on with other probes")
            if msg not in self.logged:
                self.logged.add(msg)
                self.progress.log(msg)
        return ProbeResult(strategy=key.strategy, micro_batch=key.micro_batch, max_token=key.max_token, status=Status.CRASH,
                           error="in flight on another worker")

    def _plan_log(self, msg: str) -> None:
        """Planner messages once each; none from a pass that already met a placeholder (they may be wrong)."""
        if self.busy or msg in self.logged:
            return
        self.logged.add(msg)
        self.progress.log(msg)

    def explore(self, planner: Planner, out: Outcome) -> None:
        """TPE proposes among what the escalation left open (max_token fixed to the target). The
        explored cells are the first --explore explore probes (by trial number) of the open cells,
        whichever worker proposed them, so every worker's final pass uses the same ones."""
        import optuna
        from optuna.trial import TrialState

        if self.busy:
            raise _Wait  # the open cells depend on results still being measured
        t = planner.target
        cells = [(s.key(), mb) for s, mb in planner.open_cells(out)]
        if not cells or self.req.explore <= 0:
            return
        self._plan_log(f"exploring with TPE: {len(cells)} open cell(s), at most {self.req.explore} probe(s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = optuna.samplers.PartialFixedSampler(
                {"max_token": t}, studymod.make_sampler(seed=len(self.study.trials)))
        for _ in range(20):
            taken = self._explore_keys(cells, t)
            free = [c for c in cells if ProbeKey(c[0], c[1], t, "explore", 0) not in taken]
            if len(taken) >= self.req.explore or not free or planner.out_of_time():
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is meant for optimize()": we beat ourselves
                trial = self.study.ask(self.dists)
            k, mb = trial.params["strategy"], trial.params["micro_batch"]
            # A proposal only: the probe gets a trial of its own when it is claimed.
            trial.set_user_attr("not_run", "proposal, probed as its own trial" if (k, mb) in free else
                                "known, implied by a wall, or covered by a faster strategy")
            self.study.tell(trial, state=TrialState.PRUNED)
            if (k, mb) in free:
                self.measure(self.by_key[k], Shape(mb, t), "explore", 0)
        chosen = sorted(self._explore_keys(cells, t).items(), key=lambda kv: kv[1])[: self.req.explore]
        for key, number in chosen:
            r = self._known(key)
            if r is None:
                self.busy.setdefault(key, number)
            else:
                planner.results[key] = r
        if self.busy:
            raise _Wait

    def _explore_keys(self, cells: list[tuple[str, int]], t: int) -> dict[ProbeKey, int]:
        """Explore probes of the open cells, finished or in flight -> their trial numbers."""
        self.board.refresh()
        out = {k: tr.number for k, tr in self.board.owners.items()
               if k.max_token == t and k.phase == "explore" and k.cell in cells}
        for k in self.cache:  # resumed from a study written before probe keys: probes.csv knows them
            if k.max_token == t and k.phase == "explore" and k.cell in cells and k not in out:
                out[k] = 10**9 + len(out)
        return out

    # -- the whole search -----------------------------------------------------------------------
    def go(self, header: str | None = None) -> SearchResult:
        """The search; a full disk or a failing storage once it has started ends it in one line, with
        run.json saying so and everything measured kept for --resume."""
        try:
            return self._go(header)
        except Exception as exc:
            why = _io_failure(exc)
            if why is None or not self.started:
                raise
            self.pool.close(kill=True)
            _best_effort(lambda: write_run_json(self.run, self.req.identity(), {"status": "failed", "error": why}))
            for name in (".boundaries.csv.tmp", ".probes.csv.tmp", ".best.yaml.tmp", ".run.json.tmp"):
                remove_quietly(self.run.path / name)  # the writers remove their own; this is the net
            raise RunDirError(f"{why}; {len(self.cache)} finished probe(s) are saved in {self.run.path}: "
                              "make room and run the same command with --resume to continue") from None

    def _go(self, header: str | None = None) -> SearchResult:
        self._open_study()
        self._load_previous()
        if header:
            self.progress.log(header)
        for reason in self.unavailable:
            self.progress.log(f"left out, cannot run here: {reason}")
        write_run_json(self.run, self.req.identity(), {"status": "running", "space": to_jsonable(self.req.space),
                                                       "context": to_jsonable(self.ctx), "quantize": self.req.quantize,
                                                       "unavailable": self.unavailable})
        self.started = True
        deadline = self.t0 + self.req.budget_s if self.req.budget_s else None
        space = self.req.space
        cap = max(1, self.ctx.global_batch // self.ctx.num_gpus)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        planners: dict[str, Planner] = {}
        prior = AnalyticPrior(self.req.source, self.ctx)  # one cache for every pass
        try:
            # The first worker's imports (seconds) start with the search, beside the estimate's.
            getattr(self.pool.factory, "prepare", lambda: None)()
            while True:  # one pass for a single worker; with others, until a pass meets no probe in flight
                self.busy, ran = {}, self.probes_run
                outs: dict[str, Outcome] = {}
                try:
                    planned = families(self.strategies)
                    for name, family in planned.items():
                        self.pool.more_after_fresh = name != list(planned)[-1]
                        if name == "quantized" and len(outs):
                            self._plan_log("searching the 4/8-bit configurations too "
                                           + ("(--quantize: they may win)" if self.req.quantize else
                                              "(reported beside the exact winner; --quantize lets them win)"))
                        planners[name] = Planner(family, space.micro_batches, self.tokens, self.req.max_token, cap,
                                                 self.req.limits, self.measure, deadline=deadline,
                                                 log=self._plan_log, slope_prior=prior.slope, estimate=prior.peak,
                                                 exact=planners.get("exact") if name == "quantized" else None,
                                                 decisive=name == "exact" or self.req.quantize)
                        outs[name] = planners[name].run(explore=self.explore)
                    if not self.busy:
                        out = combine(outs.get("exact"), outs.get("quantized"), self.req.quantize)
                        break
                except _Wait:
                    pass
                if self.probes_run == ran:
                    time.sleep(POLL_S)
                self.board.fail_stale()
            self.ledger.finished()
        except KeyboardInterrupt:
            self._stop_after_interrupt()
            raise Interrupted(f"interrupted: {len(self.cache)} finished probe(s) saved in {self.run.path}; "
                              "run the same command with --resume to continue") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.pool.close()
        results = {k: r for p in planners.values() for k, r in p.results.items()}
        return self._finish(out, results)

    def _stop_after_interrupt(self) -> None:
        self.pool.close(kill=True)
        self.ledger.interrupted()
        outputs.write_boundaries(self.run.boundaries_csv, self.cache, self.req.limits)
        write_run_json(self.run, self.req.identity(), {"status": "interrupted", "probes": len(self.cache)})

    def _finish(self, out: Outcome, results: dict[ProbeKey, ProbeResult]) -> SearchResult:
        wall = time.time() - self.t0
        best = outputs.best_document(out, self.ctx, self.req.source, self.req.limits, results, self.req.space.name,
                                     wall, self.probes_run, unavailable=self.unavailable)
        if best:
            self.run.write_best(best)
        outputs.write_boundaries(self.run.boundaries_csv, self.cache, self.req.limits, out)
        write_run_json(self.run, self.req.identity(), {
            "status": "done", "probes_run": self.probes_run, "probes_total": len(self.cache), "wall_time_s": round(wall, 1),
            "workers_started": self.pool.count, "winner": best["config"] if best else None, "note": out.note or None,
            "alternative": outputs.alternative_document(out), "quantize": self.req.quantize, "unavailable": self.unavailable,
            **self.ledger.run_record()})
        return SearchResult(outcome=out, run=self.run, probes_run=self.probes_run,
                            probes_reused=len(self.cache) - self.probes_run, wall_time_s=wall, best=best,
                            summary=outputs.summary_table(out, self.cache, self.req.limits))


# Failures of the disk or the storage, not of autofit: the user can act on them.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _io_failure(exc: BaseException) -> str | None:
    """One line for a failure of the disk or the storage under a running search; None for anything else."""
    if isinstance(exc, (RunDirError, StorageError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
        return f"cannot write {exc.filename or 'the run dir'}: {exc.strerror}"
    if type(exc).__name__ == "StorageInternalError":  # optuna's, e.g. SQLite's "database or disk is full"
        cause = exc.__cause__ or exc
        return f"the Optuna storage failed: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
    return None


def _best_effort(write: Callable[[], None]) -> None:
    """A record of a failure, where the failure (a full disk) may prevent it too."""
    try:
        write()
    except (OSError, RunDirError):
        pass


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: stop cleanly, keep everything
    raise KeyboardInterrupt
