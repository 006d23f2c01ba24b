"""The Optuna study as driver and record: one trial per probe, OOM recorded as infeasible.

Escalation probes are injected with enqueue_trial (a deterministic order); the TPE sampler
proposes the exploration probes. Constraint > 0 marks a trial infeasible (OOM, over headroom),
so TPE learns from walls instead of ignoring them as it ignores FAIL trials.
"""

from __future__ import annotations

from typing import Any

from autofit.errors import StorageError
from autofit.redact import redact_text
from autofit.spec import ProbeResult, Shape, Strategy


def open_study(storage: str, name: str, strategies: list[str], micro_batches: tuple[int, ...], max_tokens: tuple[int, ...],
               heartbeat_s: int | None = None):
    """The study, its parameter distributions and its storage. With heartbeat_s, a RUNNING trial whose
    worker has not beaten for 3 x heartbeat_s is presumed dead (see workers.Board.fail_stale)."""
    import time
    import warnings

    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(seed=0)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(with_driver(storage), heartbeat_interval=heartbeat_s,
                                                 grace_period=3 * heartbeat_s if heartbeat_s else None)
            study = optuna.create_study(storage=rdb, study_name=name, direction="maximize", sampler=sampler,
                                        load_if_exists=True)
            break
        except Exception as exc:  # bad URL, server down, driver missing: all one clear line
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if attempt < 2 and any(m in str(exc) for m in _CREATE_RACES):
                time.sleep(0.5 + attempt)  # workers starting together on an empty database
                continue
            hint = ""
            if isinstance(exc, ImportError) and storage.startswith("postgres"):
                hint = " (install the PostgreSQL driver: pip install 'autofit[postgres]')"
            raise StorageError(redact_text(f"cannot open Optuna storage {redact(storage)!r}: {first}{hint}")) from None
    dists = {"strategy": CategoricalDistribution(strategies),
             "micro_batch": CategoricalDistribution(list(micro_batches)),
             "max_token": CategoricalDistribution(sorted(set(max_tokens)))}
    return study, dists, rdb


# What PostgreSQL says when two workers create Optuna's tables or study at the same moment.
_CREATE_RACES = ("already exists", "duplicate key", "deadlock", "UniqueViolation")


def with_driver(url: str) -> str:
    """postgresql://... names no driver, and SQLAlchemy's default differs between versions (psycopg2
    in 2.0, psycopg 3 in 2.1): name the one that is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for module in ("psycopg", "psycopg2"):
        try:
            __import__(module)
        except ImportError:
            continue
        return f"postgresql+{module}://{rest}"
    return url  # fails to open with ImportError: the message says what to install


def redact(url: str) -> str:
    """The storage URL without its password (it goes into messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide what looks like a password anyway
        return redact_text(url)


def make_sampler(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def constraint(r: ProbeResult, peak: int | None, limit: float) -> float:
    """GiB over the limit; > 0 is infeasible (OOM counts as 1 GiB over: we do not know by how much)."""
    return (peak - limit) / 2**30 if (r.ok and peak is not None) else 1.0


def params(s: Strategy, shape: Shape) -> dict[str, Any]:
    return {"strategy": s.key(), "micro_batch": shape.micro_batch, "max_token": shape.max_token}


def attrs(r: ProbeResult, peak: int | None, limit: float, phase: str, repeat: int) -> dict[str, Any]:
    d = {k: v for k, v in r.to_dict().items() if v is not None and k not in ("strategy", "micro_batch", "max_token")}
    d.update(phase=phase, repeat=repeat, peak=peak, limit=limit)
    return d


def record(study, trial, r: ProbeResult, peak: int | None, limit: float, phase: str, repeat: int) -> None:
    """Tell the study how a probe went. OOM/over-headroom: COMPLETE with constraint > 0 (infeasible).

    `status` is written with (or, one by one, after) the other attributes: a trial that has it holds a
    whole result even if its worker died before the tell (see workers.result_of)."""
    from optuna.trial import TrialState

    trial.set_constraint("memory_over_limit_gib", constraint(r, peak, limit))
    a = attrs(r, peak, limit, phase, repeat)
    a["status"] = a.pop("status")
    if not _set_user_attrs_at_once(study, trial, a):
        for k, v in a.items():
            trial.set_user_attr(k, v)
    if r.status.value in ("ok", "oom"):
        study.tell(trial, r.tokens_per_s or 0.0)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _set_user_attrs_at_once(study, trial, attrs: dict[str, Any]) -> bool:
    """A probe's ~18 attributes in one transaction: Optuna's RDB storage commits each set_user_attr on its
    own (7 ms apiece on a 2-core machine, a network round trip each on PostgreSQL). This reaches into
    Optuna's storage internals; False (the caller sets them one by one) where they are not as expected."""
    storage = getattr(study._storage, "_backend", study._storage)  # _CachedStorage wraps the RDB storage
    write = getattr(storage, "_set_trial_attr_without_commit", None)
    if write is None or not hasattr(trial, "_trial_id"):
        return False
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:
        return False
    with _create_scoped_session(storage.scoped_session, True) as session:
        for k, v in attrs.items():
            write(session, models.TrialUserAttributeModel, trial._trial_id, k, v)
    return True


def add_finished(study, dists, s: Strategy, shape: Shape, r: ProbeResult, peak: int | None, limit: float,
                 phase: str, repeat: int, extra_attrs: dict[str, Any] | None = None) -> int:
    """A probe that probes.csv has but the study lacks (the driver died between the two writes)."""
    import optuna
    from optuna.trial import TrialState

    ok = r.status.value in ("ok", "oom")
    t = optuna.trial.create_trial(params=params(s, shape), distributions=dists,
                                  value=(r.tokens_per_s or 0.0) if ok else None,
                                  state=TrialState.COMPLETE if ok else TrialState.FAIL,
                                  user_attrs={**attrs(r, peak, limit, phase, repeat), **(extra_attrs or {})},
                                  constraints={"memory_over_limit_gib": constraint(r, peak, limit)})
    study.add_trial(t)
    return study.trials[-1].number


def fail_stale_running(study) -> int:
    """Trials left RUNNING by a driver that was killed mid-probe: that probe never finished."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        n += 1
    return n
