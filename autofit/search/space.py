"""Search spaces: which dimensions are searched and over what ranges, loaded from YAML.

Validation collects every problem and raises one SearchSpaceError naming file, key and value.
The shipped `auto` space (the default) is a template: auto.yaml holds one section per method, and
the ZeRO options for one GPU or several; `load_space("auto", method, num_gpus)` picks them.
"""

from __future__ import annotations

import importlib.resources
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autofit.capabilities import runnable
from autofit.errors import SearchSpaceError
from autofit.spec import (LOSSES, METHODS, OPTIMIZERS, PRECISIONS, QUANTS, Context, Method, Strategy,
                          to_jsonable)



def _spaces_dir() -> Path:
    """The shipped spaces: search_spaces/ at the top of a checkout (an editable install), else the copy
    the wheel carries as autofit/search_spaces/ (pyproject.toml maps one onto the other)."""
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "pyproject.toml").is_file() and (root / "search_spaces").is_dir():
        return root / "search_spaces"
    return Path(str(importlib.resources.files("autofit") / "search_spaces")).resolve()


SPACES_DIR = _spaces_dir()
AUTO = "auto"
KEYS = {"description", "method", "lora", "freeze_trainable_layers", "precision", "grad_ckpt", "act_offload", "zero",
        "micro_batch", "max_token", "loss", "quant", "optimizer"}
# Dimensions added after the first spaces shipped, with the value every earlier space implied.
NEW_DIMENSIONS = {"losses": ("hf",), "quants": ("none",), "optims": ("adamw",), "act_offloads": (False,)}
ZERO_KEYS = {"stage", "offload_optimizer", "offload_params"}


@dataclass(frozen=True)
class ZeroOption:
    stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass(frozen=True)
class SearchSpace:
    name: str
    method: Method
    precisions: tuple[str, ...]
    grad_ckpt: tuple[bool, ...]
    zero: tuple[ZeroOption, ...]
    micro_batches: tuple[int, ...]
    max_tokens: tuple[int, ...]
    description: str = ""
    losses: tuple[str, ...] = ("hf",)
    quants: tuple[str, ...] = ("none",)
    optims: tuple[str, ...] = ("adamw",)
    act_offloads: tuple[bool, ...] = (False,)

    def strategies(self, num_gpus: int) -> list[Strategy]:
        """Every strategy in the space that can run and makes sense on num_gpus GPUs.

        On one GPU, ZeRO 1 and 2 partition nothing (there is no second rank to hold a shard), so
        they only add overhead; they are kept only with optimizer offload, which does save memory.
        Combinations that cannot run at all (Strategy.problems: 4-bit weights under ZeRO-3, activation
        offload without checkpointing, ...) are left out.
        """
        out = []
        for prec, ckpt, z, loss, quant, optim, actoff in itertools.product(
                self.precisions, self.grad_ckpt, self.zero, self.losses, self.quants, self.optims, self.act_offloads):
            if num_gpus == 1 and z.stage in (1, 2) and not z.offload_optimizer:
                continue
            s = Strategy(method=self.method, precision=prec, grad_ckpt=ckpt, zero_stage=z.stage,
                         offload_optimizer=z.offload_optimizer, offload_params=z.offload_params,
                         loss=loss, quant=quant, optim=optim, act_offload=actoff)
            if not s.problems():
                out.append(s)
        return out

    def identity(self) -> dict[str, Any]:
        """What names this space in a run's identity; new dimensions at their old default add nothing,
        so a run dir searched before they existed still resumes."""
        d = to_jsonable(self)
        for name, default in NEW_DIMENSIONS.items():
            if tuple(d[name]) == default:
                del d[name]
        return d

    def with_method(self, kind: str) -> "SearchSpace":
        from dataclasses import replace

        return replace(self, method=replace(self.method, kind=kind))


