"""Resolve ``--model`` to an architecture we can build, without downloading anything.

Three places are tried, in order:

1. a local directory holding ``config.json`` (weights optional);
2. the local Hugging Face cache (``models--{org}--{name}/snapshots/<rev>/config.json``);
3. autofit's built-in table, ``autofit/data/models.yaml`` (by id or alias, case-insensitive).

The result is a :class:`ModelSource`: plain JSON-able data that the probe worker receives and
turns into a model with :func:`build_config`. torch and transformers are imported inside the
functions that need them, so importing this module keeps ``autofit --help`` instant.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from autofit.errors import ModelSourceError, UsageError

TABLE_PATH = Path(__file__).parent / "data" / "models.yaml"
# Each built-in model's memory-relevant shapes (autofit.memory.arch), so that estimating one needs no
# torch: written by `python -m autofit.memory.arch`, checked by tests/test_models.py.
ARCHS_PATH = Path(__file__).parent / "data" / "archs.yaml"

ORIGIN_LOCAL = "local directory"
ORIGIN_CACHE = "hf cache"
ORIGIN_TABLE = "built-in table"

# For an architecture with no row in the table's architecture_defaults: PEFT's usual names.
# They may not exist in that architecture; PEFT then fails with a clear message of its own.
FALLBACK_LORA_TARGETS = ("q_proj", "v_proj")
FALLBACK_LAYERS_ATTR = "model.layers"

# GLM-4-9B-style checkpoints (remote code "chatglm", or transformers' later native "glm") have
# exactly Qwen2's tensor shapes in 4.40.2; see _glm_as_qwen2.
_GLM_TYPES = ("chatglm", "glm")

# Config keys that decide tensor shapes. A local checkpoint borrows a table entry's defaults
# (LoRA targets, published size) only when these agree, so a cut-down copy does not inherit them.
_SHAPE_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "head_dim", "tie_word_embeddings",
    "num_local_experts", "num_experts", "moe_intermediate_size", "shared_expert_intermediate_size",
)

_ENTRY_TYPES: dict[str, tuple[type, str]] = {
    "aliases": (list, "a list of names"),
    "architecture": (str, "a transformers model_type"),
    "config": (dict, "a mapping of config keys"),
    "params_published": (int, "an integer"),
    "params_source": (str, "a string"),
    "lora_targets": (list, "a list of module names"),
    "layers_attr": (str, "a dotted attribute path"),
    "note": (str, "a string"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and everything needed to build it (JSON round-trips)."""

    name: str                       # what the user passed
    origin: str                     # ORIGIN_LOCAL | ORIGIN_CACHE | ORIGIN_TABLE
    path: str | None                # directory with config.json; None for the built-in table
    has_weights: bool               # weights in `path` that `architecture` can load
    config: dict                    # JSON-able config dict, including "model_type"
    architecture: str               # the model_type that is built
    lora_targets: tuple[str, ...]
    layers_attr: str                # e.g. "model.layers": the block list for freeze-N
    params_published: int | None
    trust_remote_code: bool
    note: str = ""

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["config"] = copy.deepcopy(self.config)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSource:
        d = dict(d)
        d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


class TableRow(NamedTuple):
    id: str
    architecture: str
    params: int


# ----------------------------------------------------------------------------- the table


