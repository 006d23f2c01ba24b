"""autofit: find the fastest fine-tuning configuration that fits in GPU memory, by measuring it.

    autofit.search(model=..., max_token=..., gpu_memory=...) -> Run
    autofit.load(run_dir) -> Run   (.training_arguments(), .lora_config(), .deepspeed_config(), .model_kwargs())
"""

import types
from typing import Any

__version__ = "0.1.0"
__all__ = ["search", "load", "Run"]


class _SearchPackage(types.ModuleType):
    """`autofit.search` names both the search package (autofit/search/) and the API call: importing a
    submodule rebinds the package on `autofit`, so the package itself is made callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from autofit.api import search

        return search(*args, **kwargs)


from autofit import search  # noqa: E402  (the package: a docstring only, imports nothing)

search.__class__ = _SearchPackage


def __getattr__(name: str) -> Any:
    # Loaded on first use, so `import autofit` (and `autofit --help`) stays instant.
    if name in ("load", "Run"):
        from autofit import api

        return getattr(api, name)
    raise AttributeError(f"module 'autofit' has no attribute {name!r}")
