"""Random tabular MDPs (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning", Sec. 4.2).

A task is an MDP with ``S`` states and ``A`` actions (paper: 10 × 5): every transition
distribution ``P(· | s, a)`` is drawn from a flat Dirichlet, every mean reward ``R(s, a)``
from ``N(1, 1)``. A step from ``s`` with action ``a`` pays ``R(s, a) + ε`` with
``ε ~ N(0, 1)`` and moves to ``s' ~ P(· | s, a)``. Episodes start in state 0 (the paper does
not say; a fixed start keeps the task the only source of variation) and last 10 steps (the
registration's ``max_episode_steps``). The observation is the state index.
``info["expected_reward"]`` is ``R(s, a)``.

``render_mode="rgb_array"`` draws, headless, a ``(RENDER_SIZE, RENDER_SIZE, 3)`` image: the
states on a circle (state 0, the start, at the top, then clockwise), the current one filled
blue; the last transition as a line from the state it left (green if its reward was
positive, red if not; a ring for a step that stayed); and along the top one bar per step of
the episode so far, its height the reward (up: positive, green; down: negative, red).

Randomness: transition and reward noise come from ``np_random`` in chunks of 64 steps, the
Gaussian by Box–Muller from two uniforms, so the batched env reproduces it exactly.

Version history:
    v0: 10 states × 5 actions, horizon 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from metarl.envs import _draw
from metarl.stepping.batched import BatchedNoiseStream, BatchedTaskEnv, NoiseStream
from metarl.tasks import TaskDistribution, TaskError
from metarl.tasks.env import TaskEnv

__all__ = [
    "TabularMDP",
    "TabularMDPBatched",
    "TabularMDPDistribution",
    "TabularMDPTask",
]

HORIZON = 10
RENDER_SIZE = 200


@dataclass(frozen=True)
class TabularMDPTask:
    """``transitions[s][a][s']`` = P(s' | s, a); ``rewards[s][a]`` = mean reward R(s, a)."""

    transitions: tuple[tuple[tuple[float, ...], ...], ...]
    rewards: tuple[tuple[float, ...], ...]

    @staticmethod
    def from_arrays(transitions: np.ndarray, rewards: np.ndarray) -> TabularMDPTask:
        return TabularMDPTask(
            transitions=tuple(tuple(tuple(map(float, p)) for p in ps) for ps in transitions),
            rewards=tuple(tuple(map(float, r)) for r in rewards),
        )


class TabularMDPDistribution(TaskDistribution[TabularMDPTask]):
    """Flat-Dirichlet transitions and N(1, 1) mean rewards (Duan et al. 2016)."""

    def __init__(self, num_states: int = 10, num_actions: int = 5) -> None:
        if num_states < 2 or num_actions < 2:
            raise ValueError(f"need >= 2 states and actions, got {num_states} × {num_actions}")
        super().__init__(
            f"TabularMDP-S{num_states}A{num_actions}",
            TabularMDPTask,
            num_train=1000,
            num_test=100,
            description=f"{num_states}x{num_actions} transitions ~ flat Dirichlet, "
            "mean rewards ~ N(1, 1)",
        )
        self.num_states = num_states
        self.num_actions = num_actions

    def _sample(self, rng: np.random.Generator) -> TabularMDPTask:
        s, a = self.num_states, self.num_actions
        transitions = rng.dirichlet(np.ones(s), size=(s, a))
        rewards = rng.normal(1.0, 1.0, size=(s, a))
        return TabularMDPTask.from_arrays(transitions, rewards)

    def _check(self, task: TabularMDPTask) -> None:
        s, a = self.num_states, self.num_actions
        try:
            p = np.asarray(task.transitions, dtype=np.float64)
            r = np.asarray(task.rewards, dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise TaskError(f"{self.name}: transitions/rewards must be rectangular: {e}") from e
        if p.shape != (s, a, s) or r.shape != (s, a):
            raise TaskError(
                f"{self.name}: expected transitions of shape {(s, a, s)} and rewards of shape "
                f"{(s, a)}, got {p.shape} and {r.shape}"
            )
        if not (np.isfinite(p).all() and np.isfinite(r).all()):
            raise TaskError(f"{self.name}: transitions and rewards must be finite")
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-6):
            raise TaskError(f"{self.name}: every P(· | s, a) must be non-negative and sum to 1")


def _task_arrays(task: TabularMDPTask) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative transition probabilities (S, A, S), mean rewards (S, A))."""
    cum = np.cumsum(np.asarray(task.transitions, dtype=np.float64), axis=-1)
    return cum, np.asarray(task.rewards, dtype=np.float64)


