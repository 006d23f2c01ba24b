"""Bad input, table-driven: each case gives exit code 2 and one line naming the problem, no traceback.

Every case fails before any probe runs, so the whole table takes seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from autofit.cli import cli

TINY = ["--model", "autofit/tiny-qwen2", "--device", "cpu"]
SEARCH = ["search", *TINY, "--max-token", "64", "--space", "cpu-tiny"]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _space(tmp_path, text):
    return str(_write(tmp_path / "space.yaml", text))


def _latin1(path, text):
    path.write_bytes(text.encode("latin-1"))
    return str(path)


def _model(tmp_path, **over):
    """A model directory whose config.json is a tiny Qwen2's with `over` applied."""
    cfg = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)
    cfg.update(over)
    return str(_write(tmp_path / "model" / "config.json", json.dumps(cfg)).parent)


GLM = dict(model_type="chatglm", num_layers=2, padded_vocab_size=512, ffn_hidden_size=128, kv_channels=16,
           multi_query_group_num=2, seq_length=512, add_qkv_bias=True)


def _identity(model: str) -> dict:
    """The identity the SEARCH command line above gets, so only the intended difference shows."""
    from autofit.models import resolve_model
    from autofit.search.driver import SearchRequest
    from autofit.search.planner import Limits
    from autofit.search.space import load_space
    from autofit.spec import Context

    req = SearchRequest(ctx=Context(model="autofit/tiny-qwen2", device="cpu", gpus=()), source=resolve_model(model),
                        space=load_space("cpu-tiny"), max_token=64, limits=Limits(1, 0.08), run_dir=".")
    return req.identity()


def _run_dir(tmp_path, identity_model="autofit/tiny-qwen2", schema=1, probes="ok"):
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    (d / "run.json").write_text(json.dumps({"schema": schema, "identity": _identity(identity_model)}))
    header = "trial,phase,repeat,strategy,micro_batch,max_token,status\n"
    row = {"ok": "0,escalate,0,lora-r4/fp32/ckpt/z0,1,64,ok\n", "bad": "0,escalate,0,x,one,64,maybe\n",
           "float-T": "0,escalate,0,lora-r4/fp32/ckpt/z0,1,64.5,ok\n"}[probes]
    (d / "probes.csv").write_text(header + row)
    return str(d)


GOOD_SPACE = "method: lora\nprecision: [fp32]\ngrad_ckpt: [false]\nzero: [{stage: 0}]\nmicro_batch: [1, 2]\nmax_token: [64]\n"

