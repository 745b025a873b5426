"""The fast task families as pure-torch batched envs that live on the policy's device.

Same tasks, same dynamics and rewards as the NumPy backends in ``navigation.py``,
``bandits.py`` and ``tabular_mdp.py`` (``tests/test_torch_envs.py`` checks it on the CPU
device, feeding both the same noise); the noise here comes from the env's torch generator.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from metarl.envs.bandits import bandit_distribution
from metarl.envs.navigation import GOAL_TOLERANCE, MAX_SPEED, navigation_distribution
from metarl.envs.tabular_mdp import TabularMDPDistribution
from metarl.stepping.torch_batched import TorchBatchedTaskEnv

__all__ = ["BernoulliBanditTorch", "Navigation2DTorch", "TabularMDPTorch"]


class Navigation2DTorch(TorchBatchedTaskEnv):
    """2D navigation (Finn et al. 2017) on a torch device; see ``navigation.py``."""

    obs_shape = (2,)
    action_shape = (2,)
    success_on_termination = True  # info["is_success"]: the goal reached, as navigation.py

    def __init__(
        self,
        num_envs: int,
        goal_range: float = 0.5,
        max_episode_steps: int = 100,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_envs, max_episode_steps, device)
        self.task_distribution = navigation_distribution(goal_range)
        self._state = torch.zeros(num_envs, 2, dtype=torch.float64, device=self.device)
        self._goal = torch.zeros_like(self._state)

    def _reset_rows(self, tasks: list[Any]) -> Tensor:
        goals = torch.tensor([t.goal for t in tasks], dtype=torch.float64)
        self._goal = goals.to(self.device)
        self._state = torch.zeros_like(self._goal)
        return self._state.float()

    def _step_rows(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = self._state + actions.to(torch.float64).clamp(-MAX_SPEED, MAX_SPEED)
        delta = state - self._goal
        reward = -(delta**2).sum(-1).sqrt()
        reached = (delta.abs() < GOAL_TOLERANCE).all(-1)
        self._state = torch.where(active[:, None], state, self._state)
        return self._state.float(), reward, reached


class BernoulliBanditTorch(TorchBatchedTaskEnv):
    """Bernoulli bandits (Duan et al. 2016) on a torch device; see ``bandits.py``."""

    obs_shape = ()
    action_shape = ()

    def __init__(
        self,
        num_envs: int,
        num_arms: int = 5,
        max_episode_steps: int = 100,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_envs, max_episode_steps, device)
        self.task_distribution = bandit_distribution(num_arms)
        self.num_arms = int(num_arms)
        self._probs = torch.zeros(num_envs, self.num_arms, dtype=torch.float64, device=self.device)

    def _reset_rows(self, tasks: list[Any]) -> Tensor:
        self._probs = torch.tensor([t.probs for t in tasks], dtype=torch.float64).to(self.device)
        return torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)

    def _step_rows(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = actions.long()
        if bool(((a < 0) | (a >= self.num_arms)).any()):
            raise ValueError(f"actions must be arm indices in [0, {self.num_arms})")
        p = self._probs.gather(1, a[:, None])[:, 0]
        reward = (self.uniform(self.num_envs, 1)[:, 0] < p).to(torch.float64)
        obs = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return obs, reward, torch.zeros_like(active)


class TabularMDPTorch(TorchBatchedTaskEnv):
    """Random tabular MDPs (Duan et al. 2016) on a torch device; see ``tabular_mdp.py``."""

    obs_shape = ()
    action_shape = ()

    def __init__(
        self,
        num_envs: int,
        num_states: int = 10,
        num_actions: int = 5,
        max_episode_steps: int = 10,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_envs, max_episode_steps, device)
        self.task_distribution = TabularMDPDistribution(num_states, num_actions)
        self.num_states, self.num_actions = num_states, num_actions
        self._cum = torch.zeros(
            num_envs, num_states, num_actions, num_states, dtype=torch.float64, device=self.device
        )
        self._rewards = torch.zeros(
            num_envs, num_states, num_actions, dtype=torch.float64, device=self.device
        )
        self._state = torch.zeros(num_envs, dtype=torch.int64, device=self.device)

    def _reset_rows(self, tasks: list[Any]) -> Tensor:
        unique = {id(t): t for t in tasks}
        index = {key: i for i, key in enumerate(unique)}
        trans = torch.tensor([t.transitions for t in unique.values()], dtype=torch.float64)
        rew = torch.tensor([t.rewards for t in unique.values()], dtype=torch.float64)
        rows = torch.tensor([index[id(t)] for t in tasks])
        # Cumulative sums on the CPU in float64, as the NumPy backend does, then one transfer.
        self._cum = torch.cumsum(trans, dim=-1)[rows].to(self.device)
        self._rewards = rew[rows].to(self.device)
        self._state = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return self._state.clone()

    def _step_rows(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = actions.long()
        if bool(((a < 0) | (a >= self.num_actions)).any()):
            raise ValueError(f"actions must be in [0, {self.num_actions})")
        rows = torch.arange(self.num_envs, device=self.device)
        mean = self._rewards[rows, self._state, a]
        cum = self._cum[rows, self._state, a]  # (B, S)
        noise = self.uniform(self.num_envs, 3)
        next_state = (cum <= noise[:, :1]).sum(-1).clamp_max(self.num_states - 1)
        eps = torch.sqrt(-2.0 * torch.log1p(-noise[:, 1])) * torch.cos(2.0 * math.pi * noise[:, 2])
        self._state = torch.where(active, next_state, self._state)
        return self._state.clone(), mean + eps, torch.zeros_like(active)
