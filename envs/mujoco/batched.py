"""Native batched stepping of the MuJoCo families: every row through ``mujoco.rollout``.

One env step of all ``B`` rows (tasks × episodes of a meta-batch) is one call into MuJoCo's
native rollout, which steps the rows on a persistent pool of C++ threads with the GIL released,
each thread on its own ``MjData``. Observations, rewards and terminations are then computed for
all rows at once in NumPy, with the very functions the single env uses
(:meth:`~metarl.envs.mujoco.locomotion.LocomotionEnv.reward_terms`, ``observe``, the robot's
``healthy``). Families whose task changes the model (RandParams) pass one model per row; the
models are copies made once per task and cached.

Each step starts the constraint solver cold (``initial_warmstart = 0``), as the single env
does, so row ``i`` equals a single env with the same task, seed and actions to the last bit
(``tests/test_batched.py``).

Example:
    >>> import metarl
    >>> batch = metarl.make_batched("metarl/HalfCheetahVel-v0", 40 * 20)  # backend "mujoco"
    >>> tasks = metarl.task_distribution("metarl/HalfCheetahVel-v0").split("train")[:40]
    >>> obs, info = batch.reset([t for t in tasks for _ in range(20)], seeds=0)
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from metarl.envs.mujoco import HORIZON, locomotion
from metarl.stepping.batched import BatchedTaskEnv

__all__ = ["MujocoBatchedEnv", "default_threads", "family_class"]

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
_CTRL = mujoco.mjtState.mjSTATE_CTRL.value


def default_threads() -> int:
    """The CPU cores this process may use (MuJoCo's threads are native, not Python's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def family_class(family: str | type[locomotion.LocomotionEnv]) -> type[locomotion.LocomotionEnv]:
    """The family's class from its name (or the class itself); a clear error otherwise."""
    env_cls = getattr(locomotion, family, None) if isinstance(family, str) else family
    if not (isinstance(env_cls, type) and issubclass(env_cls, locomotion.LocomotionEnv)):
        from metarl.envs.mujoco import FAMILIES

        raise TypeError(
            f"{family!r} is not a MuJoCo task family of metarl.envs.mujoco; "
            f"pass one of {', '.join(FAMILIES)}, or a LocomotionEnv subclass"
        )
    return env_cls


class MujocoBatchedEnv(BatchedTaskEnv):
    """``num_envs`` rows of a MuJoCo family stepped by ``mujoco.rollout``.

    Args:
        family: the family's class name (``"HalfCheetahVel"``) or class.
        num_envs: number of rows ``B``.
        max_episode_steps: the horizon (default 200, the registration's).
        nthread: native threads (default: the cores this process may use; 1 steps on the
            calling thread).
        xml_file: another model for the robot, as for the single env.
    """

    def __init__(
        self,
        family: str | type[locomotion.LocomotionEnv],
        num_envs: int,
        *,
        max_episode_steps: int | None = None,
        nthread: int | None = None,
        xml_file: str | None = None,
    ) -> None:
        env_cls = family_class(family)
        super().__init__(num_envs, HORIZON if max_episode_steps is None else max_episode_steps)
        self.env_cls = env_cls
        self.template = env_cls(xml_file=xml_file)  # the model, its initial state, its task space
        self.robot = env_cls.robot
        self.task_distribution = self.template.task_distribution
        self.single_observation_space = self.template.observation_space
        self.single_action_space = self.template.action_space
        self.dt = float(self.template.dt)
        self.frame_skip = int(self.template.frame_skip)
        self.changes_model = isinstance(self.template, locomotion.RandParamsEnv)
        self.ends_when_unhealthy = env_cls.ends_when_unhealthy()

        model = self.template.model
        self.nq, self.nv, self.nu = model.nq, model.nv, model.nu
        self.nstate = mujoco.mj_stateSize(model, _FULLPHYSICS)
        # FULLPHYSICS state = [time, qpos, qvel, act, ...]; these models have no act.
        self._qpos = slice(1, 1 + self.nq)
        self._qvel = slice(1 + self.nq, 1 + self.nq + self.nv)

        self.nthread = default_threads() if nthread is None else int(nthread)
        if self.nthread < 1:
            raise ValueError(f"nthread must be >= 1, got {nthread}")
        pool = 0 if self.nthread == 1 else self.nthread  # 0: run on the calling thread
        self._pool: mj_rollout.Rollout | None = mj_rollout.Rollout(nthread=pool)
        self._datas = [mujoco.MjData(model) for _ in range(max(1, pool))]
        self._models: list[mujoco.MjModel] = [model] * self.num_envs
        self._model_cache: dict[Any, mujoco.MjModel] = {}

        b = self.num_envs
        self._state = np.zeros((b, self.nstate))
        self._out = np.zeros((b, self.frame_skip, self.nstate))
        self._ctrl = np.zeros((b, self.frame_skip, self.nu))
        self._warmstart = np.zeros((b, self.nv))  # a cold solver start every step
        self._sensordata = np.zeros((b, self.frame_skip, model.nsensordata))
        self._params = np.zeros((b, 0))
        self._rngs: list[np.random.Generator] = []

    # -- rows ---------------------------------------------------------------------------------
    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        if len(self._rngs) != self.num_envs:
            self._rngs = [np.random.default_rng(s) for s in seeds]
        else:
            self._rngs = [
                rng if s is None else np.random.default_rng(s)
                for rng, s in zip(self._rngs, seeds, strict=True)
            ]
        init_qpos, init_qvel = self.template.init_qpos, self.template.init_qvel
        self._state[:] = 0.0  # time 0, as after mj_resetData
        for i, rng in enumerate(self._rngs):
            qpos, qvel = locomotion.reset_state(self.robot, rng, init_qpos, init_qvel)
            self._state[i, self._qpos] = qpos
            self._state[i, self._qvel] = qvel
        self._params = self.env_cls.task_params(tasks)
        if self.changes_model:
            if len(self._model_cache) > 4 * self.num_envs:
                self._model_cache.clear()
            for task in tasks:
                if task not in self._model_cache:
                    self._model_cache[task] = self.template.model_for(task)
            self._models = [self._model_cache[t] for t in tasks]
        return self._observe(self._state)

    def _observe(self, state: np.ndarray) -> np.ndarray:
        return locomotion.observe(
            state[:, self._qpos], state[:, self._qvel], self.template.skip, self.robot.qvel_clip
        )

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._pool is None:
            raise RuntimeError("this batched env was closed; make a new one")
        actions = np.asarray(actions, dtype=np.float64)
        everyone = bool(active.all())
        rows = slice(None) if everyone else np.flatnonzero(active)
        n = self.num_envs if everyone else len(rows)  # type: ignore[arg-type]
        start = self._state if everyone else self._state[rows]
        ctrl, out = self._ctrl[:n], self._out[:n]
        ctrl[:] = actions[rows, None, :]
        models = self._models if everyone else [self._models[i] for i in rows]  # type: ignore[union-attr]
        self._pool.rollout(
            models,
            self._datas,
            start if everyone else np.ascontiguousarray(start),
            ctrl,
            control_spec=_CTRL,
            skip_checks=True,
            nstep=self.frame_skip,
            initial_warmstart=self._warmstart[:n],
            state=out,
            sensordata=self._sensordata[:n],
        )
        end = out[:, -1]
        r = self.robot.num_root
        before = start[:, 1 : 1 + r]
        after = end[:, 1 : 1 + r]
        qpos, qvel = end[:, self._qpos], end[:, self._qvel]
        healthy = self.robot.healthy(qpos, qvel)
        terms = self.env_cls.reward_terms(
            self._params[rows], before, after, actions[rows], healthy, self.dt
        )
        # Rows that were not stepped keep their state; the base class masks their outputs.
        self._state[rows] = end
        obs = self._observe(self._state)
        reward = np.zeros(self.num_envs)
        reward[rows] = terms["reward"]
        terminated = np.zeros(self.num_envs, dtype=bool)
        if self.ends_when_unhealthy:
            terminated[rows] = ~healthy
        info: dict[str, Any] = {}
        for key, value in terms.items():
            if key != "reward":
                full = np.zeros(self.num_envs)
                full[rows] = value
                info[key] = full
        info["x_velocity"] = np.zeros(self.num_envs)
        info["x_velocity"][rows] = (after[:, 0] - before[:, 0]) / self.dt
        return obs, reward, terminated, info

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.template.close()
