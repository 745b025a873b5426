"""The stepping seam: a task family's batched env as tensors on the learner's device.

Every agent that steps rows of tasks itself (the batched sampler, RL²'s trials, any recurrent
or context-based agent) opens its env here, so the backend is chosen one way for all:

* ``"auto"``: the family's on-device torch env where it has one, else its fastest host env;
* ``"torch"``: the on-device torch env (on the GPU with ``device="cuda"``);
* ``"mjx"``: the MuJoCo families on MJX on JAX's device, handed to torch through DLPack
  (optional extra ``mjx``), or any other on-device backend a family registers;
* ``"numpy"``: the family's NumPy env, or its fastest host env where it registers none by that
  name (the MuJoCo families' native ``mujoco`` rollout, which also speaks NumPy arrays);
* ``"subprocess"``: the rows in ``num_workers`` worker processes, each answer awaited at most
  ``worker_timeout`` seconds, so an env that crashes or hangs becomes an error naming it
  (:mod:`metarl.stepping.workers`);
* any other host backend the family registers (``"generic"``, ``"mujoco"``...).

Host envs take and return NumPy arrays; the conversion to and from tensors happens here and
nowhere else, one transfer per step.

Example:
    >>> import metarl, torch
    >>> env = TensorBatchedEnv("metarl/Navigation2D-v0", 3, backend="numpy")
    >>> tasks = metarl.task_distribution("metarl/Navigation2D-v0").split("train")[:3]
    >>> env.reset(tasks, seed=0).shape
    torch.Size([3, 2])
    >>> obs, reward, terminated, truncated, info = env.step(torch.zeros(3, 2))
    >>> reward.dtype, info["active"].dtype
    (torch.float32, torch.bool)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from metarl.stepping.registry import family, make, make_batched, make_torch_batched
from metarl.stepping.torch_batched import resolve_device

__all__ = ["TensorBatchedEnv"]


class TensorBatchedEnv:
    """``num_envs`` rows of ``env_id`` stepped together, in and out as tensors on ``device``.

    Args:
        backend: see the module doc.
        device: where observations, rewards and flags come back (``"auto"``, ``"cpu"``,
            ``"cuda"``); the torch and MJX envs also step there.
        env_kwargs: passed to the env (``max_episode_steps`` sets the horizon).
        num_workers, worker_timeout: for ``backend="subprocess"``.

    Attributes:
        batched: the underlying batched env (NumPy in and out unless :attr:`on_device`).
        on_device: whether it is a torch (or MJX) env that steps on :attr:`device`.
        horizon: steps per episode.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        env_kwargs: Mapping[str, Any] | None = None,
        num_workers: int = 2,
        worker_timeout: float = 60.0,
    ) -> None:
        fam = family(env_id)
        kwargs = dict(env_kwargs or {})
        self.env_id = env_id
        self.num_envs = int(num_envs)
        self.device = resolve_device(device)
        probe = make(env_id, **kwargs)
        self.observation_space: gym.Space[Any] = probe.observation_space
        self.action_space: gym.Space[Any] = probe.action_space
        self.task_distribution = probe.unwrapped.task_distribution  # type: ignore[attr-defined]
        probe.close()
        if backend == "torch" and fam.torch is None:
            raise ValueError(f"{env_id} has no torch backend; use backend='auto' or 'numpy'")
        self.on_device = backend in ("torch", "mjx") or (
            backend == "auto" and fam.torch is not None
        )
        self.batched: Any
        if backend in fam.on_device:  # a family's own on-device backend (MuJoCo's "mjx")
            self.batched = make_torch_batched(
                env_id, self.num_envs, device=str(self.device), backend=backend, **kwargs
            )
        elif self.on_device:
            self.batched = make_torch_batched(
                env_id, self.num_envs, device=str(self.device), **kwargs
            )
        elif backend == "subprocess":
            self.batched = make_batched(
                env_id, self.num_envs, backend=backend, **kwargs,
                num_workers=num_workers, timeout=worker_timeout,
            )  # fmt: skip
        else:
            if backend == "numpy" and "numpy" not in fam.batched:
                backend = "auto"  # the fastest host env: MuJoCo's native rollout
            self.batched = make_batched(env_id, self.num_envs, backend=backend, **kwargs)

    @property
    def horizon(self) -> int:
        return int(self.batched.horizon)

    def running(self) -> bool:
        """Whether any row's episode still runs."""
        return bool(self.batched.active.any())

    def _tensor(self, x: Any) -> Tensor:
        if isinstance(x, Tensor):
            return x
        return torch.as_tensor(np.asarray(x), device=self.device)

    def reset(self, tasks: Sequence[Any], seed: int | None = None) -> Tensor:
        """Start an episode of ``tasks[i]`` in row ``i``; the first observations ``(B, ...)``.
        ``seed`` seeds row ``i`` with ``seed + i`` (None: continue the rows' streams)."""
        if self.on_device:
            obs, _ = self.batched.reset(tasks, seed=seed)
        else:
            obs, _ = self.batched.reset(tasks, seeds=seed)
        return self._tensor(obs)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """One step of every row: ``(obs, reward, terminated, truncated, info)``, rewards
        float32 ``(B,)``; ``info["active"]`` ``(B,)`` bool, which rows stepped (the others
        wait, their episode over), and ``info["is_success"]`` where the family defines
        success (the env's flag at this step), else None."""
        if self.on_device:
            obs, reward, term, trunc, info = self.batched.step(actions)
        else:
            obs, reward, term, trunc, info = self.batched.step(actions.cpu().numpy())
        success = info.get("is_success")
        return (
            self._tensor(obs),
            self._tensor(reward).float(),
            self._tensor(term),
            self._tensor(trunc),
            {
                "active": self._tensor(info["active"]),
                "is_success": None if success is None else self._tensor(success),
            },
        )

    def close(self) -> None:
        """Release the env (worker processes with the subprocess backend)."""
        if hasattr(self.batched, "close"):
            self.batched.close()
