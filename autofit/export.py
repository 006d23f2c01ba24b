"""Export a search's winner (RUN_DIR/best.yaml) in the keys of the tool you train with.

    autofit export RUN_DIR --format hf|deepspeed|llamafactory|glm4|glm4-demo|axolotl [--out PATH]
                           [--dataset NAME] [--template NAME] [--force]

Every file starts with a header: where it came from, which tool version its keys were checked
against, what was measured. Each format is loaded by its tool's own parser in
tests/conformance/ (CI). A dimension the tool cannot express (4-bit weights for GLM-4's script) is an
ExportError, never a silently dropped key. Plain YAML and JSON only: nothing here imports torch,
transformers or DeepSpeed.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from autofit.errors import ExportError, RunDirError, UsageError
from autofit.spec import METHODS, PRECISIONS, Method, Strategy
from autofit.trainconfig import fused_loss_settings, hf_optim, quantization_config

FORMATS = ("hf", "deepspeed", "llamafactory", "glm4", "glm4-demo", "axolotl")

# The tool versions whose own parsers load these files in tests/conformance (.ci/run installs them).
CHECKED_AGAINST = {
    "hf": "transformers 4.40.2 and 5.24.0 (TrainingArguments, BitsAndBytesConfig), peft 0.12.0 and 0.21.2",
    "deepspeed": "DeepSpeed 0.19.8 (DeepSpeedConfig)",
    "llamafactory": "LLaMA-Factory 0.9.5 (its argument parser, get_train_args)",
    "glm4": "THUDM/GLM-4 finetune/finetune.py at dfe4601 (2025-04-16): FinetuningConfig.from_file",
    "glm4-demo": "THUDM/GLM-4 finetune_demo/finetune.py at 52cd14c (2024-12-09): FinetuningConfig.from_file",
    "axolotl": "axolotl 0.19.0 (its config schema: prepare_plugins + validate_config)",
}

# transformers.TrainingArguments 4.40.2 defaults, for the keys best.yaml may leave out.
TRAINING_ARG_DEFAULTS: dict[str, Any] = {
    "output_dir": "output", "learning_rate": 5e-5, "optim": "adamw_torch", "max_grad_norm": 1.0,
    "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
    "bf16": False, "fp16": False, "logging_steps": 500, "gradient_checkpointing_kwargs": None,
}

# best.yaml files written before autofit made ZeRO bucket sizes concrete say "auto" here, while their
# probe trained with DeepSpeed's defaults. HF would fill hidden-size values instead (and
# transformers 4.40.2 fills 0.9*hidden^2 as a float that DeepSpeed's validation rejects).
MEASURED_ZERO_BUCKETS = {"reduce_bucket_size": int(5e8), "stage3_prefetch_bucket_size": int(5e7),
                         "stage3_param_persistence_threshold": int(1e5)}

# GLM-4's remote code (finetune_demo) fuses q/k/v and gate/up: one LoRA per fused module.
GLM_REMOTE_MODULES = {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
               "o_proj": "dense", "gate_proj": "dense_h_to_4h", "up_proj": "dense_h_to_4h",
               "down_proj": "dense_4h_to_h"}
# The native transformers GLM classes (glm-4-9b-chat-hf, GLM-4-0414) that GLM-4's finetune/ loads
# keep q/k/v apart but fuse gate/up.
GLM_NATIVE_MODULES = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}

LR_NOTE = "autofit's stand-in (learning rate changes neither memory nor speed): set yours"


def fill(what: str) -> str:
    """A placeholder value: obviously not real, and the tool fails loudly if it is left in."""
    return f"<fill in: {what}>"


# -- reading best.yaml -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Winner:
    """The parts of best.yaml an export needs, validated once."""

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


def load_winner(run_dir: Path) -> Winner:
    """Read and validate RUN_DIR/best.yaml; every problem is named in one RunDirError."""
    doc, path = _read_best(Path(run_dir))
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
        tokens_per_s=float(r["tokens_per_s"]), peak_gib=float(r["peak_gib"]), strategy=_strategy(c),
        hosts=tuple(map(str, hosts)) if isinstance(hosts := _at(doc, "hardware.hosts"), list) else ())


def _strategy(c: dict[str, Any]) -> Strategy:
    """config.strategy through Strategy.from_key (the one decoder), so a winner's loss, quantization and
    optimizer are read the same way for every run; files without the key get them at their defaults."""
    method = Method(kind=c["method"], lora_r=c.get("lora_r") or Method.lora_r,
                    lora_alpha=c.get("lora_alpha") or Method.lora_alpha,
                    freeze_trainable_layers=c.get("freeze_trainable_layers") or Method.freeze_trainable_layers)
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
    if not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} does not exist (or is not a directory)")
    path = run_dir / "best.yaml"
    if not path.is_file():
        hint = f"; did you mean {run_dir / 'search'}?" if (run_dir / "search" / "best.yaml").is_file() else \
            " (a search writes it once a configuration fits)"
        raise RunDirError(f"{run_dir} has no best.yaml{hint}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{path} is corrupted (not valid YAML: {first}); re-run the search or restore it") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{path} is corrupted: expected a mapping, got {type(doc).__name__}")
    return doc, path


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


# -- what every file says about itself ---------------------------------------------------------------
def describe(w: Winner) -> str:
    method = {"lora": f"LoRA r={w.lora_r} alpha={w.lora_alpha}", "full": "full fine-tuning",
              "freeze": f"freeze (last {w.freeze_trainable_layers} blocks + head trainable)"}[w.method]
    if w.strategy.quant != "none":
        method += f" on {w.strategy.quant} base weights ({'QLoRA' if w.strategy.quant == 'nf4' else 'LLM.int8'})"
    ckpt = "gradient checkpointing" if w.gradient_checkpointing else "no gradient checkpointing"
    ds = "no DeepSpeed"
    if w.deepspeed is not None:
        off = [n for n, on in (("optimizer", w.offload_optimizer), ("parameters", w.offload_params)) if on]
        ds = f"DeepSpeed ZeRO-{w.zero_stage}" + (f", {' and '.join(off)} offloaded to CPU" if off else "")
    extra = [x for x, on in (("fused linear cross-entropy (liger-kernel)", w.strategy.loss == "fused"),
                             ("8-bit AdamW (bitsandbytes)", w.strategy.optim == "adamw8bit")) if on]
    return ", ".join([method, w.precision, ckpt, ds, *extra])


def requirements(w: Winner) -> list[str]:
    """Packages the winner's dimensions need beyond transformers/peft, said once in every header."""
    need = []
    if w.strategy.quant != "none" or w.strategy.optim == "adamw8bit":
        need.append("bitsandbytes>=0.43")
    if w.strategy.loss == "fused":
        need.append("liger-kernel>=0.5")
    return [f"requires: {', '.join(need)} (a CUDA GPU)"] if need else []


