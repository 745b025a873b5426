"""Choosing a sampler: one interface, several ways to step a meta-batch's envs.

Every sampler takes a policy, its parameters (shared, or one set per task) and the tasks, and
returns :class:`metarl.sampling.native.Episodes` — the same episodes for the same seeds whichever
steps them (MJX aside: another physics engine). :func:`make_sampler` builds the one
``--sampler`` names; :class:`Sampler` is what the agents rely on.

The modules stand in one line, without a circle: this one imports
:mod:`metarl.sampling.native` (in-process :class:`~metarl.sampling.native.BatchedSampler`)
and, when asked for, :mod:`metarl.sampling.distributed` (which builds on
:mod:`metarl.sampling.native` in its actors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import torch

from metarl.learning.policies import Policy
from metarl.sampling.native import BatchedSampler, Episodes
from metarl.stepping.registry import family
from metarl.tasks import TaskDistribution

__all__ = ["SAMPLERS", "Sampler", "make_sampler"]


@runtime_checkable
class Sampler(Protocol):
    """What every sampler provides (:class:`~metarl.sampling.native.BatchedSampler`,
    :class:`~metarl.sampling.distributed.RaySampler`)."""

    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]
    task_distribution: TaskDistribution[Any]

    def collect(
        self,
        policy: Policy,
        params: Mapping[str, torch.Tensor],
        tasks: Sequence[Any],
        *,
        seed: int | None = None,
        per_task_params: bool = False,
        deterministic: bool = False,
    ) -> Episodes:
        """Episodes of every task (``episodes_per_task`` each), all at once."""
        ...

    def close(self) -> None:
        """Release envs, worker processes and actors."""
        ...


SAMPLERS = ("auto", "native", "torch", "ray", "mjx")


def make_sampler(
    env_id: str,
    num_tasks: int,
    episodes_per_task: int,
    *,
    sampler: str = "auto",
    backend: str = "auto",
    device: str | torch.device = "cpu",
    env_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 2,
    worker_timeout: float = 60.0,
    ray_workers: int = 2,
    ray_address: str | None = None,
) -> Any:
    """The sampler ``--sampler`` names; all but ``mjx`` give the same episodes for the same
    seeds (``mjx`` is another physics engine: close to the others, not equal).

    * ``"auto"``: :class:`BatchedSampler` with ``backend`` (its default: on-device torch
      envs when the family has them, else the fastest NumPy backend);
    * ``"native"``: :class:`BatchedSampler` on the family's fastest host backend (native
      ``mujoco.rollout`` for the MuJoCo families, vectorised NumPy for the fast ones);
    * ``"torch"``: :class:`BatchedSampler` on the on-device torch envs (``device``);
    * ``"ray"``: :class:`metarl.sampling.distributed.RaySampler`, the tasks spread over
      ``ray_workers`` Ray actors stepping the native backend (a local Ray instance, or the
      cluster at ``ray_address``); the episodes come back to ``device``;
    * ``"mjx"``: :class:`BatchedSampler` on the MuJoCo families' MJX backend, physics and
      rewards on JAX's device (the GPU with ``device="cuda"``), handed to torch by DLPack
      (optional extra ``mjx``).

    ``num_workers`` and ``worker_timeout`` are for ``backend="subprocess"``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if sampler != "auto" and backend != "auto":
        raise ValueError(
            f"--sampler {sampler} chooses the backend itself; leave --backend at auto "
            "(or use --sampler auto with --backend)"
        )
    if sampler == "ray":
        from metarl.sampling.distributed import RaySampler

        return RaySampler(
            env_id,
            num_tasks,
            episodes_per_task,
            num_workers=ray_workers,
            device=device,
            env_kwargs=env_kwargs,
            address=ray_address or None,
        )
    if sampler == "native":
        backend = next(iter(family(env_id).batched), "generic")
    elif sampler in ("torch", "mjx"):
        backend = sampler
    return BatchedSampler(
        env_id,
        num_tasks,
        episodes_per_task,
        backend=backend,
        device=device,
        env_kwargs=env_kwargs,
        num_workers=num_workers,
        worker_timeout=worker_timeout,
    )
