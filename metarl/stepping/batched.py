"""The batched stepping interface: many tasks × many episodes stepped together.

A :class:`BatchedTaskEnv` holds ``B`` rows — typically ``meta_batch_size × episodes_per_task``
— each running one episode of its own task. ``reset(tasks, seeds)`` starts every row;
``step(actions)`` advances every row that is still running. Rows do **not** auto-reset: a row
that terminated or hit the horizon stays finished (its observation frozen, its reward 0)
until the next ``reset``, which is what episodic meta-RL sampling wants. ``active`` tells
which rows are still running; ``step`` returns the mask of rows it actually stepped in
``info["active"]``, the mask a sampler stores with the transition.

Arrays are ``(B, ...)``: observations ``(B, *obs_shape)``, actions ``(B, *act_shape)``,
rewards ``(B,)`` float64, terminated/truncated ``(B,)`` bool.

Backends:

* vectorised NumPy for the fast families (2D navigation, bandits, tabular MDPs),
  next to each env in ``metarl.envs``;
* :class:`GenericBatchedEnv`, a loop over single Gymnasium envs, for any task env;
* later: native MuJoCo (``mujoco.rollout``), pure torch on the GPU, Ray.

Every backend must give, row by row, the observations and rewards of the single env for the
same task, seed and actions; ``tests/test_batched.py`` checks that for every registered id.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks import TaskDistribution, TaskError

__all__ = [
    "BatchedNoiseStream",
    "BatchedTaskEnv",
    "EnvError",
    "GenericBatchedEnv",
    "NoiseStream",
    "row_seeds",
]


class EnvError(RuntimeError):
    """An env raised inside batched stepping; says which env, step and tasks, and chains the
    original exception (its traceback is printed with this one).

    Attributes:
        env_id: the task family.
        tasks: the tasks of the rows involved (distinct, in row order).
        iteration: the training iteration it happened in, once a training loop adds it
            (:meth:`at_iteration`); None outside training.
    """

    iteration: int | None = None

    def __init__(self, message: str, env_id: str, tasks: list[Any]) -> None:
        super().__init__(message)
        self.env_id = env_id
        self.tasks = tasks

    def at_iteration(self, iteration: int, checkpoint: str = "") -> EnvError:
        """The same error (same type and attributes) with the training iteration in front of
        its message and where the last checkpoint is kept — a training loop raises it
        ``from`` this one, as :func:`metarl.numerics.at_iteration` does for NaNs."""
        from metarl.numerics import at_iteration

        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        first, nl, rest = str(self).partition("\n")  # a worker's traceback stays last
        head = at_iteration(RuntimeError(first.rstrip(".")), iteration, checkpoint)
        new.args = (head + nl + rest,)
        new.iteration = iteration
        return new


#: Errors that are the caller's (bad actions, a bad task) keep their type — a note adds the
#: env and tasks; anything else an env raises becomes an :class:`EnvError` chained to it.
_PASS_THROUGH = (EnvError, TaskError, ValueError, TypeError)


def _note(e: BaseException, context: EnvError) -> None:
    if not isinstance(e, EnvError) and hasattr(e, "add_note"):  # Python >= 3.11
        e.add_note(str(context).replace("the env's own traceback is chained to this error", ""))


def _tasks_text(tasks: Sequence[Any]) -> str:
    distinct = list(dict.fromkeys(tasks))
    return ", ".join(repr(t) for t in distinct[:3]) + (" ..." if len(distinct) > 3 else "")


def row_seeds(seeds: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """Per-row seeds: an int ``s`` gives ``s, s+1, ...``; None leaves rows unseeded (as does
    a None entry of a list: the subprocess backend hands each worker its rows' part)."""
    if seeds is None:
        return [None] * num_envs
    if isinstance(seeds, int | np.integer):
        return [int(seeds) + i for i in range(num_envs)]
    seeds = list(seeds)
    if len(seeds) != num_envs:
        raise ValueError(f"got {len(seeds)} seeds for {num_envs} rows; pass one per row or an int")
    return [None if s is None else int(s) for s in seeds]


class BatchedTaskEnv(abc.ABC):
    """``B`` episodes of (possibly different) tasks, stepped together.

    Subclasses set ``num_envs``, ``single_observation_space``, ``single_action_space``,
    ``horizon`` and ``task_distribution``, and implement :meth:`_reset_rows` and
    :meth:`_step_rows`. The base class handles task validation, seeds, the horizon and the
    per-row done masks.
    """

    num_envs: int
    #: The family's id (set by ``metarl.make_batched``), for error messages.
    env_id: str = ""
    single_observation_space: gym.Space[Any]
    single_action_space: gym.Space[Any]
    horizon: int
    task_distribution: TaskDistribution[Any]

    def __init__(self, num_envs: int, horizon: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if horizon < 1:
            raise ValueError(f"horizon (max episode steps) must be >= 1, got {horizon}")
        self.num_envs = int(num_envs)
        self.horizon = int(horizon)
        self.active = np.zeros(self.num_envs, dtype=bool)
        self.tasks: list[Any] = []
        self.t = 0
        self._obs: np.ndarray | None = None

    # -- backends implement these ----------------------------------------------------------
    @abc.abstractmethod
    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        """Start every row's episode; returns observations ``(B, *obs_shape)``."""

    @abc.abstractmethod
    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the rows where ``active``; returns (obs, reward, terminated, info).

        Values in inactive rows are ignored by the caller.
        """

    # -- public API --------------------------------------------------------------------------
    def reset(
        self, tasks: Sequence[Any], seeds: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start one episode per row; ``tasks`` has one task per row (length ``B``)."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(
                f"reset needs one task per row: got {len(tasks)} tasks for {self.num_envs} rows "
                "(repeat each task once per episode, e.g. [t for t in tasks for _ in range(k)])"
            )
        validated: dict[int, Any] = {}
        for task in tasks:
            if id(task) not in validated:
                validated[id(task)] = self.task_distribution.validate(task)
        self.tasks = tasks
        per_row = row_seeds(seeds, self.num_envs)
        try:
            obs = self._reset_rows(tasks, per_row)
        except _PASS_THROUGH as e:
            _note(e, self._error("reset", tasks, e))
            raise
        except Exception as e:
            raise self._error("reset", tasks, e) from e
        self.active[:] = True
        self.t = 0
        self._obs = obs
        return obs.copy(), {"active": self.active.copy()}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every active row by one step.

        Returns ``(obs, reward, terminated, truncated, info)``; ``info["active"]`` is the mask
        of rows this call stepped. Finished rows keep their last observation and get reward 0.
        """
        if self._obs is None:
            raise TaskError("step() called before reset(tasks); reset the batch first")
        if not self.active.any():
            raise RuntimeError(
                "every row has finished its episode; call reset(tasks) to start new episodes"
            )
        actions = np.asarray(actions)
        act_shape = self.single_action_space.shape or ()
        if actions.shape != (self.num_envs, *act_shape):
            raise ValueError(
                f"actions must have shape {(self.num_envs, *act_shape)} (num_envs, *action_shape), "
                f"got {actions.shape}"
            )
        stepped = self.active.copy()
        try:
            obs, reward, terminated, info = self._step_rows(actions, stepped)
        except _PASS_THROUGH as e:
            rows = [t for t, a in zip(self.tasks, stepped, strict=True) if a]
            _note(e, self._error(f"step {self.t + 1}", rows, e))
            raise
        except Exception as e:
            rows = [t for t, a in zip(self.tasks, stepped, strict=True) if a]
            raise self._error(f"step {self.t + 1}", rows, e) from e
        self.t += 1
        reward = np.where(stepped, reward, 0.0).astype(np.float64)
        terminated = terminated & stepped
        truncated = stepped & ~terminated & (self.t >= self.horizon)
        obs = np.where(stepped.reshape((-1,) + (1,) * (obs.ndim - 1)), obs, self._obs)
        self._obs = obs
        self.active &= ~(terminated | truncated)
        info["active"] = stepped
        return obs.copy(), reward, terminated, truncated, info

    def _error(self, what: str, tasks: Sequence[Any], e: BaseException) -> EnvError:
        name = self.env_id or type(self).__name__
        return EnvError(
            f"{name}: {what} raised {type(e).__name__}: {e} (task: {_tasks_text(tasks)}); the "
            "env's own traceback is chained to this error",
            name,
            list(dict.fromkeys(tasks)),
        )

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release resources (threads, processes, models)."""


class GenericBatchedEnv(BatchedTaskEnv):
    """The fallback backend: ``B`` single task envs stepped in a Python loop.

    Works for any task env, including a user's; slower than a vectorised backend.

    Args:
        env_fn: builds one task env (``lambda: gymnasium.make("metarl/...")`` or a class).
        num_envs: number of rows ``B``.
        horizon: maximum steps per episode; default: the env's ``spec.max_episode_steps``.
    """

    def __init__(
        self, env_fn: Callable[[], gym.Env[Any, Any]], num_envs: int, horizon: int | None = None
    ) -> None:
        self.envs = [env_fn() for _ in range(num_envs)]
        first = self.envs[0]
        if not hasattr(first.unwrapped, "set_task"):
            raise TypeError(
                f"{type(first.unwrapped).__name__} is not a task env (no set_task); build it with "
                "metarl.tasks.env.TaskEnv or metarl.tasks.env.make_task_env"
            )
        if horizon is None:
            spec = first.spec
            horizon = spec.max_episode_steps if spec is not None else None
            if horizon is None:
                raise ValueError(
                    "the env has no registered max_episode_steps; pass horizon= explicitly"
                )
        super().__init__(num_envs, horizon)
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.task_distribution = first.unwrapped.task_distribution  # type: ignore[attr-defined]

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        obs = [
            env.reset(seed=seed, options={"task": task})[0]
            for env, task, seed in zip(self.envs, tasks, seeds, strict=True)
        ]
        return np.stack([np.asarray(o) for o in obs])

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        assert self._obs is not None
        obs = self._obs.copy()
        reward = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        success = np.zeros(self.num_envs, dtype=bool)
        reported = True  # every stepped row's info holds "is_success"
        for i in np.flatnonzero(active):
            try:
                o, r, term, _trunc, row_info = self.envs[i].step(actions[i])
            except _PASS_THROUGH:
                raise
            except Exception as e:  # name the row's own task, not the whole batch's
                raise self._error(f"step {self.t + 1} of row {i}", [self.tasks[i]], e) from e
            obs[i] = o
            reward[i] = r
            terminated[i] = term
            if "is_success" in row_info:
                success[i] = bool(row_info["is_success"])
            else:
                reported = False
        return obs, reward, terminated, ({"is_success": success} if reported else {})

    def close(self) -> None:
        for env in self.envs:
            env.close()


class NoiseStream:
    """Uniform and normal noise drawn in fixed-size chunks from one generator.

    A single env and a vectorised batch must draw exactly the same numbers to give the same
    trajectories. Both draw noise in chunks of ``chunk`` steps through this class: the single
    env one generator call per chunk, the batch one call per row per chunk — amortised, so
    steps stay loop-free.
    """

    def __init__(self, rng: np.random.Generator, width: int, chunk: int = 64) -> None:
        self.rng = rng
        self.width = width
        self.chunk = chunk
        self._buf = np.empty((0, width))
        self._i = 0

    def draw_chunk(self) -> np.ndarray:
        """The next chunk, ``(chunk, width)`` uniforms in [0, 1)."""
        return self.rng.random((self.chunk, self.width))

    def next(self) -> np.ndarray:
        """The noise for one step, ``(width,)``."""
        if self._i >= len(self._buf):
            self._buf = self.draw_chunk()
            self._i = 0
        out = self._buf[self._i]
        self._i += 1
        return out


class BatchedNoiseStream:
    """Per-row :class:`NoiseStream`: row ``i`` draws exactly what a single env seeded with
    ``seeds[i]`` draws, one generator call per row per ``chunk`` steps."""

    def __init__(self, width: int, chunk: int = 64) -> None:
        self.width = width
        self.chunk = chunk
        self.rngs: list[np.random.Generator] = []
        self._buf = np.empty((0, chunk, width))
        self._i = 0

    def reset(self, seeds: list[int | None]) -> None:
        """Reseed the rows whose seed is given; keep the others' generators running."""
        if len(self.rngs) != len(seeds):
            self.rngs = [np.random.default_rng(s) for s in seeds]
        else:
            self.rngs = [
                rng if s is None else np.random.default_rng(s)
                for rng, s in zip(self.rngs, seeds, strict=True)
            ]
        self._buf = np.zeros((len(seeds), self.chunk, self.width))
        self._i = self.chunk  # the first step draws

    def next(self, active: np.ndarray) -> np.ndarray:
        """The noise for one step of every row, ``(B, width)``; only active rows draw."""
        if self._i >= self.chunk:
            for row in np.flatnonzero(active):
                self._buf[row] = self.rngs[row].random((self.chunk, self.width))
            self._i = 0
        out = self._buf[:, self._i]
        self._i += 1
        return out
