"""Flat float encodings of Gymnasium spaces: what a network is fed of an observation or action.

``Discrete`` elements become one-hot vectors (index ``x - start``), ``Box`` elements their
flattened values, both float32. Every policy, wrapper and agent that feeds observations or
actions to a network encodes them here, so the encodings agree to the bit.

Example:
    >>> import torch
    >>> from gymnasium import spaces
    >>> enc = FlatEncoder(spaces.Discrete(3))
    >>> enc.size, enc(torch.tensor([2, 0])).tolist()
    (3, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> FlatEncoder(spaces.Box(-1.0, 1.0, (2, 2))).numpy([[1, 2], [3, 4]]).tolist()
    [1.0, 2.0, 3.0, 4.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from torch import Tensor, nn

__all__ = ["FlatEncoder"]


class FlatEncoder:
    """The flat float32 encoding of ``space``'s elements, vectors of :attr:`size`.

    Calling it encodes a batch of tensors ``(..., *space.shape)`` into ``(..., size)``;
    :meth:`numpy` encodes one element into a NumPy vector.

    Raises:
        TypeError: ``space`` is neither ``Discrete`` nor ``Box``.
    """

    def __init__(self, space: spaces.Space[Any]) -> None:
        if isinstance(space, spaces.Discrete):
            self.discrete, self.size, self.start, self.ndim = (
                True,
                int(space.n),
                int(space.start),
                0,
            )
        elif isinstance(space, spaces.Box):
            self.discrete, self.size, self.start = False, int(np.prod(space.shape)), 0
            self.ndim = len(space.shape)
        else:
            raise TypeError(
                f"only Discrete and Box spaces have a flat encoding, got {space}; wrap the env "
                "to flatten its spaces"
            )

    def __call__(self, x: Tensor) -> Tensor:
        if self.discrete:
            return nn.functional.one_hot(x.long() - self.start, self.size).float()
        return x.reshape(*x.shape[: x.dim() - self.ndim], self.size).float()

    def numpy(self, x: Any) -> np.ndarray:
        """One element as a float32 vector ``(size,)``."""
        if self.discrete:
            out = np.zeros(self.size, dtype=np.float32)
            out[int(x) - self.start] = 1.0
            return out
        return np.asarray(x, dtype=np.float32).reshape(-1)
