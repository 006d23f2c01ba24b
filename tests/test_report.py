"""autofit report: one self-contained report.html from a run directory; no GPU, no torch.

Reports are built from copies of the committed example runs under results/ (never written to).
"""

from __future__ import annotations

import base64
import csv
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofit.errors import RunDirError, UsageError
from autofit.report import PNG_NAMES, describe_strategy, load_run, report_cmd, strategy_rows, write_report

RESULTS = Path(__file__).resolve().parents[1] / "results"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (example folder, its grid.csv or None, winner strategy, GPU)
EXAMPLES = [
    ("search-h100-glm4-lora-T1024-24GiB", None, "lora-r8/bf16-pure/ckpt/z3/offopt/offparam", "NVIDIA H100 80GB HBM3"),
    ("bench-h100-glm4-lora-T1024", "grid.csv", "lora-r8/bf16-pure/nockpt/z0", "NVIDIA H100 80GB HBM3"),
    ("bench-h200-glm4-lora-T1024", "grid.csv", "lora-r8/bf16-pure/nockpt/z0", "NVIDIA H200"),
    ("search-2xh100-glm4-full-T1024", None, "full/bf16/ckpt/z3/offopt/offparam", "NVIDIA H100 80GB HBM3"),
]
IDS = [e[0] for e in EXAMPLES]


def _copy_example(name: str, dest: Path) -> tuple[Path, Path | None]:
    src = RESULTS / name
    run = dest / name / "search"
    shutil.copytree(src / "search", run, ignore=shutil.ignore_patterns(".lock", "study.db"))
    grid = None
    if (src / "grid.csv").exists():
        grid = dest / name / "grid.csv"
        shutil.copy(src / "grid.csv", grid)
    return run, grid


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each example reported once (a few seconds each); the tests below read the outputs."""
    out = {}
    for name, grid_name, _, _ in EXAMPLES:
        base = tmp_path_factory.mktemp(name)
        run, grid = _copy_example(name, base)
        page = write_report(run, base / "report", grid if grid_name else None)
        out[name] = (run, page)
    return out


class _Assets(HTMLParser):
    """Every src/href in the page, and any tag that would fetch something (script, link, iframe...)."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.fetching_tags: list[str] = []
        self.img_srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "poster"):
                self.refs.append((tag, k, v or ""))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.fetching_tags.append(tag)
        if tag == "img":
            self.img_srcs.append(dict(attrs).get("src", ""))


@pytest.mark.parametrize("name,grid,winner,gpu", EXAMPLES, ids=IDS)
def test_report_is_self_contained(reports, name, grid, winner, gpu):
    page = reports[name][1]
    text = page.read_text(encoding="utf-8")
    parser = _Assets()
    parser.feed(text)
    assert parser.fetching_tags == []
    remote = [r for r in parser.refs if not r[2].startswith(("data:", "#"))]
    assert remote == [], f"assets that need a network or other files: {remote}"
    assert not re.search(r"url\(|@import", text), "CSS must not load anything"
    assert len(parser.img_srcs) == len(PNG_NAMES)
    assert all(s.startswith("data:image/png;base64,") for s in parser.img_srcs)


@pytest.mark.parametrize("name,grid,winner,gpu", EXAMPLES, ids=IDS)
def test_report_names_winner_and_gpu(reports, name, grid, winner, gpu):
    text = reports[name][1].read_text(encoding="utf-8")
    assert gpu in text
    assert winner in text
    assert "Winner:" in text
    run = load_run(reports[name][0])
    assert f"{run.winner.tokens_per_s:,.0f} tokens/s" in text
    if grid:
        assert "Exhaustive grid rows" in text


@pytest.mark.parametrize("name,grid,winner,gpu", EXAMPLES, ids=IDS)
def test_pngs_written_and_embedded(reports, name, grid, winner, gpu):
    page = reports[name][1]
    text = page.read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    for name_, b64 in zip(PNG_NAMES, embedded):
        png = page.parent / name_
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 20_000, f"{png} is suspiciously small ({len(data)} bytes)"
        assert base64.b64decode(b64) == data, f"{name_} embedded in the page differs from the file beside it"


