"""4-bit / 8-bit base weights and the 8-bit optimizer (bitsandbytes) on the CPU.

bitsandbytes 0.50's CPU backend runs NF4 and LLM.int8 layers forward and backward and AdamW8bit's step,
so the quantized build, PEFT's bnb LoRA layers and whole probes run here for real, on a tiny Qwen2.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from autofit.models import decoder_blocks, resolve_model
from autofit.probe import quantize
from autofit.probe.runner import WorkerSession
from autofit.probe.worker import apply_method, torch_optimizer
from autofit.spec import Context, Method, Shape, Status, Strategy

# Found, not imported: importing bitsandbytes costs seconds (it torch.compiles its kernels), and every
# pytest-xdist worker collects this module, most of them to run none of it.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bnb():
    import bitsandbytes

    return bitsandbytes


def _ctx(model_dir, **kw) -> Context:
    return Context(**{**dict(model=str(model_dir), device="cpu", gpus=(), global_batch=4, warmup_steps=1, measure_steps=1,
                             probe_timeout_s=180, build_timeout_s=180), **kw})


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory):
    """Tied embeddings (Qwen2-0.5B, Gemma): the head must stay the embedding's tensor."""
    from transformers import Qwen2Config

    from tests.conftest import TINY

    d = tmp_path_factory.mktemp("tiny-qwen2-tied")
    Qwen2Config(**{**TINY, "tie_word_embeddings": True}).save_pretrained(d)
    return d


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_every_decoder_linear_is_quantized_and_the_rest_stays_bf16(tiny_model_dir, quant, bnb):
    source = resolve_model(str(tiny_model_dir))
    model = quantize.build_random(torch, source, _ctx(tiny_model_dir), Strategy(quant=quant), CPU)
    blocks = decoder_blocks(model, source)
    linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 7 * len(blocks)  # q k v o, gate up down
    assert all(type(m) is {"nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}[quant] for m in linears)
    assert {m.weight.dtype for m in linears} == {torch.uint8 if quant == "nf4" else torch.int8}
    # as the exported BitsAndBytesConfig sets them up: NF4 with double quantization and bf16 compute; int8 at 6.0
    if quant == "nf4":
        assert {(m.weight.quant_type, m.weight.compress_statistics, m.compute_dtype) for m in linears} == {("nf4", True, torch.bfloat16)}
    else:
        assert {(m.state.threshold, m.state.has_fp16_weights) for m in linears} == {(6.0, False)}
    attn = blocks[0].self_attn
    assert attn.q_proj.bias is not None and attn.q_proj.bias.device == CPU  # Qwen2's qkv bias, materialised
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.bfloat16  # HF skips the head
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    assert not [n for n, b in model.named_buffers() if b.is_meta]
    assert getattr(model, f"is_loaded_in_{'4' if quant == 'nf4' else '8'}bit") is True


def test_tied_embeddings_stay_one_tensor(tied_model_dir):
    source = resolve_model(str(tied_model_dir))
    model = quantize.build_random(torch, source, _ctx(tied_model_dir), Strategy(quant="nf4"), CPU)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_peft_wraps_the_quantized_layers_with_its_bnb_lora_and_only_adapters_train(tiny_model_dir, quant):
    from peft.tuners.lora import bnb as lora_bnb

    source = resolve_model(str(tiny_model_dir))
    strategy = Strategy(quant=quant, grad_ckpt=True)
    model = apply_method(quantize.build_random(torch, source, _ctx(tiny_model_dir), strategy, CPU), source, strategy)
    wrapped = [m for m in model.modules() if isinstance(m, (lora_bnb.Linear4bit, lora_bnb.Linear8bitLt))]
    assert len(wrapped) == 4 * 2  # the default targets q k v o, in both blocks
    ids = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


def test_an_unquantized_lora_does_not_import_peft_s_bnb_layers(tiny_model_dir, monkeypatch):
    """Importing bitsandbytes costs every LoRA probe worker seconds (it torch.compiles its kernels): peft must
    not reach for its bnb layers when nothing is quantized (the quantized path above still gets them)."""
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from autofit.models import build_config

    monkeypatch.setitem(sys.modules, "peft.tuners.lora.bnb", None)  # importing it now raises
    source = resolve_model(str(tiny_model_dir))
    strategy = Strategy(precision="fp32")
    model = apply_method(AutoModelForCausalLM.from_config(build_config(source)), source, strategy)
    assert len([m for m in model.modules() if isinstance(m, LoraLayer)]) == 4 * 2


def test_the_8bit_optimizer_keeps_its_state_in_8_bits(bnb):
    params = [torch.nn.Parameter(torch.randn(128, 64))]
    opt = torch_optimizer(torch, Strategy(method=Method(kind="full"), optim="adamw8bit"), params)
    assert isinstance(opt, bnb.optim.AdamW8bit) and opt.param_groups[0]["weight_decay"] == 0.0
    params[0].grad = torch.randn_like(params[0])
    opt.step()
    assert opt.state[params[0]]["state1"].dtype == torch.uint8


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [
    Strategy(quant="nf4", grad_ckpt=True),
    Strategy(quant="int8"),
    Strategy(method=Method(kind="full"), optim="adamw8bit"),
], ids=lambda s: s.key())
def test_a_real_probe_trains_it_in_the_worker(tmp_path, tiny_model_dir, strategy):
    with WorkerSession(_ctx(tiny_model_dir), strategy, resolve_model(str(tiny_model_dir)), tmp_path / "io") as s:
        r = s.probe(Shape(2, 32))
    assert r.status is Status.OK, r.error
    assert r.strategy == strategy.key() and r.tokens_per_s > 0


def write_best_yaml(run, strategy: Strategy, ctx: Context, shape: Shape, measured: dict, hardware: dict) -> None:
    """A best.yaml naming `strategy` as the winner, with the fields `autofit verify` reads, as the search writes them."""
    import yaml

    from autofit.models import resolve_model
    from autofit.trainconfig import model_dtype, peft_config, training_args

    m, s = strategy.method, strategy
    best = {
        "model": {"id": ctx.model, "weights_probed": ctx.weights, "trust_remote_code": False,
                  "torch_dtype": model_dtype(s, ctx.num_gpus), "attn_implementation": "sdpa"},
        "hardware": hardware,
        "search": {"global_batch": ctx.global_batch},
        "config": {"method": m.kind, "lora_r": m.lora_r, "lora_alpha": m.lora_alpha, "precision": s.precision,
                   "gradient_checkpointing": s.grad_ckpt, "zero_stage": s.zero_stage,
                   "offload_optimizer": s.offload_optimizer, "offload_params": s.offload_params,
                   "max_token": shape.max_token, "micro_batch": shape.micro_batch,
                   "gradient_accumulation": ctx.grad_accum(shape.micro_batch), "strategy": strategy.key()},
        "measured": measured,
        "training_args": training_args(strategy, ctx, shape, ds_config_path=None),
        "deepspeed": None,
        "peft": peft_config(strategy, resolve_model(ctx.model).lora_targets) if m.kind == "lora" else None,
    }
    run.mkdir()
    (run / "best.yaml").write_text(yaml.safe_dump(best))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [
    Strategy(quant="nf4", grad_ckpt=True),
    Strategy(method=Method(kind="full"), optim="adamw8bit"),
], ids=lambda s: s.key())
def test_verify_trains_a_quantized_winner_through_hf_trainer(tmp_path, monkeypatch, strategy):
    import json

    import transformers.modeling_utils
    from click.testing import CliRunner

    from autofit.cli import cli

    # transformers 4.40.2 calls bitsandbytes unavailable without CUDA (older bitsandbytes had no CPU
    # backend); 0.50 has one, so let Trainer's parameter count see it on the CPU.
    monkeypatch.setattr(transformers.modeling_utils, "is_bitsandbytes_available", lambda: True)
    run = tmp_path / "run"
    write_best_yaml(run, strategy, Context(model="autofit/tiny-qwen2", device="cpu", gpus=(), global_batch=4), Shape(2, 32),
                    measured={"tokens_per_s": 1000.0, "peak_gib": 1.0},
                    hardware={"device": "cpu", "gpu": "cpu", "gpus": [], "memory_budget_gib": 64.0, "emulated_gpu_memory": False})
    result = CliRunner().invoke(cli, ["verify", str(run), "--steps", "3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    v = json.loads((run / "verify.json").read_text())
    assert v["strategy"] == strategy.key() and v["tokens_per_s"] > 0


def _architectures():
    from autofit.models import load_table

    seen: dict[str, dict] = {}
    for entry in load_table().values():
        seen.setdefault(entry["architecture"], entry["config"])
    return sorted(seen.items())


@pytest.mark.parametrize("architecture,config", _architectures(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_table_architecture_builds_quantized_and_trains_lora(tmp_path, architecture, config):
    from transformers import CONFIG_MAPPING

    from tests.test_fused_loss import TINY_SHAPES

    cfg = {k: TINY_SHAPES.get(k, v) for k, v in config.items() if k != "torch_dtype"}
    cfg.update({k: TINY_SHAPES[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")})
    CONFIG_MAPPING[architecture](**cfg).save_pretrained(tmp_path)
    source = resolve_model(str(tmp_path))
    strategy = Strategy(quant="nf4")
    model = apply_method(quantize.build_random(torch, source, _ctx(tmp_path), strategy, CPU), source, strategy)
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    ids = torch.randint(0, TINY_SHAPES["vocab_size"], (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_verify_says_in_one_line_that_the_winner_ran_out_of_memory(tmp_path, monkeypatch):
    """An OOM while verify builds or trains the winner is its verdict, one line and exit 2, not a traceback
    (a GPU run: another process held 15 GiB of the card under a 24 GiB cap). A FAKE OOM stands in."""
    from click.testing import CliRunner

    from autofit.cli import cli
    from autofit.probe import worker
    from autofit.spec import Context, Shape, Strategy

    def out_of_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 MiB. Process 5900 has 15.00 GiB memory in use.")

    monkeypatch.setattr(worker, "trainable_model", out_of_memory)
    write_best_yaml(tmp_path / "run", Strategy(precision="fp32"), Context(model="autofit/tiny-qwen2", device="cpu", gpus=(), global_batch=4),
                    Shape(2, 32), measured={"tokens_per_s": 1000.0, "peak_gib": 1.0},
                    hardware={"device": "cpu", "gpu": "cpu", "gpus": [], "memory_budget_gib": 64.0, "emulated_gpu_memory": False})
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "run"), "--steps", "3"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("autofit: error: verify failed: the winner ran out of memory under HF Trainer")
    assert "Process 5900 has 15.00 GiB" in lines[-1] and "Traceback" not in result.output
    assert not (tmp_path / "run" / "verify.json").exists()