def _transition(cum: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next state and reward noise from three uniforms per row; any leading batch shape.

    ``cum`` holds each row's cumulative P(· | s, a), shape ``(..., S)``; ``noise`` ``(..., 3)``.
    """
    next_state = np.minimum((cum <= noise[..., :1]).sum(axis=-1), cum.shape[-1] - 1)
    # Box–Muller; 1 - u keeps the logarithm finite.
    eps = np.sqrt(-2.0 * np.log1p(-noise[..., 1])) * np.cos(2.0 * math.pi * noise[..., 2])
    return next_state, eps


class TabularMDP(TaskEnv[Any, Any, TabularMDPTask]):
    """A random tabular MDP; see the module docstring.

    Args:
        num_states, num_actions: ``S`` and ``A``.
        render_mode: None or ``"rgb_array"`` (drawn: the states, the current one, the last
            transition and the rewards so far).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self, num_states: int = 10, num_actions: int = 5, render_mode: str | None = None
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        # This episode's transitions (state left, reward), for the rendering.
        self._history: list[tuple[int, float]] = []
        self.task_distribution = TabularMDPDistribution(num_states, num_actions)
        self.observation_space = spaces.Discrete(num_states)
        self.action_space = spaces.Discrete(num_actions)
        self._cum = np.zeros((num_states, num_actions, num_states))
        self._rewards = np.zeros((num_states, num_actions))
        self._state = 0
        self._noise: NoiseStream | None = None

    def _apply_task(self, task: TabularMDPTask) -> None:
        self._cum, self._rewards = _task_arrays(task)

    def _reset_episode(self) -> tuple[int, dict[str, Any]]:
        self._noise = NoiseStream(self.np_random, width=3)
        self._state = 0
        self._history = []
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self._require_task()
        assert self._noise is not None
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in [0, {self._cum.shape[1]}), got {action!r}")
        a = int(action)
        mean = self._rewards[self._state, a]
        next_state, eps = _transition(self._cum[self._state, a], self._noise.next())
        if self.render_mode is not None:
            self._history.append((self._state, float(mean + eps)))
        self._state = int(next_state)
        return self._state, float(mean + eps), False, False, {"expected_reward": mean}

    def render(self) -> np.ndarray | None:
        """The MDP as an RGB image (``render_mode="rgb_array"``; see the module doc), else
        None."""
        if self.render_mode is None:
            return None
        n, num_states = RENDER_SIZE, self._cum.shape[0]
        img = _draw.canvas(n, n)
        # Rewards so far: one bar per step around a baseline, scaled to |reward| <= 3.
        base, half = 22, 16
        width = max(2, min(12, (n - 8) // max(len(self._history), 1)))
        _draw.rect(img, 4, base, n - 4, base + 1, _draw.GREY)
        for t, (_, r) in enumerate(self._history[-((n - 8) // width) :]):
            h = round(float(np.clip(r / 3.0, -1.0, 1.0)) * half)
            x = 4 + t * width
            color = _draw.GREEN if r > 0 else _draw.RED
            _draw.rect(img, x, min(base - h, base), x + width - 1, max(base - h, base + 1), color)
        cx, cy, radius = n / 2, (n + 2 * (base + half)) / 2, (n - 2 * (base + half)) / 2 - 16
        angles = 2 * np.pi * np.arange(num_states) / num_states
        centers = [(cx + radius * np.sin(a), cy - radius * np.cos(a)) for a in angles]
        if self._history:
            left, r = self._history[-1]
            color = _draw.GREEN if r > 0 else _draw.RED
            if left == self._state:
                _draw.ring(img, *centers[left], 14, color, width=3)
            else:
                _draw.line(img, centers[left], centers[self._state], color, width=3)
        for s, (x, y) in enumerate(centers):
            if s == self._state:
                _draw.disc(img, x, y, 9, _draw.BLUE)
            else:
                _draw.disc(img, x, y, 9, _draw.WHITE)
                _draw.ring(img, x, y, 9, _draw.DARK if s == 0 else _draw.GREY, width=2)
        return img


class TabularMDPBatched(BatchedTaskEnv):
    """Vectorised :class:`TabularMDP`."""

    def __init__(
        self,
        num_envs: int,
        num_states: int = 10,
        num_actions: int = 5,
        max_episode_steps: int = HORIZON,
    ) -> None:
        super().__init__(num_envs, max_episode_steps)
        template = TabularMDP(num_states, num_actions)
        self.task_distribution = template.task_distribution
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self.num_actions = num_actions
        self._cum = np.zeros((num_envs, num_states, num_actions, num_states))
        self._rewards = np.zeros((num_envs, num_states, num_actions))
        self._state = np.zeros(num_envs, dtype=np.int64)
        self._noise = BatchedNoiseStream(width=3)

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, task in enumerate(tasks):
            if id(task) not in arrays:
                arrays[id(task)] = _task_arrays(task)
            self._cum[i], self._rewards[i] = arrays[id(task)]
        self._noise.reset(seeds)
        self._state = np.zeros(self.num_envs, dtype=np.int64)
        return self._state.copy()

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = actions.astype(np.int64)
        if ((a < 0) | (a >= self.num_actions)).any():
            raise ValueError(f"actions must be in [0, {self.num_actions})")
        rows = np.arange(self.num_envs)
        mean = self._rewards[rows, self._state, a]
        next_state, eps = _transition(self._cum[rows, self._state, a], self._noise.next(active))
        self._state = np.where(active, next_state, self._state)
        info = {"expected_reward": mean}
        return self._state.copy(), mean + eps, np.zeros_like(active), info
