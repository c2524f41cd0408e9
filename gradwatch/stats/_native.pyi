"""Types of the optional C extension built from ``_native.c`` (see that file and ``host.py``)."""

from collections.abc import Sequence

import numpy as np

def grad_stats(
    arrays: Sequence[np.ndarray],
    strides: Sequence[int],
    raw: np.ndarray,
    extremes: np.ndarray | None,
    values: np.ndarray | None,
    value_starts: np.ndarray | None,
) -> None: ...
def gather(arrays: Sequence[np.ndarray], out: np.ndarray) -> None: ...
def update_and_change(
    arrays: Sequence[np.ndarray], before: np.ndarray, prev: np.ndarray, out: np.ndarray
) -> None: ...
def all_finite(arrays: Sequence[np.ndarray]) -> bool: ...
