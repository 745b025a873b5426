"""The batched sampler: every task of a meta-batch and all its episodes in one rollout.

``B = num_tasks × episodes_per_task`` rows step together through the family's batched env
opened by :class:`metarl.stepping.TensorBatchedEnv` — the on-device torch backend when the
family has one (no NumPy round trip; on the GPU with ``device="cuda"``), else its host
backend, with numpy ↔ torch conversion only at that seam.
Each task may have its own policy parameters (a ``dict`` of tensors with a leading task
dimension, e.g. after an inner gradient step): ``torch.func.vmap`` runs task ``i``'s
parameters on task ``i``'s rows in one batched call, with no Python loop over tasks.

Rows are ordered task-major: row ``i * episodes_per_task + j`` is episode ``j`` of task ``i``.
Episodes come back as time-major tensors ``(T, B, ...)`` with a ``mask`` that is 1 while a
row's episode runs.

Example:
    >>> import metarl
    >>> from metarl.learning.policies import GaussianMLPPolicy
    >>> from metarl.learning.functional import named_params
    >>> sampler = BatchedSampler("metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=3)
    >>> policy = GaussianMLPPolicy(2, 2)
    >>> tasks = metarl.task_distribution("metarl/Navigation2D-v0").split("train")[:2]
    >>> eps = sampler.collect(policy, named_params(policy), tasks, seed=0)
    >>> eps.obs.shape, eps.rewards.shape
    (torch.Size([100, 6, 2]), torch.Size([100, 6]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from metarl.learning.functional import forward
from metarl.learning.policies import Policy
from metarl.numerics import NonFiniteError
from metarl.stepping import TensorBatchedEnv
from metarl.stepping.torch_batched import resolve_device

__all__ = ["BatchedSampler", "Episodes", "per_task", "per_task_rows"]


class Episodes(NamedTuple):
    """Episodes of ``num_tasks`` tasks, time-major.

    Attributes:
        obs: ``(T, B, *obs_shape)`` observation each action was taken in.
        actions: ``(T, B, *action_shape)`` actions as sampled (before clipping to the
            action space, so their log-probabilities are those of the policy).
        rewards: ``(T, B)`` float32, 0 where masked.
        mask: ``(T, B)`` float32, 1 while the row's episode runs.
        num_tasks: ``N``; ``B = N × episodes_per_task``, task-major.
        success: ``(B,)`` float32, 1 where the env reported ``info["is_success"]`` at some
            step of the episode (Meta-World's convention; for 2D navigation, reaching the
            goal), or None when the family defines no success.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    num_tasks: int
    success: Tensor | None = None

    @property
    def episodes_per_task(self) -> int:
        return self.rewards.shape[1] // self.num_tasks

    def episode_returns(self) -> Tensor:
        """Undiscounted return of each episode, ``(B,)``."""
        return self.rewards.sum(0)

    def task_returns(self) -> Tensor:
        """Mean undiscounted episode return of each task, ``(N,)``."""
        return self.episode_returns().view(self.num_tasks, -1).mean(1)

    def num_steps(self) -> int:
        """Env steps taken (unmasked transitions)."""
        return int(self.mask.sum().item())

    def task_success(self) -> Tensor | None:
        """Success rate of each task's episodes, ``(N,)``; None without success."""
        if self.success is None:
            return None
        return self.success.float().view(self.num_tasks, -1).mean(1)


