"""The Optuna study as driver and record: one trial per probe, OOM recorded as infeasible.

Escalation probes are injected with enqueue_trial (a deterministic order); the TPE sampler
proposes the exploration probes. Constraint > 0 marks a trial infeasible (OOM, over headroom),
so TPE learns from walls instead of ignoring them as it ignores FAIL trials.
"""

from __future__ import annotations

from typing import Any

from autofit.errors import StorageError
from autofit.spec import ProbeResult, Shape, Strategy


def open_study(storage: str, name: str, strategies: list[str], micro_batches: tuple[int, ...], max_tokens: tuple[int, ...]):
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(seed=0)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    load_if_exists=True)
    except Exception as exc:  # bad URL, server down, driver missing: all one clear line
        raise StorageError(f"cannot open Optuna storage {storage!r}: {str(exc).splitlines()[0][:300]}") from None
    dists = {"strategy": CategoricalDistribution(strategies),
             "micro_batch": CategoricalDistribution(list(micro_batches)),
             "max_token": CategoricalDistribution(sorted(set(max_tokens)))}
    return study, dists


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
    """Tell the study how a probe went. OOM/over-headroom: COMPLETE with constraint > 0 (infeasible)."""
    from optuna.trial import TrialState

    for k, v in attrs(r, peak, limit, phase, repeat).items():
        trial.set_user_attr(k, v)
    trial.set_constraint("memory_over_limit_gib", constraint(r, peak, limit))
    if r.status.value in ("ok", "oom"):
        study.tell(trial, r.tokens_per_s or 0.0)
    else:
        study.tell(trial, state=TrialState.FAIL)


def add_finished(study, dists, s: Strategy, shape: Shape, r: ProbeResult, peak: int | None, limit: float,
                 phase: str, repeat: int) -> int:
    """A probe that probes.csv has but the study lacks (the driver died between the two writes)."""
    import optuna
    from optuna.trial import TrialState

    ok = r.status.value in ("ok", "oom")
    t = optuna.trial.create_trial(params=params(s, shape), distributions=dists,
                                  value=(r.tokens_per_s or 0.0) if ok else None,
                                  state=TrialState.COMPLETE if ok else TrialState.FAIL,
                                  user_attrs=attrs(r, peak, limit, phase, repeat),
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
