"""A 5×5 gridworld with one of many possible goals (Zintgraf et al. 2020, "VariBAD: A Very
Good Method for Bayes-Adaptive Deep RL via Meta-Learning", Sec. 5.1).

The agent starts in the bottom-left cell ``(0, 0)`` of a ``5 × 5`` grid; a goal cell is
hidden somewhere else. Actions are ``Discrete(5)``: stay, up, right, down, left (a move into
the wall leaves the agent where it is). The reward is ``1`` on every step that ends on the
goal and ``-0.1`` otherwise; an episode never terminates early, it lasts ``15`` steps (the
registration's time limit). The observation is the agent's cell ``(x, y)`` as two floats.
The goal is never observed: an agent must find it, and — over a trial of several episodes
on the same goal — remember where it was (the paper's BAMDP has 4 episodes).

Goals: every cell except the four of the bottom-left ``2 × 2`` block around the start (as in
the paper's code, which keeps goals out of the start's immediate reach), so 21 goals. The
family's split is fixed and disjoint: 16 training goals and 5 held-out goals (version 0),
so the held-out return measures how an agent's search carries to goal cells it never met in
meta-training.

``render_mode="rgb_array"`` draws the grid, the goal (green), the cells visited in the
episode (light blue) and the agent (blue) as a ``(RENDER_SIZE, RENDER_SIZE, 3)`` image.

Version history:
    v0: the paper's 5×5 grid, 15 steps, 21 goals split 16 / 5;
    ``info["is_success"]`` is True on the steps that end on the goal.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from metarl.stepping.batched import BatchedTaskEnv
from metarl.tasks import FiniteTaskDistribution
from metarl.tasks.env import TaskEnv

__all__ = ["GoalCellTask", "GridNavigation", "GridNavigationBatched", "grid_distribution"]

SIZE = 5
HORIZON = 15
GOAL_REWARD = 1.0
STEP_REWARD = -0.1
RENDER_SIZE = 200
#: stay, up, right, down, left as ``(dx, dy)``
MOVES = np.array([[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)
#: cells that are never goals: the start and its neighbours (the paper's code)
_NOT_GOALS = {(0, 0), (0, 1), (1, 0), (1, 1)}


@dataclass(frozen=True)
class GoalCellTask:
    """The goal cell ``(x, y)``, integers in ``[0, 5)``."""

    goal: tuple[int, int]


def grid_distribution() -> FiniteTaskDistribution[GoalCellTask]:
    """The 21 goal cells, split 16 (train) / 5 (held out) by a fixed, versioned shuffle."""
    goals = [GoalCellTask((x, y)) for x, y in itertools.product(range(SIZE), repeat=2)
             if (x, y) not in _NOT_GOALS]  # fmt: skip
    return FiniteTaskDistribution(
        "GridNavigation",
        GoalCellTask,
        goals,
        num_train=16,
        num_test=5,
        description="goal cell of a 5x5 grid, one of 21 (not the start's 2x2 corner)",
    )


def _move(pos: np.ndarray, action: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, ...]:
    """One step for any leading batch shape; shared by the single and the batched env."""
    pos = np.clip(pos + MOVES[action], 0, SIZE - 1)
    reached = (pos == goal).all(axis=-1)
    reward = np.where(reached, GOAL_REWARD, STEP_REWARD)
    return pos, reward, reached


def _check_actions(action: np.ndarray) -> np.ndarray:
    a = np.asarray(action)
    if not np.issubdtype(a.dtype, np.integer) or ((a < 0) | (a >= len(MOVES))).any():
        raise ValueError(f"GridNavigation actions are integers in [0, {len(MOVES)}), got {a!r}")
    return a.astype(np.int64)


class GridNavigation(TaskEnv[np.ndarray, np.int64, GoalCellTask]):
    """The 5×5 multi-goal gridworld; see the module docstring.

    Args:
        render_mode: None or ``"rgb_array"`` (drawn: grid, goal, visited cells, agent).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}  # noqa: RUF012

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.task_distribution = grid_distribution()
        self.observation_space = spaces.Box(0.0, SIZE - 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(MOVES))
        self._pos = np.zeros(2, dtype=np.int64)
        self._goal = np.zeros(2, dtype=np.int64)
        self._visited: set[tuple[int, int]] = set()

    def _apply_task(self, task: GoalCellTask) -> None:
        self._goal = np.asarray(task.goal, dtype=np.int64)

    def _reset_episode(self) -> tuple[np.ndarray, dict[str, Any]]:
        self._pos = np.zeros(2, dtype=np.int64)
        self._visited = {(0, 0)}
        return self._pos.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._require_task()
        a = _check_actions(np.asarray(action).reshape(()))
        self._pos, reward, reached = _move(self._pos, a, self._goal)
        self._visited.add((int(self._pos[0]), int(self._pos[1])))
        return (
            self._pos.astype(np.float32),
            float(reward),
            False,
            False,
            {"is_success": bool(reached)},
        )

    def render(self) -> np.ndarray | None:
        """The grid as an RGB image (``render_mode="rgb_array"``), else None."""
        if self.render_mode is None:
            return None
        n, cell = RENDER_SIZE, RENDER_SIZE // SIZE
        img = np.full((n, n, 3), 255, dtype=np.uint8)

        def fill(x: int, y: int, color: tuple[int, int, int], pad: int) -> None:
            top = (SIZE - 1 - y) * cell  # y up, as in a plot
            img[top + pad : top + cell - pad, x * cell + pad : (x + 1) * cell - pad] = color

        for x, y in self._visited:
            fill(x, y, (200, 215, 245), 1)
        fill(int(self._goal[0]), int(self._goal[1]), (40, 170, 60), 4)
        fill(int(self._pos[0]), int(self._pos[1]), (30, 60, 200), 12)
        img[::cell, :] = 160
        img[:, ::cell] = 160
        img[-1, :] = 160
        img[:, -1] = 160
        return img


class GridNavigationBatched(BatchedTaskEnv):
    """Vectorised :class:`GridNavigation`: all rows in one NumPy expression per step."""

    def __init__(self, num_envs: int, max_episode_steps: int = HORIZON) -> None:
        super().__init__(num_envs, max_episode_steps)
        template = GridNavigation()
        self.task_distribution = template.task_distribution
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self._pos = np.zeros((num_envs, 2), dtype=np.int64)
        self._goal = np.zeros((num_envs, 2), dtype=np.int64)

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        self._goal = np.array([t.goal for t in tasks], dtype=np.int64)
        self._pos = np.zeros((self.num_envs, 2), dtype=np.int64)
        return self._pos.astype(np.float32)

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        pos, reward, reached = _move(self._pos, _check_actions(actions), self._goal)
        self._pos = np.where(active[:, None], pos, self._pos)
        terminated = np.zeros(self.num_envs, dtype=bool)
        return self._pos.astype(np.float32), reward, terminated, {"is_success": reached}