def per_task(x: Tensor, num_tasks: int) -> Tensor:
    """``(T, B, ...)`` → ``(N, T, E, ...)``: the task dimension first, for ``vmap``."""
    t, b = x.shape[:2]
    return x.reshape(t, num_tasks, b // num_tasks, *x.shape[2:]).transpose(0, 1)


def per_task_rows(x: Tensor, num_tasks: int) -> Tensor:
    """``(T, B, ...)`` → ``(N, T·E, ...)``, contiguous: each task's steps on one axis.

    For per-step computations summed over a task's steps (a policy's log-probabilities in a
    loss, a KL): under ``vmap`` over tasks every layer of an MLP policy is then one batched
    matrix product over the task's ``T·E`` rows. The strided ``(N, T, E, ...)`` view of
    :func:`per_task` made vmap broadcast the first layer's weight over ``T`` (a batch of
    ``N·T`` small products and a sum over ``T`` in the backward pass) and ran the elementwise
    ops on non-contiguous memory: 4x slower on HalfCheetahVel's MAML-TRPO outer step.
    """
    return per_task(x, num_tasks).reshape(num_tasks, -1, *x.shape[2:]).contiguous()


class BatchedSampler:
    """Collects ``episodes_per_task`` episodes of each of ``num_tasks`` tasks at once.

    Args:
        env_id: a registered task family.
        num_tasks, episodes_per_task: the meta-batch shape; ``B`` is their product.
        backend: how the rows are stepped (:class:`metarl.stepping.TensorBatchedEnv`):
            ``"auto"`` (torch on-device if the family has it, else its fastest host env),
            ``"torch"``, ``"mjx"``, ``"numpy"``, ``"subprocess"`` (worker processes with a
            timeout, so an env that crashes or hangs becomes an error naming it and its
            tasks) or another host backend the family registers (``"generic"``...).
        device: where the policy runs and the episodes live (``"auto"``, ``"cpu"``, ``"cuda"``).
        env_kwargs: passed to the env (``max_episode_steps`` sets the horizon).
    """

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        episodes_per_task: int,
        *,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        env_kwargs: Mapping[str, Any] | None = None,
        num_workers: int = 2,
        worker_timeout: float = 60.0,
    ) -> None:
        if num_tasks < 1 or episodes_per_task < 1:
            raise ValueError(
                f"num_tasks and episodes_per_task must be >= 1, got {num_tasks} and "
                f"{episodes_per_task}"
            )
        self.env_id = env_id
        self.num_tasks, self.episodes_per_task = int(num_tasks), int(episodes_per_task)
        self.num_envs = self.num_tasks * self.episodes_per_task
        self.device = resolve_device(device)
        self.env = TensorBatchedEnv(env_id, self.num_envs, backend=backend, device=self.device,
                                    env_kwargs=env_kwargs, num_workers=num_workers,
                                    worker_timeout=worker_timeout)  # fmt: skip
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.task_distribution = self.env.task_distribution
        self.on_device = self.env.on_device
        self.horizon = self.env.horizon
        self.generator = torch.Generator(device=self.device)
        self._low: Tensor | None = None
        self._high: Tensor | None = None
        space = self.action_space
        if isinstance(space, gym.spaces.Box) and np.isfinite(space.low).all():
            self._low = torch.as_tensor(space.low, dtype=torch.float32, device=self.device)
            self._high = torch.as_tensor(space.high, dtype=torch.float32, device=self.device)

    def _rows(self, tasks: Sequence[Any]) -> list[Any]:
        if len(tasks) != self.num_tasks:
            raise ValueError(f"collect needs {self.num_tasks} tasks, got {len(tasks)}")
        return [t for t in tasks for _ in range(self.episodes_per_task)]

    @torch.no_grad()
    def collect(
        self,
        policy: Policy,
        params: Mapping[str, Tensor],
        tasks: Sequence[Any],
        *,
        seed: int | None = None,
        per_task_params: bool = False,
        deterministic: bool = False,
    ) -> Episodes:
        """Run one episode in every row and return them.

        Args:
            policy: the policy module (its own parameters are not used).
            params: the parameters to act with: shared by every task, or, with
                ``per_task_params``, one set per task stacked on a leading dimension ``N``.
            tasks: the ``N`` tasks.
            seed: seeds the action noise and the env's noise (None: continue the streams).
            deterministic: act with the policy's mode (no exploration noise).
        """
        rows = self._rows(tasks)
        n = self.num_tasks
        if seed is not None:
            self.generator.manual_seed(int(seed))
        obs = self.env.reset(rows, seed=seed)
        params = {k: v.detach() for k, v in params.items()}
        if per_task_params:
            bad = [k for k, v in params.items() if v.shape[0] != n]
            if bad:
                raise ValueError(f"per-task parameters need a leading dimension {n}: {bad}")
        t_max = self.horizon
        obs_buf = torch.zeros((t_max, *obs.shape), dtype=obs.dtype, device=self.device)
        act_buf: Tensor | None = None
        rew_buf = torch.zeros((t_max, self.num_envs), dtype=torch.float32, device=self.device)
        mask_buf = torch.zeros_like(rew_buf)
        success: Tensor | None = None
        steps = 0
        for t in range(t_max):
            dist = self._policy_dist(policy, params, obs, per_task_params)
            action = self._act(policy, dist, deterministic)
            if act_buf is None:
                act_buf = torch.zeros(
                    (t_max, *action.shape), dtype=action.dtype, device=self.device
                )
            env_action = action
            if self._low is not None and self._high is not None:
                env_action = torch.maximum(torch.minimum(action, self._high), self._low)
            next_obs, reward, _term, _trunc, info = self.env.step(env_action)
            obs_buf[t] = obs
            act_buf[t] = action
            active = info["active"]
            mask_buf[t] = active.float()
            rew_buf[t] = reward * mask_buf[t]
            if info["is_success"] is not None:  # only families that define success
                hit = info["is_success"].bool() & active.bool()
                success = hit if success is None else success | hit
            obs = next_obs
            steps = t + 1
            if not self.env.running():
                break
        assert act_buf is not None
        self._check_finite(obs_buf[:steps], act_buf[:steps], rew_buf[:steps], rows)
        return Episodes(
            obs_buf[:steps], act_buf[:steps], rew_buf[:steps], mask_buf[:steps], self.num_tasks,
            None if success is None else success.float(),
        )  # fmt: skip

    def _check_finite(self, obs: Tensor, actions: Tensor, rewards: Tensor, rows: list[Any]) -> None:
        """Stop on NaN/inf, blaming what came first (one device sync per rollout): an
        observation (the env's), an action (the policy's parameters), or a reward (the env's).
        At one step the observation precedes the action, which precedes the reward."""
        first: list[tuple[int, int, str, Tensor]] = []
        for order, (quantity, x) in enumerate(
            (("observations", obs), ("actions", actions), ("rewards", rewards))
        ):
            if not x.is_floating_point():
                continue
            bad = ~torch.isfinite(x.reshape(x.shape[0], x.shape[1], -1)).all(-1)  # (T, B)
            if bool(bad.any()):
                first.append((int(bad.any(1).nonzero()[0, 0]), order, quantity, bad))
        if not first:
            return
        t, _, quantity, bad = min(first, key=lambda f: (f[0], f[1]))
        b = int(bad[t].nonzero()[0, 0])
        tasks = list(dict.fromkeys(rows[int(i)] for i in bad.any(0).nonzero()[:, 0]))
        shown = ", ".join(map(repr, tasks[:3])) + (" ..." if len(tasks) > 3 else "")
        cause = (
            "the policy's parameters or inputs hold NaN/inf (a diverged update?)"
            if quantity == "actions"
            else "the env produced them — check its dynamics for these tasks"
        )
        raise NonFiniteError(
            f"non-finite {quantity} from {self.env_id} (first at step {t} of row {b}; tasks: "
            f"{shown}); {cause}",
            quantity,
        )

    # Two steps of collect, separate so that a sampler over a shard of a meta-batch
    # (metarl.sampling.distributed.ShardSampler) can compute them at the whole batch's width.
    def _policy_dist(
        self, policy: Policy, params: Mapping[str, Tensor], obs: Tensor, per_task_params: bool
    ) -> tuple[Tensor, ...]:
        """The action distribution of every row, ``(B, ...)`` tensors; with per-task
        parameters (leading dimension ``N``) each task's rows use their own, via ``vmap``."""
        if not per_task_params:
            return tuple(forward(policy, params, obs))
        n = next(iter(params.values())).shape[0]

        def dist_fn(p: dict[str, Tensor], o: Tensor) -> tuple[Tensor, ...]:
            return tuple(forward(policy, p, o))

        dist = vmap(dist_fn)(dict(params), obs.view(n, obs.shape[0] // n, *obs.shape[1:]))
        return tuple(d.reshape(obs.shape[0], *d.shape[2:]) for d in dist)

    def _act(self, policy: Policy, dist: tuple[Tensor, ...], deterministic: bool) -> Tensor:
        """Actions of every row: the mode, or a draw from :attr:`generator`."""
        return policy.mode(dist) if deterministic else policy.sample(dist, self.generator)

    def close(self) -> None:
        self.env.close()
