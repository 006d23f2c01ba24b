"""Command line: the `autofit` group. Each command is a thin click function in autofit/commands/ (or,
for report and export, beside the code it drives) over an Args dataclass that validates its flags;
each wraps itself with errors.handles_errors, so every AutofitError becomes one line on stderr and
exit code 2. Heavy imports (torch, optuna, pandas) happen inside commands.
"""

from __future__ import annotations

import click

from autofit.commands.estimate import estimate
from autofit.commands.probe import probe
from autofit.commands.search import demo, search
from autofit.commands.verify import verify
from autofit.errors import handles_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="autofit")
def cli(debug: bool) -> None:
    """autofit: find the fastest fine-tuning config that fits in GPU memory, by measuring it."""


@click.command()
@handles_errors
def models():
    """List the built-in architecture table (usable with no download)."""
    from autofit.models import list_table

    for row in list_table():
        click.echo("  ".join(str(x) for x in row))


def _assemble() -> None:
    from autofit.export import export_cmd
    from autofit.report import report_cmd

    for cmd in (probe, search, demo, models, export_cmd, report_cmd, estimate, verify):
        cli.add_command(cmd)


_assemble()


def main() -> None:
    cli(prog_name="autofit")


if __name__ == "__main__":
    main()
