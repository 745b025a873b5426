"""A Stable-Baselines3 ``VecEnv`` whose envs step in worker processes with a timeout: an env
that raises, dies (segfault, ``os._exit``, SIGKILL) or never returns stops SB3's training with
an :class:`~metarl.stepping.workers.EnvWorkerError` in bounded time, never a hang.

SB3's own ``SubprocVecEnv`` waits for its workers without a deadline (a hung env blocks PPO
forever) and turns a dead worker into a bare ``EOFError``; :class:`WorkerVecEnv` runs on
:class:`metarl.stepping.workers.WorkerPool`, like
``metarl.make_batched(..., backend="subprocess")``:
the ``num_envs`` envs are split over ``num_workers`` processes, every answer is awaited at most
``timeout`` seconds, and any failure kills and reaps every worker and raises an error that
names the env, the failing worker's envs and their current tasks (``info["task"]``, or the
env's ``task`` attribute), the step, and the worker's traceback (or its exit code / signal).
Workers die with their parent, so killing the trainer leaves no orphans.

Each worker steps its envs exactly as SB3's ``DummyVecEnv`` does (same seeds, options, reset
on ``done``, ``terminal_observation`` and ``TimeLimit.truncated`` in ``info``), so a training
run is the same whichever of the two steps it (``tests/test_sb3_no_hang.py`` checks PPO's
parameters are equal).

Example:
    >>> from metarl.agents.sb3_baselines import MultiTaskEnv
    >>> venv = WorkerVecEnv([lambda: MultiTaskEnv("metarl/Navigation2D-v0")] * 4,
    ...                     env_id="metarl/Navigation2D-v0", num_workers=2, timeout=30.0)
    >>> venv.seed(0)[:2]
    [0, 1]
    >>> venv.reset().shape
    (4, 2)
    >>> venv.close()
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from metarl.stepping.batched import EnvError
from metarl.stepping.workers import DEFAULT_TIMEOUT, WorkerPool

__all__ = ["WorkerVecEnv"]


def _task_of(env: gym.Env[Any, Any]) -> Any:
    """The env's current task, if it has one (a metarl task env, a MultiTaskEnv)."""
    try:
        return env.unwrapped.task  # type: ignore[attr-defined]
    except Exception:
        return None


class _Envs:
    """One worker's envs (``offset`` is the index of the first among all), stepped as SB3's
    ``DummyVecEnv`` steps them; runs in the worker and answers through ``serve``."""

    def __init__(self, env_fns: list[Callable[[], gym.Env[Any, Any]]], offset: int, env_id: str):
        self.envs = [fn() for fn in env_fns]
        self.offset, self.env_id = offset, env_id
        self.steps = [0] * len(self.envs)
        env = self.envs[0]
        self.start_info = (env.observation_space, env.action_space, self.tasks())

    def tasks(self) -> list[Any]:
        return [_task_of(env) for env in self.envs]

    def _error(self, i: int, what: str, e: Exception) -> EnvError:
        task = _task_of(self.envs[i])
        return EnvError(
            f"{self.env_id}: env {self.offset + i} raised {type(e).__name__}: {e} during "
            f"{what} (task: {task!r}); the env's own traceback is chained to this error",
            self.env_id,
            [task],
        )

    def serve(self, cmd: str, data: Any) -> Any:
        if cmd == "reset":
            seeds, options = data
            obs, infos = [], []
            for i, (env, seed, opts) in enumerate(zip(self.envs, seeds, options, strict=True)):
                try:
                    o, info = env.reset(seed=seed, **({"options": opts} if opts else {}))
                except EnvError:
                    raise
                except Exception as e:
                    raise self._error(i, "reset", e) from e
                self.steps[i] = 0
                obs.append(o)
                infos.append(info)
            return obs, infos, self.tasks()
        if cmd == "step":
            obs, rewards, dones, infos, reset_infos = [], [], [], [], []
            for i, (env, action) in enumerate(zip(self.envs, data, strict=True)):
                self.steps[i] += 1
                what = f"step {self.steps[i]} of its episode"
                try:
                    o, reward, terminated, truncated, info = env.step(action)
                    done = bool(terminated or truncated)
                    info["TimeLimit.truncated"] = bool(truncated and not terminated)
                    reset_info = None
                    if done:  # as DummyVecEnv: keep the last observation, start the next episode
                        info["terminal_observation"] = o
                        what = "the reset after its episode ended"
                        o, reset_info = env.reset()
                        self.steps[i] = 0
                except EnvError:
                    raise
                except Exception as e:
                    raise self._error(i, what, e) from e
                obs.append(o)
                rewards.append(reward)
                dones.append(done)
                infos.append(info)
                reset_infos.append(reset_info)
            return obs, rewards, dones, infos, reset_infos, self.tasks()
        if cmd == "get_attr":
            name, idx = data
            return [self.envs[i].get_wrapper_attr(name) for i in idx]
        if cmd == "set_attr":
            name, value, idx = data
            for i in idx:
                setattr(self.envs[i], name, value)
            return None
        if cmd == "env_method":
            name, args, kwargs, idx = data
            return [self.envs[i].get_wrapper_attr(name)(*args, **kwargs) for i in idx]
        if cmd == "env_is_wrapped":
            from stable_baselines3.common.env_util import is_wrapped

            wrapper, idx = data
            return [is_wrapped(self.envs[i], wrapper) for i in idx]
        raise ValueError(f"unknown command {cmd!r}")  # pragma: no cover - a bug in the parent

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # pragma: no cover - closing is best effort
                traceback.print_exc()