@pytest.mark.parametrize("name,grid,winner,gpu", EXAMPLES, ids=IDS)
def test_summary_agrees_with_boundaries_csv(reports, name, grid, winner, gpu):
    """The per-strategy table recomputes the walls from probes.csv: it must agree with the search's own file."""
    run_dir = reports[name][0]
    rows = {(r.strategy, r.max_token): r for r in strategy_rows(load_run(run_dir))}
    with open(run_dir / "boundaries.csv", newline="") as f:
        for b in csv.DictReader(f):
            r = rows[(b["strategy"], int(b["max_token"]))]
            assert str(r.fit_mb or "") == b["largest_fit_micro_batch"]
            assert str(r.fail_mb or "") == b["first_fail_micro_batch"]
            assert r.fail_source == b["first_fail_source"]


def test_cli_command_writes_report(tmp_path):
    run, _ = _copy_example("search-h100-glm4-lora-T1024-24GiB", tmp_path)
    result = CliRunner().invoke(report_cmd, [str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").exists()
    assert "wrote" in result.output


def test_cli_bad_run_dir_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(report_cmd, [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_default_out_is_inside_run_dir_and_benchmark_folder_is_accepted(tmp_path):
    run, _ = _copy_example("bench-h100-glm4-lora-T1024", tmp_path)
    page = write_report(run.parent)  # the benchmark folder that holds search/
    assert page == run / "report" / "report.html"


def test_importing_report_does_not_import_gpu_stack():
    code = ("import sys, autofit.report\n"
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'matplotlib', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import tempfile, pathlib\n"
            f"autofit.report.write_report(pathlib.Path({str(RESULTS / 'search-h100-glm4-lora-T1024-24GiB' / 'search')!r}),"
            " pathlib.Path(tempfile.mkdtemp()))\n"
            "gpu = [m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]\n"
            "assert not gpu, gpu\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- bad input: one RunDirError naming the problem ------------------------------------------------------
HEADER = "trial,phase,repeat,strategy,micro_batch,max_token,status,tokens_per_s,peak_gib,fits,error\n"


def _run_dir(tmp_path: Path, probes: str | bytes | None) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    if isinstance(probes, bytes):
        (d / "probes.csv").write_bytes(probes)
    elif probes is not None:
        (d / "probes.csv").write_text(probes)
    return d


@pytest.mark.parametrize("probes,message", [
    (None, "no probes.csv here"),
    ("", "no probes recorded"),
    (HEADER, "no probes recorded"),
    ("a,b,c\n1,2,3\n", "missing columns"),
    (HEADER + "0,escalate,0,lora-r8/bf16/ckpt/z0,one,1024,maybe,,,,\n", "line 2 is corrupted"),
    (HEADER + "0,escalate,0,lora-r8/bf16/ckpt/z0,1,long,ok,10,1.0,True,\n", "line 2 is corrupted"),
    (HEADER + "0,escalate,0,lora-r8/bf16/ckpt/z0,1,1024,ok,fast,1.0,True,\n", "line 2 is corrupted"),
    (b"\x00\x01\xff\xfe garbage \x00\n\x89PNG", "corrupted"),
], ids=["missing", "empty", "header-only", "foreign-csv", "bad-status", "bad-max-token", "bad-number", "binary"])
def test_bad_probes_csv(tmp_path, probes, message):
    with pytest.raises(RunDirError, match=message):
        write_report(_run_dir(tmp_path, probes), tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_missing_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        write_report(tmp_path / "does-not-exist", tmp_path / "out")


def test_run_dir_is_a_file(tmp_path):
    f = tmp_path / "probes.csv"
    f.write_text(HEADER)
    with pytest.raises(RunDirError, match="not a directory"):
        write_report(f, tmp_path / "out")


def test_corrupted_best_yaml(tmp_path):
    run, _ = _copy_example("search-h100-glm4-lora-T1024-24GiB", tmp_path)
    (run / "best.yaml").write_text("config: [unclosed\n  : :")
    with pytest.raises(RunDirError, match="best.yaml"):
        write_report(run, tmp_path / "out")


def test_missing_grid_file(tmp_path):
    run, _ = _copy_example("search-h100-glm4-lora-T1024-24GiB", tmp_path)
    with pytest.raises(UsageError, match="--grid"):
        write_report(run, tmp_path / "out", tmp_path / "grid.csv")


def test_partial_run_without_best_yaml(tmp_path):
    """An interrupted search: probes.csv only, with every outcome; the page says there is no winner yet."""
    rows = ["0,escalate,0,lora-r8/bf16-pure/ckpt/z0,1,1024,ok,2000,20.0,True,",
            "1,escalate,0,lora-r8/bf16-pure/ckpt/z0,2,1024,ok,3000,23.5,False,",
            "2,escalate,0,lora-r8/bf16-pure/nockpt/z0,1,1024,oom,,,False,OutOfMemoryError: CUDA out of memory",
            "3,escalate,0,lora-r8/bf16-pure/nockpt/z3,1,1024,timeout,,,False,no answer in 300 s",
            "4,escalate,0,lora-r8/bf16-pure/nockpt/z3/offopt,1,1024,crash,,,False,worker died on SIGSEGV"]
    page = write_report(_run_dir(tmp_path, HEADER + "\n".join(rows) + "\n"), tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    assert "No winner recorded" in text
    for word in ("timeout", "crash", "over limit", "OOM"):
        assert word in text
    assert all((tmp_path / "out" / n).stat().st_size > 10_000 for n in PNG_NAMES)


def test_describe_strategy():
    assert describe_strategy("lora-r8/bf16-pure/ckpt/z3/offopt/offparam") == (
        "LoRA rank 8, bf16 weights, gradient checkpointing, DeepSpeed ZeRO-3, optimizer state on CPU, weights on CPU")
    assert describe_strategy("full/fp32/nockpt/z0") == "full fine-tuning, fp32, no checkpointing, no ZeRO"
    # the dimensions beyond ZeRO, as the OOM map titles its rows
    assert describe_strategy("lora-r8/bf16-pure/nf4/ckpt/z0/fused") == (
        "LoRA rank 8, bf16 weights, 4-bit NF4 base weights (QLoRA), gradient checkpointing, no ZeRO, fused cross-entropy")
    assert describe_strategy("full/bf16-pure/ckpt/z0/adamw8bit").endswith("no ZeRO, 8-bit AdamW")
    assert describe_strategy("lora-r8/bf16-pure/int8/nockpt/z0") == (
        "LoRA rank 8, bf16 weights, 8-bit base weights (LLM.int8), no checkpointing, no ZeRO")


@pytest.mark.parametrize("file,text,message", [
    ("best.yaml", "config: {strategy: x, micro_batch: four, max_token: 1024}\nmeasured: {tokens_per_s: fast}\n",
     "config.micro_batch='four' is not a number; measured.tokens_per_s='fast' is not a number"),
    ("best.yaml", "- a list\n", "not a best.yaml"),
    ("run.json", "{not json", "corrupted JSON"),
    ("run.json", '{"identity": {"gpu_memory": "24GiB"}}', "not an autofit run.json"),
    ("boundaries.csv", "strategy,max_token,budget_gib\nlora-r8/bf16/ckpt/z0,1024,lots\n", "budget_gib='lots'"),
], ids=["best-types", "best-list", "run-json", "run-json-types", "boundaries"])
def test_corrupted_side_files_name_the_file(tmp_path, file, text, message):
    run, _ = _copy_example("search-h100-glm4-lora-T1024-24GiB", tmp_path)
    (run / file).write_text(text)
    with pytest.raises(RunDirError, match=re.escape(message)) as exc:
        write_report(run, tmp_path / "out")
    assert file in str(exc.value)


def test_walls_taken_from_the_estimate_are_reported_as_such(tmp_path):
    # The 2-GPU GLM-4 full fine-tuning run as today's planner would leave it: its six OOM probes
    # (DDP, ZeRO-2, ZeRO-3 without offload) not run, their walls in boundaries.csv as estimated.
    run, _ = _copy_example("search-2xh100-glm4-full-T1024", tmp_path)
    with open(run / "probes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = [r for r in rows if r["status"] == "oom"]
    assert len(out) == 6
    with open(run / "probes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["status"] != "oom")
    with open(run / "boundaries.csv", newline="") as f:
        bounds = list(csv.DictReader(f))
    for b in bounds:
        if b["first_fail_source"] == "measured":
            b.update(first_fail_source="estimated",
                     first_fail_status="estimated 118.8 GiB at micro-batch 1, over the 73.3 GiB limit by more "
                                       "than the estimate's error")
    with open(run / "boundaries.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(bounds[0]))
        w.writeheader()
        w.writerows(bounds)
    rows = {r.strategy: r for r in strategy_rows(load_run(run))}
    for r in out:
        row = rows[r["strategy"]]
        assert row.fail_mb == 1 and row.n_probes == 0
        assert row.fail_why.startswith("not run: autofit estimate puts it at 118.8 GiB"), row.fail_why
    page = write_report(run, tmp_path / "report", None)
    assert "autofit estimate puts it at" in page.read_text()
