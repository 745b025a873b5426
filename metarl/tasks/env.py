"""Environments that take a task through the Gymnasium API.

Every task environment of metarl — ours and a user's — supports

* ``env.unwrapped.set_task(task)``: the task for the following episodes;
* ``env.reset(options={"task": task})``: the same, at reset;
* ``env.unwrapped.task``: the current task;
* ``env.unwrapped.task_distribution``: the :class:`~metarl.tasks.TaskDistribution` the task
  must belong to (a task outside it is refused with :class:`~metarl.tasks.TaskError`).

A reset with no task and none set draws one from the distribution with the env's seeded
``np_random``, so every task env is also a plain, deterministic Gymnasium env (that is what
Gymnasium's and Stable-Baselines3's checkers see).

Two ways in:

* :class:`TaskEnv`, a base class for environments written for metarl: implement
  ``_apply_task`` (optional), ``_reset_episode`` and ``step``.
* :func:`make_task_env`, which turns *any* Gymnasium env class with a parameter into a task
  env class, given a task distribution and a function that writes a task into the env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gymnasium as gym
import numpy as np

from metarl.tasks import TaskDistribution, TaskError

__all__ = ["TaskEnv", "make_task_env", "resolve_task_options"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")
TaskT = TypeVar("TaskT")

_ALLOWED_OPTIONS = frozenset({"task"})


def resolve_task_options(options: dict[str, Any] | None) -> Any:
    """The task in reset ``options`` (or None); refuses options it does not know."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise TypeError(f"reset options must be a dict, got {type(options).__name__}")
    unknown = set(options) - _ALLOWED_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {sorted(unknown)}; task envs accept options={{'task': task}}"
        )
    return options.get("task")


