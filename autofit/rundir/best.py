"""best.yaml and run.json: the one writer and the one reader of each.

best.yaml holds the winner (the search writes it once a configuration fits); run.json the search's
identity, versions and status. Readers validate once and name the file in a RunDirError: `Winner`
(load_winner) checks every field an export or a verification trains with; read_best_document
checks only what a report shows, so an older or partial file still reports.
"""

from __future__ import annotations

import functools
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import autofit
from autofit.errors import RunDirError
from autofit.redact import redact_text
from autofit.rundir.layout import SCHEMA_VERSION, RunDir
from autofit.spec import METHODS, PRECISIONS, Method, Strategy
from autofit.trainconfig import fused_loss_settings, hf_optim, quantization_config
from autofit.writable import write_text

# transformers.TrainingArguments 4.40.2 defaults, for the keys best.yaml may leave out.
TRAINING_ARG_DEFAULTS: dict[str, Any] = {
    "output_dir": "output", "learning_rate": 5e-5, "optim": "adamw_torch", "max_grad_norm": 1.0,
    "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
    "bf16": False, "fp16": False, "logging_steps": 500, "gradient_checkpointing_kwargs": None,
}


@dataclass(frozen=True)
class Winner:
    """A search's winner as best.yaml states it, validated once: what export, verify and the API use."""

    run_dir: Path
    model_id: str
    torch_dtype: str
    attn_implementation: str
    trust_remote_code: bool
    method: str                          # lora | full | freeze
    lora_r: int | None
    lora_alpha: int | None
    freeze_trainable_layers: int | None
    precision: str                       # fp32 | fp16 | bf16 | bf16-pure
    gradient_checkpointing: bool
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    max_token: int
    micro_batch: int
    gradient_accumulation: int
    num_gpus: int
    training_args: dict[str, Any]
    deepspeed: dict[str, Any] | None
    peft: dict[str, Any] | None
    tokens_per_s: float
    peak_gib: float
    strategy: Strategy                   # config.strategy decoded: loss, base-weight quantization, optimizer
    hosts: tuple[str, ...] = ()  # "HOST slots=N" lines when the search probed across machines
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # best.yaml as read

    @property
    def key(self) -> str:
        """config.strategy as written (the key the search ranked)."""
        return self.document.get("config", {}).get("strategy") or self.strategy.key()

    def arg(self, key: str) -> Any:
        """A TrainingArguments value: best.yaml's, else the 4.40.2 default."""
        return self.training_args.get(key, TRAINING_ARG_DEFAULTS[key])

    @property
    def lora_targets(self) -> list[str]:
        return list(self.peft["target_modules"]) if self.peft else []

    @property
    def lora_dropout(self) -> float:
        return self.peft.get("lora_dropout", 0.0) if self.peft else 0.0  # peft.LoraConfig's default

    @property
    def reentrant_checkpointing(self) -> bool:
        return bool((self.arg("gradient_checkpointing_kwargs") or {}).get("use_reentrant", True))

    @property
    def quantization(self) -> dict[str, Any] | None:
        """BitsAndBytesConfig kwargs for 4/8-bit base weights, None for bf16 ones."""
        return quantization_config(self.strategy)

    @property
    def fused_loss(self) -> dict[str, Any] | None:
        """HF's use_liger_kernel / liger_kernel_config (fused linear cross-entropy only), or None."""
        return fused_loss_settings(self.strategy)

    @property
    def optim(self) -> str:
        """TrainingArguments.optim the probe trained with (adamw_torch or adamw_bnb_8bit)."""
        return hf_optim(self.strategy)

    @property
    def quant_bits(self) -> int | None:
        return {"none": None, "nf4": 4, "int8": 8}[self.strategy.quant]


_SCALARS: dict[str, tuple[type, ...]] = {
    "model.id": (str,), "model.torch_dtype": (str,), "model.attn_implementation": (str,),
    "model.trust_remote_code": (bool,), "config.method": (str,), "config.precision": (str,),
    "config.gradient_checkpointing": (bool,), "config.zero_stage": (int,), "config.offload_optimizer": (bool,),
    "config.offload_params": (bool,), "config.max_token": (int,), "config.micro_batch": (int,),
    "config.gradient_accumulation": (int,), "training_args": (dict,),
    "measured.tokens_per_s": (int, float), "measured.peak_gib": (int, float),
}
_COUNTS = ("config.max_token", "config.micro_batch", "config.gradient_accumulation")


