"""GPU numbering under an outer CUDA_VISIBLE_DEVICES, with a FAKE NVML (two cards) standing in for the driver."""

from __future__ import annotations

import sys
import types

import pytest

from autofit.hardware import detect_gpus, device_mask, parse_gpus
from autofit.probe.runner import WorkerSession
from autofit.spec import Context

GiB = 2**30


@pytest.fixture
def two_cards(monkeypatch):
    """A fake pynvml module: physical GPU 0 has 80 GiB, GPU 1 has 141 GiB."""
    cards = [("GPU-aaaa-0000", b"NVIDIA H100", 80 * GiB), ("GPU-bbbb-1111", b"NVIDIA H200", 141 * GiB)]
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(cards)
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: cards[h][1]
    fake.nvmlDeviceGetUUID = lambda h: cards[h][0]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=cards[h][2], used=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("AUTOFIT_FORCE_NO_GPU", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return cards


def test_without_a_mask_every_card_is_visible_in_machine_order(two_cards):
    gpus = detect_gpus()
    assert [(g.index, g.name, g.nvml_index) for g in gpus] == [(0, "NVIDIA H100", 0), (1, "NVIDIA H200", 1)]
    assert device_mask((1,)) == "1"


@pytest.mark.parametrize("mask", ["1", "GPU-bbbb"])
def test_an_outer_mask_renumbers_the_cards_and_children_keep_to_it(two_cards, monkeypatch, mask, tmp_path):
    # `CUDA_VISIBLE_DEVICES=1 autofit search` must probe on the machine's second card, never the first.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    gpus = detect_gpus()
    assert [(g.index, g.name, g.total_memory, g.nvml_index) for g in gpus] == [(0, "NVIDIA H200", 141 * GiB, 1)]
    assert parse_gpus(None, "auto") == ("cuda", (0,))
    with pytest.raises(Exception, match="GPUs 0..0"):
        parse_gpus("1", "auto")
    env = WorkerSession(Context(model="m", device="cuda", gpus=(0,)), None, None, tmp_path)._env()
    assert env["CUDA_VISIBLE_DEVICES"] == mask


def test_an_empty_mask_hides_every_card(two_cards, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []
    assert parse_gpus(None, "auto") == ("cpu", ())


def test_one_process_workers_get_their_own_rendezvous_port(tmp_path, monkeypatch):
    # DeepSpeed opens 29500 in a one-process world unless told: two searches on one machine collided.
    monkeypatch.delenv("MASTER_PORT", raising=False)
    ports = {WorkerSession(Context(model="m", device="cuda", gpus=(0,)), None, None, tmp_path)._env()["MASTER_PORT"]
             for _ in range(2)}
    assert len(ports) == 2 and "29500" not in ports
    one = WorkerSession(Context(model="m", device="cuda", gpus=(0,)), None, None, tmp_path)._env()
    # All five, or DeepSpeed's MPI discovery overwrites MASTER_PORT with 29500.
    assert {k: one[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    # Several ranks: torchrun's --standalone rendezvous owns the port.
    two = WorkerSession(Context(model="m", device="cuda", gpus=(0, 1)), None, None, tmp_path)._env()
    assert "MASTER_PORT" not in two and "RANK" not in two