class TaskEnv(gym.Env[ObsT, ActT], Generic[ObsT, ActT, TaskT]):
    """Base class of a task environment.

    Subclasses set ``self.task_distribution`` in ``__init__`` and implement
    :meth:`_reset_episode` (returns ``(obs, info)`` for the current task, using
    ``self.np_random``) and ``step``. Override :meth:`_apply_task` when setting a task must
    change more than ``self.task`` (a model's masses, a goal marker...).
    """

    task_distribution: TaskDistribution[TaskT]
    _task: TaskT | None = None

    @property
    def task(self) -> TaskT:
        """The current task; a :class:`TaskError` if none was set or drawn yet."""
        if self._task is None:
            raise TaskError(
                f"{type(self).__name__} has no task yet: call env.unwrapped.set_task(task) or "
                "env.reset(options={'task': task}) (a plain reset() draws one)"
            )
        return self._task

    def set_task(self, task: TaskT) -> None:
        """Use ``task`` from the next reset on; refuses a task outside the distribution."""
        task = self.task_distribution.validate(task)
        self._apply_task(task)
        self._task = task

    def _apply_task(self, task: TaskT) -> None:
        """Hook: write ``task`` into the simulation. The default stores it only."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsT, dict[str, Any]]:
        super().reset(seed=seed)
        task = resolve_task_options(options)
        if task is not None:
            self.set_task(task)
        elif self._task is None:
            self.set_task(self.task_distribution.sample(self.np_random))
        return self._reset_episode()

    def _reset_episode(self) -> tuple[ObsT, dict[str, Any]]:
        raise NotImplementedError

    def _require_task(self) -> TaskT:
        if self._task is None:
            raise TaskError(f"{type(self).__name__}.step() called before reset(); call reset first")
        return self._task


def make_task_env(
    env_cls: type[gym.Env[Any, Any]],
    task_distribution: TaskDistribution[Any],
    apply_task: Callable[[Any, Any], None] | None = None,
    *,
    name: str | None = None,
) -> type[gym.Env[Any, Any]]:
    """Turn any Gymnasium env class into a task env class.

    The returned class is a subclass of ``env_cls`` (so ``env.unwrapped`` is an instance of
    it and everything the env did before still works) that adds ``set_task``, ``task``,
    ``task_distribution`` and ``reset(options={"task": task})``.

    Args:
        env_cls: the environment class, constructed with its usual arguments.
        task_distribution: the tasks it accepts.
        apply_task: ``apply_task(env, task)`` writes a task into the env, e.g.
            ``lambda env, task: setattr(env, "g", task.gravity)``. It is called on
            ``set_task`` and must make every later episode follow the task. None: the env
            has a ``set_task(task)`` of its own, which is called with the (validated) task.
        name: the new class's name (default ``env_cls.__name__ + "Task"``).

    An env that already owns ``set_task`` keeps it: it is what ``apply_task=None`` calls, and
    an ``apply_task`` that calls ``env.set_task(task)`` reaches it too (not the ``set_task``
    added here, so nothing recurses). An env that assigns ``self.task`` itself must assign a
    task of the distribution (it becomes the current task); any other value is refused with
    what to rename.

    Example:
        >>> from dataclasses import dataclass
        >>> from gymnasium.envs.classic_control.pendulum import PendulumEnv
        >>> from metarl.tasks import BoxTaskDistribution
        >>> @dataclass(frozen=True)
        ... class GravityTask:
        ...     gravity: float
        >>> dist = BoxTaskDistribution("PendulumGravity", GravityTask,
        ...                            low={"gravity": 5.0}, high={"gravity": 15.0})
        >>> PendulumGravity = make_task_env(PendulumEnv, dist,
        ...                                 lambda env, task: setattr(env, "g", task.gravity))
        >>> env = PendulumGravity()
        >>> obs, info = env.reset(seed=0, options={"task": GravityTask(12.0)})
        >>> env.g, env.task
        (12.0, GravityTask(gravity=12.0))
    """
    if not (isinstance(env_cls, type) and issubclass(env_cls, gym.Env)):
        raise TypeError(f"env_cls must be a gymnasium.Env subclass, got {env_cls!r}")
    if not isinstance(task_distribution, TaskDistribution):
        raise TypeError(
            f"task_distribution must be a metarl TaskDistribution, got {task_distribution!r}"
        )
    own_set_task = getattr(env_cls, "set_task", None)
    if own_set_task is not None and not callable(own_set_task):
        own_set_task = None
    if apply_task is None:
        if own_set_task is None:
            raise TypeError(
                f"{env_cls.__name__} has no set_task of its own: pass apply_task, a function "
                "(env, task) -> None that writes a task into the env"
            )
        apply_task = own_set_task
    if not callable(apply_task):
        raise TypeError("apply_task must be a function (env, task) -> None")
    write_task = apply_task
    task_type = task_distribution.task_type.__name__

    def set_task(self: Any, task: Any) -> None:
        if getattr(self, "_applying_task", False):
            # apply_task called env.set_task: that means the env's own setter.
            if own_set_task is None:
                raise TypeError(
                    f"apply_task called env.set_task, and {env_cls.__name__} has none of its "
                    "own: write the task into the env's attributes in apply_task instead"
                )
            own_set_task(self, task)
            return
        task = task_distribution.validate(task)
        self._applying_task = True
        try:
            write_task(self, task)
        finally:
            self._applying_task = False
        self._task = task

    def task(self: Any) -> Any:
        if getattr(self, "_task", None) is None:
            raise TaskError(
                f"{type(self).__name__} has no task yet: call set_task(task) or "
                "reset(options={'task': task})"
            )
        return self._task

    def assign_task(self: Any, value: Any) -> None:
        # The env's own code assigns self.task (in __init__ or its own set_task).
        if value is None or isinstance(value, task_distribution.task_type):
            self._task = None if value is None else task_distribution.validate(value)
            return
        raise TypeError(
            f"{env_cls.__name__} assigns self.task = {value!r}, but in a task env `task` is "
            f"the current {task_type} of {task_distribution.name}: store that value under "
            f"another name in {env_cls.__name__} (e.g. self.task_params), or assign a "
            f"{task_type}"
        )

    def reset(self: Any, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        task = resolve_task_options(options)
        if seed is not None or getattr(self, "_task_rng", None) is None:
            # A generator of its own for drawing tasks, so the env's own random stream
            # (initial states...) is exactly that of the plain env for the same seed.
            self._task_rng = np.random.default_rng(None if seed is None else [seed, 0x7A5C])
        if task is not None:
            self.set_task(task)
        elif getattr(self, "_task", None) is None:
            self.set_task(task_distribution.sample(self._task_rng))
        return env_cls.reset(self, seed=seed)

    namespace = {
        "task_distribution": task_distribution,
        "set_task": set_task,
        "task": property(task, assign_task),
        "reset": reset,
        "__doc__": f"{env_cls.__name__} with tasks from {task_distribution!r}.",
        "__module__": env_cls.__module__,
    }
    return type(name or f"{env_cls.__name__}Task", (env_cls,), namespace)