def header(w: Winner, fmt: str, use: str, placeholders: list[str], notes: list[str]) -> list[str]:
    return [
        f"generated by autofit from {w.run_dir}",
        f"checked against: {CHECKED_AGAINST[fmt]}",
        f"winner: {describe(w)}" + ("" if w.strategy.exact else " (quantized: not numerically the exact training)"),
        f"shape: micro_batch {w.micro_batch} x gradient accumulation {w.gradient_accumulation}, "
        f"{w.max_token} tokens per sample, {w.num_gpus} GPU(s)",
        f"measured: {w.tokens_per_s:g} tokens/s, peak {w.peak_gib:g} GiB GPU memory",
        f"placeholders for you to fill: {', '.join(placeholders) if placeholders else 'none'}",
        f"use: {use}",
        *requirements(w),
        *notes,
        *omp_notes(w),
    ]


def omp_notes(w: Winner) -> list[str]:
    """CPU Adam (offload_optimizer) is an OpenMP loop, and torchrun gives each rank 1 thread unless told."""
    ranks = int(w.hosts[0].rsplit("slots=", 1)[-1]) if w.hosts else w.num_gpus
    if not w.offload_optimizer or ranks <= 1:
        return []
    return [f"note: the optimizer step runs on the CPU: launch with OMP_NUM_THREADS=$(( $(nproc) / {ranks} )) "
            f"(torchrun's default is 1 thread per rank, 3.3x slower in results/omp-offload-2xh200; "
            f"autofit measured with the cores shared among the ranks)"]


def glm_notes(w: Winner) -> list[str]:
    """GLM-4 remote-code checkpoints are probed through a same-shape stand-in with other module names."""
    if "glm" not in w.model_id.lower() or w.trust_remote_code:
        return []
    targets = ",".join(dict.fromkeys(GLM_REMOTE_MODULES.get(t, t) for t in w.lora_targets))
    lora = f" and LoRA targets {targets} (its own module names; see --format glm4-demo)" if w.lora_targets else ""
    return [f"note: if {w.model_id} is a remote-code GLM checkpoint (like glm-4-9b-chat), set trust_remote_code: "
            f"true{lora}; the names here are those of the same-shape architecture autofit probed"]


def launch(w: Winner, single: str, distributed: str,
           multi_node: Callable[[int, str, str], str] | None = None) -> str:
    """The launch line; multi_node(hosts, GPUs per host, first host) for a winner probed across machines."""
    if w.hosts and multi_node:
        slots = [h.rsplit("slots=", 1)[-1] for h in w.hosts]
        per_node = slots[0] if len(set(slots)) == 1 else "N"  # torchrun needs one count; uneven hosts: fill it in
        return multi_node(len(w.hosts), per_node, w.hosts[0].split()[0])
    return distributed if w.deepspeed is not None or w.num_gpus > 1 else single


