"""The registry of task families: Gymnasium ids plus what metarl needs beside them.

``register_family`` registers a Gymnasium id (``gymnasium.make`` works as usual) and records
the family's batched backends. ``metarl envs`` lists what is here.

Example:
    >>> import gymnasium as gym
    >>> import metarl
    >>> env = gym.make("metarl/Navigation2D-v0")
    >>> dist = metarl.task_distribution("metarl/Navigation2D-v0")
    >>> obs, info = env.reset(seed=0, options={"task": dist.split("test")[0]})
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from metarl.batched import BatchedTaskEnv, GenericBatchedEnv
from metarl.tasks import TaskDistribution
from metarl.torch_batched import TorchBatchedTaskEnv

__all__ = [
    "TaskFamily",
    "family",
    "family_ids",
    "make",
    "make_batched",
    "make_torch_batched",
    "register_family",
    "task_distribution",
]


@dataclass(frozen=True)
class TaskFamily:
    """A registered task family.

    Attributes:
        env_id: the Gymnasium id, ``"metarl/Name-vN"``.
        batched: backend name -> ``factory(num_envs, **env_kwargs)`` returning a
            :class:`~metarl.batched.BatchedTaskEnv`. ``"generic"`` is always available.
        torch: ``factory(num_envs, device=..., **env_kwargs)`` returning a
            :class:`~metarl.torch_batched.TorchBatchedTaskEnv` that lives on a torch
            device, or None.
        paper: where the family comes from.
        approximate: the names among ``batched`` whose rows equal the single env only within
            a stated tolerance, not to the bit (another physics engine: ``"mjx"``).
    """

    env_id: str
    batched: dict[str, Callable[..., BatchedTaskEnv]] = field(default_factory=dict)
    torch: Callable[..., TorchBatchedTaskEnv] | None = None
    paper: str = ""
    approximate: frozenset[str] = frozenset()

    @property
    def backends(self) -> list[str]:
        """Names of the NumPy-API batched backends (``make_batched(backend=...)``)."""
        return [*self.batched, "generic"]

    @property
    def exact_backends(self) -> list[str]:
        """The backends whose rows equal the single env to the bit (same task, seed, actions)."""
        return [b for b in self.backends if b not in self.approximate]


_FAMILIES: dict[str, TaskFamily] = {}


def register_family(
    env_id: str,
    entry_point: str | Callable[..., gym.Env[Any, Any]],
    *,
    max_episode_steps: int,
    kwargs: dict[str, Any] | None = None,
    batched: dict[str, Callable[..., BatchedTaskEnv]] | None = None,
    torch: Callable[..., TorchBatchedTaskEnv] | None = None,
    paper: str = "",
    approximate: tuple[str, ...] = (),
) -> TaskFamily:
    """Register a task family under ``env_id`` with Gymnasium and with metarl.

    The time limit lives in the registration (``max_episode_steps``), not the env.
    ``approximate`` names the ``batched`` backends that equal the single env only within a
    tolerance (they are left out of the bit-exact checks).
    """
    gym.register(
        id=env_id,
        entry_point=entry_point,
        max_episode_steps=max_episode_steps,
        kwargs=kwargs or {},
    )
    fam = TaskFamily(
        env_id=env_id,
        batched=dict(batched or {}),
        torch=torch,
        paper=paper,
        approximate=frozenset(approximate),
    )
    _FAMILIES[env_id] = fam
    return fam


def family_ids() -> list[str]:
    """Every registered task-family id, sorted."""
    return sorted(_FAMILIES)


def family(env_id: str) -> TaskFamily:
    """The family registered as ``env_id``; a clear error listing the ids if there is none."""
    if env_id not in _FAMILIES:
        close = difflib.get_close_matches(env_id, list(_FAMILIES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"no task family registered as {env_id!r}.{hint} Registered: "
            f"{', '.join(family_ids())}. (`metarl envs` lists them; a family of your own is "
            "added with metarl.register_family.)"
        )
    return _FAMILIES[env_id]


def make(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """``gymnasium.make`` for a registered task family, with a clear error for unknown ids."""
    family(env_id)
    return gym.make(env_id, **kwargs)


def task_distribution(env_id: str, **kwargs: Any) -> TaskDistribution[Any]:
    """The task distribution of ``env_id`` (built with the env's keyword arguments)."""
    env = make(env_id, **kwargs)
    try:
        return env.unwrapped.task_distribution  # type: ignore[attr-defined]
    finally:
        env.close()


def make_batched(
    env_id: str, num_envs: int, *, backend: str = "auto", **kwargs: Any
) -> BatchedTaskEnv:
    """A batched env of ``num_envs`` rows for ``env_id``.

    Args:
        backend: ``"auto"`` (the fastest registered one), ``"generic"`` (a loop over single
            envs; any family), ``"subprocess"`` (rows in worker processes with a timeout on
            every answer: an env that crashes or hangs becomes an error, see
            :mod:`metarl.workers`; takes ``num_workers``, ``timeout`` and ``worker_backend``)
            or a family-specific name (``metarl envs`` lists them).
        kwargs: passed to the env, as to ``gymnasium.make``; ``max_episode_steps`` sets the
            horizon.
    """
    fam = family(env_id)
    if backend == "subprocess":
        return _subprocess_batched(env_id, num_envs, **kwargs)
    if backend == "auto":
        backend = next(iter(fam.batched), "generic")
    env: BatchedTaskEnv
    if backend == "generic":
        horizon = kwargs.get("max_episode_steps")
        env = GenericBatchedEnv(lambda: gym.make(env_id, **kwargs), num_envs, horizon)
    elif backend not in fam.batched:
        raise ValueError(
            f"{env_id} has no batched backend {backend!r}; available: "
            f"{', '.join(fam.backends)}, subprocess"
        )
    else:
        env = fam.batched[backend](num_envs, **kwargs)
    env.env_id = env_id
    return env


def make_torch_batched(
    env_id: str, num_envs: int, *, device: str = "cpu", **kwargs: Any
) -> TorchBatchedTaskEnv:
    """A batched env of ``num_envs`` rows for ``env_id`` whose tensors live on ``device``.

    Available for the families registered with a ``torch`` factory (``metarl envs`` shows
    ``torch`` among the backends); ``device`` may be ``"auto"``.
    """
    fam = family(env_id)
    if fam.torch is None:
        have = [i for i in family_ids() if _FAMILIES[i].torch is not None]
        raise ValueError(
            f"{env_id} has no torch (on-device) backend; families that do: {', '.join(have)}. "
            "Use metarl.make_batched for the others."
        )
    return fam.torch(num_envs, device=device, **kwargs)


def _subprocess_batched(
    env_id: str,
    num_envs: int,
    *,
    num_workers: int = 2,
    timeout: float = 60.0,
    worker_backend: str = "auto",
    **kwargs: Any,
) -> BatchedTaskEnv:
    from metarl.workers import SubprocessBatchedEnv

    if worker_backend == "subprocess":
        raise ValueError("worker_backend must be an in-process backend, not 'subprocess'")
    probe = make(env_id, **kwargs)
    try:
        horizon = kwargs.get("max_episode_steps") or (probe.spec and probe.spec.max_episode_steps)
        if not horizon:
            raise ValueError(f"{env_id} has no max_episode_steps; pass max_episode_steps=")
        return SubprocessBatchedEnv(
            env_id,
            num_envs,
            functools.partial(_rows, env_id, worker_backend, kwargs),
            probe,
            int(horizon),
            num_workers=num_workers,
            timeout=timeout,
        )
    finally:
        probe.close()


def _rows(env_id: str, backend: str, kwargs: dict[str, Any], n: int) -> BatchedTaskEnv:
    return make_batched(env_id, n, backend=backend, **kwargs)
