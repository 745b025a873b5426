"""Multi-armed Bernoulli bandits (Duan et al. 2016, "RL²: Fast Reinforcement Learning via
Slow Reinforcement Learning", Sec. 4.1).

A task is a vector of ``K`` arm probabilities, each drawn uniformly from ``[0, 1]`` as in
the paper. Each step pulls one arm (the action) and pays 1 with that arm's probability,
else 0. The observation carries no information (``Discrete(1)``, always 0): everything an
agent learns about the task comes from its rewards. An episode is one trial of ``n`` pulls
(the registration's ``max_episode_steps``; the paper uses n ∈ {10, 100, 500}, we register
100). ``info["expected_reward"]`` is the pulled arm's probability, ``info["regret"]`` the
gap to the best arm.

``render_mode="rgb_array"`` draws, headless, a ``(RENDER_HEIGHT, RENDER_WIDTH, 3)`` image: one
column per arm with its pulls this episode (blue) and the pulls that paid (green) — the
columns scaled to the most-pulled arm — and a tick at the arm's probability (what the agent
must find); a marker under the last arm pulled (green: it paid, red: it did not); and at the
top the share of pulls so far that paid.

Randomness: reward noise comes from ``np_random`` in chunks of 64 steps
(:class:`metarl.stepping.batched.NoiseStream`), which lets the batched env reproduce it exactly.

Version history:
    v0: K ∈ {5, 10, 50}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from metarl.envs import _draw
from metarl.stepping.batched import BatchedNoiseStream, BatchedTaskEnv, NoiseStream
from metarl.tasks import BoxTaskDistribution
from metarl.tasks.env import TaskEnv

__all__ = ["BanditTask", "BernoulliBandit", "BernoulliBanditBatched", "bandit_distribution"]

HORIZON = 100
ARM_COUNTS = (5, 10, 50)
RENDER_WIDTH, RENDER_HEIGHT = 256, 160


@dataclass(frozen=True)
class BanditTask:
    """The success probability of every arm."""

    probs: tuple[float, ...]


def bandit_distribution(num_arms: int) -> BoxTaskDistribution[BanditTask]:
    """``num_arms`` probabilities, each uniform in [0, 1] (Duan et al. 2016)."""
    if not (isinstance(num_arms, int | np.integer) and num_arms >= 2):
        raise ValueError(f"num_arms must be an integer >= 2, got {num_arms!r}")
    return BoxTaskDistribution(
        f"BernoulliBandit-K{num_arms}",
        BanditTask,
        low={"probs": 0.0},
        high={"probs": 1.0},
        shape={"probs": int(num_arms)},
        num_train=1000,
        num_test=100,
        description=f"{num_arms} arm probabilities, each uniform in [0, 1]",
    )


class BernoulliBandit(TaskEnv[Any, Any, BanditTask]):
    """A ``K``-armed Bernoulli bandit; see the module docstring.

    Args:
        num_arms: ``K``.
        render_mode: None or ``"rgb_array"`` (drawn: the arms, their pulls, the last pull).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012

    def __init__(self, num_arms: int = 5, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.task_distribution = bandit_distribution(num_arms)
        self.num_arms = int(num_arms)
        self.observation_space = spaces.Discrete(1)
        self.action_space = spaces.Discrete(self.num_arms)
        self._probs = np.zeros(self.num_arms)
        self._noise: NoiseStream | None = None
        # This episode's pulls and paying pulls per arm, and the last pull (arm, reward).
        self._pulls = np.zeros(self.num_arms, dtype=np.int64)
        self._paid = np.zeros(self.num_arms, dtype=np.int64)
        self._last: tuple[int, float] | None = None

    def _apply_task(self, task: BanditTask) -> None:
        self._probs = np.asarray(task.probs, dtype=np.float64)

    def _reset_episode(self) -> tuple[int, dict[str, Any]]:
        self._noise = NoiseStream(self.np_random, width=1)
        self._pulls[:], self._paid[:], self._last = 0, 0, None
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self._require_task()
        assert self._noise is not None
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm index in [0, {self.num_arms}), got {action!r}")
        p = self._probs[int(action)]
        reward = float(self._noise.next()[0] < p)
        self._pulls[int(action)] += 1
        self._paid[int(action)] += int(reward)
        self._last = (int(action), reward)
        info = {"expected_reward": p, "regret": self._probs.max() - p}
        return 0, reward, False, False, info

    def render(self) -> np.ndarray | None:
        """The arms as an RGB image (``render_mode="rgb_array"``; see the module doc), else
        None."""
        if self.render_mode is None:
            return None
        img = _draw.canvas(RENDER_HEIGHT, RENDER_WIDTH)
        total = int(self._pulls.sum())
        _draw.progress(img, 4, 12, self._paid.sum() / max(total, 1), _draw.GREEN)
        top, bottom = 20, RENDER_HEIGHT - 20  # the arms' columns
        pitch = (RENDER_WIDTH - 8) / self.num_arms
        gap = 1 if pitch < 6 else 2
        scale = (bottom - top) / max(int(self._pulls.max()), 1)
        for i in range(self.num_arms):
            x0, x1 = round(4 + i * pitch) + gap, round(4 + (i + 1) * pitch) - gap
            x1 = max(x1, x0 + 1)
            _draw.rect(img, x0, top, x1, bottom, (235, 235, 235))
            _draw.rect(img, x0, bottom - round(self._pulls[i] * scale), x1, bottom, _draw.BLUE)
            _draw.rect(img, x0, bottom - round(self._paid[i] * scale), x1, bottom, _draw.GREEN)
            tick = bottom - round(self._probs[i] * (bottom - top))
            _draw.rect(img, x0, tick - 1, x1, tick + 1, _draw.DARK)
            if self._last is not None and self._last[0] == i:
                color = _draw.GREEN if self._last[1] > 0 else _draw.RED
                _draw.rect(img, x0, bottom + 4, x1, RENDER_HEIGHT - 4, color)
        return img


class BernoulliBanditBatched(BatchedTaskEnv):
    """Vectorised :class:`BernoulliBandit`."""

    def __init__(self, num_envs: int, num_arms: int = 5, max_episode_steps: int = HORIZON):
        super().__init__(num_envs, max_episode_steps)
        template = BernoulliBandit(num_arms)
        self.task_distribution = template.task_distribution
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self.num_arms = template.num_arms
        self._probs = np.zeros((num_envs, self.num_arms))
        self._noise = BatchedNoiseStream(width=1)

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        self._probs = np.array([t.probs for t in tasks], dtype=np.float64)
        self._noise.reset(seeds)
        return np.zeros(self.num_envs, dtype=np.int64)

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = actions.astype(np.int64)
        if ((actions < 0) | (actions >= self.num_arms)).any():
            raise ValueError(f"actions must be arm indices in [0, {self.num_arms})")
        p = np.take_along_axis(self._probs, actions[:, None], axis=1)[:, 0]
        reward = (self._noise.next(active)[:, 0] < p).astype(np.float64)
        info = {"expected_reward": p, "regret": self._probs.max(axis=1) - p}
        return np.zeros(self.num_envs, dtype=np.int64), reward, np.zeros_like(active), info