# (id, argv builder(tmp_path) -> argv, expected fragment of the message)
CASES = [
    # -- command-line flags
    ("gpu-memory-unit", lambda t: [*SEARCH, "--gpu-memory", "24XB"], "cannot read memory size '24XB'"),
    ("gpu-memory-word", lambda t: [*SEARCH, "--gpu-memory", "lots"], "cannot read memory size"),
    ("gpu-memory-tiny", lambda t: [*SEARCH, "--gpu-memory", "1MiB"], "below 64 MiB"),
    ("budget-word", lambda t: [*SEARCH, "--budget", "soon"], "cannot read duration 'soon'"),
    ("budget-zero", lambda t: [*SEARCH, "--budget", "0m"], "must be positive"),
    ("headroom-high", lambda t: [*SEARCH, "--headroom", "1.5"], "--headroom must be in [0, 1)"),
    ("headroom-negative", lambda t: [*SEARCH, "--headroom", "-0.1"], "--headroom must be in [0, 1)"),
    ("global-batch-zero", lambda t: [*SEARCH, "--global-batch", "0"], "--global-batch must be at least 1"),
    ("max-token-zero", lambda t: ["search", *TINY, "--max-token", "0"], "--max-token must be positive"),
    ("explore-negative", lambda t: [*SEARCH, "--explore", "-1"], "--explore must be >= 0"),
    ("measure-steps-zero", lambda t: [*SEARCH, "--measure-steps", "0"], "--measure-steps must be at least 1"),
    ("resume-without-dir", lambda t: [*SEARCH, "--resume"], "--resume needs --run-dir"),
    ("gpus-on-cpu", lambda t: [*SEARCH, "--gpus", "0,1"], "--gpus was given with --device cpu"),
    ("no-gpu", lambda t: ["search", "--model", "autofit/tiny-qwen2", "--device", "cuda", "--max-token", "64"], "no CUDA GPU found"),
    ("real-weights-missing", lambda t: [*SEARCH, "--weights", "real"], "has no local weights"),
    ("probe-offload-params-z2", lambda t: ["probe", *TINY, "--zero", "2", "--offload-params"], "--offload-params needs --zero 3"),
    ("probe-offload-opt-z0", lambda t: ["probe", *TINY, "--offload-optimizer"], "--offload-optimizer needs --zero 1, 2 or 3"),
    ("probe-micro-batch", lambda t: ["probe", *TINY, "--micro-batch", "1,x"], "expected integers"),
    # -- model sources
    ("model-unknown", lambda t: ["search", "--model", "nobody/no-such-model", "--device", "cpu", "--max-token", "64"], "not found"),
    ("model-dir-no-config", lambda t: ["search", "--model", str(_write(t / "m" / "README.md", "x").parent), "--device", "cpu",
                                      "--max-token", "64"], "config.json"),
    ("model-unknown-arch", lambda t: ["search", "--model", str(_write(t / "m2" / "config.json", json.dumps(
        {"model_type": "brand_new_arch", "hidden_size": 8})).parent), "--device", "cpu", "--max-token", "64"], "trust-remote-code"),
    ("model-config-garbage", lambda t: ["search", "--model", str(_write(t / "m3" / "config.json", "{not json").parent),
                                       "--device", "cpu", "--max-token", "64"], "config.json"),
    # -- search-space YAML
    ("space-missing", lambda t: [*SEARCH[:-1], "no-such-space"], "search space 'no-such-space' not found"),
    ("space-bad-yaml", lambda t: [*SEARCH[:-1], _space(t, "method: [lora\n")], "not valid YAML"),
    ("space-unknown-key", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE + "batchsize: 4\n")], "unknown key 'batchsize'"),
    ("space-bad-precision", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("[fp32]", "[fp8]"))], "key 'precision'"),
    ("space-offload-stage", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("{stage: 0}", "{stage: 2, offload_params: true}"))],
     "zero[0].offload_params' needs stage 3"),
    ("space-micro-batch", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("[1, 2]", "[0, -4]"))], "key 'micro_batch'"),
    ("space-not-mapping", lambda t: [*SEARCH[:-1], _space(t, "- lora\n- full\n")], "expected a mapping"),
    ("space-bad-method", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("method: lora", "method: qlora"))], "key 'method'"),
    # -- run dirs
    ("run-dir-needs-resume", lambda t: [*SEARCH, "--run-dir", _run_dir(t)], "pass --resume"),
    ("run-dir-other-model", lambda t: [*SEARCH, "--run-dir", _run_dir(t, identity_model="Qwen/Qwen2-7B"), "--resume"],
     "is from another search (model"),
    ("run-dir-corrupted-csv", lambda t: [*SEARCH, "--run-dir", _run_dir(t, probes="bad"), "--resume"], "corrupted"),
    ("run-dir-newer-schema", lambda t: [*SEARCH, "--run-dir", _run_dir(t, schema=99), "--resume"], "newer autofit"),
    ("run-dir-run-json-garbage", lambda t: [*SEARCH, "--run-dir", str(_write(t / "r" / "run.json", "{{{").parent), "--resume"],
     "corrupted"),
    ("run-dir-missing-on-resume", lambda t: [*SEARCH, "--run-dir", str(t / "never-made"), "--resume"], "holds no search to resume"),
    ("run-dir-is-a-file", lambda t: [*SEARCH, "--run-dir", str(_write(t / "afile", "x"))], "is a file"),
    # -- storage URLs
    ("storage-scheme", lambda t: [*SEARCH, "--run-dir", str(t / "s1"), "--storage", "bogus://x"], "cannot open Optuna storage"),
    ("storage-sqlite-path", lambda t: [*SEARCH, "--run-dir", str(t / "s2"), "--storage", "sqlite:////no/such/dir/x.db"],
     "cannot open Optuna storage"),
    # -- found by trying it as a new user would (issue 21): each was a traceback or an exit 0
    ("gpu-memory-huge", lambda t: [*SEARCH, "--gpu-memory", "1" + "0" * 400], "more than 1 PiB"),
    ("gpus-without-gpu", lambda t: ["search", "--model", "autofit/tiny-qwen2", "--max-token", "64", "--gpus", "0"],
     "--gpus 0: no CUDA GPU found"),
    ("space-lora-dropout", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE + "lora: {dropout: lots}\n")], "key 'lora.dropout'"),
    ("space-not-utf8", lambda t: [*SEARCH[:-1], _latin1(t / "s.yaml", "method: lora\ndescription: caf\xe9\n")], "not UTF-8"),
    ("space-offload-on-cpu", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("{stage: 0}", "{stage: 3, offload_optimizer: true}"))],
     "no strategy can run on the CPU: offload"),
    ("space-zero2-on-cpu", lambda t: [*SEARCH[:-1], _space(t, GOOD_SPACE.replace("{stage: 0}", "{stage: 2}"))],
     "no strategy can run on the CPU"),
    ("model-zero-heads", lambda t: ["estimate", "--model", _model(t, num_attention_heads=0), "--max-token", "64"],
     "num_attention_heads must be a positive integer up to 134217728, got 0"),
    ("model-negative-hidden", lambda t: ["search", "--model", _model(t, hidden_size=-64), "--device", "cpu",
                                         "--max-token", "64", "--space", "cpu-tiny"], "hidden_size must be a positive integer"),
    ("model-glm-zero-heads", lambda t: ["estimate", "--model", str(_write(t / "glm" / "config.json", json.dumps(
        {**GLM, "hidden_size": 64, "num_attention_heads": 0})).parent), "--max-token", "64"], "num_attention_heads must be"),
    ("run-json-wrong-types", lambda t: [*SEARCH, "--run-dir", str(_write(t / "rj" / "run.json", json.dumps(
        {"schema": "1", "identity": []})).parent), "--resume"], "not an autofit run.json"),
    ("run-json-directory", lambda t: [*SEARCH, "--run-dir", str((t / "rd" / "run.json").mkdir(parents=True) or t / "rd"),
                                      "--resume"], "Is a directory"),
    ("probes-csv-float-max-token", lambda t: [*SEARCH, "--run-dir", _run_dir(t, probes="float-T"), "--resume"],
     "line 2 is corrupted (max_token='64.5')"),
    ("probe-out-under-a-file", lambda t: ["probe", *TINY, "--out", str(_write(t / "afile", "x") / "probes.csv")], "is a file"),
    ("probe-measure-steps-zero", lambda t: ["probe", *TINY, "--measure-steps", "0"], "--measure-steps must be at least 1"),
    ("probe-lora-r-zero", lambda t: ["probe", *TINY, "--lora-r", "0"], "--lora-r must be at least 1"),
    ("probe-offload-on-cpu", lambda t: ["probe", *TINY, "--zero", "3", "--offload-params"],
     "offload: ZeRO moves state from the GPU to the host's memory"),
    ("verify-tolerance-negative", lambda t: ["verify", str(t), "--tolerance", "-1"], "--tolerance must be"),
    ("verify-steps-one-line", lambda t: ["verify", str(t), "--steps", "1"], "autofit: error: --steps must be more than"),
    ("estimate-max-token-huge", lambda t: ["estimate", "--model", "autofit/tiny-qwen2", "--max-token", str(10**12)],
     "beyond autofit/tiny-qwen2's context length"),
    ("search-beyond-context", lambda t: ["search", *TINY, "--max-token", "5000", "--space", "cpu-tiny"],
     "--max-token 5000 is beyond autofit/tiny-qwen2's context length"),
    ("storage-password-hidden", lambda t: [*SEARCH, "--run-dir", str(t / "s4"), "--storage", "postgresql://u:secret@[::1"],
     "postgresql://u:***@[::1"),
    ("storage-postgres-down", lambda t: [*SEARCH, "--run-dir", str(t / "s3"), "--storage",
                                         "postgresql://autofit@127.0.0.1:1/none"], "cannot open Optuna storage"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, case):
    _, argv, fragment = case
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    result = CliRunner().invoke(cli, argv(tmp_path))
    assert result.exit_code == 2, (result.output, result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1 or err.startswith("Usage:"), err
    assert fragment in err, err
    assert "secret" not in result.output


def test_the_table_is_big_enough():
    assert len(CASES) >= 25


def test_a_locked_run_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242")
    try:
        result = CliRunner().invoke(cli, [*SEARCH, "--run-dir", str(run)])
    finally:
        os.close(fd)
    assert result.exit_code == 2
    assert "in use by another autofit search (pid 4242)" in result.stderr


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    result = CliRunner().invoke(cli, ["--debug", *SEARCH, "--gpu-memory", "24XB"])
    assert result.exit_code != 0 and result.exception is not None


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys; from click.testing import CliRunner; from autofit.cli import cli; "
            "r = CliRunner().invoke(cli, ['search', '--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'optuna', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_interrupted_search_exits_130_with_one_line(tmp_path, monkeypatch):
    import autofit.search.driver as driver
    from autofit.errors import Interrupted

    def interrupted(*a, **kw):
        raise Interrupted("interrupted: 3 finished probe(s) saved in x; run the same command with --resume to continue")

    monkeypatch.setenv("AUTOFIT_FORCE_NO_GPU", "1")
    monkeypatch.setattr(driver, "run_search", interrupted)
    result = CliRunner().invoke(cli, [*SEARCH, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == ["autofit: interrupted: 3 finished probe(s) saved in x; "
                                                  "run the same command with --resume to continue"]
