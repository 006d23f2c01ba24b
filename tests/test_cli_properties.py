"""Property-based: whatever a user types into a flag, a search space or a model config, autofit either
accepts it or says what is wrong in one line with exit code 2; never a traceback.

No probe runs here: a search that gets past validation stops where it would start its run dir.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofit.cli import cli
from autofit.errors import SearchSpaceError, UsageError
from autofit.search.space import load_space, parse_space
from autofit.units import parse_duration, parse_memory

# derandomize: CI runs the same examples every time (a new failure shows up in a change, not at random).
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Text users type: numbers of every size and sign, units, words, empty, non-ASCII.
NUMBERS = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "1" + "0" * 400, "", " ", "١٢", "24GiB", "8m"]))
UNITS = st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "GB", "g", "XB", "s", "m", "h", "min", "%", " GiB"])
FLAG_TEXT = st.one_of(st.builds(lambda n, u: n + u, NUMBERS, UNITS), st.text(max_size=12))
YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=True),
                         st.text(max_size=8), st.sampled_from(["lora", "full", "bf16-pure", "fp32", "nf4"]))
YAML_KEYS = st.one_of(st.text(max_size=8), st.integers())  # YAML keys may be numbers
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(YAML_KEYS, inner, max_size=4)), max_leaves=10)
SPACE_KEYS = st.one_of(st.sampled_from(["description", "method", "lora", "freeze_trainable_layers", "precision",
                                        "grad_ckpt", "zero", "micro_batch", "max_token", "batchsize"]), YAML_KEYS)
ZERO_OPTIONS = st.lists(st.dictionaries(st.sampled_from(["stage", "offload_optimizer", "offload_params"]), YAML_SCALARS),
                        max_size=3)
LORA_OPTIONS = st.dictionaries(st.sampled_from(["r", "alpha", "dropout", "targets"]), YAML_VALUES)
SPACE_DOCS = st.one_of(YAML_VALUES, st.dictionaries(SPACE_KEYS, YAML_VALUES, max_size=6),
                       st.fixed_dictionaries({"zero": ZERO_OPTIONS, "lora": LORA_OPTIONS}))


@settings(max_examples=300, **SETTINGS)
@given(FLAG_TEXT)
def test_memory_and_duration_parse_or_say_why(text):
    for parse in (parse_memory, parse_duration):
        try:
            value = parse(text)
        except UsageError as exc:
            assert "\n" not in str(exc)
        else:
            assert value > 0


@settings(max_examples=300, **SETTINGS)
@given(SPACE_DOCS)
def test_space_documents_parse_or_say_why(doc):
    try:
        space = parse_space(doc, "space.yaml")
    except SearchSpaceError as exc:
        assert "\n" not in str(exc)
    else:
        assert space.micro_batches and space.max_tokens


@settings(max_examples=100, **SETTINGS)
@given(st.binary(max_size=200))
def test_space_files_of_any_bytes_load_or_say_why(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_bytes(data)
        try:
            load_space(str(path))
        except SearchSpaceError as exc:
            assert "\n" not in str(exc)


SIZE = st.one_of(st.integers(-2, 64), st.sampled_from([None, True, 1.5, "8", [], 10**12]))
CONFIGS = st.fixed_dictionaries(
    {"model_type": st.sampled_from(["qwen2", "llama", "chatglm", "mistral"])},
    optional={k: SIZE for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim",
                                "num_layers", "ffn_hidden_size", "padded_vocab_size", "kv_channels",
                                "multi_query_group_num", "seq_length")})


def _assert_one_line_or_success(result) -> None:
    if result.exit_code == 0:
        return
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    # Ours: one line. Click's own (a flag that is not an integer): its usage block ending in one Error line.
    assert (len(err.splitlines()) == 1 and err.startswith("autofit: error: ")) or \
        (err.startswith("Usage:") and err.splitlines()[-1].startswith("Error: ")), err


@pytest.mark.slow
@settings(max_examples=40, **SETTINGS)
@given(CONFIGS, st.integers(-1, 10**13))
def test_model_configs_estimate_or_say_why(config, max_token):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(config))
        argv = ["estimate", "--model", d, "--max-token", str(max_token), "--space", "cpu-tiny"]
        result = CliRunner().invoke(cli, argv)
    _assert_one_line_or_success(result)


SEARCH_FLAGS = st.sampled_from(["--gpu-memory", "--budget", "--headroom", "--global-batch", "--max-token", "--explore",
                                "--measure-steps", "--gpus", "--probe-timeout", "--heartbeat", "--space", "--method",
                                "--storage"])


class _Reached(Exception):
    """Validation passed: the search would start here."""


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(st.dictionaries(SEARCH_FLAGS, FLAG_TEXT, max_size=5))
def test_search_flags_start_or_say_why(monkeypatch, flags):
    import autofit.search.driver as driver

    def reached(*a, **kw):
        raise _Reached

    monkeypatch.setattr(driver, "run_search", reached)
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    argv = ["search", "--model", "autofit/tiny-qwen2", "--device", "cpu", "--space", "cpu-tiny", "--max-token", "64"]
    for flag, value in flags.items():
        argv += [flag, value]
    result = CliRunner().invoke(cli, argv)
    if isinstance(result.exception, _Reached):
        return
    _assert_one_line_or_success(result)

