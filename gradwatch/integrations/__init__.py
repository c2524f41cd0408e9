"""Framework integrations; each module imports its framework only when imported itself.

* :mod:`gradwatch.integrations.lightning`: ``GradWatchCallback`` for Lightning's ``Trainer``.
* :mod:`gradwatch.integrations.transformers`: ``GradWatchCallback`` for the Hugging Face ``Trainer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradwatch.config import Config

__all__ = ["callback_options"]


def callback_options(options: Mapping[str, Any], step_source: str) -> dict[str, Any]:
    """Validate a framework callback's watcher options at construction, not when training starts.

    Args:
        options: keyword options of :class:`gradwatch.Watcher`.
        step_source: where the callback takes ``start_step`` from (for the error message).

    Raises:
        TypeError: ``start_step`` given (the callback takes it from the trainer), an unknown option (with
            "did you mean"), or a bad type; ValueError: a bad value.
    """
    if "start_step" in options:
        raise TypeError(f"GradWatchCallback takes start_step from the trainer ({step_source})")
    Config.from_options(options, "GradWatchCallback")
    return dict(options)
