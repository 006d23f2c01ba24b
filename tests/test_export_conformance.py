"""Every export format loaded by its tool's own parser, in that tool's own venv, for a LoRA, a ZeRO-3
offload and a two-GPU winner (committed results) and for winners with the newer dimensions (4/8-bit
weights, the fused loss, 8-bit AdamW, activation offload): a rejected key or a value that does not round-trip fails.

The venvs are built by tests/conformance/venvs.sh into $AUTOFIT_CONFORMANCE_VENVS (.ci/run does, and
sets AUTOFIT_REQUIRE_CONFORMANCE=1 so that a missing venv fails there instead of skipping).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autofit.errors import ExportError
from autofit.export import export_run
from autofit.spec import Method, Strategy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
CHECK = ROOT / "tests" / "conformance" / "check.py"
VENVS = os.environ.get("AUTOFIT_CONFORMANCE_VENVS")
REQUIRED = os.environ.get("AUTOFIT_REQUIRE_CONFORMANCE") == "1"
VENV_OF = {"hf": "hf", "deepspeed": "hf", "glm4": "hf", "glm4-demo": "hf", "llamafactory": "llamafactory",
           "axolotl": "axolotl"}
# GLM-4's remote-code model fuses q/k/v into query_key_value and names o_proj dense (its modeling_chatglm.py).
GLM_REMOTE = {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value", "o_proj": "dense"}

COMMITTED = {
    "lora": RESULTS / "bench-h100-glm4-lora-T1024" / "search",
    "offload": RESULTS / "search-h100-glm4-lora-T1024-24GiB" / "search",
    "2gpu": RESULTS / "search-2xh200-glm4-full-T1024" / "search",
}
# Winners of the newer dimensions, as best.yaml states them: the strategy key names them.
CRAFTED = {
    "qlora-fused": ("lora", dict(grad_ckpt=True, quant="nf4", loss="fused")),
    "int8": ("lora", dict(grad_ckpt=True, quant="int8")),
    "full-8bit-adam-fused": ("full", dict(grad_ckpt=True, optim="adamw8bit", loss="fused")),
    "lora-actoff": ("lora", dict(grad_ckpt=True, act_offload=True)),
}
CASES = [*COMMITTED, *CRAFTED]


def _venv(fmt: str) -> Path:
    if not VENVS or not (Path(VENVS) / VENV_OF[fmt] / "bin" / "python").is_file():
        message = f"no {VENV_OF[fmt]} conformance venv: run tests/conformance/venvs.sh DIR, set AUTOFIT_CONFORMANCE_VENVS=DIR"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return Path(VENVS) / VENV_OF[fmt]


def _craft(tmp: Path, name: str) -> Path:
    """A plain 1-GPU LoRA winner's best.yaml rewritten as the crafted strategy (method, key, trainer args)."""
    method, dims = CRAFTED[name]
    run = tmp / name
    shutil.copytree(COMMITTED["lora"], run)
    doc = yaml.safe_load((run / "best.yaml").read_text())
    c = doc["config"]
    s = Strategy(method=Method(kind=method), precision="bf16-pure", **dims)
    c.update(method=method, gradient_checkpointing=s.grad_ckpt, strategy=s.key())
    doc["training_args"].update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    if method != "lora":
        del c["lora_r"], c["lora_alpha"]
        doc["peft"] = None
    (run / "best.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return run


def _expect(run: Path) -> dict[str, Any]:
    """The winner's values as best.yaml and its strategy key state them."""
    best = yaml.safe_load((run / "best.yaml").read_text())
    c, s = best["config"], Strategy.from_key(best["config"]["strategy"])
    targets = best["peft"]["target_modules"] if best["peft"] else []
    return {"micro_batch": c["micro_batch"], "accum": c["gradient_accumulation"], "max_token": c["max_token"],
            "ckpt": c["gradient_checkpointing"], "bf16": best["training_args"]["bf16"],
            "fp16": best["training_args"]["fp16"],
            "zero_stage": c["zero_stage"] if best["deepspeed"] is not None else None,
            "offload_optimizer": c["offload_optimizer"], "offload_params": c["offload_params"],
            "num_gpus": best["hardware"]["num_gpus"], "method": c["method"], "lora_r": c.get("lora_r"),
            "lora_alpha": c.get("lora_alpha"), "lora_targets": targets, "glm_targets": targets,
            "quant": s.quant, "fused": s.loss == "fused", "act_offload": s.act_offload,
            "optim": {"adamw": "adamw_torch", "adamw8bit": "adamw_bnb_8bit"}[s.optim]}


FORMATS = ["hf", "deepspeed", "llamafactory", "axolotl", "glm4", "glm4-demo"]


def _prepare(tmp: Path, fmt: str, case: str) -> tuple[Path, dict[str, Any]] | str:
    """(the export, what the tool must read back), or why there is nothing for the tool to read."""
    run = tmp / "runs" / fmt / case
    if case in COMMITTED:
        shutil.copytree(COMMITTED[case], run, ignore=shutil.ignore_patterns("report", "study.db"))
    else:
        run.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(_craft(tmp / "craft" / fmt, case), run)
    expect = _expect(run)
    if fmt == "deepspeed" and expect["zero_stage"] is None:
        return "skip: no DeepSpeed in this winner"
    cannot = fmt.startswith("glm4") and (expect["quant"] != "none" or (fmt == "glm4-demo" and expect["fused"]))
    if cannot or (fmt in ("hf", "glm4", "glm4-demo") and expect["act_offload"]):
        try:
            export_run(run, fmt, None, dataset="train.jsonl")
        except ExportError:  # the tool cannot express it: refused, not dropped
            return "refused"
        return "FAIL: written although the tool cannot express the winner"
    if fmt == "glm4-demo":
        expect["glm_targets"] = list(dict.fromkeys(GLM_REMOTE.get(t, t) for t in expect["lora_targets"]))
    path = export_run(run, fmt, f"{tmp / 'out' / fmt / case}/", dataset="train.jsonl",
                      template="chatml" if fmt == "axolotl" else "glm4")[0]  # axolotl has no glm4 template
    return path, expect


def extensions_dir(venv: Path) -> Path:
    """Where DeepSpeed in VENV keeps its JIT-built ops (tests/conformance/venvs.sh builds them there).

    DeepSpeed's CPU backend builds its shared-memory all-reduce op at init (a minute of g++). The default
    cache, ~/.cache/torch_extensions, is one for all venvs and keyed on the build's paths: the venvs
    would rebuild it for each other on every run."""
    return venv / "torch_extensions"


def _start_check(venv: Path, ranks: int, items: list[tuple[str, str, Path, dict]], tmp: Path) -> subprocess.Popen:
    """One process of VENV's tools checks every (name, tool, file, expected) item at world size RANKS."""
    manifest = tmp / f"{venv.name}-{ranks}.json"
    manifest.write_text(json.dumps([[name, tool, str(path), expect] for name, tool, path, expect in items]))
    cmd = [str(venv / "bin" / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", str(CHECK), str(manifest)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TORCH_EXTENSIONS_DIR": str(extensions_dir(venv))}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)


def _verdicts(proc: subprocess.Popen, items: list[tuple[str, str, Path, dict]]) -> dict[str, str]:
    """Each item's line ("ok NAME" / "FAIL NAME: ..."), or the process's last lines where it gave none."""
    try:
        out, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0] + "\n(killed after 1200 s)"
    lines = {ln.split()[1].rstrip(":"): ln for ln in out.splitlines() if ln.startswith(("ok ", "FAIL "))}
    tail = "\n".join(out.strip().splitlines()[-25:])
    return {name: lines.get(name, f"FAIL {name}: no verdict (exit {proc.returncode}):\n{tail}") for name, *_ in items}


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[tuple[str, str], str]:
    """Every (format, case): exported here, then read by its tool. One process per venv and world size
    (a start costs 10-30 s of imports), all of them at once."""
    tmp = tmp_path_factory.mktemp("conformance")
    out: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, int], list[tuple[str, str, Path, dict]]] = {}
    for fmt in FORMATS:
        if not VENVS or not (Path(VENVS) / VENV_OF[fmt] / "bin" / "python").is_file():
            continue
        for case in CASES:
            prepared = _prepare(tmp, fmt, case)
            if isinstance(prepared, str):
                out[fmt, case] = prepared
                continue
            path, expect = prepared
            # TrainingArguments counts CUDA ranks only: on a CPU machine it reads world size 1 whatever
            # torchrun says, so tools built on it run as one rank; DeepSpeed checks its file at the run's size.
            tool = "glm4" if fmt.startswith("glm4") else fmt
            ranks = expect["num_gpus"] if tool == "deepspeed" else 1
            groups.setdefault((VENV_OF[fmt], ranks), []).append((f"{fmt}/{case}", tool, path, expect))
    running = [(_start_check(Path(VENVS) / venv, ranks, items, tmp), items) for (venv, ranks), items in groups.items()]
    for proc, items in running:
        for name, line in _verdicts(proc, items).items():
            out[tuple(name.split("/"))] = line
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_reads_the_winner(verdicts, fmt, case):
    _venv(fmt)
    verdict = verdicts[fmt, case]
    if verdict.startswith("skip:"):
        pytest.skip(verdict[5:])
    assert verdict in ("refused", f"ok {fmt}/{case}"), verdict