def runnable_strategies(space: SearchSpace, ctx: Context) -> tuple[list[Strategy], list[str]]:
    """The space's strategies that can run here, and each distinct reason the others cannot (capabilities
    owns those rules); none at all is the user's error, not an empty search."""
    sensible = space.strategies(ctx.num_gpus)
    keep, unavailable = runnable(sensible, ctx)
    if keep:
        return keep, unavailable
    where = f"{ctx.num_gpus} GPU(s)" if ctx.device == "cuda" else "the CPU"
    if sensible:
        raise SearchSpaceError(f"search space {space.name}: no strategy can run on {where}: " + "; ".join(unavailable))
    stages = sorted({z.stage for z in space.zero})
    one = "on one GPU" if ctx.device == "cuda" else "in one CPU process"
    raise SearchSpaceError(f"search space {space.name}: no strategy can run on {where} (zero stages {stages}): "
                           f"{one}, ZeRO 1 and 2 shard nothing (they are kept only with offload_optimizer); "
                           "add {stage: 0} to its zero list")


def resolve_space_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    candidate = SPACES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if candidate.exists():
        return candidate
    shipped = ", ".join(sorted(x.stem for x in SPACES_DIR.glob("*.yaml")))
    raise SearchSpaceError(f"search space {name_or_path!r} not found (not a file; shipped spaces: {shipped})")


def load_space(name_or_path: str, method: str | None = None, num_gpus: int = 1) -> SearchSpace:
    """A shipped space by name, or a YAML file; `method` overrides the space's method (the auto space
    takes that method's section), `num_gpus` picks the auto space's ZeRO options."""
    path = resolve_space_path(name_or_path)
    doc = _read_yaml(path)
    if path.stem == AUTO and path.resolve().parent == SPACES_DIR:
        return parse_space(auto_document(doc, method or "lora", num_gpus, str(path)), str(path))
    sp = parse_space(doc, str(path))
    return sp.with_method(method) if method else sp


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise SearchSpaceError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SearchSpaceError(f"{path}: not UTF-8 text") from None


def auto_document(doc: Any, method: str, num_gpus: int, where: str) -> dict[str, Any]:
    """The plain space document the auto template gives for this method and GPU count."""
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        raise SearchSpaceError(f"{where}: the auto template needs a 'methods' mapping")
    section = doc["methods"].get(method)
    if not isinstance(section, dict) or not isinstance(section.get("zero"), dict):
        raise SearchSpaceError(f"{where}: no section for method {method!r} with zero: {{one_gpu, several_gpus}}")
    zero = section["zero"].get("one_gpu" if num_gpus == 1 else "several_gpus")
    shared = {k: v for k, v in doc.items() if k != "methods"}
    return {**shared, **section, "method": method, "zero": zero}


def _int_list(doc: dict, key: str, problems: list[str], where: str) -> tuple[int, ...]:
    v = doc.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        problems.append(f"{where}: key '{key}' must be a non-empty list of positive integers, got {v!r}")
        return ()
    return tuple(sorted(set(v)))


