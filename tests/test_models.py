"""autofit.models: the built-in table, resolving --model, building on the meta device.

Nothing here downloads: every checkpoint is a config.json (and tiny weights) written to tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autofit.errors import ModelSourceError
from autofit.models import (
    ORIGIN_CACHE,
    ORIGIN_LOCAL,
    ORIGIN_TABLE,
    TABLE_PATH,
    ModelSource,
    build_config,
    count_params_meta,
    list_table,
    load_table,
    resolve_model,
)

TABLE = load_table()

TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True,
)

# glm-4-9b-chat's config.json as published (Hugging Face THUDM/glm-4-9b-chat), shape keys only.
GLM4_9B_CHAT = {
    "_name_or_path": "THUDM/glm4-9b-chat",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False,
    "ffn_hidden_size": 13696,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1.5625e-07,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 40,
    "padded_vocab_size": 151552,
    "post_layer_norm": True,
    "rmsnorm": True,
    "rope_ratio": 500,
    "seq_length": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path, monkeypatch):
    """Point every lookup at an empty cache, so the machine's own cache never leaks in."""
    empty = tmp_path / "empty-hf-cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return empty


def _write_qwen2_dir(path: Path, weights: bool = False) -> Path:
    import transformers

    config = transformers.Qwen2Config(**TINY)
    if weights:
        transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    else:
        config.save_pretrained(path)
    return path


def _write_cache(root: Path, repo_id: str, config: dict, revs=("abc",), main: str | None = "abc") -> Path:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for rev in revs:
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps(config))
    if main is not None:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(main)
    return repo


def _tiny_config_dict(**overrides) -> dict:
    return {"model_type": "qwen2", **TINY, **overrides}


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("model_id", sorted(TABLE))
def test_table_entry_builds_on_meta_with_published_size(model_id):
    source = resolve_model(model_id)
    built = count_params_meta(source)
    published = TABLE[model_id]["params_published"]
    assert abs(built - published) <= 0.01 * published, f"{model_id}: built {built:,} vs published {published:,}"


def test_table_entries_use_architectures_of_this_transformers():
    from transformers import CONFIG_MAPPING

    for model_id, entry in TABLE.items():
        assert entry["architecture"] in CONFIG_MAPPING, model_id


def test_required_entries_present():
    for model_id in (
        "THUDM/glm-4-9b-chat", "THUDM/glm-4-9b-chat-1m", "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen2-7B", "Qwen/Qwen2-1.5B", "Qwen/Qwen2-0.5B",
        "mistralai/Mistral-7B-v0.1", "google/gemma-7b", "mistralai/Mixtral-8x7B-v0.1",
        "Qwen/Qwen1.5-MoE-A2.7B", "autofit/tiny-qwen2",
    ):
        assert model_id in TABLE


