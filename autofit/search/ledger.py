"""Where a search records its probes, chosen once per search (Optuna's BaseStorage is the model).

LocalLedger: one worker, a SQLite study in the run dir. probes.csv is the record and is written
first; on --resume the study is reconciled with it.

SharedLedger: several workers share one study (--storage postgresql://..., see workers.py). The
study is the record and is written first; probes.csv mirrors every result this worker used or saw,
and a worker presumed dead (no heartbeat) has its late result dropped.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from autofit.errors import RunDirError, StorageError
from autofit.rundir.records import ProbeLog, append_probe, probe_row, result_from_row, rewrite_probes
from autofit.search import study as studymod
from autofit.search.planner import peak_of
from autofit.search.workers import KEY_ATTR, WORKER_ATTR, Board, Claim
from autofit.spec import ProbeKey, ProbeResult, Strategy

if TYPE_CHECKING:  # the search the ledger records for; driver imports this module
    from autofit.search.driver import _Search


class Ledger(ABC):
    """The part of a search that depends on who else writes its study."""

    heartbeat_s: int | None = None

    def __init__(self, search: _Search):
        self.search = search

    @abstractmethod
    def storage_url(self) -> str: ...

    def open(self):
        """The study, its parameter distributions and the board that reads it as probe keys."""
        s = self.search
        study, dists, rdb = studymod.open_study(self.storage_url(), s.req.study_name(), [x.key() for x in s.strategies],
                                                s.req.space.micro_batches, s.tokens, heartbeat_s=self.heartbeat_s)
        return study, dists, Board(study, rdb, dists, s.worker, self.heartbeat_s)

    @abstractmethod
    def load_previous(self, log: ProbeLog) -> None:
        """Reload the probes finished before this process started."""

    @abstractmethod
    def record(self, key: ProbeKey, s: Strategy, claim: Claim, r: ProbeResult, row: dict[str, Any]) -> bool:
        """Write one probe's result to probes.csv and the study, in this ledger's order; False: the
        result was dropped (another worker owns the key now)."""

    def finished(self) -> None:
        """After the last planner pass."""

    @abstractmethod
    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: leave nothing claimed that another run would wait for."""

    def run_record(self) -> dict[str, Any]:
        """What run.json adds about the storage."""
        return {}

    def key_attrs(self, key: ProbeKey) -> dict[str, str]:
        return {KEY_ATTR: key.text(), WORKER_ATTR: self.search.worker}


def ledger_for(search: _Search) -> Ledger:
    return LocalLedger(search) if search.req.storage is None else SharedLedger(search)


class LocalLedger(Ledger):
    def storage_url(self) -> str:
        return f"sqlite:///{self.search.run.study_db.resolve()}"

    def load_previous(self, log: ProbeLog) -> None:
        """Make the study and probes.csv agree (see _reconcile)."""
        s = self.search
        rows = self._reconcile(log)
        for row in rows:
            key = ProbeKey.from_row(row)
            s.cache[key] = result_from_row(row)
            s.mirrored.add(key)
        stale = studymod.fail_stale_running(s.study)
        if stale:
            s.progress.log(f"{stale} probe(s) were in flight when the last run died; they run again")
        if rows:
            s.progress.log(f"resuming: {len(rows)} finished probe(s) from {s.run.probes_csv} will not run again")

    def _reconcile(self, log: ProbeLog) -> list[dict]:
        """probes.csv is written first, then the study. A row the study lacks (the driver died between the
        two writes) goes into the study; a result the study holds but probes.csv lacks or holds torn (cut
        short mid-write) is restored into probes.csv; a row that disagrees with the study is refused."""
        from optuna.trial import TrialState

        s = self.search
        s.board.refresh()
        held = {k: got for k, got in s.board.results().items() if k.strategy in s.by_key}
        trials = {t.number: t for t in s.study.get_trials(deepcopy=False)}
        rows: list[dict] = []
        for row, line in zip(log.rows, log.lines):
            key = ProbeKey.from_row(row)
            r = result_from_row(row)
            if key in held:
                differs = _differs(r, held[key][1])
                if differs:
                    raise RunDirError(f"{s.run.probes_csv}: line {line} disagrees with the study in {s.run.study_db.name} "
                                      f"({differs}); one of them was altered: move the run dir away and search again")
            elif (strategy := s.by_key.get(row["strategy"])) is not None:
                t = trials.get(int(row["trial"])) if row.get("trial") else None
                if not _holds_result(t):  # the driver died between writing the row and telling the study
                    if t is not None and t.state == TrialState.RUNNING:
                        s.study.tell(t.number, state=TrialState.FAIL)
                    studymod.add_finished(s.study, s.dists, strategy, key.shape, r, peak_of(r),
                                          s.req.limits.limit, key.phase, key.repeat, self.key_attrs(key))
            rows.append(row)
        have = {ProbeKey.from_row(row) for row in rows}
        restored = [self._row_from_study(k, *held[k]) for k in sorted(held, key=lambda k: held[k][0].number) if k not in have]
        if restored or log.torn_line is not None:
            rows += restored
            rewrite_probes(s.run.probes_csv, rows)
            what = (f"line {log.torn_line} was cut short (an interrupted write)" if log.torn_line is not None
                    else "rows were missing")
            s.progress.log(f"repaired {s.run.probes_csv}: {what}; {len(restored)} row(s) restored from the study"
                           + ("" if restored or log.torn_line is None else "; that probe never finished and runs again"))
        return rows

    def _row_from_study(self, key: ProbeKey, trial, r: ProbeResult) -> dict:
        s = self.search
        done = trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()
        return probe_row(r, s.by_key[key.strategy], trial=trial.number, fits=s.req.limits.fits(r), finished_at=done,
                         phase=key.phase, repeat=key.repeat, peak=peak_of(r))

    def record(self, key: ProbeKey, s: Strategy, claim: Claim, r: ProbeResult, row: dict[str, Any]) -> bool:
        search = self.search
        append_probe(search.run.probes_csv, r, s, **row)
        search.cache[key] = r  # saved from here on: an interrupt now counts it
        studymod.record(search.study, claim.trial, r, row["peak"], search.req.limits.limit, key.phase, key.repeat)
        return True

    def interrupted(self) -> None:
        studymod.fail_stale_running(self.search.study)