def load_winner(run: RunDir) -> Winner:
    """Read and validate RUN_DIR/best.yaml; every problem is named in one RunDirError."""
    run_dir = run.path
    doc, path = _read_best(run_dir)
    problems = _problems(doc)
    if problems:
        raise RunDirError(f"{path} is not a usable best.yaml: " + "; ".join(problems))
    m, c, r = doc["model"], doc["config"], doc["measured"]
    gpus = _at(doc, "hardware.num_gpus")
    return Winner(
        run_dir=Path(run_dir).resolve(), model_id=m["id"], torch_dtype=m["torch_dtype"],
        attn_implementation=m["attn_implementation"], trust_remote_code=m["trust_remote_code"],
        method=c["method"], lora_r=c.get("lora_r"), lora_alpha=c.get("lora_alpha"),
        freeze_trainable_layers=c.get("freeze_trainable_layers"), precision=c["precision"],
        gradient_checkpointing=c["gradient_checkpointing"], zero_stage=c["zero_stage"],
        offload_optimizer=c["offload_optimizer"], offload_params=c["offload_params"], max_token=c["max_token"],
        micro_batch=c["micro_batch"], gradient_accumulation=c["gradient_accumulation"],
        num_gpus=1 if gpus is _MISSING else gpus,  # hardware is informational; a file without it: one GPU
        training_args=doc["training_args"], deepspeed=doc["deepspeed"], peft=doc["peft"],
        tokens_per_s=float(r["tokens_per_s"]), peak_gib=float(r["peak_gib"]), strategy=_strategy(c, doc["peft"]),
        hosts=tuple(map(str, hosts)) if isinstance(hosts := _at(doc, "hardware.hosts"), list) else (), document=doc)


def _strategy(c: dict[str, Any], peft: dict[str, Any] | None) -> Strategy:
    """config.strategy through Strategy.from_key (the one decoder), so a winner's loss, quantization and
    optimizer are read the same way for every run; files without the key get them at their defaults."""
    method = Method(kind=c["method"], lora_r=c.get("lora_r") or Method.lora_r,
                    lora_alpha=c.get("lora_alpha") or Method.lora_alpha,
                    freeze_trainable_layers=c.get("freeze_trainable_layers") or Method.freeze_trainable_layers,
                    lora_targets=tuple(peft["target_modules"]) if peft else None)
    if isinstance(c.get("strategy"), str):
        return Strategy.from_key(c["strategy"], method)
    return Strategy(method=method, precision=c["precision"], grad_ckpt=c["gradient_checkpointing"],
                    zero_stage=c["zero_stage"], offload_optimizer=c["offload_optimizer"],
                    offload_params=c["offload_params"])


def _strategy_problems(doc: dict[str, Any]) -> list[str]:
    """config.strategy must decode and agree with the config fields next to it."""
    key = _at(doc, "config.strategy")
    if key is _MISSING:
        return []
    if not isinstance(key, str):
        return [f"config.strategy must be str, got {key!r}"]
    try:
        s = Strategy.from_key(key)
    except ValueError as exc:
        return [f"config.strategy: {exc}"]
    fields = {"config.method": s.method.kind, "config.precision": s.precision,
              "config.gradient_checkpointing": s.grad_ckpt, "config.zero_stage": s.zero_stage,
              "config.offload_optimizer": s.offload_optimizer, "config.offload_params": s.offload_params}
    return [f"config.strategy {key!r} says {k.split('.')[1]}={v!r}, but {k} is {_at(doc, k)!r}"
            for k, v in fields.items() if _at(doc, k) is not _MISSING and _at(doc, k) != v]


def _read_best(run_dir: Path) -> tuple[dict[str, Any], Path]:
    run_dir = RunDir.existing(run_dir).path
    path = run_dir / "best.yaml"
    if not path.is_file():
        hint = f"; did you mean {run_dir / 'search'}?" if (run_dir / "search" / "best.yaml").is_file() else \
            ": no winner to verify or export (a search writes it once a configuration fits)"
        raise RunDirError(f"{run_dir} has no best.yaml{hint}")
    return _parse_best(path), path


def _parse_best(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{path} is corrupted (not valid YAML: {first}); re-run the search or restore it") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{path} is corrupted: expected a mapping, got {type(doc).__name__}; "
                          "not a best.yaml written by autofit")
    return doc


_MISSING = object()