# -- DeepSpeed -----------------------------------------------------------------------------------------
def hf_deepspeed(w: Winner) -> dict[str, Any]:
    """The HF Trainer file: "auto" wherever Trainer fills values from TrainingArguments."""
    cfg = copy.deepcopy(w.deepspeed)
    zero = cfg.get("zero_optimization") or {}
    for key, value in MEASURED_ZERO_BUCKETS.items():
        if zero.get(key) == "auto":
            zero[key] = value
    return cfg


def concrete_deepspeed(w: Winner) -> dict[str, Any]:
    """The same config with every "auto" resolved as HF Trainer would, for deepspeed.initialize."""
    fills = {
        "train_micro_batch_size_per_gpu": w.micro_batch,
        "gradient_accumulation_steps": w.gradient_accumulation,
        "train_batch_size": w.micro_batch * w.gradient_accumulation * w.num_gpus,
        "gradient_clipping": w.arg("max_grad_norm"),
        "optimizer.params.lr": w.arg("learning_rate"),
        "optimizer.params.betas": [w.arg("adam_beta1"), w.arg("adam_beta2")],
        "optimizer.params.eps": w.arg("adam_epsilon"),
        "optimizer.params.weight_decay": w.arg("weight_decay"),
        "fp16.enabled": w.arg("fp16"),
        "bf16.enabled": w.arg("bf16"),
    }

    def resolve(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if node != "auto":
            return node
        if path not in fills:
            raise RunDirError(f"{w.run_dir / 'best.yaml'}: deepspeed.{path} is 'auto' and only HF Trainer can "
                              "fill it in; use --format hf")
        return fills[path]

    return resolve(hf_deepspeed(w), "")


def ds_json(cfg: dict[str, Any], head: list[str]) -> str:
    # JSON has no comments; DeepSpeed and HF ignore an unknown top-level key.
    return json.dumps({"_comment": head, **cfg}, indent=2) + "\n"


# -- YAML with a header and inline notes ----------------------------------------------------------------
def yaml_text(head: list[str], sections: list[tuple[str | None, dict[str, Any]]], notes: dict[str, str]) -> str:
    parts = ["".join(f"# {line}\n" for line in head)]
    for title, mapping in sections:
        body = yaml.safe_dump(mapping, sort_keys=False, width=1000, allow_unicode=True)
        parts.append(f"\n### {title}\n{body}" if title else f"\n{body}")
    return annotate("".join(parts), notes)


_KEY = re.compile(r"^\s*(?:- )?([A-Za-z_][\w.]*):(?:\s|$)")


def annotate(text: str, notes: dict[str, str]) -> str:
    """Append `# note` to the first line that sets each key (self-documenting files)."""
    left, out = dict(notes), []
    for line in text.splitlines():
        m = _KEY.match(line) if not line.lstrip().startswith("#") else None
        if m and m.group(1) in left:
            line = f"{line}  # {left.pop(m.group(1))}"
        out.append(line)
    return "\n".join(out) + "\n"


# -- the formats ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutFile:
    path: Path
    text: str


@dataclass(frozen=True)
class Fills:
    """Values only the user knows; an export that still needs one is refused unless placeholders are allowed."""

    dataset: str | None = None
    template: str | None = None


def ds_path(out: Path) -> Path:
    """OUT's DeepSpeed companion; only a known extension is dropped, so a dotted name stays whole."""
    name = out.name
    for ext in (".yaml", ".yml", ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(name + ".ds_config.json")


def with_ds(w: Winner, out: Path, head: list[str], main: str) -> list[OutFile]:
    files = [OutFile(out, main)]
    if w.deepspeed is not None:
        files.append(OutFile(ds_path(out), ds_json(hf_deepspeed(w), head + [
            "HF Trainer style: 'auto' values are filled from TrainingArguments; ZeRO bucket sizes are the ones "
            "the probe trained with"])))
    return files


def hf_training_args(w: Winner, ds_file: Path | None) -> dict[str, Any]:
    """TrainingArguments kwargs: best.yaml's, with the optimizer and fused loss the strategy key names."""
    ta = dict(w.training_args)
    ta.pop("deepspeed", None)  # best.yaml's relative name; the file written next to the export replaces it
    ta["optim"] = w.optim
    if w.fused_loss:
        ta.update({k: v for k, v in w.fused_loss.items() if k != "requires"})
    if ds_file is not None:
        ta["deepspeed"] = str(ds_file)
    return ta


def hf_model_kwargs(w: Winner) -> dict[str, Any]:
    """from_pretrained kwargs as plain data (BitsAndBytesConfig kwargs under quantization_config)."""
    kw: dict[str, Any] = {"torch_dtype": w.torch_dtype, "attn_implementation": w.attn_implementation,
                          "trust_remote_code": w.trust_remote_code}
    if w.quantization:
        kw["quantization_config"] = dict(w.quantization)
    return kw


def export_hf(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    ta = hf_training_args(w, ds_path(out) if w.deepspeed is not None else None)
    doc: dict[str, Any] = {"model_id": w.model_id, "max_token": w.max_token, "model_kwargs": hf_model_kwargs(w),
                           "training_args": ta, "peft": w.peft}
    if w.method == "freeze":
        doc["freeze_trainable_layers"] = w.freeze_trainable_layers
    load = ("quantization_config=BitsAndBytesConfig(**model_kwargs['quantization_config']) and "
            if w.quantization else "")
    use = (f"AutoModelForCausalLM.from_pretrained(model_id, **model_kwargs) with {load}torch_dtype=getattr(torch, ...); "
           "peft.get_peft_model(model, LoraConfig(**peft)); Trainer(model, TrainingArguments(**training_args), ...); "
           "or in Python: autofit.load(RUN_DIR)")
    notes = [] if w.deepspeed is None else [
        f"note: launch with `deepspeed --hostfile HOSTFILE train.py`, HOSTFILE listing {', '.join(w.hosts)}"
        if w.hosts else f"note: launch DeepSpeed runs with `deepspeed --num_gpus={w.num_gpus} train.py` or torchrun"]
    if w.fused_loss:
        notes.append(f"note: use_liger_kernel with liger_kernel_config needs {w.fused_loss['requires']}; "
                     "autofit's own probes patch the same loss into transformers 4.40.2")
    head = header(w, "hf", use, [], notes + glm_notes(w))
    text = yaml_text(head, [(None, doc)], {
        "max_token": "every measured sample was this long: truncate or pad your data to it",
        "learning_rate": LR_NOTE,
        "quantization_config": "kwargs for transformers.BitsAndBytesConfig",
        "liger_kernel_config": "the fused linear cross-entropy only, as probed; liger's other kernels off",
        "peft": "null: no adapter (full or freeze)" if w.peft is None else "kwargs for peft.LoraConfig",
        "freeze_trainable_layers": "freeze all but the last N decoder blocks and the output head yourself"})
    return with_ds(w, out, head, text)


def export_deepspeed(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    if w.deepspeed is None:
        raise UsageError(f"the winner in {w.run_dir} uses no DeepSpeed ({describe(w)}): there is no DeepSpeed "
                         "config to export; use --format hf, llamafactory, glm4 or axolotl")
    notes = ["every 'auto' is resolved: HF Trainer accepts the file only with matching TrainingArguments "
             f"(per_device_train_batch_size {w.micro_batch}, gradient_accumulation_steps {w.gradient_accumulation}, "
             f"learning_rate {w.arg('learning_rate')}, max_grad_norm {w.arg('max_grad_norm')}); "
             f"train_batch_size assumes {w.num_gpus} GPU(s)"]
    if w.fused_loss:  # not a DeepSpeed setting, but part of what was measured
        notes.append("the winner also uses the fused linear cross-entropy, which is no DeepSpeed key: set "
                     "use_liger_kernel and liger_kernel_config in TrainingArguments (see --format hf)")
    head = header(w, "deepspeed", "deepspeed.initialize(config=this file) or TrainingArguments(deepspeed=this file)",
                  [], notes)
    return [OutFile(out, ds_json(concrete_deepspeed(w), head))]


def _attn_llamafactory(attn: str) -> str:
    return {"sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}.get(attn, "auto")


def _llamafactory_quant(w: Winner) -> dict[str, Any]:
    """LLaMA-Factory's bitsandbytes keys (model_args.py); NF4 with double quantization, as probed."""
    if w.quant_bits is None:
        return {}
    keys: dict[str, Any] = {"quantization_bit": w.quant_bits, "quantization_method": "bitsandbytes"}
    if w.quant_bits == 4:
        keys.update(quantization_type="nf4", double_quantization=True)
    return keys


def export_llamafactory(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    method: dict[str, Any] = {"stage": "sft", "do_train": True, "finetuning_type": w.method}
    if w.method == "lora":
        method.update(lora_rank=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=w.lora_dropout,
                      lora_target=",".join(w.lora_targets))
    if w.method == "freeze":
        method.update(freeze_trainable_layers=w.freeze_trainable_layers, freeze_trainable_modules="all",
                      freeze_extra_modules="lm_head")
    # LLaMA-Factory refuses pure_bf16 under ZeRO-3 and with quantized weights (hparams/parser.py).
    pure = w.precision == "bf16-pure" and w.deepspeed is None and w.quant_bits is None
    if pure:
        method["pure_bf16"] = True
    method["disable_gradient_checkpointing"] = not w.gradient_checkpointing
    if w.gradient_checkpointing:
        method["use_reentrant_gc"] = w.reentrant_checkpointing
    if w.fused_loss:
        method["enable_liger_kernel"] = True
    if w.deepspeed is not None:
        method["deepspeed"] = str(ds_path(out))
    sections = [
        ("model", {"model_name_or_path": w.model_id, "trust_remote_code": w.trust_remote_code,
                   "flash_attn": _attn_llamafactory(w.attn_implementation), **_llamafactory_quant(w)}),
        ("method", method),
        ("dataset", {"dataset": fills.dataset or fill("dataset name(s) from data/dataset_info.json"),
                     "template": fills.template or fill("the model's chat template, e.g. glm4, qwen, llama3"),
                     "cutoff_len": w.max_token}),
        ("output", {"output_dir": w.arg("output_dir"), "logging_steps": w.arg("logging_steps")}),
        ("train", {"per_device_train_batch_size": w.micro_batch, "gradient_accumulation_steps": w.gradient_accumulation,
                   "learning_rate": w.arg("learning_rate"), "optim": w.optim,
                   "max_grad_norm": w.arg("max_grad_norm"), "bf16": w.arg("bf16"), "fp16": w.arg("fp16")}),
    ]
    notes = []
    if w.precision == "bf16-pure" and not pure:
        why = "quantized base weights" if w.quant_bits else "DeepSpeed (LLaMA-Factory refuses it with ZeRO-3)"
        notes.append(f"note: pure_bf16 is left off under {why}; bf16 mixed precision keeps the measured bf16 compute")
    if w.fused_loss:
        notes.append("note: enable_liger_kernel also turns on liger's RoPE, RMSNorm and SwiGLU kernels, which autofit "
                     "did not measure (they use less memory, not more)")
    use = launch(w, f"llamafactory-cli train {out}", f"FORCE_TORCHRUN=1 llamafactory-cli train {out}",
                 lambda n, _, first: f"on each of the {n} hosts: FORCE_TORCHRUN=1 NNODES={n} NODE_RANK=<0..{n - 1}> "
                                     f"MASTER_ADDR={first} MASTER_PORT=29500 llamafactory-cli train {out}")
    placeholders = [k for k, v in (("dataset", fills.dataset), ("template", fills.template)) if not v]
    head = header(w, "llamafactory", use, placeholders, notes + glm_notes(w))
    text = yaml_text(head, sections, {
        "cutoff_len": "= max_token: the sample length autofit measured",
        "learning_rate": LR_NOTE, "freeze_extra_modules": "the output head autofit also trained",
        "disable_gradient_checkpointing": "LLaMA-Factory checkpoints unless told not to",
        "enable_liger_kernel": "the fused linear cross-entropy autofit measured"})
    return with_ds(w, out, head, text)


def glm_lengths(max_token: int) -> tuple[int, int]:
    """finetune.py keeps max_input_length + max_output_length + 1 tokens of every sample: split the rest in half."""
    max_input = max_token // 2
    return max_input, max(max_token - 1 - max_input, 0)


def _glm_model(w: Winner, demo: bool) -> str:
    """finetune/ loads the model without remote code: glm-4-9b-chat is published natively as glm-4-9b-chat-hf."""
    if demo or "glm-4-9b" not in w.model_id.lower() or w.model_id.endswith("-hf") or "0414" in w.model_id:
        return w.model_id
    return w.model_id + "-hf"


def _glm_refusals(w: Winner, fmt: str) -> None:
    """GLM-4's scripts load bf16 weights with no quantization switch; the remote-code model has no liger patch."""
    if w.quant_bits is not None:
        raise ExportError(f"--format {fmt}: GLM-4's finetune.py always loads bfloat16 base weights and has no "
                          f"quantization option, so this {w.strategy.quant} winner cannot be written for it; use "
                          "--format llamafactory, axolotl or hf (or rerun the search without --quantize)")
    if w.fused_loss and fmt == "glm4-demo":
        raise ExportError("--format glm4-demo: the fused cross-entropy this winner measured has no switch for the "
                          "remote-code ChatGLM model (liger-kernel patches only models transformers knows); "
                          "use --format glm4 (native GLM model), llamafactory, axolotl or hf")


def _export_glm4(w: Winner, out: Path, fills: Fills, fmt: str) -> list[OutFile]:
    _glm_refusals(w, fmt)
    if fills.dataset and not fills.dataset.endswith(".jsonl"):
        raise ExportError(f"--format {fmt} --dataset {fills.dataset}: GLM-4's finetune.py reads only .jsonl files "
                          "(a name under its DATA_DIR argument)")
    demo = fmt == "glm4-demo"
    max_in, max_out = glm_lengths(w.max_token)
    ta: dict[str, Any] = {
        "output_dir": w.arg("output_dir"), "max_steps": 3000, "learning_rate": w.arg("learning_rate"),
        "per_device_train_batch_size": w.micro_batch, "gradient_accumulation_steps": w.gradient_accumulation,
        "gradient_checkpointing": w.gradient_checkpointing}
    if w.gradient_checkpointing and w.arg("gradient_checkpointing_kwargs"):
        ta["gradient_checkpointing_kwargs"] = w.arg("gradient_checkpointing_kwargs")
    ta.update(bf16=w.arg("bf16"), fp16=w.arg("fp16"), optim=w.optim, max_grad_norm=w.arg("max_grad_norm"),
              remove_unused_columns=False, save_strategy="steps", save_steps=500,
              logging_strategy="steps", logging_steps=w.arg("logging_steps"),
              per_device_eval_batch_size=w.micro_batch, eval_strategy="steps", eval_steps=500,
              predict_with_generate=True, generation_config={"max_new_tokens": max_out})
    if w.fused_loss:
        ta.update({k: v for k, v in w.fused_loss.items() if k != "requires"})
    if w.deepspeed is not None:
        ta["deepspeed"] = str(ds_path(out))
    names = GLM_REMOTE_MODULES if demo else GLM_NATIVE_MODULES
    doc: dict[str, Any] = {
        "data_config": {"train_file": fills.dataset or "train.jsonl", "val_file": "dev.jsonl", "test_file": "dev.jsonl",
                        "num_proc": 1},
        "combine": True, "freezeV": True, "max_input_length": max_in, "max_output_length": max_out,
        "training_args": ta}
    if w.method == "lora":
        doc["peft_config"] = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": w.lora_r, "lora_alpha": w.lora_alpha,
                              "lora_dropout": w.lora_dropout,
                              "target_modules": list(dict.fromkeys(names.get(t, t) for t in w.lora_targets))}
    model, where = _glm_model(w, demo), "GLM-4/finetune_demo" if demo else "GLM-4/finetune"
    use = launch(w, f"cd {where} && python finetune.py DATA_DIR {model} {out}",
                 f"cd {where} && torchrun --standalone --nproc_per_node={w.num_gpus} finetune.py "
                 f"DATA_DIR {model} {out}",
                 lambda n, per, first: f"on each of the {n} hosts: cd {where} && torchrun --nnodes={n} "
                                       f"--node_rank=<0..{n - 1}> --master_addr={first} --master_port=29500 "
                                       f"--nproc_per_node={per} finetune.py DATA_DIR {model} {out}")
    head = header(w, fmt, use, [], _glm4_notes(w, demo, model))
    text = yaml_text(head, [(None, doc)], {
        "train_file": "your .jsonl under DATA_DIR (--dataset sets it)",
        "val_file": "null: no evaluation, with eval_strategy: 'no'",
        "test_file": "null: no final predict", "max_steps": "GLM's example value: set yours",
        "combine": "true: chat template over the whole conversation",
        "freezeV": "FinetuningConfig requires it; only finetune_vision.py reads it",
        "max_input_length": f"input + output + 1 = {w.max_token} = max_token (finetune.py truncates there)",
        "learning_rate": LR_NOTE,
        "gradient_checkpointing": "finetune.py's switch: it checkpoints only when this says so",
        "per_device_eval_batch_size": "evaluation memory was not measured",
        "target_modules": ("GLM-4 remote-code names (q/k/v -> query_key_value, o -> dense)" if demo else
                           "the native GLM names (gate/up -> gate_up_proj), as finetune/configs/lora.yaml")})
    return with_ds(w, out, head, text)


def export_glm4(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    return _export_glm4(w, out, fills, "glm4")


def export_glm4_demo(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    return _export_glm4(w, out, fills, "glm4-demo")


def _glm4_notes(w: Winner, demo: bool, model: str) -> list[str]:
    if demo:
        notes = ["note: for GLM-4's remote-code finetune_demo (glm-4-9b-chat, trust_remote_code); checkouts older "
                 "than 2024-09-17 have no freezeV key: delete that line there"]
    else:
        notes = ["note: for GLM-4's finetune/ (transformers-native GLM models, no remote code): q/k/v keep their "
                 "own names; the remote-code finetune_demo layout is --format glm4-demo"]
        if model != w.model_id:
            notes.append(f"note: finetune/ cannot load the remote-code {w.model_id}: the command names its native "
                         f"twin {model}, same shapes")
    if "glm" not in w.model_id.lower():
        notes.append(f"warning: {w.model_id} is not a GLM-4 checkpoint; finetune.py hard-codes GLM-4 token ids")
    if w.precision != "bf16-pure":
        notes.append(f"note: finetune.py always loads the weights in bfloat16; autofit measured {w.precision}")
    if w.method == "freeze":
        notes.append("warning: finetune.py has no freeze mode: without peft_config it trains every parameter, which "
                     "needs more memory than this freeze winner; prefer --format llamafactory or hf")
    if w.fused_loss:
        notes.append(f"note: use_liger_kernel with liger_kernel_config needs {w.fused_loss['requires']}")
    return notes


LIGER_KERNELS_OFF = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy")
AXOLOTL_LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _axolotl_measured(w: Winner) -> dict[str, Any]:
    """What axolotl would otherwise choose for us: its fused LoRA kernels (auto-enabled for LoRA) and TF32
    ("auto"), pinned to what the probe ran (PEFT's own LoRA layers, no TF32); the liger plugin limited to
    the fused cross-entropy, like the probe."""
    keys: dict[str, Any] = {k: False for k in AXOLOTL_LORA_KERNELS} if w.method == "lora" else {}
    keys["tf32"] = False
    if w.fused_loss:
        keys.update(plugins=["axolotl.integrations.liger.LigerPlugin"], liger_fused_linear_cross_entropy=True,
                    **{k: False for k in LIGER_KERNELS_OFF})
    return keys


def export_axolotl(w: Winner, out: Path, fills: Fills) -> list[OutFile]:
    doc: dict[str, Any] = {"base_model": w.model_id, "trust_remote_code": w.trust_remote_code,
                           "attn_implementation": w.attn_implementation,
                           "datasets": [{"path": fills.dataset or fill("hub dataset id or local file"),
                                         "type": "chat_template"}],
                           "output_dir": w.arg("output_dir"),
                           "sequence_len": w.max_token, "pad_to_sequence_len": True, "sample_packing": False}
    if fills.template:
        doc["chat_template"] = fills.template
    placeholders = [] if fills.dataset else ["datasets"]
    if w.method == "lora":
        doc["adapter"] = "qlora" if w.quant_bits == 4 else "lora"
        if w.quant_bits:
            doc[f"load_in_{w.quant_bits}bit"] = True
        doc.update(lora_r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=w.lora_dropout,
                   lora_target_modules=w.lora_targets)
    if w.method == "freeze":
        doc["unfrozen_parameters"] = [fill(f"regexes for the last {w.freeze_trainable_layers} decoder blocks, "
                                           r"e.g. ^model.layers.(38|39)\..*"), r"^lm_head\..*"]
        placeholders.append("unfrozen_parameters")
    doc.update(micro_batch_size=w.micro_batch, gradient_accumulation_steps=w.gradient_accumulation,
               gradient_checkpointing=w.gradient_checkpointing)
    if w.gradient_checkpointing and w.arg("gradient_checkpointing_kwargs"):
        doc["gradient_checkpointing_kwargs"] = w.arg("gradient_checkpointing_kwargs")
    doc.update(bf16=w.arg("bf16"), fp16=w.arg("fp16"), learning_rate=w.arg("learning_rate"),
               optimizer=w.optim, max_grad_norm=w.arg("max_grad_norm"), logging_steps=w.arg("logging_steps"))
    doc.update(_axolotl_measured(w))
    if w.deepspeed is not None:
        doc["deepspeed"] = str(ds_path(out))
    notes = []
    if w.precision in ("bf16", "fp16"):
        notes.append(f"note: axolotl loads the weights in the {w.precision} dtype; autofit measured fp32 weights "
                     "with autocast (more memory), so this fits")
    # axolotl's docs/multi-node.qmd: its CLI hands everything after `--` to torchrun on each node.
    use = launch(w, f"axolotl train {out}", f"axolotl train {out}",
                 lambda n, per, first: f"on each of the {n} hosts: axolotl train {out} --launcher torchrun -- "
                                       f"--nnodes {n} --nproc_per_node {per} --rdzv_id autofit --rdzv_backend c10d "
                                       f"--rdzv_endpoint {first}:29400")
    head = header(w, "axolotl", use, placeholders, notes + glm_notes(w))
    text = yaml_text(head, [(None, doc)], {
        "path": "placeholder" if not fills.dataset else "--dataset", "type": "your dataset format",
        "attn_implementation": "older axolotl: sdp_attention / flash_attention: true",
        "sequence_len": "= max_token: the sample length autofit measured",
        "pad_to_sequence_len": "every step at the measured shape", "learning_rate": LR_NOTE,
        "lora_mlp_kernel": "axolotl auto-enables its fused LoRA kernels; autofit measured PEFT's layers",
        "tf32": "axolotl's default 'auto' turns TF32 on; autofit measured without it",
        "liger_fused_linear_cross_entropy": "the fused loss autofit measured; liger's other kernels off"})
    return with_ds(w, out, head, text)


EXPORTERS: dict[str, Callable[[Winner, Path, Fills], list[OutFile]]] = {
    "hf": export_hf, "deepspeed": export_deepspeed, "llamafactory": export_llamafactory,
    "glm4": export_glm4, "glm4-demo": export_glm4_demo, "axolotl": export_axolotl,
}


# -- entry points ----------------------------------------------------------------------------------------
SEARCH_FILES = {"best.yaml", "ds_config.json", "probes.csv", "boundaries.csv", "run.json", "study.db"}


def default_name(fmt: str) -> str:
    return f"{fmt}.json" if fmt == "deepspeed" else f"{fmt}.yaml"


def out_path(run_dir: Path, fmt: str, out: str | os.PathLike | None) -> Path:
    """Where the main file goes: an existing directory, or a path ending in a separator, is a directory."""
    if out is None:
        return (Path(run_dir) / "export" / default_name(fmt)).resolve()
    text = os.fspath(out)
    if Path(text).is_dir() or text.endswith(("/", os.sep)):
        return (Path(text) / default_name(fmt)).resolve()
    return Path(text).resolve()


FILL_FLAGS = {"dataset": "--dataset NAME", "path": "--dataset NAME", "template": "--template NAME"}


def unfilled(files: list[OutFile]) -> list[str]:
    """Keys whose value is still a `<fill in: ...>` placeholder, in file order."""
    keys = []
    for line in files[0].text.splitlines():
        if "<fill in:" in line and not line.lstrip().startswith("#"):
            m = _KEY.match(line)
            keys.append(m.group(1) if m else "unfrozen_parameters")
    return list(dict.fromkeys(keys))


def _ours(path: Path, run_dir: Path) -> bool:
    """An earlier export of this same run (its header names the run dir): safe to replace."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False
    return f"generated by autofit from {run_dir}" + ("\n" if path.suffix != ".json" else '"') in head


def check_overwrites(files: list[OutFile], run_dir: Path, force: bool) -> None:
    for f in files:
        if f.path.parent == run_dir and f.path.name in SEARCH_FILES:
            raise UsageError(f"--out would overwrite the search's own {f.path}; choose another path")
        if f.path.is_dir():
            raise UsageError(f"--out: {f.path} is a directory; end the path with / to write into it")
        if f.path.exists() and not force and not _ours(f.path, run_dir):
            raise UsageError(f"{f.path} exists and is not an export of {run_dir}; choose another --out or pass --force")


def export_run(run_dir: Path, fmt: str, out: str | os.PathLike | None, *, dataset: str | None = None,
               template: str | None = None, allow_placeholders: bool = False, force: bool = False) -> list[Path]:
    """Write the winner of RUN_DIR in FMT's keys; returns the files written (main file first)."""
    if fmt not in EXPORTERS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    winner = load_winner(Path(run_dir))
    files = EXPORTERS[fmt](winner, out_path(Path(run_dir), fmt, out), Fills(dataset, template))
    missing = unfilled(files)
    if missing and not allow_placeholders:
        flags = " ".join(dict.fromkeys(FILL_FLAGS[k] for k in missing if k in FILL_FLAGS))
        how = f"pass {flags}, or " if flags else ""
        raise ExportError(f"--format {fmt} needs values only you know: {', '.join(missing)}; {how}pass "
                          "--allow-placeholders to write <fill in> markers and edit the file")
    check_overwrites(files, winner.run_dir, force)
    for f in files:
        try:
            f.path.parent.mkdir(parents=True, exist_ok=True)
            f.path.write_text(f.text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {f.path}: {exc.strerror or exc}") from None
    return [f.path for f in files]


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="hf: TrainingArguments/LoraConfig/BitsAndBytesConfig kwargs; deepspeed: the DeepSpeed JSON; "
                   "llamafactory, axolotl: that tool's YAML; glm4: GLM-4's finetune/ script; glm4-demo: its older "
                   "remote-code finetune_demo.")
@click.option("--out", default=None,
              help="File, or directory (existing, or ending in /), to write; default RUN_DIR/export/<format>.yaml "
                   "(.json for deepspeed).")
@click.option("--dataset", default=None, help="Your dataset (LLaMA-Factory dataset name, axolotl path, GLM-4 train file).")
@click.option("--template", default=None, help="Your chat template (LLaMA-Factory template, axolotl chat_template).")
@click.option("--allow-placeholders", is_flag=True,
              help="Write <fill in> markers where --dataset/--template are missing instead of refusing.")
@click.option("--force", is_flag=True, help="Overwrite a file that is not an earlier export of this run.")
def export_cmd(run_dir: Path, fmt: str, out: str | None, dataset: str | None, template: str | None,
               allow_placeholders: bool, force: bool) -> None:
    """Write a search's winner (RUN_DIR/best.yaml) as a config for your training tool."""
    for path in export_run(run_dir, fmt, out, dataset=dataset, template=template,
                           allow_placeholders=allow_placeholders, force=force):
        click.echo(f"wrote {path}")
