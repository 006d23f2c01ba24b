"""One error hierarchy, and how a command ends on one: `handles_errors` turns any AutofitError into
one line on stderr and exit code 2 (a traceback only with --debug).

Anything else that escapes is a bug and keeps its traceback. Nothing is imported at module level, so
every layer (the probe worker included) can raise these.
"""

import functools

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT, whether or not a probe had finished


class AutofitError(Exception):
    """Base class for every error autofit expects and explains to the user."""


class UsageError(AutofitError):
    """A command-line value is malformed (``--gpu-memory 24XB``, ``--budget soon``)."""


class ModelSourceError(AutofitError):
    """``--model`` cannot be resolved to an architecture we can build."""


class SearchSpaceError(AutofitError):
    """A search-space YAML is malformed; the message names file, key and value."""


class RunDirError(AutofitError):
    """A run directory is missing, locked, corrupted, or belongs to another search."""


class ExportError(AutofitError):
    """The winner cannot be written for that tool as measured (the tool has no key for one of its
    dimensions), or the file would need values only the user knows (``--dataset``, ``--template``)."""


class StorageError(AutofitError):
    """The Optuna storage URL cannot be used."""


class ProbeError(AutofitError):
    """The probe machinery itself failed (not a probe that ran and OOMed: that is a result)."""


class NoGPUError(AutofitError):
    """A GPU was required (``--device cuda``, several GPUs, DeepSpeed) and none is visible."""


class Interrupted(AutofitError):
    """Ctrl-C or SIGTERM during a search: everything measured is saved; --resume continues."""


def raise_problems(problems: list[str]) -> None:
    """Collect-then-raise: a request's every problem in one UsageError, one line."""
    if problems:
        raise UsageError("; ".join(problems))


def fail(msg: str) -> None:
    """One line on stderr and exit 2."""
    import sys

    import click

    from autofit.redact import redact_text

    one_line = " ".join(msg.split())  # a value quoted from a file may hold a line break
    click.echo(f"autofit: error: {redact_text(one_line)}", err=True)
    sys.exit(EXIT_USAGE)


def handles_errors(fn):
    """A click command's callback: AutofitError -> one line + exit 2 (a traceback only with --debug);
    Ctrl-C or SIGTERM -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import sys

        import click

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            if debug:
                raise
            click.echo(f"autofit: {exc}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except AutofitError as exc:
            if debug:
                raise
            fail(str(exc))
        except KeyboardInterrupt:
            click.echo("autofit: interrupted; everything measured so far is saved", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
