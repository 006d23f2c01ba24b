"""One error hierarchy. The CLI turns any AutofitError into one line and exit code 2.

Anything else that escapes is a bug and keeps its traceback.
"""


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