class SharedLedger(Ledger):
    def __init__(self, search: _Search):
        super().__init__(search)
        self.heartbeat_s = search.req.heartbeat_s

    def storage_url(self) -> str:
        return self.search.req.storage

    def open(self):
        study, dists, board = super().open()
        self._check_same_budget(study)
        return study, dists, board

    def _check_same_budget(self, study) -> None:
        """Workers pool their results, so they must agree on what fits."""
        limits = self.search.req.limits
        mine = {"budget_gib": round(limits.budget / 2**30, 3), "limit_gib": round(limits.limit / 2**30, 3)}
        theirs = study.user_attrs.get("limits")
        if theirs is None:
            study.set_user_attr("limits", mine)
        elif theirs != mine:
            raise StorageError(f"study {study.study_name} in {studymod.redact(self.storage_url())} was started by a "
                               f"worker with a {theirs['budget_gib']} GiB budget; this one has {mine['budget_gib']} GiB: "
                               "give every worker the same --gpu-memory (or GPU model)")

    def load_previous(self, log: ProbeLog) -> None:
        """The shared study is the record; probes.csv only adds what the study lacks (a run dir first
        searched with another storage). This worker's own RUNNING trials died with its last process."""
        s = self.search
        if log.torn_line is not None:
            raise RunDirError(f"{s.run.probes_csv}: line {log.torn_line} was cut short (an interrupted write); "
                              "resume once without --storage to repair it from this run dir's study")
        own = s.board.fail_own_leftovers()
        if own:
            s.progress.log(f"{own} probe(s) of this run dir were in flight when it died; they run again")
        s.board.fail_stale()
        s.board.refresh()
        for row in log.rows:
            key = ProbeKey.from_row(row)
            s.mirrored.add(key)
            strategy = s.by_key.get(row["strategy"])
            if strategy is not None and s.board.result(key) is None and s.board.busy(key) is None:
                r = result_from_row(row)
                studymod.add_finished(s.study, s.dists, strategy, key.shape, r, peak_of(r),
                                      s.req.limits.limit, key.phase, key.repeat, self.key_attrs(key))
        s.board.refresh()
        s.progress.log(f"worker {s.worker}, shared study {s.study.study_name}: "
                       f"{len(s.board.results())} finished probe(s) there will not run again")

    def record(self, key: ProbeKey, s: Strategy, claim: Claim, r: ProbeResult, row: dict[str, Any]) -> bool:
        search = self.search
        try:
            studymod.record(search.study, claim.trial, r, row["peak"], search.req.limits.limit, key.phase, key.repeat)
        except Exception:
            from optuna.trial import TrialState

            if search.board.storage.get_trial(claim.trial_id).state == TrialState.RUNNING:
                raise
            search.board.refresh()
            got = search.board.result(key)
            if got is None or got[0].number != claim.number:
                # Another worker took this one for dead (no heartbeat within the grace period) and
                # failed its trial; the key runs (or ran) again there.
                search.progress.log(f"{s.key()} mb={key.micro_batch} T={key.max_token}: this worker was presumed dead; "
                                    "its result is dropped (raise --heartbeat if the database is slow)")
                return False
        append_probe(search.run.probes_csv, r, s, **row)
        return True

    def finished(self) -> None:
        """Every result in the shared study goes into this run dir too, so each worker's files are whole."""
        s = self.search
        s.board.refresh()
        for key in sorted(s.board.results()):
            if key not in s.cache and key.strategy in s.by_key:
                s._known(key)

    def interrupted(self) -> None:
        s = self.search
        if s.inflight is not None:
            s.board.release(s.inflight)  # another worker may take it at once

    def run_record(self) -> dict[str, Any]:
        return {"study": self.search.study.study_name, "worker": self.search.worker}


def _holds_result(trial) -> bool:
    """The trial was told its probe's result (a study written before probe keys has no key to match by)."""
    return trial is not None and "status" in trial.user_attrs


def _differs(a: ProbeResult, b: ProbeResult) -> str | None:
    """The first measured figure two records of one probe disagree on (None: they agree)."""
    for name in ("status", "peak_allocated", "peak_reserved", "nvml_peak", "host_peak", "tokens_per_s", "step_s"):
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=1e-6):
            continue
        if x != y:
            return f"{name}: {getattr(x, 'value', x)!r} in probes.csv, {getattr(y, 'value', y)!r} in the study"
    return None
