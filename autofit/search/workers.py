"""Several searches sharing one Optuna study: probe keys, claims, results and heartbeats.

Every probe is one trial whose user attribute `probe_key` names it (a ProbeKey: strategy, micro-batch,
max_token, phase, repeat). Trial creation is serialised by the storage (it locks the study row), so
trial numbers order the claims: the owner of a key is its lowest-numbered trial that is RUNNING or
holds a result. A worker claims a key by creating a RUNNING trial with it; if an earlier trial owns
the key, the new one is marked PRUNED (`duplicate_of`) and nothing runs. A trial with a `status`
attribute (written last, after every other attribute) holds a result, and that result is every
worker's answer for the key. While it probes, a worker beats the trial's heartbeat; a trial whose
worker stopped beating is failed by whoever notices (no status: the key is free and runs again).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from autofit.spec import ProbeKey, ProbeResult

KEY_ATTR = "probe_key"
WORKER_ATTR = "worker"


def result_of(trial) -> ProbeResult | None:
    """The probe result a finished trial holds (None: no result, e.g. its worker died mid-probe)."""
    from optuna.trial import TrialState

    a = trial.user_attrs
    if "status" not in a or KEY_ATTR not in a or trial.state not in (TrialState.COMPLETE, TrialState.FAIL):
        return None
    key = ProbeKey.from_text(a[KEY_ATTR])
    return ProbeResult.from_dict({**a, "strategy": key.strategy, "micro_batch": key.micro_batch,
                                  "max_token": key.max_token})


@dataclass(frozen=True)
class Claim:
    trial: Any          # optuna.Trial, to set attributes and tell
    trial_id: int
    number: int


class Board:
    """The shared study seen as probe keys: who owns each, which results exist; claims and heartbeats."""

    def __init__(self, study, storage, dists: dict, worker: str, heartbeat_s: int | None):
        self.study, self.storage, self.dists = study, storage, dists
        self.worker, self.heartbeat_s = worker, heartbeat_s
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.owners: dict[ProbeKey, Any] = {}

    # -- reading --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the study: the owner of each key (lowest-numbered trial running or holding a result)."""
        from optuna.trial import TrialState

        owners: dict[ProbeKey, Any] = {}
        for t in self.study.get_trials(deepcopy=False):
            text = t.user_attrs.get(KEY_ATTR)
            if text is None or not (t.state == TrialState.RUNNING or result_of(t) is not None):
                continue
            key = ProbeKey.from_text(text)
            if key not in owners or t.number < owners[key].number:
                owners[key] = t
        self.owners = owners

    def result(self, key: ProbeKey) -> tuple[Any, ProbeResult] | None:
        """(trial, result) of the key's owner if it holds a result."""
        t = self.owners.get(key)
        r = result_of(t) if t is not None else None
        return (t, r) if r is not None else None

    def busy(self, key: ProbeKey) -> int | None:
        """The trial number probing this key right now (on another worker, or a dead one not yet failed)."""
        from optuna.trial import TrialState

        t = self.owners.get(key)
        return t.number if t is not None and t.state == TrialState.RUNNING else None

    def results(self) -> dict[ProbeKey, tuple[Any, ProbeResult]]:
        return {k: got for k in self.owners if (got := self.result(k)) is not None}

    # -- claiming -------------------------------------------------------------------------------
    def claim(self, key: ProbeKey, params: dict[str, Any]) -> Claim | None:
        """Create a RUNNING trial for `key`; it is ours unless an earlier trial owns the key."""
        import optuna
        from optuna.trial import TrialState

        # Params outside the declared choices (a fallback max_token) stay in the key only.
        ps = {k: v for k, v in params.items() if v in self.dists[k].choices}
        template = optuna.trial.create_trial(state=TrialState.RUNNING, params=ps,
                                             distributions={k: self.dists[k] for k in ps},
                                             user_attrs={KEY_ATTR: key.text(), WORKER_ATTR: self.worker})
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=template)
        number = self.storage.get_trial_number_from_id(trial_id)
        if self.heartbeat_s:
            self.storage.record_heartbeat(trial_id)  # at once: a trial that never beat is never failed
        self.refresh()
        owner = self.owners.get(key)
        if owner is not None and owner.number != number:
            self.storage.set_trial_user_attr(trial_id, "duplicate_of", owner.number)
            self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
            return None
        return Claim(trial=optuna.Trial(self.study, trial_id), trial_id=trial_id, number=number)

    def release(self, claim: Claim) -> None:
        """Give a claimed key back without a result (interrupted): another worker may run it now."""
        from optuna.trial import TrialState

        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # already failed by a worker that thought we were dead
            pass

    # -- liveness -------------------------------------------------------------------------------
    @contextmanager
    def beating(self, claim: Claim) -> Iterator[None]:
        """Record the claim's heartbeat every heartbeat_s seconds while the probe runs."""
        if not self.heartbeat_s:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    self.storage.record_heartbeat(claim.trial_id)
                except Exception:  # a database hiccup: the next beat may get through
                    pass

        th = threading.Thread(target=beat, name="autofit-heartbeat", daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join()

    def fail_stale(self) -> None:
        """Fail RUNNING trials whose worker stopped beating: their keys are free again."""
        import optuna

        if not self.heartbeat_s:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def fail_own_leftovers(self) -> int:
        """RUNNING trials of this worker's run dir from a process that died: the run-dir lock says it is
        gone, so they are failed now instead of after the grace period."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(WORKER_ATTR) == self.worker:
                try:
                    tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
                    self.storage.set_trial_state_values(tid, TrialState.FAIL)
                    n += 1
                except UpdateFinishedTrialError:
                    pass
        return n