def test_glm_entry_matches_published_glm_config():
    cfg = TABLE["THUDM/glm-4-9b-chat"]["config"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (40, 4096, 13696)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (32, 2, 151552)
    assert cfg["tie_word_embeddings"] is False
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 128  # kv_channels


def test_list_table_rows():
    rows = list_table()
    assert [r.id for r in rows] == list(TABLE)
    row = next(r for r in rows if r.id == "Qwen/Qwen2-7B")
    assert (row.architecture, row.params) == ("qwen2", TABLE["Qwen/Qwen2-7B"]["params_published"])


def _write_table(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load(TABLE_PATH.read_text())
    mutate(doc)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_malformed_table_missing_key_names_entry_and_key(tmp_path):
    path = _write_table(tmp_path, lambda d: d["models"]["Qwen/Qwen2-7B"].pop("layers_attr"))
    with pytest.raises(ModelSourceError, match=r"entry 'Qwen/Qwen2-7B': missing key 'layers_attr'"):
        load_table(path)


def test_malformed_table_wrong_type_names_entry_and_key(tmp_path):
    def mutate(d):
        d["models"]["google/gemma-7b"]["params_published"] = "8.5B"
        d["models"]["autofit/tiny-qwen2"]["lora_targets"] = "q_proj"

    path = _write_table(tmp_path, mutate)
    with pytest.raises(ModelSourceError) as info:
        load_table(path)
    message = str(info.value)
    assert "entry 'google/gemma-7b': 'params_published' must be an integer" in message
    assert "entry 'autofit/tiny-qwen2': 'lora_targets'" in message  # all problems, one error
    assert "\n" not in message


def test_malformed_table_duplicate_alias_and_unknown_key(tmp_path):
    def mutate(d):
        d["models"]["Qwen/Qwen2-0.5B"]["aliases"].append("qwen2-7b")
        d["models"]["Qwen/Qwen2-0.5B"]["notes"] = "typo"

    path = _write_table(tmp_path, mutate)
    with pytest.raises(ModelSourceError) as info:
        load_table(path)
    assert "name 'qwen2-7b' is already used by entry 'Qwen/Qwen2-7B'" in str(info.value)
    assert "entry 'Qwen/Qwen2-0.5B': unknown key 'notes'" in str(info.value)


def test_table_that_is_not_yaml(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(ModelSourceError, match="not valid YAML"):
        load_table(path)


# ----------------------------------------------------------------------------- table lookup


def test_table_lookup_by_id():
    source = resolve_model("THUDM/glm-4-9b-chat")
    assert source.origin == ORIGIN_TABLE
    assert source.path is None and source.has_weights is False
    assert source.architecture == "qwen2" and source.config["model_type"] == "qwen2"
    assert source.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert source.layers_attr == "model.layers"
    assert source.params_published == 9_400_000_000


@pytest.mark.parametrize("name", ["glm-4-9b-chat", "GLM4-9B-CHAT", "thudm/GLM-4-9B-Chat", "glm4-9b"])
def test_table_alias_and_case_insensitive(name):
    source = resolve_model(name)
    assert source.name == name
    assert source.config["num_hidden_layers"] == 40
    assert source.params_published == TABLE["THUDM/glm-4-9b-chat"]["params_published"]


def test_tiny_alias_builds_a_real_model_on_cpu():
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(build_config(resolve_model("tiny-qwen2")))
    out = model(torch.randint(0, 512, (1, 8)), labels=torch.randint(0, 512, (1, 8)))
    assert out.loss.isfinite()


def test_source_round_trips_through_json():
    source = resolve_model("Qwen/Qwen1.5-MoE-A2.7B")
    again = ModelSource.from_dict(json.loads(json.dumps(source.to_dict())))
    assert again == source
    assert isinstance(again.lora_targets, tuple)


def test_build_config_caps_rope_cache_length():
    source = resolve_model("THUDM/glm-4-9b-chat-1m")
    assert build_config(source).max_position_embeddings == 1_048_576
    assert build_config(source, max_positions=4096).max_position_embeddings == 4096
    assert build_config(source, max_positions=4096).num_key_value_heads == 4


# ----------------------------------------------------------------------------- local directories


def test_local_directory_config_only(tmp_path):
    path = _write_qwen2_dir(tmp_path / "cfg-only")
    source = resolve_model(str(path))
    assert source.origin == ORIGIN_LOCAL
    assert source.path == str(path)
    assert source.has_weights is False
    assert source.architecture == "qwen2"
    assert source.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert count_params_meta(source) == TABLE["autofit/tiny-qwen2"]["params_published"]


def test_local_directory_with_weights(tmp_path):
    path = _write_qwen2_dir(tmp_path / "with-weights", weights=True)
    source = resolve_model(str(path))
    assert source.origin == ORIGIN_LOCAL
    assert source.has_weights is True


def test_local_directory_borrows_table_defaults_only_with_same_shapes(tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    (same / "config.json").write_text(json.dumps(_tiny_config_dict(_name_or_path="autofit/tiny-qwen2")))
    assert resolve_model(str(same)).params_published == 107072

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text(json.dumps(_tiny_config_dict(_name_or_path="autofit/tiny-qwen2", num_hidden_layers=1)))
    assert resolve_model(str(cut)).params_published is None


def test_directory_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_tiny_config_dict()))
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_model(str(path))


def test_config_json_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="cannot be read as JSON"):
        resolve_model(str(tmp_path))


def test_unknown_model_type_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "frobnicator", "hidden_size": 8}))
    with pytest.raises(ModelSourceError, match=r"architecture frobnicator is not in transformers [\d.]+; pass --trust-remote-code"):
        resolve_model(str(tmp_path))
    # With the flag, a checkpoint that ships no code of its own still cannot be built.
    with pytest.raises(ModelSourceError, match="no auto_map"):
        resolve_model(str(tmp_path), trust_remote_code=True)


