"""Activation offload (Strategy.act_offload) on the CPU: the key, the rules, the patch, the estimate, the
flag, the exports. On the CPU host memory is the device's, so the patch saves nothing here: the tests count
what its hooks copy (the checkpointed blocks' inputs) and check the gradients do not change; what it saves
on a GPU is for the GPU tests to measure."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from autofit.capabilities import missing
from autofit.cli import cli
from autofit.errors import ExportError
from autofit.export import export_run
from autofit.probe import act_offload
from autofit.search.planner import memory_rank, never_faster, never_more_memory, speed_rank
from autofit.search.space import parse_space
from autofit.spec import Context, Method, Strategy

CKPT = Strategy(grad_ckpt=True)
ACTOFF = Strategy(grad_ckpt=True, act_offload=True)


# -- the strategy --------------------------------------------------------------------------------------
def test_key_names_it_after_the_checkpointing_and_round_trips():
    assert ACTOFF.key() == "lora-r8/bf16-pure/ckpt/actoff/z0"
    assert CKPT.key() == "lora-r8/bf16-pure/ckpt/z0"  # keys written before the dimension stay valid
    for s in (ACTOFF, Strategy(method=Method(kind="full"), precision="bf16", grad_ckpt=True, act_offload=True,
                               zero_stage=3, offload_optimizer=True, offload_params=True, loss="fused")):
        assert Strategy.from_key(s.key(), s.method) == s
    with pytest.raises(ValueError, match="unknown part 'actoff'"):  # only right after the checkpointing
        Strategy.from_key("lora-r8/bf16-pure/ckpt/z0/actoff")


def test_it_needs_checkpointing():
    assert ACTOFF.problems() == []
    assert any("needs gradient checkpointing" in p for p in Strategy(act_offload=True).problems())
    # Parameters are never copied by the hooks, so ZeRO-3 (with its parameters on the host too) combines.
    assert Strategy(method=Method(kind="full"), grad_ckpt=True, act_offload=True, zero_stage=3,
                    offload_optimizer=True, offload_params=True).problems() == []


def test_unavailable_on_the_cpu_with_a_reason():
    why = missing(ACTOFF, Context(model="m", device="cpu"))
    assert why and why.startswith("activation offload:") and "on the CPU" in why
    assert missing(ACTOFF, Context(model="m", device="cuda")) is None


# -- the patch -----------------------------------------------------------------------------------------
def _tiny(reentrant: bool | None):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, use_cache=False)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").train()
    if reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_the_checkpointed_block_inputs_go_to_the_host_and_the_gradients_do_not_change(reentrant):
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    loss0, grads0 = _grads(_tiny(reentrant), ids)
    model, stats = _tiny(reentrant), act_offload.Stats()
    act_offload.patch(model, min_bytes=0, stats=stats)
    loss1, grads1 = _grads(model, ids)
    hidden = (2, 16, 64)
    # Each of the 3 blocks' checkpointed input, plus the final norm's input and output: the checkpoint
    # keeps its inputs under the patch's hooks, whether reentrant or not; the recompute runs outside them.
    assert stats.shapes.count(hidden) == 5 and stats.packed < 12
    assert stats.unpacked >= stats.packed  # all of it came back for the backward
    assert torch.equal(loss0, loss1) and grads0.keys() == grads1.keys()
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=0, atol=0, msg=name)


def test_only_training_forwards_are_hooked_and_parameters_never_copied():
    model, stats = _tiny(False), act_offload.Stats()
    act_offload.patch(model, min_bytes=0, stats=stats)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    assert stats.packed == 0
    # Without checkpointing every block's activations are saved (and copied), never a weight (20 tokens:
    # no activation has a weight's shape).
    plain, stats = _tiny(None), act_offload.Stats()
    act_offload.patch(plain, min_bytes=0, stats=stats)
    _grads(plain, torch.randint(0, 300, (2, 10)))
    weights = {tuple(p.shape) for p in plain.parameters()}
    assert stats.packed > 20 and not weights & set(stats.shapes)


def test_the_worker_applies_it_after_the_loss_under_peft():
    from autofit.probe.worker import apply_offload

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny(False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    decoder = model.get_base_model().model
    before = decoder.forward
    assert apply_offload(model, CKPT) is model and decoder.forward == before
    apply_offload(model, ACTOFF)
    assert decoder.forward != before
    _grads(model, torch.randint(0, 300, (1, 8)))  # trains through PEFT with the patch on


# -- the search ----------------------------------------------------------------------------------------
def test_planner_escalates_it_only_above_its_non_offload_twin():
    assert never_faster(ACTOFF, CKPT) and never_more_memory(ACTOFF, CKPT)
    assert not never_faster(CKPT, ACTOFF) and not never_more_memory(CKPT, ACTOFF)
    nockpt = Strategy()
    assert speed_rank(nockpt) < speed_rank(CKPT) < speed_rank(ACTOFF)
    assert memory_rank(nockpt) < memory_rank(CKPT) < memory_rank(ACTOFF)
    # ZeRO-3 with offload stays the slowest and leanest
    z3 = Strategy(grad_ckpt=True, zero_stage=3, offload_optimizer=True, offload_params=True)
    assert speed_rank(ACTOFF) < speed_rank(z3) and memory_rank(ACTOFF) < memory_rank(z3)


def test_space_key_adds_it_only_with_checkpointing():
    doc = {"grad_ckpt": [False, True], "act_offload": [False, True], "micro_batch": [1], "max_token": [64]}
    keys = [s.key() for s in parse_space(doc).strategies(1)]
    assert keys == ["lora-r8/bf16-pure/nockpt/z0", "lora-r8/bf16-pure/ckpt/z0", "lora-r8/bf16-pure/ckpt/actoff/z0"]
    plain = parse_space({k: v for k, v in doc.items() if k != "act_offload"})
    assert "act_offloads" not in plain.identity()  # runs searched before the dimension still resume
    from autofit.errors import SearchSpaceError

    with pytest.raises(SearchSpaceError, match="key 'act_offload' must be a list of true/false"):
        parse_space({**doc, "act_offload": "yes"})


def test_estimate_moves_the_block_inputs_to_the_host():
    from autofit.memory.analytic import predict
    from autofit.memory.arch import arch_of
    from autofit.models import resolve_model

    source = resolve_model("THUDM/glm-4-9b-chat")
    arch = arch_of(source)
    targets = tuple(source.lora_targets)
    on, off = (predict(arch, s, 1, 4, 8192, 4, targets) for s in (ACTOFF, CKPT))
    block_input = 2 * arch.hidden * 4 * 8192  # bf16, micro-batch 4 x 8192 tokens
    assert off.host_activations == 0
    assert on.host_activations >= arch.layers * block_input
    # every block input but the one being recomputed leaves the GPU (and the final norm's saved input)
    assert (arch.layers - 1) * block_input <= off.activations - on.activations <= on.host_activations


# -- the command ---------------------------------------------------------------------------------------
PROBE = ["probe", "--model", "autofit/tiny-qwen2", "--device", "cpu", "--max-token", "32"]


def test_the_flag_reaches_the_strategy():
    from autofit.commands.probe import ProbeArgs

    flags = cli.commands["probe"].make_context("probe", [*PROBE[1:], "--grad-ckpt", "--act-offload"]).params
    assert ProbeArgs(**flags).strategy() == ACTOFF


@pytest.mark.parametrize("flags,fragment", [
    (["--act-offload"], "needs gradient checkpointing"),
    (["--act-offload", "--grad-ckpt"], "activation offload: keeps checkpointed activations in pinned host memory"),
])
def test_the_flag_is_refused_in_one_line_where_it_cannot_run(flags, fragment):
    r = CliRunner().invoke(cli, [*PROBE, *flags])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("autofit: error: cannot probe ") and fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- the exports ---------------------------------------------------------------------------------------
def _winner(tmp_path):
    from tests.test_export import LORA_PLAIN, _ckpt, _variant

    return _variant(tmp_path, "actoff", _ckpt, src=LORA_PLAIN, act_offload=True)[0]


def _export(run, fmt):
    return export_run(run, fmt, None, dataset="d.jsonl", template="glm4")[0]


def test_axolotl_offloads_the_checkpointed_hidden_states(tmp_path):
    path = _export(_winner(tmp_path), "axolotl")
    doc = yaml.safe_load(path.read_text())
    assert doc["activation_offloading"] == "hidden_states" and doc["gradient_checkpointing"] is True
    assert doc["gradient_checkpointing_kwargs"] == {"use_reentrant": False}  # axolotl's hidden_states path reads it
    assert "activations offloaded to pinned CPU memory" in path.read_text()


def test_llamafactory_uses_its_offloading_checkpoint(tmp_path):
    path = _export(_winner(tmp_path), "llamafactory")
    assert yaml.safe_load(path.read_text())["use_unsloth_gc"] is True
    assert "unsloth need not be installed" in path.read_text()


@pytest.mark.parametrize("fmt", ["hf", "glm4", "glm4-demo"])
def test_tools_without_a_switch_refuse_in_one_line(tmp_path, fmt):
    run = _winner(tmp_path)
    r = CliRunner().invoke(cli, ["export", str(run), "--format", fmt, "--dataset", "d.jsonl"])
    assert r.exit_code == 2 and not (run / "export").exists()
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "no switch for the activation offload" in line


def test_the_python_api_refuses_training_arguments(tmp_path):
    import autofit

    with pytest.raises(ExportError, match="act_offload.patch"):
        autofit.load(_winner(tmp_path)).training_arguments(str(tmp_path / "o"))


def test_plain_winners_name_no_offload(tmp_path):
    from tests.test_export import LORA_PLAIN

    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    for fmt in ("axolotl", "llamafactory"):
        text = _export(run, fmt).read_text()
        assert "activation_offloading" not in text and "unsloth" not in text


def test_report_names_it():
    from autofit.report.cells import describe_strategy

    assert "gradient checkpointing with activations offloaded to CPU" in describe_strategy(ACTOFF.key())
