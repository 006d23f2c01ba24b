"""`autofit export`: every format written from the committed run dirs, each accepted by the code that
consumes it where that code is installed here (transformers, peft, DeepSpeed), and key names pinned
to the ones confirmed in each tool's source where it is not (LLaMA-Factory, GLM-4, axolotl).

Run dirs are copied to tmp_path first: nothing is written into results/.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from autofit.errors import ExportError, RunDirError, UsageError
from autofit.export import FORMATS, export_cmd, export_run
from autofit.spec import Method, Strategy

RESULTS = Path(__file__).resolve().parent.parent / "results"
LORA_PLAIN = RESULTS / "bench-h100-glm4-lora-T1024" / "search"           # LoRA, no DeepSpeed
LORA_ZERO3 = RESULTS / "search-h100-glm4-lora-T1024-24GiB" / "search"     # LoRA + ZeRO-3, CPU offload
EXAMPLES = {"plain": LORA_PLAIN, "zero3": LORA_ZERO3}

# LLaMA-Factory keys that are not transformers Seq2SeqTrainingArguments fields, as declared in
# hiyouga/LLaMA-Factory src/llamafactory/hparams/{model_args,data_args,finetuning_args}.py.
LLAMAFACTORY_KEYS = {
    "model_name_or_path", "trust_remote_code", "flash_attn", "disable_gradient_checkpointing", "use_reentrant_gc",
    "dataset", "template", "cutoff_len",
    "stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
    "freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "pure_bf16",
    "quantization_bit", "quantization_method", "quantization_type", "double_quantization", "enable_liger_kernel",
}
# axolotl-ai-cloud/axolotl docs/config.qmd (and docs/attention.qmd for attn_implementation).
AXOLOTL_KEYS = {
    "base_model", "trust_remote_code", "attn_implementation", "datasets", "output_dir", "sequence_len",
    "pad_to_sequence_len", "sample_packing", "adapter", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "unfrozen_parameters", "micro_batch_size", "gradient_accumulation_steps",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16", "learning_rate", "optimizer",
    "max_grad_norm", "logging_steps", "deepspeed", "chat_template", "load_in_4bit", "load_in_8bit", "tf32",
    "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel", "plugins",
    "liger_fused_linear_cross_entropy", "liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm",
    "liger_cross_entropy",
}
# THUDM/GLM-4 finetune_demo/finetune.py: FinetuningConfig's fields (from_file passes the YAML's
# top-level keys straight to it) and DataConfig's.
GLM_REQUIRED = {"data_config", "max_input_length", "max_output_length", "combine", "freezeV"}
GLM_OPTIONAL = {"training_args", "peft_config"}
GLM_DATA_KEYS = {"train_file", "val_file", "test_file", "num_proc"}


@pytest.fixture(params=sorted(EXAMPLES))
def example(request, tmp_path) -> tuple[Path, dict]:
    """(a copy of a committed run dir, its best.yaml)."""
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES[request.param], run)
    return run, yaml.safe_load((run / "best.yaml").read_text())


def _variant(tmp_path: Path, name: str, change, src: Path = LORA_PLAIN, **dims) -> tuple[Path, dict]:
    """A run dir whose best.yaml is a committed winner edited by `change(doc)` (method, precision...), its
    strategy key rewritten to match, with `dims` (loss, quant, optim) set."""
    run = tmp_path / name
    shutil.copytree(src, run)
    doc = yaml.safe_load((run / "best.yaml").read_text())
    change(doc)
    c = doc["config"]
    method = Method(kind=c["method"], lora_r=c.get("lora_r", 8), freeze_trainable_layers=c.get("freeze_trainable_layers", 2))
    c["strategy"] = Strategy(method=method, precision=c["precision"], grad_ckpt=c["gradient_checkpointing"],
                             zero_stage=c["zero_stage"], offload_optimizer=c["offload_optimizer"],
                             offload_params=c["offload_params"], **dims).key()
    (run / "best.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return run, doc


def _as_freeze(doc):
    doc["config"].update(method="freeze", freeze_trainable_layers=2)
    del doc["config"]["lora_r"], doc["config"]["lora_alpha"]
    doc["peft"] = None


def _as_full(doc):
    doc["config"]["method"] = "full"
    del doc["config"]["lora_r"], doc["config"]["lora_alpha"]
    doc["peft"] = None


def _as_fp16(doc):
    doc["config"]["precision"] = "fp16"
    doc["model"]["torch_dtype"] = "float32"
    doc["training_args"].update(bf16=False, fp16=True)


def _export(run: Path, fmt: str, out=None, **kw) -> list[Path]:
    """export_run with the user's values filled in (the refusal without them is tested on its own)."""
    return export_run(run, fmt, out, **{"dataset": "my_data.jsonl", "template": "glm4", **kw})


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _header(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [ln for ln in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))]]