def test_unknown_model_type_with_auto_map_and_trust_remote_code(tmp_path):
    config = {"model_type": "frobnicator", "auto_map": {"AutoConfig": "configuration_frob.FrobConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    source = resolve_model(str(tmp_path), trust_remote_code=True)
    assert source.trust_remote_code is True and source.architecture == "frobnicator"
    assert source.lora_targets == ("q_proj", "v_proj")  # documented fallback
    assert "no LoRA defaults" in source.note


def test_glm_checkpoint_without_remote_code_maps_to_qwen2(tmp_path):
    path = tmp_path / "glm-4-9b-chat"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(GLM4_9B_CHAT))
    (path / "model-00001-of-00010.safetensors").write_bytes(b"")
    source = resolve_model(str(path))
    assert source.architecture == "qwen2" and source.config["model_type"] == "qwen2"
    assert source.has_weights is False  # GLM weight names do not load into the stand-in
    assert source.params_published == 9_400_000_000  # matched the table entry by shapes
    assert "THUDM/glm-4-9b-chat" in source.note and "Qwen2" in source.note
    table = TABLE["THUDM/glm-4-9b-chat"]["config"]
    assert {k: source.config[k] for k in table if k != "torch_dtype"} == {k: v for k, v in table.items() if k != "torch_dtype"}


def test_glm_variant_outside_the_mapping_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**GLM4_9B_CHAT, "add_bias_linear": True}))
    with pytest.raises(ModelSourceError, match="bias on the linear layers.*--trust-remote-code"):
        resolve_model(str(tmp_path))