def load_table(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The table's model entries, keyed by hub id; validated (ModelSourceError if malformed)."""
    return _read_table(path)["models"]


def list_table(path: str | os.PathLike | None = None) -> list[TableRow]:
    """Rows for ``autofit models``: (id, architecture, published parameter count)."""
    return [TableRow(key, e["architecture"], e["params_published"]) for key, e in load_table(path).items()]


# (path, mtime_ns, size) -> the validated table: every resolve_model reads it, and parsing it costs
# ~60 ms of CPU; a changed file has a new key. Callers get a copy, so none can change another's.
_TABLE_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


def _read_table(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else TABLE_PATH
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelSourceError(f"model table {path} cannot be read: {exc.strerror}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = _parse_table(path)
    return copy.deepcopy(_TABLE_CACHE[key])


def _parse_table(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelSourceError(f"model table {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ModelSourceError(f"model table {path} is not valid YAML: {_one_line(exc)}") from None
    problems = _table_problems(doc)
    if problems:
        raise ModelSourceError(f"model table {path}: " + "; ".join(problems))
    doc.setdefault("architecture_defaults", {})
    return doc


def _table_problems(doc: Any) -> list[str]:
    """Every problem in the table, so one run of the test names them all."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict) or not doc["models"]:
        return ["top level must be a mapping with a non-empty 'models' mapping"]
    problems = [f"unknown top-level key '{k}'" for k in doc if k not in ("models", "architecture_defaults")]
    defaults = doc.get("architecture_defaults", {})
    if not isinstance(defaults, dict):
        problems.append("'architecture_defaults' must be a mapping")
        defaults = {}
    for arch, d in defaults.items():
        where = f"architecture_defaults '{arch}'"
        if not isinstance(d, dict) or set(d) != {"lora_targets", "layers_attr"}:
            problems.append(f"{where}: must have exactly the keys lora_targets and layers_attr")
            continue
        if not _is_name_list(d["lora_targets"], allow_empty=False):
            problems.append(f"{where}: 'lora_targets' must be a non-empty list of module names")
        if not isinstance(d["layers_attr"], str) or not d["layers_attr"]:
            problems.append(f"{where}: 'layers_attr' must be a dotted attribute path")

    owner: dict[str, str] = {}
    for key, entry in doc["models"].items():
        where = f"entry '{key}'"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        problems += [f"{where}: missing key '{k}'" for k in _ENTRY_TYPES if k not in entry]
        problems += [f"{where}: unknown key '{k}'" for k in entry if k not in _ENTRY_TYPES]
        for k, (kind, what) in _ENTRY_TYPES.items():
            if k in entry and (not isinstance(entry[k], kind) or isinstance(entry[k], bool)):
                problems.append(f"{where}: '{k}' must be {what}, got {type(entry[k]).__name__} {entry[k]!r}")
        if isinstance(entry.get("params_published"), int) and entry["params_published"] <= 0:
            problems.append(f"{where}: 'params_published' must be positive")
        if isinstance(entry.get("lora_targets"), list) and not _is_name_list(entry["lora_targets"], False):
            problems.append(f"{where}: 'lora_targets' must be a non-empty list of module names")
        if isinstance(entry.get("aliases"), list) and not _is_name_list(entry["aliases"], True):
            problems.append(f"{where}: 'aliases' must be a list of names")
        config = entry.get("config")
        if isinstance(config, dict) and "model_type" in config:
            problems.append(f"{where}: 'config' must not set model_type ('architecture' does)")
        aliases = entry.get("aliases") if isinstance(entry.get("aliases"), list) else []
        names = [key] + [a for a in aliases if isinstance(a, str)]
        for n in names:
            low = str(n).lower()
            if low in owner and owner[low] != key:
                problems.append(f"{where}: name '{n}' is already used by entry '{owner[low]}'")
            owner.setdefault(low, key)
    return problems


def _is_name_list(value: Any, allow_empty: bool) -> bool:
    return (
        isinstance(value, list)
        and (allow_empty or bool(value))
        and all(isinstance(v, str) and v for v in value)
    )


def _lookup(models: dict[str, dict], name: str) -> tuple[str, dict] | None:
    low = name.lower()
    for key, entry in models.items():
        if key.lower() == low or low in (a.lower() for a in entry["aliases"]):
            return key, entry
    return None


# ----------------------------------------------------------------------------- resolution


def resolve_model(name: str, trust_remote_code: bool = False, cache_dir: str | None = None) -> ModelSource:
    """Resolve ``--model``: local directory, then the local HF cache, then the built-in table."""
    name = (name or "").strip()
    if not name:
        raise ModelSourceError("--model is empty: pass a local directory, a hub id or a name from 'autofit models'")
    table = _read_table()

    local = Path(name).expanduser()
    if local.is_dir():
        return _from_directory(name, local, ORIGIN_LOCAL, trust_remote_code, table)
    if local.exists():
        raise ModelSourceError(f"--model {name} is a file; pass the directory that holds config.json")

    root = hf_cache_dir(cache_dir)
    snapshot, why_not = _find_in_cache(name, root)
    if snapshot is not None:
        return _from_directory(name, snapshot, ORIGIN_CACHE, trust_remote_code, table)

    hit = _lookup(table["models"], name)
    if hit is not None:
        return _from_table(name, *hit)

    raise ModelSourceError(
        f"model '{name}' not found: not a local directory, not in the Hugging Face cache ({root}{why_not}), "
        "not in autofit's built-in table (see 'autofit models')"
    )


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache directory, resolved the way huggingface_hub resolves it (no import needed)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _find_in_cache(name: str, root: Path) -> tuple[Path | None, str]:
    """The snapshot directory for hub id `name`, or (None, a note on why not)."""
    if not _HUB_ID.match(name) or not root.is_dir():
        return None, ""
    folder = "models--" + name.replace("/", "--")
    repo = root / folder
    if not repo.is_dir():
        # Hub ids are case-insensitive; the cache keeps whatever spelling was downloaded.
        repo = next((d for d in root.iterdir() if d.name.lower() == folder.lower() and d.is_dir()), None)
        if repo is None:
            return None, ""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text(encoding="utf-8").strip()
        if (pinned / "config.json").is_file():
            return pinned, ""
    candidates = [d for d in snapshots.iterdir() if (d / "config.json").is_file()] if snapshots.is_dir() else []
    if not candidates:
        return None, f"; {repo.name} there has no snapshot with config.json"
    return max(candidates, key=lambda d: (d.stat().st_mtime, d.name)), ""


def _from_table(name: str, key: str, entry: dict) -> ModelSource:
    config = copy.deepcopy(entry["config"])
    config["model_type"] = entry["architecture"]
    return ModelSource(
        name=name,
        origin=ORIGIN_TABLE,
        path=None,
        has_weights=False,
        config=config,
        architecture=entry["architecture"],
        lora_targets=tuple(entry["lora_targets"]),
        layers_attr=entry["layers_attr"],
        params_published=entry["params_published"],
        trust_remote_code=False,
        note=entry["note"] if key.lower() == name.lower() else f"{key}: {entry['note']}",
    )


def _from_directory(name: str, path: Path, origin: str, trust_remote_code: bool, table: dict) -> ModelSource:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{origin} {path} has no config.json")
    config = _read_config(config_file)
    model_type = config["model_type"]
    has_weights = _has_weights(path)
    notes: list[str] = []

    if not _known_to_transformers(model_type):
        if model_type in _GLM_TYPES and not trust_remote_code:
            config = _glm_as_qwen2(config, config_file)
            model_type = "qwen2"
            notes.append("GLM config mapped to Qwen2 (same tensor shapes); probes use random weights")
            has_weights = False  # GLM weight names do not load into the Qwen2 stand-in
        elif not trust_remote_code:
            raise ModelSourceError(
                f"architecture {model_type} is not in transformers {_transformers_version()}; "
                "pass --trust-remote-code to use the model's own code"
            )
        elif "auto_map" not in config:
            raise ModelSourceError(
                f"architecture {model_type} is not in transformers {_transformers_version()} and "
                f"{config_file} has no auto_map pointing at the model's own code"
            )
    elif not (trust_remote_code and "auto_map" in config):
        config, dropped = _fit_to_transformers(config, config_file)
        notes += dropped

    lora_targets, layers_attr, params, table_note = _defaults_for(name, path, origin, config, model_type, table)
    if table_note:
        notes.insert(0, table_note)
    return ModelSource(
        name=name,
        origin=origin,
        path=str(path),
        has_weights=has_weights,
        config=config,
        architecture=model_type,
        lora_targets=lora_targets,
        layers_attr=layers_attr,
        params_published=params,
        trust_remote_code=trust_remote_code,
        note="; ".join(n for n in notes if n),
    )


def _read_config(config_file: Path) -> dict:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{config_file} cannot be read as JSON: {_one_line(exc)}") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_file} is not a JSON object")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelSourceError(f"{config_file} has no model_type, so its architecture is unknown")
    problems = size_problems(config)
    if problems:
        raise ModelSourceError(f"{config_file}: " + "; ".join(problems))
    return config


# Sizes that must be positive integers wherever a config has them (HF names, then GLM's own).
_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "max_position_embeddings", "num_layers", "ffn_hidden_size",
              "padded_vocab_size", "kv_channels", "multi_query_group_num", "seq_length")


# Far beyond any real model (126 layers, a 10M-token context), and below what overflows a tensor's size.
_MAX_LAYERS, _MAX_SIZE = 1024, 2**27


def size_problems(config: dict) -> list[str]:
    """What makes a config's sizes impossible (zero heads, a negative width), each naming key and value."""
    def bad(k: str) -> bool:
        v, top = config[k], _MAX_LAYERS if k in ("num_hidden_layers", "num_layers") else _MAX_SIZE
        return not (type(v) is int and 0 < v <= top)

    problems = [f"{k} must be a positive integer up to {_MAX_LAYERS if 'layers' in k else _MAX_SIZE}, got {config[k]!r}"
                for k in _SIZE_KEYS if config.get(k) is not None and bad(k)]
    if problems:
        return problems
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or config.get("multi_query_group_num")
    if hidden and heads and not (config.get("head_dim") or config.get("kv_channels")) and hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if heads and kv and heads % kv:
        problems.append(f"num_attention_heads {heads} is not a multiple of the {kv} key/value heads")
    return problems


def check_max_token(source: "ModelSource", max_token: int, flag: str = "--max-token") -> None:
    """A sequence longer than the model's context is no configuration anyone can train."""
    length = source.config.get("max_position_embeddings") or source.config.get("seq_length")
    if type(length) is int and max_token > length:
        raise UsageError(f"{flag} {max_token} is beyond {source.name}'s context length ({length} tokens)")


def _has_weights(path: Path) -> bool:
    # exists() follows the cache's symlinks: a blob that never finished downloading does not count.
    return any(
        p.name.endswith(_WEIGHT_SUFFIXES) and not p.name.startswith(("adapter_", "training_args")) and p.exists()
        for p in path.iterdir()
    )


def _defaults_for(
    name: str, path: Path, origin: str, config: dict, model_type: str, table: dict
) -> tuple[tuple[str, ...], str, int | None, str]:
    """LoRA targets, block list, published size: from a matching table entry, else per architecture."""
    candidates = [name, str(config.get("_name_or_path", "")), path.name]
    if origin == ORIGIN_CACHE:
        candidates.append(path.parent.parent.name.removeprefix("models--").replace("--", "/"))
    for candidate in filter(None, candidates):
        hit = _lookup(table["models"], candidate)
        if hit is None:
            continue
        key, entry = hit
        if entry["architecture"] == model_type and _same_shapes(entry["config"], config):
            return tuple(entry["lora_targets"]), entry["layers_attr"], entry["params_published"], f"matches {key}"
    arch = table["architecture_defaults"].get(model_type)
    if arch is not None:
        return tuple(arch["lora_targets"]), arch["layers_attr"], None, ""
    return (
        FALLBACK_LORA_TARGETS,
        FALLBACK_LAYERS_ATTR,
        None,
        f"no LoRA defaults for {model_type}: using {','.join(FALLBACK_LORA_TARGETS)} and "
        f"{FALLBACK_LAYERS_ATTR}, which may not exist in it",
    )


def _same_shapes(table_config: dict, config: dict) -> bool:
    return all(table_config[k] == config[k] for k in _SHAPE_KEYS if k in table_config and k in config)


def _glm_as_qwen2(config: dict, where: Path) -> dict:
    """A GLM-4-9B-style config as the Qwen2 config with identical tensor shapes.

    Qwen2 in transformers 4.40.2 has a bias on q/k/v and none on o_proj or the MLP, untied
    embeddings are an option, and its SwiGLU MLP holds the same numbers as GLM's fused
    dense_h_to_4h. Only the RoPE differs (GLM rotates half of each head), which changes no shape
    and no memory. A GLM variant outside these assumptions is refused, not approximated.
    """

    def first(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if config.get(k) is not None:
                return config[k]
        if default is None:
            raise ModelSourceError(f"{where}: GLM config has none of {', '.join(keys)}")
        return default

    hidden = first("hidden_size")
    heads = first("num_attention_heads")
    kv_heads = first("multi_query_group_num", "num_key_value_heads") if config.get("multi_query_attention", True) else heads
    head_dim = first("kv_channels", "head_dim", default=hidden // heads)
    unsupported = [
        label
        for label, ok in (
            ("head size * heads != hidden size", head_dim * heads == hidden),
            ("no qkv bias", first("add_qkv_bias", "attention_bias", default=True) is True),
            ("bias on the linear layers", config.get("add_bias_linear", False) is False),
            ("LayerNorm instead of RMSNorm", config.get("rmsnorm", True) is True),
            ("no final norm", config.get("post_layer_norm", True) is True),
            ("post-layernorm residual", config.get("apply_residual_connection_post_layernorm", False) is False),
            ("tied embeddings", config.get("tie_word_embeddings", False) is False),
        )
        if not ok
    ]
    if unsupported:
        raise ModelSourceError(
            f"{where}: this GLM config ({', '.join(unsupported)}) has no Qwen2 stand-in; "
            "pass --trust-remote-code to use the model's own code"
        )
    mapped = {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": first("ffn_hidden_size", "intermediate_size"),
        "num_hidden_layers": first("num_layers", "num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": first("padded_vocab_size", "vocab_size"),
        "max_position_embeddings": first("seq_length", "max_position_embeddings"),
        "rms_norm_eps": first("layernorm_epsilon", "rms_norm_eps", default=1e-5),
        # chatglm: base 10000 scaled by rope_ratio; native glm: rope_theta.
        "rope_theta": 10000.0 * config["rope_ratio"] if "rope_ratio" in config
        else float(config.get("rope_theta", 10000.0)),
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    for k in ("torch_dtype", "_name_or_path"):
        if k in config:
            mapped[k] = config[k]
    return mapped


def _fit_to_transformers(config: dict, where: Path) -> tuple[dict, list[str]]:
    """Check the config builds in this transformers; drop a rope_scaling it predates.

    Llama 3.1's rope_scaling {"rope_type": "llama3", ...} is rejected by 4.40.2's LlamaConfig. It
    changes RoPE frequencies only, never a tensor shape, so dropping it keeps memory and speed.
    """
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[config["model_type"]]
    try:
        config_class.from_dict(dict(config))
        return config, []
    except (ValueError, TypeError, KeyError) as exc:
        first_error = _one_line(exc)
    if config.get("rope_scaling") is not None:
        trimmed = {k: v for k, v in config.items() if k != "rope_scaling"}
        try:
            config_class.from_dict(dict(trimmed))
        except (ValueError, TypeError, KeyError):
            pass
        else:
            return trimmed, [
                f"rope_scaling {config['rope_scaling']} is not supported by transformers "
                f"{_transformers_version()} and was dropped (tensor shapes are unchanged)"
            ]
    raise ModelSourceError(f"{where} is rejected by transformers {_transformers_version()}: {first_error}")


# ----------------------------------------------------------------------------- building


def decoder_blocks(model: Any, source: ModelSource) -> Any:
    """The model's list of decoder blocks, at the source's layers_attr ("model.layers")."""
    blocks = model
    for attr in source.layers_attr.split("."):
        blocks = getattr(blocks, attr, None)
        if blocks is None:
            raise ModelSourceError(f"{source.name}: no decoder blocks at {source.layers_attr}")
    return blocks


def build_config(source: ModelSource, max_positions: int | None = None):
    """The transformers ``PretrainedConfig`` for `source` (no download, no weights).

    `max_positions` caps max_position_embeddings. transformers 4.40.2 precomputes a RoPE cos/sin
    cache of that length in every attention layer of llama, mistral, mixtral, qwen2 and
    qwen2_moe (fp32 at build time); at 131072 positions that is several GB that the real
    training run at a short max_token does not need (GLM's own code computes RoPE per forward).
    Pass the longest sequence a probe will run so memory is measured faithfully.
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    if source.trust_remote_code and source.path and (
        "auto_map" in source.config or source.architecture not in CONFIG_MAPPING
    ):
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=True, local_files_only=True)
    elif source.architecture in CONFIG_MAPPING:
        config = CONFIG_MAPPING[source.architecture].from_dict(copy.deepcopy(source.config))
    else:
        raise ModelSourceError(
            f"architecture {source.architecture} is not in transformers {_transformers_version()}; "
            "pass --trust-remote-code to use the model's own code"
        )
    # A config without a context length (null) gets the longest max_token probed, like one with more.
    positions = getattr(config, "max_position_embeddings", 0)
    if max_positions is not None and (positions is None or positions > max_positions):
        config.max_position_embeddings = int(max_positions)
    return config


def count_params_meta(source: ModelSource) -> int:
    """Parameter count of the model built on the meta device (no memory, no weights); ties count once."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    config = build_config(source)
    # Initialising meta tensors still costs ~1 ms each (seconds for a 60-expert MoE): skip it.
    with torch.device("meta"), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    model.tie_weights()  # skipped together with the initialisation; tied weights count once
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- helpers


def _known_to_transformers(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def source_digest(source_json: str) -> str:
    """A shipped arch serves exactly the source it was read from (not a local copy or a cached config
    of the same name)."""
    return hashlib.sha256(source_json.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _shipped_archs() -> dict[str, dict]:
    import yaml

    table = (yaml.safe_load(ARCHS_PATH.read_text()) or {}) if ARCHS_PATH.exists() else {}
    return {e["source"]: e["arch"] for e in table.values()}


def shipped_arch(source_json: str) -> dict | None:
    """The shipped arch (as a dict) of the source that serializes to source_json, if it is built in."""
    return _shipped_archs().get(source_digest(source_json))


def write_shipped_archs(archs: dict) -> None:
    import yaml

    ARCHS_PATH.write_text("# Generated by `python -m autofit.memory.arch` from models.yaml (tests/test_models.py checks it):\n"
                          "# each built-in model's memory-relevant shapes, read on the meta device.\n"
                          + yaml.safe_dump(archs, sort_keys=True, width=120, default_flow_style=None))