class _Part:
    """Builds one worker's :class:`_Envs` in the worker (picklable when the env_fns are)."""

    def __init__(self, env_fns: list[Callable[[], gym.Env[Any, Any]]], offset: int, env_id: str):
        self.env_fns, self.offset, self.env_id = env_fns, offset, env_id

    def __call__(self) -> _Envs:
        return _Envs(self.env_fns, self.offset, self.env_id)


class WorkerVecEnv(VecEnv):
    """SB3's ``VecEnv`` interface over envs stepped in worker processes with a timeout.

    Args:
        env_fns: one callable per env that builds it (run in the workers).
        env_id: the env's name in error messages.
        num_workers: processes (at most ``len(env_fns)``); envs are split as evenly as
            possible.
        timeout: seconds a worker may take to answer one reset, step or call (to start: at
            least :data:`metarl.stepping.workers.START_TIMEOUT`).
        context: multiprocessing start method; default ``fork`` where available.

    Raises:
        EnvWorkerError: an env raised, its worker died, or it did not answer in time; every
            worker is then killed and reaped, and the VecEnv is closed.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env[Any, Any]]],
        env_id: str,
        *,
        num_workers: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        context: str | None = None,
    ) -> None:
        if not env_fns:
            raise ValueError("WorkerVecEnv needs at least one env")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
        n = len(env_fns)
        bounds = np.linspace(0, n, min(num_workers, n) + 1).round().astype(int)
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self.env_id = env_id
        self._tasks: list[Any] = [None] * n
        self._pool = WorkerPool(
            env_id,
            [_Part(list(env_fns[sl]), sl.start, env_id) for sl in self._slices],
            timeout,
            label=lambda i: f"envs {self._slices[i].start}..{self._slices[i].stop - 1}",
            tasks_of=lambda i: [t for t in self._tasks[self._slices[i]] if t is not None],
            context=context,
        )
        self.processes = self._pool.processes
        obs_space, act_space, _ = self._pool.start_info[0]
        super().__init__(n, obs_space, act_space)
        self._keys, shapes, dtypes = obs_space_info(obs_space)
        self._buf = {k: np.zeros((n, *tuple(shapes[k])), dtype=dtypes[k]) for k in self._keys}
        self._actions: np.ndarray | None = None
        self._t = 0

    # -- stepping --------------------------------------------------------------------------
    def _obs(self, obs: list[Any]) -> VecEnvObs:
        for i, o in enumerate(obs):  # into buffers of the space's dtype, as DummyVecEnv
            for k in self._keys:
                self._buf[k][i] = o if k is None else o[k]
        return dict_to_obs(self.observation_space, {k: v.copy() for k, v in self._buf.items()})

    def _all(self, cmd: str, parts: list[Any], what: str) -> list[Any]:
        for i, data in enumerate(parts):
            self._pool.send(i, (cmd, data))
        return self._pool.gather(what, [True] * len(parts))

    def reset(self) -> VecEnvObs:
        parts = [(self._seeds[sl], self._options[sl]) for sl in self._slices]
        answers = self._all("reset", parts, "reset")
        obs: list[Any] = []
        for sl, (o, infos, tasks) in zip(self._slices, answers, strict=True):
            obs += o
            self.reset_infos[sl] = infos
            self._tasks[sl] = tasks
        self._reset_seeds()
        self._reset_options()
        self._t = 0
        return self._obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async(actions)")
        actions, self._actions = self._actions, None
        self._t += 1
        answers = self._all("step", [actions[sl] for sl in self._slices], f"vector step {self._t}")
        obs: list[Any] = []
        rewards: list[float] = []
        dones: list[bool] = []
        infos: list[dict[str, Any]] = []
        for sl, (o, r, d, info, reset_info, tasks) in zip(self._slices, answers, strict=True):
            obs, rewards, dones, infos = obs + o, rewards + r, dones + d, infos + info
            for i, ri in zip(range(sl.start, sl.stop), reset_info, strict=True):
                if ri is not None:
                    self.reset_infos[i] = ri
            self._tasks[sl] = tasks
        return (
            self._obs(obs),
            np.asarray(rewards, dtype=np.float32),
            np.asarray(dones, dtype=bool),
            infos,
        )

    def close(self) -> None:
        """Stop every worker (a polite close, then SIGKILL for any that lingers)."""
        self._pool.close()

    # -- attributes and methods of the envs ------------------------------------------------
    def _by_worker(self, indices: VecEnvIndices) -> list[list[int]]:
        """Local indices per worker of the envs ``indices`` selects, in order."""
        wanted = list(self._get_indices(indices))
        return [[i - sl.start for i in wanted if sl.start <= i < sl.stop] for sl in self._slices]

    def _call(self, cmd: str, indices: VecEnvIndices, make: Callable[[list[int]], Any]) -> list:
        parts = self._by_worker(indices)
        busy = [bool(p) for p in parts]
        for i, p in enumerate(parts):
            if p:
                self._pool.send(i, (cmd, make(p)))
        answers = self._pool.gather(cmd, busy)
        by_index: dict[int, Any] = {}
        for sl, p, ans in zip(self._slices, parts, answers, strict=True):
            for local, value in zip(p, ans or [None] * len(p), strict=True):
                by_index[sl.start + local] = value
        return [by_index[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("get_attr", indices, lambda idx: (attr_name, idx))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._call("set_attr", indices, lambda idx: (attr_name, value, idx))

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        return self._call(
            "env_method", indices, lambda idx: (method_name, method_args, method_kwargs, idx)
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper[Any, Any, Any, Any]], indices: VecEnvIndices = None
    ) -> list[bool]:
        return self._call("env_is_wrapped", indices, lambda idx: (wrapper_class, idx))
