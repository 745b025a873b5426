"""Batched task envs that live on a torch device, next to the policy.

:class:`TorchBatchedTaskEnv` has the semantics of :class:`metarl.stepping.batched.BatchedTaskEnv` —
``B`` rows, one episode each, no auto-reset, per-row ``active`` masks, the horizon — but its
observations, actions, rewards and masks are tensors on ``device``. On a GPU a whole
meta-batch (thousands of tasks × episodes) steps with no host round-trip; on the CPU it is a
valid, tested device too.

Randomness comes from one ``torch.Generator`` on the device, seeded by ``reset(..., seed=)``.
The noise is drawn through :meth:`TorchBatchedTaskEnv.uniform`, the one place a test can
substitute the NumPy backends' streams to check that both compute the same rewards.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metarl.tasks import TaskDistribution, TaskError

__all__ = ["TorchBatchedTaskEnv", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; a clear error for CUDA without a GPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for but PyTorch sees no CUDA GPU here; "
            "use --device cpu (or auto)"
        )
    return dev


class TorchBatchedTaskEnv(abc.ABC):
    """``B`` episodes of (possibly different) tasks, as tensors on ``device``.

    Subclasses set ``task_distribution``, ``obs_shape``, ``action_shape`` (``()`` for a
    discrete action) and implement :meth:`_reset_rows` and :meth:`_step_rows`.
    """

    task_distribution: TaskDistribution[Any]
    obs_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    #: True for a family whose success is reaching its termination (2D navigation's goal):
    #: ``step`` then reports it as ``info["is_success"]``, as the NumPy backend does.
    success_on_termination: bool = False

    def __init__(self, num_envs: int, horizon: int, device: str | torch.device = "cpu") -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if horizon < 1:
            raise ValueError(f"horizon (max episode steps) must be >= 1, got {horizon}")
        self.num_envs = int(num_envs)
        self.horizon = int(horizon)
        self.device = resolve_device(device)
        self.generator = torch.Generator(device=self.device)
        self.active = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.t = 0
        self._obs: Tensor | None = None

    @abc.abstractmethod
    def _reset_rows(self, tasks: list[Any]) -> Tensor:
        """Load the tasks and start every row; returns observations ``(B, *obs_shape)``."""

    @abc.abstractmethod
    def _step_rows(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step every row; returns (obs, reward, terminated). Inactive rows are ignored."""

    def uniform(self, *shape: int) -> Tensor:
        """Uniform noise in [0, 1) from the env's generator (float64)."""
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float64)

    def reset(self, tasks: Sequence[Any], seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Start one episode per row (``tasks`` has one task per row)."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(
                f"reset needs one task per row: got {len(tasks)} tasks for {self.num_envs} rows"
            )
        seen: set[int] = set()
        for task in tasks:
            if id(task) not in seen:
                self.task_distribution.validate(task)
                seen.add(id(task))
        if seed is not None:
            self.generator.manual_seed(int(seed))
        obs = self._reset_rows(tasks)
        self.active[:] = True
        self.t = 0
        self._obs = obs
        return obs.clone(), {"active": self.active.clone()}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Advance every active row; finished rows keep their observation and earn 0."""
        if self._obs is None:
            raise TaskError("step() called before reset(tasks); reset the batch first")
        if not bool(self.active.any()):
            raise RuntimeError("every row has finished its episode; call reset(tasks)")
        actions = torch.as_tensor(actions, device=self.device)
        if tuple(actions.shape) != (self.num_envs, *self.action_shape):
            raise ValueError(
                f"actions must have shape {(self.num_envs, *self.action_shape)}, "
                f"got {tuple(actions.shape)}"
            )
        stepped = self.active.clone()
        obs, reward, terminated = self._step_rows(actions, stepped)
        self.t += 1
        reward = torch.where(stepped, reward.to(torch.float64), 0.0)
        terminated = terminated & stepped
        truncated = stepped & ~terminated & (self.t >= self.horizon)
        keep = stepped.view((-1,) + (1,) * (obs.dim() - 1))
        obs = torch.where(keep, obs, self._obs)
        self._obs = obs
        self.active &= ~(terminated | truncated)
        info: dict[str, Any] = {"active": stepped}
        if self.success_on_termination:
            info["is_success"] = terminated.clone()
        return obs.clone(), reward, terminated, truncated, info