# -- every format, both committed run dirs ----------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_its_files(example, fmt):
    run, best = example
    uses_ds = best["deepspeed"] is not None
    if fmt == "deepspeed" and not uses_ds:
        pytest.skip("no DeepSpeed in this winner: see test_deepspeed_format_without_deepspeed_is_refused")
    paths = _export(run, fmt, None)
    main = run / "export" / (f"{fmt}.json" if fmt == "deepspeed" else f"{fmt}.yaml")
    assert paths[0] == main.resolve() and all(p.is_file() for p in paths)
    measured = f"measured: {best['measured']['tokens_per_s']:g} tokens/s, peak {best['measured']['peak_gib']:g} GiB"
    if fmt == "deepspeed":
        assert len(paths) == 1
        comment = json.loads(main.read_text())["_comment"]
        assert comment[0] == f"generated by autofit from {run.resolve()}" and measured in " ".join(comment)
        assert comment[1].startswith("checked against: DeepSpeed ")
        return
    head = _header(main)
    assert head[0] == f"# generated by autofit from {run.resolve()}"
    assert head[1].startswith("# checked against: ") and len(head[1]) > len("# checked against: ") + 10
    assert any(measured in ln for ln in head) and any("placeholders for you to fill:" in ln for ln in head)
    assert len(paths) == (2 if uses_ds else 1)
    if uses_ds:
        assert paths[1] == main.with_name(f"{fmt}.ds_config.json").resolve()
        assert json.loads(paths[1].read_text())["_comment"][0].startswith("generated by autofit from")


# -- hf: accepted by TrainingArguments, LoraConfig and (after HF fills "auto") DeepSpeed ---------------
def test_hf_is_accepted_by_transformers_peft_and_deepspeed(example):
    from peft import LoraConfig
    from transformers import TrainingArguments

    run, best = example
    paths = _export(run, "hf", None)
    doc = _load(paths[0])
    model_keys = ("torch_dtype", "attn_implementation", "trust_remote_code")
    assert doc["model_kwargs"] == {k: best["model"][k] for k in model_keys}
    assert doc["model_id"] == best["model"]["id"] and doc["max_token"] == best["config"]["max_token"]
    ta = doc["training_args"]
    # The deepspeed key is checked below through HF's own DeepSpeed config class; constructing
    # TrainingArguments with it would set up a distributed state inside the test process.
    args = TrainingArguments(**{k: v for k, v in ta.items() if k != "deepspeed"})
    assert args.per_device_train_batch_size == best["config"]["micro_batch"]
    assert args.gradient_accumulation_steps == best["config"]["gradient_accumulation"]
    assert args.gradient_checkpointing == best["config"]["gradient_checkpointing"]
    lora = LoraConfig(**doc["peft"])
    assert lora.r == best["config"]["lora_r"] and set(lora.target_modules) == set(best["peft"]["target_modules"])
    if best["deepspeed"] is None:
        assert "deepspeed" not in ta and len(paths) == 1
        return
    assert Path(ta["deepspeed"]) == paths[1]
    _check_hf_deepspeed(json.loads(paths[1].read_text()), args, best)


def _check_hf_deepspeed(cfg: dict, args, best: dict) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(cfg)
    hf.trainer_config_process(args)               # what TrainingArguments does with the file
    hf.trainer_config_finalize(args, None, 100)   # what Trainer does before deepspeed.initialize
    assert "\"auto\"" not in json.dumps(hf.config)
    ds = DeepSpeedConfig(hf.config)               # DeepSpeed's own validation, world size 1
    c = best["config"]
    assert ds.zero_optimization_stage == c["zero_stage"]
    assert ds.train_micro_batch_size_per_gpu == c["micro_batch"]
    assert ds.train_batch_size == c["micro_batch"] * c["gradient_accumulation"]
    assert ds.zero_config.offload_optimizer is not None and ds.zero_config.offload_param is not None


