"""Export a search's winner (RUN_DIR/best.yaml) in the keys of the tool you train with.

    autofit export RUN_DIR --format hf|deepspeed|llamafactory|glm4|axolotl [--out PATH]

Every file starts with a header: where it came from, what was measured, and which keys are
placeholders for you. Key names follow each tool's own source (LLaMA-Factory hparams/*.py, GLM-4
finetune_demo/finetune.py, axolotl docs/config.qmd); tests/test_export.py pins them. Plain YAML and
JSON only: nothing here imports torch, transformers or DeepSpeed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from autofit.errors import RunDirError, UsageError
from autofit.spec import METHODS, PRECISIONS

FORMATS = ("hf", "deepspeed", "llamafactory", "glm4", "axolotl")

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
GLM_MODULES = {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
               "o_proj": "dense", "gate_proj": "dense_h_to_4h", "up_proj": "dense_h_to_4h",
               "down_proj": "dense_4h_to_h"}

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
        tokens_per_s=float(r["tokens_per_s"]), peak_gib=float(r["peak_gib"]),
        hosts=tuple(map(str, hosts)) if isinstance(hosts := _at(doc, "hardware.hosts"), list) else ())


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
    return problems


# -- what every file says about itself ---------------------------------------------------------------
def describe(w: Winner) -> str:
    method = {"lora": f"LoRA r={w.lora_r} alpha={w.lora_alpha}", "full": "full fine-tuning",
              "freeze": f"freeze (last {w.freeze_trainable_layers} blocks + head trainable)"}[w.method]
    ckpt = "gradient checkpointing" if w.gradient_checkpointing else "no gradient checkpointing"
    ds = "no DeepSpeed"
    if w.deepspeed is not None:
        off = [n for n, on in (("optimizer", w.offload_optimizer), ("parameters", w.offload_params)) if on]
        ds = f"DeepSpeed ZeRO-{w.zero_stage}" + (f", {' and '.join(off)} offloaded to CPU" if off else "")
    return f"{method}, {w.precision}, {ckpt}, {ds}"


def header(w: Winner, use: str, placeholders: list[str], notes: list[str]) -> list[str]:
    return [
        f"generated by autofit from {w.run_dir}",
        f"winner: {describe(w)}",
        f"shape: micro_batch {w.micro_batch} x gradient accumulation {w.gradient_accumulation}, "
        f"{w.max_token} tokens per sample, {w.num_gpus} GPU(s)",
        f"measured: {w.tokens_per_s:g} tokens/s, peak {w.peak_gib:g} GiB GPU memory",
        f"placeholders for you to fill: {', '.join(placeholders) if placeholders else 'none'}",
        f"use: {use}",
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
    targets = ",".join(dict.fromkeys(GLM_MODULES.get(t, t) for t in w.lora_targets))
    lora = f" and LoRA targets {targets} (its own module names; see --format glm4)" if w.lora_targets else ""
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


# -- the five formats --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutFile:
    path: Path
    text: str


def ds_path(out: Path) -> Path:
    return out.with_name(out.stem + ".ds_config.json")


def with_ds(w: Winner, out: Path, head: list[str], main: str) -> list[OutFile]:
    files = [OutFile(out, main)]
    if w.deepspeed is not None:
        files.append(OutFile(ds_path(out), ds_json(hf_deepspeed(w), head + [
            "HF Trainer style: 'auto' values are filled from TrainingArguments; ZeRO bucket sizes are the ones "
            "the probe trained with"])))
    return files


def export_hf(w: Winner, out: Path) -> list[OutFile]:
    ta = dict(w.training_args)
    ta.pop("deepspeed", None)  # best.yaml's relative name; the file written next to this one replaces it
    if w.deepspeed is not None:
        ta["deepspeed"] = str(ds_path(out))
    doc: dict[str, Any] = {
        "model_id": w.model_id, "max_token": w.max_token,
        "model_kwargs": {"torch_dtype": w.torch_dtype, "attn_implementation": w.attn_implementation,
                         "trust_remote_code": w.trust_remote_code},
        "training_args": ta, "peft": w.peft}
    if w.method == "freeze":
        doc["freeze_trainable_layers"] = w.freeze_trainable_layers
    use = ("AutoModelForCausalLM.from_pretrained(model_id, **model_kwargs) with torch_dtype=getattr(torch, ...); "
           "peft.get_peft_model(model, LoraConfig(**peft)); Trainer(model, TrainingArguments(**training_args), ...)")
    notes = [] if w.deepspeed is None else [
        f"note: launch with `deepspeed --hostfile HOSTFILE train.py`, HOSTFILE listing {', '.join(w.hosts)}"
        if w.hosts else f"note: launch DeepSpeed runs with `deepspeed --num_gpus={w.num_gpus} train.py` or torchrun"]
    head = header(w, use, [], notes + glm_notes(w))
    text = yaml_text(head, [(None, doc)], {
        "max_token": "every measured sample was this long: truncate or pad your data to it",
        "learning_rate": LR_NOTE,
        "peft": "null: no adapter (full or freeze)" if w.peft is None else "kwargs for peft.LoraConfig",
        "freeze_trainable_layers": "freeze all but the last N decoder blocks and the output head yourself"})
    return with_ds(w, out, head, text)


def export_deepspeed(w: Winner, out: Path) -> list[OutFile]:
    if w.deepspeed is None:
        raise UsageError(f"the winner in {w.run_dir} uses no DeepSpeed ({describe(w)}): there is no DeepSpeed "
                         "config to export; use --format hf, llamafactory, glm4 or axolotl")
    head = header(w, "deepspeed.initialize(config=this file) or TrainingArguments(deepspeed=this file)", [], [
        "every 'auto' is resolved: HF Trainer accepts the file only with matching TrainingArguments "
        f"(per_device_train_batch_size {w.micro_batch}, gradient_accumulation_steps {w.gradient_accumulation}, "
        f"learning_rate {w.arg('learning_rate')}, max_grad_norm {w.arg('max_grad_norm')}); "
        f"train_batch_size assumes {w.num_gpus} GPU(s)"])
    return [OutFile(out, ds_json(concrete_deepspeed(w), head))]


def _attn_llamafactory(attn: str) -> str:
    return {"sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}.get(attn, "auto")


def export_llamafactory(w: Winner, out: Path) -> list[OutFile]:
    method: dict[str, Any] = {"stage": "sft", "do_train": True, "finetuning_type": w.method}
    if w.method == "lora":
        method.update(lora_rank=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=w.lora_dropout,
                      lora_target=",".join(w.lora_targets))
    if w.method == "freeze":
        method.update(freeze_trainable_layers=w.freeze_trainable_layers, freeze_trainable_modules="all",
                      freeze_extra_modules="lm_head")
    pure = w.precision == "bf16-pure" and w.deepspeed is None  # LLaMA-Factory refuses pure_bf16 under ZeRO-3
    if pure:
        method["pure_bf16"] = True
    method["disable_gradient_checkpointing"] = not w.gradient_checkpointing
    if w.gradient_checkpointing:
        method["use_reentrant_gc"] = w.reentrant_checkpointing
    if w.deepspeed is not None:
        method["deepspeed"] = str(ds_path(out))
    sections = [
        ("model", {"model_name_or_path": w.model_id, "trust_remote_code": w.trust_remote_code,
                   "flash_attn": _attn_llamafactory(w.attn_implementation)}),
        ("method", method),
        ("dataset", {"dataset": fill("dataset name(s) from data/dataset_info.json"),
                     "template": fill("the model's chat template, e.g. glm4, qwen, llama3"),
                     "cutoff_len": w.max_token}),
        ("output", {"output_dir": w.arg("output_dir"), "logging_steps": w.arg("logging_steps")}),
        ("train", {"per_device_train_batch_size": w.micro_batch, "gradient_accumulation_steps": w.gradient_accumulation,
                   "learning_rate": w.arg("learning_rate"), "optim": w.arg("optim"),
                   "max_grad_norm": w.arg("max_grad_norm"), "bf16": w.arg("bf16"), "fp16": w.arg("fp16")}),
    ]
    notes = []
    if w.precision == "bf16-pure" and not pure:
        notes.append("note: pure_bf16 is left off under DeepSpeed (LLaMA-Factory refuses it with ZeRO-3); "
                     "DeepSpeed's bf16 mode keeps the weights in bf16, as measured")
    use = launch(w, f"llamafactory-cli train {out}", f"FORCE_TORCHRUN=1 llamafactory-cli train {out}",
                 lambda n, _, first: f"on each of the {n} hosts: FORCE_TORCHRUN=1 NNODES={n} NODE_RANK=<0..{n - 1}> "
                                     f"MASTER_ADDR={first} MASTER_PORT=29500 llamafactory-cli train {out}")
    head = header(w, use, ["dataset", "template"], notes + glm_notes(w))
    text = yaml_text(head, sections, {
        "cutoff_len": "= max_token: the sample length autofit measured",
        "learning_rate": LR_NOTE, "freeze_extra_modules": "the output head autofit also trained",
        "disable_gradient_checkpointing": "LLaMA-Factory checkpoints unless told not to"})
    return with_ds(w, out, head, text)


def glm_lengths(max_token: int) -> tuple[int, int]:
    """finetune.py keeps max_input_length + max_output_length + 1 tokens of every sample: split the rest in half."""
    max_input = max_token // 2
    return max_input, max(max_token - 1 - max_input, 0)


def export_glm4(w: Winner, out: Path) -> list[OutFile]:
    max_in, max_out = glm_lengths(w.max_token)
    ta: dict[str, Any] = {
        "output_dir": w.arg("output_dir"), "max_steps": 3000, "learning_rate": w.arg("learning_rate"),
        "per_device_train_batch_size": w.micro_batch, "gradient_accumulation_steps": w.gradient_accumulation,
        "gradient_checkpointing": w.gradient_checkpointing}
    if w.gradient_checkpointing and w.arg("gradient_checkpointing_kwargs"):
        ta["gradient_checkpointing_kwargs"] = w.arg("gradient_checkpointing_kwargs")
    ta.update(bf16=w.arg("bf16"), fp16=w.arg("fp16"), optim=w.arg("optim"), max_grad_norm=w.arg("max_grad_norm"),
              remove_unused_columns=False, save_strategy="steps", save_steps=500,
              logging_strategy="steps", logging_steps=w.arg("logging_steps"),
              per_device_eval_batch_size=w.micro_batch, eval_strategy="steps", eval_steps=500,
              predict_with_generate=True, generation_config={"max_new_tokens": max_out})
    if w.deepspeed is not None:
        ta["deepspeed"] = str(ds_path(out))
    doc: dict[str, Any] = {
        "data_config": {"train_file": "train.jsonl", "val_file": "dev.jsonl", "test_file": "dev.jsonl", "num_proc": 1},
        "combine": True, "max_input_length": max_in, "max_output_length": max_out, "training_args": ta}
    if w.method == "lora":
        doc["peft_config"] = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": w.lora_r, "lora_alpha": w.lora_alpha,
                              "lora_dropout": w.lora_dropout,
                              "target_modules": list(dict.fromkeys(GLM_MODULES.get(t, t) for t in w.lora_targets))}
    use = launch(w, f"cd GLM-4/finetune_demo && python finetune.py DATA_DIR {w.model_id} {out}",
                 f"cd GLM-4/finetune_demo && torchrun --standalone --nproc_per_node={w.num_gpus} finetune.py "
                 f"DATA_DIR {w.model_id} {out}",
                 lambda n, per, first: f"on each of the {n} hosts: cd GLM-4/finetune_demo && torchrun --nnodes={n} "
                                       f"--node_rank=<0..{n - 1}> --master_addr={first} --master_port=29500 "
                                       f"--nproc_per_node={per} finetune.py DATA_DIR {w.model_id} {out}")
    head = header(w, use, ["data_config.train_file", "data_config.val_file", "data_config.test_file",
                           "training_args.max_steps"], _glm4_notes(w))
    text = yaml_text(head, [(None, doc)], {
        "train_file": "placeholder: your .jsonl under DATA_DIR",
        "val_file": "placeholder (null: no evaluation, with eval_strategy: 'no')",
        "test_file": "placeholder (null: no final predict)", "max_steps": "placeholder (GLM's example value)",
        "combine": "finetune.py requires it; true: chat template over the whole conversation",
        "max_input_length": f"input + output + 1 = {w.max_token} = max_token (finetune.py truncates there)",
        "learning_rate": LR_NOTE,
        "per_device_eval_batch_size": "evaluation memory was not measured",
        "target_modules": "GLM-4 remote-code names (q/k/v -> query_key_value, o -> dense)"})
    return with_ds(w, out, head, text)


def _glm4_notes(w: Winner) -> list[str]:
    notes = ["note: for GLM-4's finetune_demo (glm-4-9b-chat, remote code); checkouts older than its `combine` "
             "key reject that line: delete it there"]
    if "glm" not in w.model_id.lower():
        notes.append(f"warning: {w.model_id} is not a GLM-4 checkpoint; finetune.py hard-codes GLM-4 token ids")
    if not w.gradient_checkpointing:
        notes.append("note: finetune.py calls model.gradient_checkpointing_enable() regardless; remove that call "
                     "to get the measured (un-checkpointed) speed")
    if w.precision != "bf16-pure":
        notes.append(f"note: finetune.py always loads the weights in bfloat16; autofit measured {w.precision}")
    if w.method == "freeze":
        notes.append("warning: finetune.py has no freeze mode: without peft_config it trains every parameter, which "
                     "needs more memory than this freeze winner; prefer --format llamafactory or hf")
    return notes


def export_axolotl(w: Winner, out: Path) -> list[OutFile]:
    doc: dict[str, Any] = {"base_model": w.model_id, "trust_remote_code": w.trust_remote_code,
                           "attn_implementation": w.attn_implementation,
                           "datasets": [{"path": fill("hub dataset id or local file"), "type": "chat_template"}],
                           "output_dir": w.arg("output_dir"),
                           "sequence_len": w.max_token, "pad_to_sequence_len": True, "sample_packing": False}
    placeholders = ["datasets"]
    if w.method == "lora":
        doc.update(adapter="lora", lora_r=w.lora_r, lora_alpha=w.lora_alpha,
                   lora_dropout=w.lora_dropout, lora_target_modules=w.lora_targets)
    if w.method == "freeze":
        doc["unfrozen_parameters"] = [fill(f"regexes for the last {w.freeze_trainable_layers} decoder blocks, "
                                           r"e.g. ^model.layers.(38|39)\..*"), r"^lm_head\..*"]
        placeholders.append("unfrozen_parameters")
    doc.update(micro_batch_size=w.micro_batch, gradient_accumulation_steps=w.gradient_accumulation,
               gradient_checkpointing=w.gradient_checkpointing)
    if w.gradient_checkpointing and w.arg("gradient_checkpointing_kwargs"):
        doc["gradient_checkpointing_kwargs"] = w.arg("gradient_checkpointing_kwargs")
    doc.update(bf16=w.arg("bf16"), fp16=w.arg("fp16"), learning_rate=w.arg("learning_rate"),
               optimizer=w.arg("optim"), max_grad_norm=w.arg("max_grad_norm"), logging_steps=w.arg("logging_steps"))
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
    head = header(w, use, placeholders, notes + glm_notes(w))
    text = yaml_text(head, [(None, doc)], {
        "path": "placeholder", "type": "placeholder: your dataset format",
        "attn_implementation": "older axolotl: sdp_attention / flash_attention: true",
        "sequence_len": "= max_token: the sample length autofit measured",
        "pad_to_sequence_len": "every step at the measured shape", "learning_rate": LR_NOTE})
    return with_ds(w, out, head, text)


EXPORTERS: dict[str, Callable[[Winner, Path], list[OutFile]]] = {
    "hf": export_hf, "deepspeed": export_deepspeed, "llamafactory": export_llamafactory,
    "glm4": export_glm4, "axolotl": export_axolotl,
}


# -- entry points ----------------------------------------------------------------------------------------
SEARCH_FILES = {"best.yaml", "ds_config.json", "probes.csv", "boundaries.csv", "run.json", "study.db"}


def default_name(fmt: str) -> str:
    return f"{fmt}.json" if fmt == "deepspeed" else f"{fmt}.yaml"


def export_run(run_dir: Path, fmt: str, out: Path | None) -> list[Path]:
    """Write the winner of RUN_DIR in FMT's keys; returns the files written (main file first)."""
    if fmt not in EXPORTERS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    winner = load_winner(Path(run_dir))
    if out is None:
        out = Path(run_dir) / "export" / default_name(fmt)
    elif Path(out).is_dir():
        out = Path(out) / default_name(fmt)
    files = EXPORTERS[fmt](winner, Path(out).resolve())
    clobbered = [f.path for f in files if f.path.parent == winner.run_dir and f.path.name in SEARCH_FILES]
    if clobbered:
        raise UsageError(f"--out would overwrite the search's own {clobbered[0]}; choose another path")
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
              help="hf: TrainingArguments/LoraConfig kwargs; deepspeed: the DeepSpeed JSON; "
                   "llamafactory, glm4 (GLM-4 finetune_demo), axolotl: that tool's YAML.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="File (or existing directory) to write; default RUN_DIR/export/<format>.yaml (.json for deepspeed).")
def export_cmd(run_dir: Path, fmt: str, out: Path | None) -> None:
    """Write a search's winner (RUN_DIR/best.yaml) as a config for your training tool."""
    for path in export_run(run_dir, fmt, out):
        click.echo(f"wrote {path}")
