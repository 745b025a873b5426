"""What every few-shot learner offers, and the loss shared by classification and regression.

A learner is an ``nn.Module`` that owns its meta-parameters and its outer optimiser:

- :meth:`Learner.meta_train_step` takes a meta-batch of episodes and makes one outer update;
- :meth:`Learner.predict` adapts to each episode's support set and returns predictions for
  its query set: ``(B, N*Q, N)`` logits for classification, ``(B, Q, 1)`` for regression.

Classification or regression is read from the labels: integer labels are classes (cross-
entropy, accuracy), float targets are regression (mean squared error).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.fewshot.data import EpisodeBatch

__all__ = ["Learner", "accuracy", "is_classification", "task_loss"]


def is_classification(y: Tensor) -> bool:
    return not torch.is_floating_point(y)


def task_loss(pred: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for integer labels (``pred``: logits ``(..., N)``), else MSE."""
    if is_classification(y):
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))
    return F.mse_loss(pred, y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct predictions per episode: ``(B, M, N), (B, M) → (B,)``."""
    return (logits.argmax(-1) == y).float().mean(-1)


def num_ways(batch: EpisodeBatch) -> int:
    """N of an N-way batch (labels are ``0..N-1``)."""
    return int(batch.support_y.max().item()) + 1


class Learner(nn.Module):
    """Base class: a meta-learner with its own outer optimiser (see the module docstring)."""

    #: short name used in run directories and results (``"maml"``, ``"protonet"``...)
    name = "learner"

    def __init__(self) -> None:
        super().__init__()
        self.optimizer: torch.optim.Optimizer | None = None

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, batch: EpisodeBatch) -> Tensor:
        raise NotImplementedError

    def train_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume exactly (weights and optimiser state)."""
        return {
            "model": self.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def _metrics(self, loss: Tensor, pred: Tensor, y: Tensor) -> dict[str, float]:
        out = {"loss": float(loss.detach())}
        if is_classification(y):
            out["accuracy"] = float(accuracy(pred.detach(), y).mean())
        return out

    def _outer_step(self, loss: Tensor) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
