"""2D navigation (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", Sec. 5.3).

A point agent starts at the origin and must move to a goal drawn uniformly from the square
``[-0.5, 0.5]²``. The observation is the agent's position, the action a velocity clipped to
``[-0.1, 0.1]`` per coordinate, the reward the negative Euclidean distance to the goal after
the move. An episode ends when the agent is within 0.01 of the goal in both coordinates
(terminated, as in the paper's rllab environment) or after 100 steps (the registration's time
limit).

``render_mode="rgb_array"`` draws the square of goals, the goal (green), the path so far
and the agent (blue) as a ``(RENDER_SIZE, RENDER_SIZE, 3)`` image, headless.

Version history:
    v0: the paper's setting; ``info["distance"]`` and ``info["is_success"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from metarl.stepping.batched import BatchedTaskEnv
from metarl.tasks import BoxTaskDistribution
from metarl.tasks.env import TaskEnv

__all__ = ["GoalTask", "Navigation2D", "Navigation2DBatched", "navigation_distribution"]

HORIZON = 100
MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01
RENDER_SIZE = 200


@dataclass(frozen=True)
class GoalTask:
    """A goal position ``(x, y)``."""

    goal: tuple[float, float]


def navigation_distribution(goal_range: float = 0.5) -> BoxTaskDistribution[GoalTask]:
    """Goals uniform in ``[-goal_range, goal_range]²``."""
    if not goal_range > 0:
        raise ValueError(f"goal_range must be > 0, got {goal_range}")
    return BoxTaskDistribution(
        "Navigation2D",
        GoalTask,
        low={"goal": -goal_range},
        high={"goal": goal_range},
        shape={"goal": 2},
        num_train=1000,
        num_test=40,
        description=f"goal position, uniform in [-{goal_range}, {goal_range}]^2",
    )


def _move(state: np.ndarray, action: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, ...]:
    """One step for any leading batch shape; shared by the single and the batched env."""
    state = state + np.clip(action.astype(np.float64), -MAX_SPEED, MAX_SPEED)
    delta = state - goal
    distance = np.sqrt((delta**2).sum(axis=-1))
    reached = (np.abs(delta) < GOAL_TOLERANCE).all(axis=-1)
    return state, -distance, reached, distance


class Navigation2D(TaskEnv[np.ndarray, np.ndarray, GoalTask]):
    """Point-mass 2D navigation to a goal; see the module docstring.

    Args:
        goal_range: goals are uniform in ``[-goal_range, goal_range]²`` (paper: 0.5).
        render_mode: None or ``"rgb_array"`` (drawn: goal, path, agent).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012

    def __init__(self, goal_range: float = 0.5, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._view = 2 * goal_range  # the drawn half-width: the goal square and some room
        self._path: list[np.ndarray] = []
        self.task_distribution = navigation_distribution(goal_range)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self._state = np.zeros(2)
        self._goal = np.zeros(2)

    def _apply_task(self, task: GoalTask) -> None:
        self._goal = np.asarray(task.goal, dtype=np.float64)

    def _reset_episode(self) -> tuple[np.ndarray, dict[str, Any]]:
        self._state = np.zeros(2)
        self._path = [self._state]
        return self._state.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._require_task()
        self._state, reward, reached, distance = _move(self._state, np.asarray(action), self._goal)
        if self.render_mode is not None:
            self._path.append(self._state)
        info = {"distance": float(distance), "is_success": bool(reached)}
        return self._state.astype(np.float32), float(reward), bool(reached), False, info

    def render(self) -> np.ndarray | None:
        """The scene as an RGB image (``render_mode="rgb_array"``), else None."""
        if self.render_mode is None:
            return None
        n = RENDER_SIZE
        img = np.full((n, n, 3), 255, dtype=np.uint8)

        def pixel(p: np.ndarray) -> tuple[int, int]:  # y up, as in a plot
            u = (np.clip(np.asarray(p, dtype=np.float64), -self._view, self._view) / self._view
                 + 1) / 2 * (n - 1)  # fmt: skip
            return int(np.rint(u[0])), int(np.rint((n - 1) - u[1]))

        def disc(p: np.ndarray, r: int, color: tuple[int, int, int]) -> None:
            x, y = pixel(p)
            yy, xx = np.ogrid[:n, :n]
            img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = color

        half = self._view / 2  # the square goals come from
        lo, hi = pixel(np.array([-half, -half])), pixel(np.array([half, half]))
        img[hi[1] : lo[1] + 1, [lo[0], hi[0]]] = 200
        img[[hi[1], lo[1]], lo[0] : hi[0] + 1] = 200
        disc(self._goal, 6, (40, 170, 60))
        for a, b in zip(self._path, self._path[1:], strict=False):
            for t in np.linspace(0.0, 1.0, 8):
                x, y = pixel(a + t * (b - a))
                img[max(y - 1, 0) : y + 1, max(x - 1, 0) : x + 1] = (120, 120, 220)
        disc(self._state, 4, (30, 60, 200))
        return img


class Navigation2DBatched(BatchedTaskEnv):
    """Vectorised :class:`Navigation2D`: all rows in one NumPy expression per step."""

    def __init__(
        self, num_envs: int, goal_range: float = 0.5, max_episode_steps: int = HORIZON
    ) -> None:
        super().__init__(num_envs, max_episode_steps)
        template = Navigation2D(goal_range)
        self.task_distribution = template.task_distribution
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self._state = np.zeros((num_envs, 2))
        self._goal = np.zeros((num_envs, 2))

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        self._goal = np.array([t.goal for t in tasks], dtype=np.float64)
        self._state = np.zeros((self.num_envs, 2))
        return self._state.astype(np.float32)

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        state, reward, reached, distance = _move(self._state, actions, self._goal)
        self._state = np.where(active[:, None], state, self._state)
        info = {"distance": distance, "is_success": reached}
        return self._state.astype(np.float32), reward, reached, info