def test_llama31_rope_scaling_is_dropped_with_a_note(tmp_path):
    config = {
        "model_type": "llama", **TINY, "tie_word_embeddings": False,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    source = resolve_model(str(tmp_path))
    assert "rope_scaling" not in source.config
    assert "rope_scaling" in source.note and "dropped" in source.note
    build_config(source)


@pytest.mark.parametrize(
    "content, message",
    [("[1, 2]", "is not a JSON object"), (json.dumps({"hidden_size": 8}), "has no model_type")],
)
def test_config_json_without_an_architecture(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelSourceError, match=message):
        resolve_model(str(tmp_path))


# ----------------------------------------------------------------------------- the HF cache


def test_hf_cache_via_cache_dir(tmp_path):
    root = tmp_path / "hub"
    repo = _write_cache(root, "acme/tiny-chat", _tiny_config_dict())
    source = resolve_model("acme/tiny-chat", cache_dir=str(root))
    assert source.origin == ORIGIN_CACHE
    assert source.path == str(repo / "snapshots" / "abc")
    assert source.has_weights is False


def test_hf_cache_via_env(tmp_path, monkeypatch):
    root = tmp_path / "hub-env"
    _write_cache(root, "acme/tiny-chat", _tiny_config_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    assert resolve_model("acme/tiny-chat").origin == ORIGIN_CACHE
    assert resolve_model("ACME/Tiny-Chat").origin == ORIGIN_CACHE  # hub ids are case-insensitive


def test_hf_cache_via_hf_home(tmp_path, monkeypatch):
    _write_cache(tmp_path / "hf-home" / "hub", "acme/tiny-chat", _tiny_config_dict())
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert resolve_model("acme/tiny-chat").origin == ORIGIN_CACHE


def test_hf_cache_prefers_refs_main_then_newest(tmp_path):
    root = tmp_path / "hub"
    repo = _write_cache(root, "acme/two-revs", _tiny_config_dict(), revs=("old", "new"), main="old")
    os.utime(repo / "snapshots" / "new", (2_000_000_000, 2_000_000_000))
    assert resolve_model("acme/two-revs", cache_dir=str(root)).path.endswith("old")
    (repo / "refs" / "main").unlink()
    assert resolve_model("acme/two-revs", cache_dir=str(root)).path.endswith("new")


def test_hf_cache_weights_and_table_defaults(tmp_path):
    root = tmp_path / "hub"
    repo = _write_cache(root, "Qwen/Qwen2-0.5B", {"model_type": "qwen2", **TABLE["Qwen/Qwen2-0.5B"]["config"]})
    blob = repo / "blobs" / "deadbeef"
    blob.parent.mkdir()
    blob.write_bytes(b"")
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to(blob)
    source = resolve_model("qwen/qwen2-0.5b", cache_dir=str(root))
    assert source.origin == ORIGIN_CACHE
    assert source.has_weights is True
    assert source.params_published == TABLE["Qwen/Qwen2-0.5B"]["params_published"]


def test_hf_cache_entry_without_config_falls_back_to_table(tmp_path):
    root = tmp_path / "hub"
    (root / "models--Qwen--Qwen2-7B" / "snapshots" / "abc").mkdir(parents=True)
    assert resolve_model("Qwen/Qwen2-7B", cache_dir=str(root)).origin == ORIGIN_TABLE


# ----------------------------------------------------------------------------- not found


def test_unknown_model_lists_what_was_tried(tmp_path):
    with pytest.raises(ModelSourceError) as info:
        resolve_model("acme/no-such-model", cache_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith("model 'acme/no-such-model' not found: not a local directory")
    assert f"not in the Hugging Face cache ({tmp_path})" in message
    assert "not in autofit's built-in table (see 'autofit models')" in message


def test_unknown_model_names_a_broken_cache_entry(tmp_path):
    (tmp_path / "models--acme--half" / "snapshots" / "abc").mkdir(parents=True)
    with pytest.raises(ModelSourceError, match="models--acme--half there has no snapshot with config.json"):
        resolve_model("acme/half", cache_dir=str(tmp_path))


def test_empty_model_name():
    with pytest.raises(ModelSourceError, match="--model is empty"):
        resolve_model("  ")


def test_import_does_not_pull_in_torch_or_transformers():
    code = "import sys, autofit.models; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_a_config_without_a_context_length_takes_the_longest_probe(tmp_path):
    # Found by tests/test_cli_properties.py: a null max_position_embeddings made build_config compare None.
    import json as _json

    from autofit.models import build_config, resolve_model

    (tmp_path / "config.json").write_text(_json.dumps({"model_type": "qwen2", "max_position_embeddings": None}))
    assert build_config(resolve_model(str(tmp_path)), max_positions=256).max_position_embeddings == 256


def test_shipped_archs_are_what_the_meta_device_reads_and_are_used_without_torch():
    """autofit/data/archs.yaml is each built-in model's arch as read now (rewrite it with
    `python -m autofit.memory.arch`), and a search of a built-in model takes it from there."""
    import json
    import subprocess
    import sys

    import yaml

    from autofit.memory.arch import table_archs
    from autofit.models import ARCHS_PATH

    assert yaml.safe_load(ARCHS_PATH.read_text()) == json.loads(json.dumps(table_archs()))  # tuples as lists
    # In a fresh interpreter: the estimate of a built-in model imports neither torch nor transformers.
    code = ("import sys; from autofit.models import resolve_model; from autofit.memory.arch import arch_of; "
            "a = arch_of(resolve_model('THUDM/glm-4-9b-chat')); "
            "print(a.layers, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["40", "False", "False"]
