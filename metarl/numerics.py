"""Numerical-fault checks: a NaN or inf stops a run with an error that names the quantity and
the iteration, before anything is checkpointed.

Every training loop calls :func:`check_finite` on what it computes (observations, rewards,
losses, gradients, the update step, the new parameters) and turns a failure inside an
iteration into a :class:`NonFiniteError` naming that iteration with :func:`at_iteration`.
Because the loops save a checkpoint only after a finished, checked iteration (and
:mod:`metarl.runs` refuses to write non-finite values anyway), the last good checkpoint is
never overwritten. Step sizes are part of a run's settings, which ``--resume`` keeps: the
message says to try other values in a new run directory.

Example:
    >>> import torch
    >>> check_finite("loss", torch.tensor(1.0))
    >>> try:
    ...     check_finite("loss", torch.tensor(float("nan")))
    ... except NonFiniteError as e:
    ...     print(at_iteration(e, 7))
    iteration 7: non-finite loss (1 of 1 values are NaN/inf)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["NEW_RUN_ADVICE", "NonFiniteError", "at_iteration", "check_finite"]

#: A run resumes only under its own settings, so other step sizes need a new run directory.
NEW_RUN_ADVICE = (
    " (a run resumes only under its own settings: try other values in a new run directory)"
)


class NonFiniteError(FloatingPointError):
    """A NaN or inf in a named quantity.

    Attributes:
        quantity: what held it ("observations", "rewards", "loss", "gradient of w"...).
        iteration: the meta-iteration, once known (see :func:`at_iteration`).
    """

    def __init__(self, message: str, quantity: str, iteration: int | None = None) -> None:
        super().__init__(message)
        self.quantity = quantity
        self.iteration = iteration


def _count_bad(value: Any) -> tuple[int, int]:
    """(non-finite entries, entries) of a tensor, array, number or nested mapping/sequence."""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return 0, value.numel()
        return int((~torch.isfinite(value.detach())).sum()), value.numel()
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.inexact):
            return 0, value.size
        return int((~np.isfinite(value)).sum()), value.size
    if isinstance(value, float | int | np.number) and not isinstance(value, bool):
        return (0 if math.isfinite(float(value)) else 1), 1
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        bad = total = 0
        for v in value:
            b, t = _count_bad(v)
            bad, total = bad + b, total + t
        return bad, total
    return 0, 0


def check_finite(quantity: str, *values: Any, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if any of ``values`` holds NaN or inf.

    Args:
        quantity: its name in the message ("rewards", "TRPO step"...).
        hint: what to do about it, appended to the message.
    """
    bad = total = 0
    for v in values:
        b, t = _count_bad(v)
        bad, total = bad + b, total + t
    if bad:
        msg = f"non-finite {quantity} ({bad} of {total} values are NaN/inf)"
        raise NonFiniteError(msg + (f"; {hint}" if hint else ""), quantity)


def at_iteration(error: BaseException, iteration: int, checkpoint: str = "") -> str:
    """The message of ``error`` prefixed with the iteration (and where the last good
    checkpoint is), for re-raising: ``raise NonFiniteError(at_iteration(e, it), ...)`` (an
    env's failure: :meth:`metarl.stepping.batched.EnvError.at_iteration`)."""
    msg = f"iteration {iteration}: {error}"
    if checkpoint:
        msg += f"; the last good checkpoint ({checkpoint}) is kept"
    return msg + NEW_RUN_ADVICE