def _at(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _type_problem(doc: dict[str, Any], dotted: str, types: tuple[type, ...]) -> str | None:
    value = _at(doc, dotted)
    if value is _MISSING:
        return f"missing {dotted}"
    # bool is an int in Python; a count of True is a corrupted file, not a number.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        return f"{dotted} must be {'/'.join(t.__name__ for t in types)}, got {value!r}"
    return None


def _problems(doc: dict[str, Any]) -> list[str]:
    """Every problem in best.yaml, so one error names them all."""
    problems = [p for key, types in _SCALARS.items() if (p := _type_problem(doc, key, types))]
    problems += [f"{key} must be at least 1, got {_at(doc, key)}" for key in _COUNTS
                 if not _type_problem(doc, key, (int,)) and _at(doc, key) < 1]
    if _at(doc, "hardware.num_gpus") is not _MISSING and (p := _type_problem(doc, "hardware.num_gpus", (int,))):
        problems.append(p)
    for key in ("deepspeed", "peft"):
        if key not in doc:
            problems.append(f"missing {key} (null when unused)")
        elif doc[key] is not None and not isinstance(doc[key], dict):
            problems.append(f"{key} must be a mapping or null")
    method, precision = _at(doc, "config.method"), _at(doc, "config.precision")
    if isinstance(method, str) and method not in METHODS:
        problems.append(f"config.method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(precision, str) and precision not in PRECISIONS:
        problems.append(f"config.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if method == "lora":
        problems += [p for k in ("config.lora_r", "config.lora_alpha") if (p := _type_problem(doc, k, (int,)))]
        if not isinstance(_at(doc, "peft.target_modules"), list):
            problems.append("a LoRA winner needs peft.target_modules (a list)")
    if method == "freeze" and (p := _type_problem(doc, "config.freeze_trainable_layers", (int,))):
        problems.append(p)
    return problems + _strategy_problems(doc)


def read_best_document(path: Path) -> dict[str, Any]:
    """best.yaml as a mapping ({} when absent: the search named no winner yet), the values a report
    shows type-checked."""
    if not path.exists():
        return {}
    doc = _parse_best(path)
    _check_best(doc, path)
    return doc


def _check_best(doc: dict[str, Any], path: Path) -> None:
    """Every best.yaml value the report reads has the right type; one error lists all that do not."""
    sections = ("model", "hardware", "search", "config", "measured", "training_args", "peft", "deepspeed")
    problems = [f"{s} is not a mapping" for s in sections if doc.get(s) is not None and not isinstance(doc[s], dict)]
    if not problems:
        numbers = [(s, k) for s, k in [("hardware", "num_gpus"), ("search", "global_batch"), ("search", "wall_time_s"),
                                       ("search", "max_token_requested")] if doc.get(s, {}).get(k) is not None]
        if doc.get("config", {}).get("strategy"):
            numbers += [("config", "micro_batch"), ("config", "max_token"), ("measured", "tokens_per_s"),
                        ("measured", "peak_gib")]
        if doc.get("hardware", {}).get("memory_budget_gib") is not None:
            numbers += [("hardware", "memory_budget_gib"), ("hardware", "limit_gib"), ("hardware", "headroom")]
        problems = [f"{s}.{k}={doc.get(s, {}).get(k)!r} is not a number" for s, k in numbers
                    if not _is_number(doc.get(s, {}).get(k))]
    if problems:
        raise RunDirError(f"{path}: corrupted ({'; '.join(problems)})")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_run_json(path: Path) -> dict[str, Any]:
    """run.json as a mapping ({} when absent); its identity, schema and the figures a report shows are
    checked, so --resume and report refuse the same files."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted JSON ({exc}); move it away or choose another --run-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("identity"), dict) or type(doc.get("schema", 0)) is not int:
        raise RunDirError(f"{path} is not an autofit run.json (identity or schema missing or of the wrong type)")
    ident = doc["identity"]
    if not all(ident.get(k) is None or _is_number(ident[k]) for k in ("gpu_memory", "headroom", "max_token", "global_batch")):
        raise RunDirError(f"{path} is not an autofit run.json (identity: {ident!r:.120})")
    if not isinstance(doc.get("command", []), list) or not (doc.get("wall_time_s") is None
                                                            or _is_number(doc["wall_time_s"])):
        raise RunDirError(f"{path} is not an autofit run.json (wall_time_s or command malformed)")
    return doc


# -- writing ------------------------------------------------------------------------------------------
BEST_HEADER = ("# autofit best.yaml: paste training_args into transformers.TrainingArguments(**...),\n"
               "# load the model with model.torch_dtype, wrap it with peft.LoraConfig(**peft) when present,\n"
               "# and pass ds_config.json (the deepspeed block) when present. Every figure was measured.\n")


def write_best(run: RunDir, doc: dict[str, Any]) -> None:
    """best.yaml, and ds_config.json beside it when the winner trains with DeepSpeed."""
    import yaml

    write_text(run.best_yaml, BEST_HEADER + yaml.safe_dump(doc, sort_keys=False, width=110))
    if doc.get("deepspeed"):
        write_text(run.ds_config, json.dumps(doc["deepspeed"], indent=2))
    elif run.ds_config.exists():
        run.ds_config.unlink()


@functools.cache  # reading a package's metadata parses a file (4 ms); run.json asks twice per search
def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def gpu_facts() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver}
    except Exception:
        return {"driver": None}


def write_run_json(run: RunDir, identity: dict[str, Any], extra: dict[str, Any]) -> None:
    """(Re)write run.json; fields written earlier (space, context) are kept unless replaced."""
    try:
        previous = json.loads(run.run_json.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        previous = {}
    doc = {
        **(previous if isinstance(previous, dict) else {}),
        "schema": SCHEMA_VERSION,
        "identity": identity,
        "autofit": autofit.__version__,
        "versions": {p: _version(p) for p in ("torch", "transformers", "peft", "deepspeed", "optuna", "accelerate")},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": [redact_text(a) for a in sys.argv],
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **gpu_facts(),
        **extra,
    }
    write_text(run.run_json, json.dumps(doc, indent=2, default=str))


# -- reading ------------------------------------------------------------------------------------------
