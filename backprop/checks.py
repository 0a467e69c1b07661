"""What counts as a number in an argument: Python's and NumPy's alike.

`Dropout(np.float32(0.5))`, `EarlyStopping(patience=np.int64(2))` and
`fit(validation_split=np.float32(0.25))` are what a user means; NumPy registers its scalars
with the `numbers` ABCs, so checks go through these two functions, not isinstance(v, int).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_integer(value: Any) -> bool:
    """An int or a NumPy integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number: int, float or a NumPy integer or float (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