def parse_space(doc: Any, where: str = "<space>") -> SearchSpace:
    if not isinstance(doc, dict):
        raise SearchSpaceError(f"{where}: expected a mapping of keys, got {type(doc).__name__}")
    problems: list[str] = []
    for k in sorted(set(doc) - KEYS, key=str):  # YAML keys may be numbers too
        problems.append(f"{where}: unknown key {k!r} (known: {', '.join(sorted(KEYS))})")

    kind = doc.get("method", "lora")
    if kind not in METHODS:
        problems.append(f"{where}: key 'method' must be one of {', '.join(METHODS)}, got {kind!r}")
    lora = doc.get("lora", {}) or {}
    if not isinstance(lora, dict) or set(lora) - {"r", "alpha", "dropout", "targets"}:
        problems.append(f"{where}: key 'lora' must map r/alpha/dropout/targets, got {lora!r}")
        lora = {}
    r, alpha = lora.get("r", 8), lora.get("alpha", 32)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        problems.append(f"{where}: key 'lora.r' must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        problems.append(f"{where}: key 'lora.alpha' must be positive, got {alpha!r}")
    dropout = lora.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        problems.append(f"{where}: key 'lora.dropout' must be a number in [0, 1), got {dropout!r}")
    targets = lora.get("targets")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets) or not targets):
        problems.append(f"{where}: key 'lora.targets' must be a list of module names, got {targets!r}")
    freeze_n = doc.get("freeze_trainable_layers", 2)
    if not isinstance(freeze_n, int) or isinstance(freeze_n, bool) or freeze_n < 1:
        problems.append(f"{where}: key 'freeze_trainable_layers' must be a positive integer, got {freeze_n!r}")

    precisions = doc.get("precision", ["bf16-pure"])
    if not isinstance(precisions, list) or not precisions or any(p not in PRECISIONS for p in precisions):
        problems.append(f"{where}: key 'precision' must be a list drawn from {', '.join(PRECISIONS)}, got {precisions!r}")
        precisions = []
    ckpt = doc.get("grad_ckpt", [False, True])
    if not isinstance(ckpt, list) or not ckpt or any(not isinstance(c, bool) for c in ckpt):
        problems.append(f"{where}: key 'grad_ckpt' must be a list of true/false, got {ckpt!r}")
        ckpt = []
    actoff = doc.get("act_offload", [False])
    if not isinstance(actoff, list) or not actoff or any(not isinstance(c, bool) for c in actoff):
        problems.append(f"{where}: key 'act_offload' must be a list of true/false, got {actoff!r}")
        actoff = []

    zero_opts = []
    zero = doc.get("zero", [{"stage": 0}])
    if not isinstance(zero, list) or not zero:
        problems.append(f"{where}: key 'zero' must be a list like [{{stage: 0}}, {{stage: 3, offload_optimizer: true}}], got {zero!r}")
        zero = []
    for i, z in enumerate(zero):
        key = f"zero[{i}]"
        if not isinstance(z, dict) or set(z) - ZERO_KEYS or "stage" not in z:
            problems.append(f"{where}: key '{key}' must map stage (0-3) and optionally offload_optimizer/offload_params, got {z!r}")
            continue
        st, oo, op = z["stage"], z.get("offload_optimizer", False), z.get("offload_params", False)
        if st not in (0, 1, 2, 3) or isinstance(st, bool):
            problems.append(f"{where}: key '{key}.stage' must be 0, 1, 2 or 3, got {st!r}")
        elif not isinstance(oo, bool) or not isinstance(op, bool):
            problems.append(f"{where}: key '{key}' offload flags must be true/false, got {z!r}")
        elif op and st != 3:
            problems.append(f"{where}: key '{key}.offload_params' needs stage 3, got stage {st}")
        elif oo and st == 0:
            problems.append(f"{where}: key '{key}.offload_optimizer' needs stage 1-3, got stage 0")
        else:
            zero_opts.append(ZeroOption(st, oo, op))

    losses = _choices(doc, "loss", LOSSES, "hf", problems, where)
    quants = _choices(doc, "quant", QUANTS, "none", problems, where)
    optims = _choices(doc, "optimizer", OPTIMIZERS, "adamw", problems, where)
    micro = _int_list(doc, "micro_batch", problems, where)
    tokens = _int_list(doc, "max_token", problems, where)
    if problems:
        raise SearchSpaceError("; ".join(problems))
    method = Method(kind=kind, lora_r=r, lora_alpha=alpha, lora_dropout=float(dropout),
                    lora_targets=tuple(targets) if targets else None, freeze_trainable_layers=freeze_n)
    return SearchSpace(name=Path(where).stem, method=method, precisions=tuple(precisions), grad_ckpt=tuple(ckpt),
                       zero=tuple(zero_opts), micro_batches=micro, max_tokens=tokens,
                       description=str(doc.get("description", "")), losses=losses, quants=quants, optims=optims,
                       act_offloads=tuple(dict.fromkeys(actoff)))


def _choices(doc: dict, key: str, allowed: tuple[str, ...], default: str, problems: list[str], where: str) -> tuple[str, ...]:
    v = doc.get(key, [default])
    if not isinstance(v, list) or not v or any(x not in allowed for x in v):
        problems.append(f"{where}: key '{key}' must be a list drawn from {', '.join(allowed)}, got {v!r}")
        return ()
    return tuple(dict.fromkeys(v))
