"""`autofit report RUN_DIR`: one self-contained report.html (figures embedded) plus the PNGs beside it.

Reads only what a search leaves behind (probes.csv, and boundaries.csv, best.yaml, run.json when
present), so it works on a finished, interrupted or copied run dir, and never imports the GPU stack.
matplotlib is imported when a figure is drawn, so `autofit --help` stays fast.

Stages, top to bottom: load the run (autofit.rundir validates it) -> aggregate probes into cells ->
draw three figures -> render the HTML -> write it all.
"""

from __future__ import annotations

from pathlib import Path

import click

from autofit.errors import RunDirError, handles_errors
from autofit.report.cells import describe_strategy, strategy_rows
from autofit.report.figures import PNG_NAMES, render_figures
from autofit.report.html import render_html
from autofit.report.load import load_run
from autofit.writable import check_writable_dir, write_text

__all__ = ["PNG_NAMES", "describe_strategy", "load_run", "render_figures", "render_html", "report_cmd",
           "strategy_rows", "write_report"]


def write_report(run_dir: Path, out: Path | None = None, grid: Path | None = None) -> Path:
    """Write report.html (self-contained: figures embedded, CSS inline) and the PNGs into `out`
    (default RUN_DIR/report). Returns the HTML path."""
    run = load_run(Path(run_dir), None if grid is None else Path(grid))
    out = Path(out) if out is not None else run.path / "report"
    check_writable_dir(out, create=True)  # before the figures are drawn
    images = render_figures(run)
    html = render_html(run, images)
    try:
        for name, data in images.items():
            (out / name).write_bytes(data)
    except OSError as exc:
        raise RunDirError(f"cannot write in {out}: {exc.strerror}") from None
    page = out / "report.html"
    write_text(page, html)
    return page


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.html and the PNGs (default: RUN_DIR/report).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An exhaustive-grid CSV (probes.csv columns, e.g. a benchmark's grid.csv) to add to the OOM map.")
@handles_errors
def report_cmd(run_dir: Path, out: Path | None, grid: Path | None) -> None:
    """Write RUN_DIR's search as one self-contained report.html (figures embedded) plus the PNGs."""
    page = write_report(run_dir, out, grid)
    click.echo(f"wrote {page} (open it in any browser; it needs no network) and {', '.join(PNG_NAMES)} beside it")