# -- deepspeed: concrete, valid on its own, and agreeing with the winner's TrainingArguments --------
def test_deepspeed_format_is_concrete_and_valid(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    best = _load(run / "best.yaml")
    (path,) = _export(run, "deepspeed", None)
    cfg = json.loads(path.read_text())
    assert "\"auto\"" not in json.dumps(cfg)
    ds = DeepSpeedConfig(cfg)
    assert ds.train_batch_size == 32 and ds.gradient_accumulation_steps == 8 and ds.bfloat16_config.enabled
    assert ds.zero_optimization_stage == 3
    hf = HfTrainerDeepSpeedConfig(json.loads(path.read_text()))
    hf.trainer_config_process(TrainingArguments(**{k: v for k, v in best["training_args"].items() if k != "deepspeed"}))
    assert hf.mismatches == []  # the same numbers HF Trainer would have filled in


def test_current_search_output_exports_unchanged(tmp_path):
    """best.yaml from today's writer has concrete ZeRO bucket sizes; only older files say "auto" there."""
    from transformers import TrainingArguments

    from autofit.spec import Context, Method, Shape, Strategy
    from autofit.trainconfig import deepspeed_config

    s = Strategy(method=Method("lora"), precision="bf16-pure", grad_ckpt=True, zero_stage=3,
                 offload_optimizer=True, offload_params=True)
    current = deepspeed_config(s, Context(model="m", gpus=(0,), global_batch=32), Shape(4, 1024),
                               hf_auto=True, hidden_size=4096)
    run, best = _variant(tmp_path, "current", lambda doc: doc.update(deepspeed=current), src=LORA_ZERO3)
    paths = _export(run, "hf", None)
    cfg = json.loads(paths[1].read_text())
    assert cfg.pop("_comment") and cfg == current
    args = TrainingArguments(**{k: v for k, v in best["training_args"].items() if k != "deepspeed"})
    _check_hf_deepspeed(cfg, args, best)


def test_deepspeed_format_refuses_an_auto_only_hf_can_fill(tmp_path):
    def add_scheduler(doc):
        doc["deepspeed"]["scheduler"] = {"type": "WarmupLR", "params": {"total_num_steps": "auto"}}

    run, _ = _variant(tmp_path, "sched", add_scheduler, src=LORA_ZERO3)
    with pytest.raises(RunDirError, match=r"deepspeed\.scheduler\.params\.total_num_steps is 'auto'.*--format hf"):
        _export(run, "deepspeed", None)


def test_deepspeed_format_without_deepspeed_is_refused(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    with pytest.raises(UsageError, match="uses no DeepSpeed.*use --format hf"):
        _export(run, "deepspeed", None)
    assert not (run / "export").exists()


# -- llamafactory / glm4 / axolotl: the confirmed keys, with the winner's values ----------------------
def test_llamafactory_keys(example):
    from transformers import Seq2SeqTrainingArguments

    run, best = example
    paths = _export(run, "llamafactory", None)
    doc, c = _load(paths[0]), best["config"]
    hf_fields = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    assert set(doc) <= LLAMAFACTORY_KEYS | hf_fields, set(doc) - LLAMAFACTORY_KEYS - hf_fields
    assert doc["model_name_or_path"] == best["model"]["id"]
    assert doc["stage"] == "sft" and doc["do_train"] is True and doc["finetuning_type"] == "lora"
    assert doc["lora_rank"] == best["peft"]["r"] and doc["lora_alpha"] == best["peft"]["lora_alpha"]
    assert doc["lora_target"] == ",".join(best["peft"]["target_modules"]) == "q_proj,k_proj,v_proj,o_proj"
    assert doc["cutoff_len"] == c["max_token"]
    assert doc["per_device_train_batch_size"] == c["micro_batch"]
    assert doc["gradient_accumulation_steps"] == c["gradient_accumulation"]
    assert doc["learning_rate"] == best["training_args"]["learning_rate"]
    assert doc["bf16"] is True and doc["fp16"] is False and doc["flash_attn"] == "sdpa"
    assert doc["disable_gradient_checkpointing"] is (not c["gradient_checkpointing"])
    assert doc["template"] == "glm4" and doc["dataset"] == "my_data.jsonl"
    assert "placeholders for you to fill: none" in "".join(_header(paths[0]))
    assert any("set trust_remote_code: true and LoRA targets query_key_value,dense" in ln for ln in _header(paths[0]))
    if best["deepspeed"] is None:
        assert doc["pure_bf16"] is True and "deepspeed" not in doc
    else:  # LLaMA-Factory refuses pure_bf16 under ZeRO-3 (hparams/parser.py)
        assert "pure_bf16" not in doc and Path(doc["deepspeed"]) == paths[1]
        assert doc["use_reentrant_gc"] is False


@pytest.mark.parametrize("fmt, targets", [("glm4", ["q_proj", "k_proj", "v_proj", "o_proj"]),
                                           ("glm4-demo", ["query_key_value", "dense"])])
def test_glm4_keys(example, fmt, targets):
    import peft
    from transformers import GenerationConfig, Seq2SeqTrainingArguments

    run, best = example
    paths = _export(run, fmt, None)
    doc, c = _load(paths[0]), best["config"]
    assert GLM_REQUIRED <= set(doc) <= GLM_REQUIRED | GLM_OPTIONAL
    assert set(doc["data_config"]) == GLM_DATA_KEYS and doc["data_config"]["train_file"].endswith(".jsonl")
    assert doc["max_input_length"] + doc["max_output_length"] + 1 == c["max_token"]  # finetune.py's truncation
    assert abs(doc["max_input_length"] - doc["max_output_length"]) <= 1
    pc = doc["peft_config"]
    assert pc["peft_type"] == "LORA" and pc["task_type"] == "CAUSAL_LM"
    assert pc["r"] == best["peft"]["r"] and pc["lora_alpha"] == best["peft"]["lora_alpha"]
    assert pc["target_modules"] == targets
    lora = peft.get_peft_config(pc)  # what FinetuningConfig.from_dict does with it
    assert isinstance(lora, peft.LoraConfig) and lora.target_modules == set(targets)
    assert ta_checkpointing(doc) is c["gradient_checkpointing"]  # finetune.py's only switch since 2024-11

    ta = dict(doc["training_args"])
    assert ta["per_device_train_batch_size"] == c["micro_batch"]
    assert ta["gradient_accumulation_steps"] == c["gradient_accumulation"]
    assert ta["bf16"] is True and isinstance(ta["max_steps"], int) and ta["output_dir"]
    assert ta["generation_config"]["max_new_tokens"] == doc["max_output_length"]
    if best["deepspeed"] is not None:
        assert Path(ta.pop("deepspeed")) == paths[1]
    # FinetuningConfig.from_dict builds these two objects; GLM-4 needs transformers >= 4.45, where
    # evaluation_strategy is called eval_strategy, so rename it for the 4.40.2 installed here.
    ta["generation_config"] = GenerationConfig(**ta["generation_config"])
    if "eval_strategy" not in {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}:
        ta["evaluation_strategy"] = ta.pop("eval_strategy")
    args = Seq2SeqTrainingArguments(**ta)
    assert args.do_eval and args.predict_with_generate


def ta_checkpointing(doc: dict) -> bool:
    return doc["training_args"]["gradient_checkpointing"]


def test_axolotl_keys(example):
    run, best = example
    paths = _export(run, "axolotl", None)
    doc, c = _load(paths[0]), best["config"]
    assert set(doc) <= AXOLOTL_KEYS, set(doc) - AXOLOTL_KEYS
    assert doc["base_model"] == best["model"]["id"] and doc["sequence_len"] == c["max_token"]
    assert doc["micro_batch_size"] == c["micro_batch"]
    assert doc["gradient_accumulation_steps"] == c["gradient_accumulation"]
    assert doc["adapter"] == "lora" and doc["lora_r"] == best["peft"]["r"]
    assert doc["lora_alpha"] == best["peft"]["lora_alpha"] and doc["lora_dropout"] == best["peft"]["lora_dropout"]
    assert doc["lora_target_modules"] == best["peft"]["target_modules"]
    assert doc["gradient_checkpointing"] is c["gradient_checkpointing"]
    assert doc["bf16"] is True and doc["fp16"] is False and doc["optimizer"] == best["training_args"]["optim"]
    assert doc["learning_rate"] == best["training_args"]["learning_rate"]
    assert doc["datasets"][0]["path"] == "my_data.jsonl" and doc["chat_template"] == "glm4"
    # axolotl would auto-enable its fused LoRA kernels and TF32: pinned to what the probe ran
    assert [doc[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "tf32")] == [False] * 4
    assert ("deepspeed" in doc) == (best["deepspeed"] is not None)
    if best["deepspeed"] is not None:
        assert Path(doc["deepspeed"]) == paths[1]


# -- other methods and precisions (best.yaml edited from a committed winner) --------------------------
def test_freeze_winner(tmp_path):
    run, _ = _variant(tmp_path, "freeze", _as_freeze)
    hf = _load(_export(run, "hf", None)[0])
    assert hf["peft"] is None and hf["freeze_trainable_layers"] == 2
    lf = _load(_export(run, "llamafactory", None)[0])
    assert lf["finetuning_type"] == "freeze" and lf["freeze_trainable_layers"] == 2
    assert "lora_rank" not in lf and "lora_target" not in lf
    glm_path = _export(run, "glm4", None)[0]
    assert "peft_config" not in _load(glm_path)
    assert any("no freeze mode" in ln for ln in _header(glm_path))  # it would train every parameter
    with pytest.raises(ExportError, match=r"needs values only you know: unfrozen_parameters; pass --allow-placeh"):
        _export(run, "axolotl", None)
    ax_path = _export(run, "axolotl", None, allow_placeholders=True)[0]
    ax = _load(ax_path)
    assert "adapter" not in ax and ax["unfrozen_parameters"][0].startswith("<fill in:")
    assert any("unfrozen_parameters" in ln for ln in _header(ax_path) if "placeholders" in ln)


def test_full_winner(tmp_path):
    run, _ = _variant(tmp_path, "full", _as_full)
    assert _load(_export(run, "hf", None)[0])["peft"] is None
    assert _load(_export(run, "llamafactory", None)[0])["finetuning_type"] == "full"
    assert "peft_config" not in _load(_export(run, "glm4", None)[0])
    ax = _load(_export(run, "axolotl", None)[0])
    assert "adapter" not in ax and "lora_r" not in ax


def test_fp16_winner(tmp_path):
    run, _ = _variant(tmp_path, "fp16", _as_fp16)
    lf = _load(_export(run, "llamafactory", None)[0])
    assert lf["fp16"] is True and lf["bf16"] is False and "pure_bf16" not in lf
    ax = _load(_export(run, "axolotl", None)[0])
    assert ax["fp16"] is True and ax["bf16"] is False
    glm_path = _export(run, "glm4", None)[0]
    assert _load(glm_path)["training_args"]["fp16"] is True
    assert any("always loads the weights in bfloat16" in ln for ln in _header(glm_path))


# -- --out, the click command, and no torch ------------------------------------------------------------
def test_out_file_and_directory(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    paths = _export(run, "axolotl", tmp_path / "cfg" / "my.yml")
    assert paths == [tmp_path / "cfg" / "my.yml", tmp_path / "cfg" / "my.ds_config.json"]
    assert _load(paths[0])["deepspeed"] == str(paths[1])
    (tmp_path / "outdir").mkdir()
    assert _export(run, "deepspeed", tmp_path / "outdir") == [tmp_path / "outdir" / "deepspeed.json"]


def test_out_never_overwrites_the_search(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    before = (run / "best.yaml").read_text()
    with pytest.raises(UsageError, match=r"would overwrite the search's own .*best\.yaml"):
        _export(run, "hf", run / "best.yaml")
    with pytest.raises(UsageError, match=r"would overwrite the search's own .*ds_config\.json"):
        _export(run, "deepspeed", run / "ds_config.json")
    assert (run / "best.yaml").read_text() == before


def test_click_command(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    result = CliRunner().invoke(export_cmd, [str(run), "--format", "llamafactory", "--dataset", "d", "--template", "t"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {(run / 'export' / 'llamafactory.yaml').resolve()}"
    assert CliRunner().invoke(export_cmd, [str(run), "--format", "nemo"]).exit_code == 2  # click's own usage error
    from autofit.cli import cli

    missing = CliRunner().invoke(cli, ["export", str(tmp_path / "nope"), "--format", "hf"])
    assert missing.exit_code == 2  # the CLI turns the RunDirError into one line
    assert missing.stderr.strip().startswith("autofit: error: run dir") and len(missing.stderr.strip().splitlines()) == 1


def test_export_imports_no_gpu_stack(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    code = ("import sys; from pathlib import Path; from autofit.export import export_run\n"
            f"for fmt in {FORMATS!r}: export_run(Path({str(run)!r}), fmt, None, allow_placeholders=True)\n"
            "heavy = sorted({'torch', 'transformers', 'deepspeed', 'peft'} & set(sys.modules))\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


# -- bad inputs: each is the right AutofitError with a message that names the problem ---------------
def _bad_run(tmp_path: Path, text: str | bytes | None) -> Path:
    run = tmp_path / "bad"
    run.mkdir()
    if isinstance(text, bytes):
        (run / "best.yaml").write_bytes(text)
    elif text is not None:
        (run / "best.yaml").write_text(text)
    return run


def _missing_keys() -> str:
    doc = yaml.safe_load(LORA_PLAIN.joinpath("best.yaml").read_text())
    del doc["config"]["max_token"], doc["measured"]
    doc["config"]["micro_batch"] = "four"
    return yaml.safe_dump(doc)


def _bad_values() -> str:
    doc = yaml.safe_load(LORA_PLAIN.joinpath("best.yaml").read_text())
    doc["config"].update(micro_batch=0, method="qlora", precision="fp8")
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("text, match", [
    (None, r"has no best\.yaml"),
    ("model: [unclosed\n", r"best\.yaml is corrupted \(not valid YAML"),
    (b"\xff\xfe\x00\x81garbage", r"best\.yaml is corrupted"),
    ("- a\n- list\n", r"corrupted: expected a mapping, got list"),
    ("", r"corrupted: expected a mapping, got NoneType"),
    (_missing_keys(), r"not a usable best\.yaml: missing config\.max_token; config\.micro_batch must be int, "
                      r"got 'four'; missing measured\.tokens_per_s; missing measured\.peak_gib"),
    (_bad_values(), r"config\.micro_batch must be at least 1, got 0; .*config\.method must be one of lora, full, "
                    r"freeze, got 'qlora'; config\.precision must be one of fp32, fp16, bf16, bf16-pure, got 'fp8'"),
], ids=["no-best", "bad-yaml", "binary", "list", "empty", "missing-keys", "bad-values"])
def test_bad_run_dir(tmp_path, text, match):
    with pytest.raises(RunDirError, match=match):
        _export(_bad_run(tmp_path, text), "hf", None)


def test_missing_run_dir(tmp_path):
    with pytest.raises(RunDirError, match=r"run dir .*nope does not exist"):
        _export(tmp_path / "nope", "hf", None)


def test_parent_of_run_dir_gets_a_hint(tmp_path):
    shutil.copytree(LORA_PLAIN, tmp_path / "run" / "search")
    with pytest.raises(RunDirError, match=r"has no best\.yaml; did you mean .*run/search\?"):
        _export(tmp_path / "run", "hf", None)


def test_unknown_format(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    with pytest.raises(UsageError, match=r"--format 'nemo': expected one of hf, deepspeed, llamafactory, glm4, glm4-demo, axol"):
        _export(run, "nemo", None)


def test_multi_node_winner_says_how_to_launch_it(tmp_path):
    def two_hosts(doc):
        doc["hardware"]["hosts"] = ["node-1 slots=8", "node-2 slots=8"]
        doc["hardware"]["num_gpus"] = 16

    run, _ = _variant(tmp_path, "multi", two_hosts, src=LORA_ZERO3)
    (path,) = [p for p in _export(run, "hf", None) if p.suffix == ".yaml"]
    head = "\n".join(_header(path))
    assert "deepspeed --hostfile HOSTFILE" in head and "node-1 slots=8, node-2 slots=8" in head


@pytest.mark.parametrize("fmt, fragments", [
    ("llamafactory", ["NNODES=2", "NODE_RANK=<0..1>", "MASTER_ADDR=node-1"]),
    ("glm4", ["torchrun --nnodes=2", "--node_rank=<0..1>", "--master_addr=node-1", "--nproc_per_node=8"]),
    ("axolotl", ["--launcher torchrun -- --nnodes 2 --nproc_per_node 8", "--rdzv_endpoint node-1:29400"]),
])
def test_multi_node_winner_gets_a_per_host_launch_line(tmp_path, fmt, fragments):
    def two_hosts(doc):
        doc["hardware"]["hosts"] = ["node-1 slots=8", "node-2 slots=8"]
        doc["hardware"]["num_gpus"] = 16

    run, _ = _variant(tmp_path, "multi", two_hosts, src=LORA_ZERO3)
    head = "\n".join(line for p in _export(run, fmt, None) if p.suffix in (".yaml", ".yml") for line in _header(p))
    assert all(f in head for f in fragments), head


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "deepspeed"])
def test_a_cpu_adam_winner_on_several_gpus_says_how_many_openmp_threads(tmp_path, fmt):
    """torchrun gives each rank one OpenMP thread; CPU Adam needs the cores (results/omp-offload-2xh200)."""
    run = tmp_path / "offload2"
    shutil.copytree(RESULTS / "search-2xh100-glm4-full-T1024" / "search", run, ignore=shutil.ignore_patterns("report"))
    head = "\n".join(line for p in _export(run, fmt, None) if p.suffix in (".yaml", ".yml") for line in _header(p))
    assert "OMP_NUM_THREADS=$(( $(nproc) / 2 ))" in head, head
    one = tmp_path / "offload1"  # one GPU: one process, OpenMP already takes every core
    shutil.copytree(LORA_ZERO3, one)
    head1 = "\n".join(line for p in _export(one, fmt, None) if p.suffix in (".yaml", ".yml") for line in _header(p))
    assert "OMP_NUM_THREADS" not in head1


# -- --out: directories, dotted names, never another run's files -----------------------------------------
def test_out_ending_in_a_separator_is_a_new_directory(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    paths = _export(run, "hf", f"{tmp_path / 'newdir'}/")
    assert paths == [tmp_path / "newdir" / "hf.yaml", tmp_path / "newdir" / "hf.ds_config.json"]
    second = _export(run, "axolotl", f"{tmp_path / 'newdir'}/")  # a second format lands next to the first
    assert second[0] == tmp_path / "newdir" / "axolotl.yaml" and paths[0].is_file()


def test_a_dotted_name_is_not_cut(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    paths = _export(run, "llamafactory", tmp_path / "qwen2.5-lora")
    assert paths == [tmp_path / "qwen2.5-lora", tmp_path / "qwen2.5-lora.ds_config.json"]
    assert _load(paths[0])["deepspeed"] == str(paths[1])


def test_nothing_overwrites_another_runs_files_without_force(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(LORA_ZERO3, a)
    shutil.copytree(LORA_PLAIN, b)
    best_b = (b / "best.yaml").read_text()
    with pytest.raises(UsageError, match=r"B/best\.yaml exists and is not an export of .*A; .*--force"):
        _export(a, "hf", b / "best.yaml")
    assert (b / "best.yaml").read_text() == best_b
    theirs = _export(b, "hf", tmp_path / "shared.yaml")[0]
    with pytest.raises(UsageError, match="shared.yaml exists and is not an export of"):
        _export(a, "hf", theirs)
    assert _export(a, "hf", theirs, force=True)[0] == theirs
    assert _export(a, "hf", theirs)[0] == theirs  # now A's own export: re-exporting replaces it


# -- placeholders fail early ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, keys, flags", [("llamafactory", "dataset, template", "--dataset NAME --template NAME"),
                                              ("axolotl", "path", "--dataset NAME")])
def test_unfilled_placeholders_are_refused_in_one_line(tmp_path, fmt, keys, flags):
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    from autofit.cli import cli

    result = CliRunner().invoke(cli, ["export", str(run), "--format", fmt])
    assert result.exit_code == 2 and not (run / "export").exists()
    assert result.stderr.strip() == (f"autofit: error: --format {fmt} needs values only you know: {keys}; pass {flags}, "
                                     "or pass --allow-placeholders to write <fill in> markers and edit the file")
    (path,) = export_run(run, fmt, None, allow_placeholders=True)
    assert "<fill in:" in path.read_text()


def test_glm4_reads_only_jsonl(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    with pytest.raises(ExportError, match=r"--dataset alpaca: GLM-4's finetune\.py reads only \.jsonl"):
        export_run(run, "glm4", None, dataset="alpaca")
    assert _load(_export(run, "glm4", None)[0])["data_config"]["train_file"] == "my_data.jsonl"


# -- the dimensions beyond ZeRO: fused loss, 4/8-bit base weights, 8-bit AdamW -----------------------------
def _ckpt(doc):
    doc["config"]["gradient_checkpointing"] = True
    doc["training_args"].update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})


def _qlora(tmp_path: Path, quant: str = "nf4", loss: str = "fused") -> tuple[Path, dict]:
    return _variant(tmp_path, f"q-{quant}-{loss}", _ckpt, quant=quant, loss=loss)


def test_hf_carries_quantization_fused_loss_and_optimizer(tmp_path):
    from transformers import BitsAndBytesConfig, TrainingArguments

    run, _ = _qlora(tmp_path)
    path = _export(run, "hf", None)[0]
    doc = _load(path)
    q = doc["model_kwargs"]["quantization_config"]
    assert q == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                 "bnb_4bit_compute_dtype": "bfloat16"}
    bnb = BitsAndBytesConfig(**q)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    ta = doc["training_args"]
    assert ta["use_liger_kernel"] is True and ta["liger_kernel_config"]["fused_linear_cross_entropy"] is True
    assert not any(v for k, v in ta["liger_kernel_config"].items() if k != "fused_linear_cross_entropy")
    head = "\n".join(_header(path))
    assert "transformers>=4.52" in head and "bitsandbytes" in head and "liger-kernel" in head
    assert "quantized: not numerically the exact training" in head
    # transformers 4.40.2 has neither liger key; every other key is accepted
    args = TrainingArguments(**{k: v for k, v in ta.items() if k not in ("use_liger_kernel", "liger_kernel_config")})
    assert args.gradient_checkpointing and args.optim == "adamw_torch"


def test_8bit_optimizer_in_every_format(tmp_path):
    run, _ = _variant(tmp_path, "full8", _as_full, optim="adamw8bit")
    assert _load(_export(run, "hf", None)[0])["training_args"]["optim"] == "adamw_bnb_8bit"
    assert _load(_export(run, "llamafactory", None)[0])["optim"] == "adamw_bnb_8bit"
    assert _load(_export(run, "axolotl", None)[0])["optimizer"] == "adamw_bnb_8bit"
    for fmt in ("glm4", "glm4-demo"):
        assert _load(_export(run, fmt, None)[0])["training_args"]["optim"] == "adamw_bnb_8bit"


@pytest.mark.parametrize("quant, bits", [("nf4", 4), ("int8", 8)])
def test_llamafactory_quantization_and_liger(tmp_path, quant, bits):
    run, _ = _qlora(tmp_path, quant)
    doc = _load(_export(run, "llamafactory", None)[0])
    assert doc["quantization_bit"] == bits and doc["quantization_method"] == "bitsandbytes"
    assert doc["enable_liger_kernel"] is True and "pure_bf16" not in doc
    if bits == 4:
        assert doc["quantization_type"] == "nf4" and doc["double_quantization"] is True


@pytest.mark.parametrize("quant, adapter, load_key", [("nf4", "qlora", "load_in_4bit"), ("int8", "lora", "load_in_8bit")])
def test_axolotl_qlora_and_liger_plugin(tmp_path, quant, adapter, load_key):
    run, _ = _qlora(tmp_path, quant)
    doc = _load(_export(run, "axolotl", None)[0])
    assert doc["adapter"] == adapter and doc[load_key] is True
    assert doc["plugins"] == ["axolotl.integrations.liger.LigerPlugin"]
    assert doc["liger_fused_linear_cross_entropy"] is True
    assert [doc[k] for k in ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm",
                             "liger_cross_entropy")] == [False] * 5


def test_fused_loss_without_quantization_is_off_elsewhere(tmp_path):
    """The plain winner names no quantization and no liger key in any format."""
    run = tmp_path / "run"
    shutil.copytree(LORA_PLAIN, run)
    for fmt in ("hf", "llamafactory", "axolotl", "glm4"):
        text = _export(run, fmt, None)[0].read_text()
        assert "quantization" not in text and "liger" not in text.replace("LigerPlugin", ""), fmt


@pytest.mark.parametrize("fmt", ["glm4", "glm4-demo"])
@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_glm4_refuses_quantized_weights(tmp_path, fmt, quant):
    run, _ = _qlora(tmp_path, quant, loss="hf")
    from autofit.cli import cli

    result = CliRunner().invoke(cli, ["export", str(run), "--format", fmt, "--dataset", "d.jsonl"])
    assert result.exit_code == 2 and not (run / "export").exists()
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and f"this {quant} winner cannot be written for it" in line


def test_glm4_fused_loss_native_only(tmp_path):
    run, _ = _variant(tmp_path, "fused", _ckpt, loss="fused")
    ta = _load(_export(run, "glm4", None)[0])["training_args"]
    assert ta["use_liger_kernel"] is True and ta["liger_kernel_config"]["fused_linear_cross_entropy"] is True
    with pytest.raises(ExportError, match="glm4-demo: the fused cross-entropy"):
        _export(run, "glm4-demo", None)


def test_deepspeed_json_of_a_fused_winner_says_where_the_loss_is_set(tmp_path):
    run, _ = _variant(tmp_path, "fusedz2", lambda doc: None, src=LORA_ZERO3, loss="fused")
    comment = " ".join(json.loads(_export(run, "deepspeed", None)[0].read_text())["_comment"])
    assert "fused linear cross-entropy" in comment and "use_liger_kernel" in comment


def test_a_strategy_key_that_disagrees_with_its_config_is_refused(tmp_path):
    run, _ = _variant(tmp_path, "bad", lambda doc: None)
    doc = _load(run / "best.yaml")
    doc["config"]["strategy"] = "lora-r8/bf16-pure/ckpt/z0"
    (run / "best.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(RunDirError, match=r"config\.strategy .* says gradient_checkpointing=True, but config\.grad"):
        _export(run, "hf", None)


def test_cli_out_with_a_trailing_slash_makes_a_directory(tmp_path):
    from autofit.cli import cli

    run = tmp_path / "run"
    shutil.copytree(LORA_ZERO3, run)
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "deepspeed", "--out", f"{tmp_path / 'new'}/"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "deepspeed.json").is_file()
    again = CliRunner().invoke(cli, ["export", str(LORA_PLAIN), "--format", "hf", "--out",
                                     str(tmp_path / "new" / "deepspeed.json")])
    assert again.exit_code == 2 and "exists and is not an export of" in again.stderr
