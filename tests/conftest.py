"""Shared fixtures: tiny models the tests build and save themselves (nothing is downloaded)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model directory: config.json only (random weights are built by the probe)."""
    from transformers import Qwen2Config

    d = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2Config(**TINY).save_pretrained(d)
    return d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with the most slow tests first. Under pytest-xdist (make test) each worker takes one whole
    module at a time, in this order: a long module taken last would leave the other worker idle."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: tests keep their order within a module
