"""MuJoCo locomotion task families on Gymnasium's v5 models and the official ``mujoco`` bindings.

Goal families (what the robot must do varies):

==================  ==========================================  =================================
family              reward (``info`` holds each term)           paper
==================  ==========================================  =================================
HalfCheetahVel      −|v_x − v*| − 0.05‖a‖², v* ~ U[0, 2]        Finn et al. 2017 (MAML), Sec. 5.3
HalfCheetahDir      d·v_x − 0.05‖a‖², d ∈ {−1, +1}              Finn et al. 2017, Sec. 5.3
AntVel              −|v_x − v*| − 0.005‖a‖² + 0.05, v* ~ U[0,3]  Finn et al. 2017, Sec. 5.3
AntDir              d·v_x − 0.005‖a‖² + 0.05, d ∈ {−1, +1}      Finn et al. 2017, Sec. 5.3
AntDir2D            u·v_xy − 0.5‖a‖² + 1, u a unit 2-D vector    Rakelly et al. 2019 (PEARL)
AntGoal             −‖xy − g‖₁ − 0.1‖a‖², g in the disc r ≤ 3   Rakelly et al. 2019 (PEARL)
==================  ==========================================  =================================

Dynamics families (Rothfuss et al. 2019, "ProMP", its ``rand_param_envs``; also PEARL): the
robot's usual Gymnasium v5 reward, while a task scales every body mass, every body inertia
component and every geom friction component by its own factor ``1.5^u`` and every dof damping
by ``1.3^u``, ``u ~ U(−3, 3)``: HopperRandParams, Walker2dRandParams, HalfCheetahRandParams.
A task is written into the env's own copy of the ``MjModel`` (each env loads its own), scaled
from the values the model was loaded with, so tasks never leak into each other.

Velocities are the displacement of the root joint over one env step divided by ``dt``.
The Ant families (not AntGoal) and the dynamics families of Hopper and Walker2d end an
episode when the robot is unhealthy, with Gymnasium v5's definitions; the time limit (200
steps, the papers' horizon) is in the registration (``max_episode_steps``).

Deviations from the papers, all deliberate:

* The models are Gymnasium's v5 models (not rllab's or mujoco-py's); Ant's observation and
  reward leave out contact forces (Gymnasium v4's ``use_contact_forces=False`` default; the
  papers' small contact cost is dropped), so Ant observes ``qpos[2:]`` and ``qvel`` (27
  numbers); AntGoal also observes its ``x, y`` position (29), as in PEARL.
* Each env step starts MuJoCo's constraint solver cold (``qacc_warmstart = 0``), exactly as
  ``mujoco.rollout`` does from a given state. A step is then a pure function of (state,
  action), which lets the native batched backend (:mod:`metarl.envs.mujoco.batched`) give
  the single env's trajectories exactly; the physics differs from a warm-started step only
  within the solver's tolerance.
* Model parameters are scaled without ``mj_setConst``, as ProMP's ``rand_param_envs`` did.

Version history:
    v0: as above.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium.envs.mujoco as gymnasium_mujoco
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from metarl.tasks import BoxTaskDistribution, FiniteTaskDistribution, TaskDistribution, TaskError
from metarl.tasks.env import TaskEnv, resolve_task_options

__all__ = [
    "ROBOTS",
    "AntDir",
    "AntDir2D",
    "AntGoal",
    "AntVel",
    "Direction2DTask",
    "DirectionTask",
    "GoalTask",
    "HalfCheetahDir",
    "HalfCheetahRandParams",
    "HalfCheetahVel",
    "HopperRandParams",
    "LocomotionEnv",
    "RandParamsTask",
    "Robot",
    "VelocityTask",
    "Walker2dRandParams",
]

HORIZON = 200
NUM_TRAIN, NUM_TEST = 1000, 40


# -- robots --------------------------------------------------------------------------------
# The functions shared by the single env and the batched backends take the array namespace
# ``xp``: NumPy (the single env, the native backend) or ``jax.numpy`` (the MJX backend, on
# the device), so that every backend computes observations and rewards with the same code.
def _always_healthy(qpos: np.ndarray, qvel: np.ndarray, xp: Any = np) -> np.ndarray:
    return xp.ones(qpos.shape[0], dtype=bool)


def _ant_healthy(qpos: np.ndarray, qvel: np.ndarray, xp: Any = np) -> np.ndarray:
    # Gymnasium Ant-v5: finite state and torso height in [0.2, 1.0].
    finite = xp.isfinite(qpos).all(axis=1) & xp.isfinite(qvel).all(axis=1)
    return finite & (qpos[:, 2] >= 0.2) & (qpos[:, 2] <= 1.0)


def _hopper_healthy(qpos: np.ndarray, qvel: np.ndarray, xp: Any = np) -> np.ndarray:
    # Gymnasium Hopper-v5: state[2:] in (-100, 100), height > 0.7, |angle| < 0.2.
    state = xp.concatenate([qpos[:, 2:], qvel], axis=1)
    ok = ((state > -100.0) & (state < 100.0)).all(axis=1)
    return ok & (qpos[:, 1] > 0.7) & (qpos[:, 2] > -0.2) & (qpos[:, 2] < 0.2)


def _walker_healthy(qpos: np.ndarray, qvel: np.ndarray, xp: Any = np) -> np.ndarray:
    # Gymnasium Walker2d-v5: height in (0.8, 2.0), angle in (-1, 1).
    z, angle = qpos[:, 1], qpos[:, 2]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


@dataclass(frozen=True)
class Robot:
    """What a family needs to know about a Gymnasium v5 robot.

    Attributes:
        xml_file: the model, a path or a file name among Gymnasium's MuJoCo assets.
        frame_skip: MuJoCo steps per env step.
        num_root: leading ``qpos`` entries that are the root's ground position (1 planar, 2 Ant).
        qvel_clip: observed velocities are clipped to ``±qvel_clip`` (Hopper, Walker2d).
        reset_noise: scale of the initial-state noise.
        normal_qvel_noise: initial ``qvel`` noise is ``reset_noise·N(0, 1)`` (else uniform).
        healthy: ``(qpos (B, nq), qvel (B, nv), xp) -> (B,)``; unhealthy ends the episode.
    """

    name: str
    xml_file: str
    frame_skip: int
    num_root: int
    qvel_clip: float | None
    reset_noise: float
    normal_qvel_noise: bool
    healthy: Callable[..., np.ndarray]
    terminates: bool


ROBOTS = {
    "half_cheetah": Robot("half_cheetah", "half_cheetah.xml", 5, 1, None, 0.1, True,
                          _always_healthy, False),
    "ant": Robot("ant", "ant.xml", 5, 2, None, 0.1, True, _ant_healthy, True),
    "hopper": Robot("hopper", "hopper.xml", 4, 1, 10.0, 5e-3, False, _hopper_healthy, True),
    "walker2d": Robot("walker2d", "walker2d_v5.xml", 4, 1, 10.0, 5e-3, False,
                      _walker_healthy, True),
}  # fmt: skip


def reset_state(
    robot: Robot, rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The initial ``(qpos, qvel)`` of an episode, drawn as Gymnasium v5 draws it."""
    s = robot.reset_noise
    qpos = init_qpos + rng.uniform(low=-s, high=s, size=len(init_qpos))
    if robot.normal_qvel_noise:
        qvel = init_qvel + s * rng.standard_normal(len(init_qvel))
    else:
        qvel = init_qvel + rng.uniform(low=-s, high=s, size=len(init_qvel))
    return qpos, qvel


def observe(
    qpos: np.ndarray, qvel: np.ndarray, skip: int, qvel_clip: float | None, xp: Any = np
) -> np.ndarray:
    """Observations ``(B, obs_dim)`` from ``qpos (B, nq)`` and ``qvel (B, nv)``."""
    if qvel_clip is not None:
        qvel = xp.clip(qvel, -qvel_clip, qvel_clip)
    return xp.concatenate([qpos[:, skip:], qvel], axis=1)


def resolve_model_path(xml_file: str) -> str:
    """The full path of a model file; a clear error if there is none."""
    if not isinstance(xml_file, str | os.PathLike):
        raise TypeError(f"xml_file must be a path, got {type(xml_file).__name__}")
    path = os.path.expanduser(str(xml_file))
    if os.path.isabs(path) or os.path.isfile(path):
        full = os.path.abspath(path)
    else:  # a file name among Gymnasium's MuJoCo assets
        full = os.path.join(os.path.dirname(gymnasium_mujoco.__file__), "assets", path)
    if not os.path.isfile(full):
        raise FileNotFoundError(
            f"MuJoCo model file {path!r} does not exist (looked at {full}); pass xml_file= an "
            "existing MJCF file, or leave it out to use Gymnasium's model for this robot"
        )
    return full


# -- tasks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VelocityTask:
    """A target forward velocity (m/s)."""

    velocity: float


@dataclass(frozen=True)
class DirectionTask:
    """Run forward (+1) or backward (−1)."""

    direction: float


@dataclass(frozen=True)
class Direction2DTask:
    """Run along the unit vector ``(cos angle, sin angle)``."""

    angle: float


@dataclass(frozen=True)
class GoalTask:
    """Reach the ground position ``goal = (x, y)``."""

    goal: tuple[float, float]


@dataclass(frozen=True)
class RandParamsTask:
    """Factors that scale a model's parameters, flattened row-major.

    ``body_mass`` has ``nbody`` entries, ``body_inertia`` ``3·nbody``, ``dof_damping``
    ``nv``, ``geom_friction`` ``3·ngeom`` (the world body and geom included).
    """

    body_mass: tuple[float, ...]
    body_inertia: tuple[float, ...]
    dof_damping: tuple[float, ...]
    geom_friction: tuple[float, ...]


def velocity_distribution(name: str, high: float) -> BoxTaskDistribution[VelocityTask]:
    return BoxTaskDistribution(
        name,
        VelocityTask,
        low={"velocity": 0.0},
        high={"velocity": high},
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        description=f"target velocity, uniform in [0, {high:g}]",
    )


def direction_distribution(name: str) -> FiniteTaskDistribution[DirectionTask]:
    return FiniteTaskDistribution(
        name,
        DirectionTask,
        [DirectionTask(1.0), DirectionTask(-1.0)],
        num_train=2,
        num_test=2,
        description="direction, forward or backward",
    )


class RandParamsDistribution(BoxTaskDistribution[RandParamsTask]):
    """Log-uniform scale factors: ``1.5^U(−3, 3)`` (``1.3^U(−3, 3)`` for damping), ProMP's."""

    def _check(self, task: RandParamsTask) -> None:
        for f in self.fields:
            values = getattr(task, f)
            if not isinstance(values, tuple | list | np.ndarray):
                continue  # not a sequence: the base check names the field and its length
            bad = [v for v in values if isinstance(v, int | float) and not v > 0]
            if bad:
                raise TaskError(
                    f"{self.name}: every {f} factor must be > 0 (a factor scales the model's "
                    f"parameter), got {bad[0]!r}; draw tasks from the distribution or use "
                    f"factors in [{self.low[f]:.4g}, {self.high[f]:.4g}]"
                )
        super()._check(task)


@functools.cache
def rand_params_distribution(
    name: str, nbody: int, nv: int, ngeom: int, limit: float = 3.0
) -> RandParamsDistribution:
    """The dynamics distribution for a model of these sizes (cached: one per family)."""
    shape = {"body_mass": nbody, "body_inertia": 3 * nbody, "dof_damping": nv}
    shape["geom_friction"] = 3 * ngeom
    base = {"body_mass": 1.5, "body_inertia": 1.5, "dof_damping": 1.3, "geom_friction": 1.5}
    return RandParamsDistribution(
        name,
        RandParamsTask,
        low={f: b**-limit for f, b in base.items()},
        high={f: b**limit for f, b in base.items()},
        log_scale=list(base),
        shape=shape,
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        description="body mass, inertia, friction x 1.5^U(-3,3), damping x 1.3^U(-3,3)",
    )


# -- the env ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _without_settotalmass_warning() -> Iterator[None]:
    """Load a model without MuJoCo ≥ 3.4's deprecation warning for ``settotalmass``.

    Gymnasium's ``half_cheetah.xml`` sets ``<compiler settotalmass="14">``, which newer MuJoCo
    still honours but warns about on every load (once per env: hundreds of lines for a
    vector of envs). Only that message is dropped; any other goes to the handler that was
    installed, or is printed as MuJoCo prints it.
    """
    previous = mujoco.get_mju_user_warning()

    def forward(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(forward)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class LocomotionEnv(TaskEnv[np.ndarray, np.ndarray, Any], MujocoEnv):
    """A MuJoCo robot whose task is a goal or its dynamics; subclasses are the families.

    Subclasses set ``robot`` and ``task_distribution`` (or override :meth:`_distribution`),
    and implement :meth:`task_params` and :meth:`reward_terms`. Both are vectorised over a
    batch of rows, so that the single env and the batched backend share them.

    Args:
        xml_file: another model for the robot (same joints and actuators); default
            Gymnasium's.
        render_mode, width, height: as for Gymnasium's MuJoCo envs.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"]}  # noqa: RUF012
    robot: ClassVar[Robot]
    #: leading qpos entries left out of the observation (the root's ground position)
    obs_skip: ClassVar[int | None] = None
    #: whether an unhealthy robot ends the episode (default: the robot's)
    terminates: ClassVar[bool | None] = None
    task_distribution: TaskDistribution[Any]

    def __init__(
        self,
        xml_file: str | None = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        full = resolve_model_path(xml_file or self.robot.xml_file)
        with _without_settotalmass_warning():
            MujocoEnv.__init__(
                self,
                full,
                self.robot.frame_skip,
                observation_space=None,
                render_mode=render_mode,
                width=width,
                height=height,
            )
        self.metadata = {**type(self).metadata, "render_fps": round(1.0 / self.dt)}
        skip = self.robot.num_root if self.obs_skip is None else self.obs_skip
        self.skip = skip
        obs_dim = self.model.nq - skip + self.model.nv
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self.task_distribution = self._distribution()
        self._task = None

    def _distribution(self) -> TaskDistribution[Any]:
        return type(self).task_distribution

    # -- shared with the batched backend --------------------------------------------------
    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        """The tasks as a ``(B, k)`` float array for :meth:`reward_terms`."""
        raise NotImplementedError

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """Reward terms ``(B,)`` each, and their sum under ``"reward"``.

        ``pos_*`` are the root's ground positions ``(B, num_root)`` before and after the
        step, ``action`` is ``(B, nu)``, ``healthy`` ``(B,)`` bool after the step; ``xp`` is
        the array namespace (NumPy, or ``jax.numpy`` on the MJX backend).
        """
        raise NotImplementedError

    @classmethod
    def ends_when_unhealthy(cls) -> bool:
        return cls.robot.terminates if cls.terminates is None else cls.terminates

    def model_for(self, task: Any) -> mujoco.MjModel | None:
        """A model with ``task`` applied when the task changes the model, else None."""
        return None

    # -- Gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        task = resolve_task_options(options)
        super(MujocoEnv, self).reset(seed=seed)  # seeds self.np_random (gymnasium.Env.reset)
        if task is not None:
            self.set_task(task)
        elif self._task is None:
            self.set_task(self.task_distribution.sample(self.np_random))
        mujoco.mj_resetData(self.model, self.data)
        qpos, qvel = reset_state(self.robot, self.np_random, self.init_qpos, self.init_qvel)
        self.set_state(qpos, qvel)
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"x_position": float(self.data.qpos[0])}

    def _obs(self) -> np.ndarray:
        qpos, qvel = self.data.qpos[None], self.data.qvel[None]
        return observe(qpos, qvel, self.skip, self.robot.qvel_clip)[0]

    def _step_mujoco_simulation(self, ctrl: Any, n_frames: int) -> None:
        self.data.ctrl[:] = ctrl
        self.data.qacc_warmstart[:] = 0.0  # cold solver start, as mujoco.rollout (see above)
        mujoco.mj_step(self.model, self.data, nstep=n_frames)

    def step(  # type: ignore[override]
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        task = self._require_task()
        action = np.asarray(action, dtype=np.float64)
        n = self.robot.num_root
        before = self.data.qpos[:n].copy()
        self.do_simulation(action, self.frame_skip)
        after = self.data.qpos[:n].copy()
        healthy = self.robot.healthy(self.data.qpos[None], self.data.qvel[None])
        terms = self.reward_terms(
            self.task_params([task]), before[None], after[None], action[None], healthy, self.dt
        )
        terminated = self.ends_when_unhealthy() and not bool(healthy[0])
        info: dict[str, Any] = {k: float(v[0]) for k, v in terms.items() if k != "reward"}
        info["x_position"] = float(after[0])
        info["x_velocity"] = float((after[0] - before[0]) / self.dt)
        if n == 2:
            info["y_position"] = float(after[1])
            info["y_velocity"] = float((after[1] - before[1]) / self.dt)
        if self.render_mode == "human":
            self.render()
        return self._obs(), float(terms["reward"][0]), terminated, False, info


def _ctrl_cost(action: np.ndarray, weight: float, xp: Any = np) -> np.ndarray:
    return -weight * xp.square(action).sum(axis=1)


# -- goal families ---------------------------------------------------------------------------
class HalfCheetahVel(LocomotionEnv):
    """HalfCheetah running at a target velocity (Finn et al. 2017, Sec. 5.3).

    ``reward = −|v_x − v*| − 0.05‖a‖²`` (``info``: ``reward_velocity``, ``reward_ctrl``),
    ``v* ~ U[0, 2]``; never terminates.
    """

    robot = ROBOTS["half_cheetah"]
    task_distribution = velocity_distribution("HalfCheetahVel", 2.0)
    ctrl_weight: ClassVar[float] = 0.05
    survive: ClassVar[float] = 0.0

    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        return np.array([[t.velocity] for t in tasks], dtype=np.float64)

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        v = (pos_after[:, 0] - pos_before[:, 0]) / dt
        terms = {"reward_velocity": -xp.abs(v - params[:, 0])}
        terms["reward_ctrl"] = _ctrl_cost(action, cls.ctrl_weight, xp)
        if cls.survive:
            terms["reward_survive"] = xp.full(v.shape[0], cls.survive)
        terms["reward"] = sum(terms.values())
        return terms


class HalfCheetahDir(LocomotionEnv):
    """HalfCheetah running forward or backward (Finn et al. 2017, Sec. 5.3).

    ``reward = d·v_x − 0.05‖a‖²`` (``info``: ``reward_forward``, ``reward_ctrl``),
    ``d ∈ {−1, +1}``; the two tasks are both the train and the test split, as in the paper.
    """

    robot = ROBOTS["half_cheetah"]
    task_distribution = direction_distribution("HalfCheetahDir")
    ctrl_weight: ClassVar[float] = 0.05
    survive: ClassVar[float] = 0.0

    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        return np.array([[t.direction] for t in tasks], dtype=np.float64)

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        v = (pos_after[:, 0] - pos_before[:, 0]) / dt
        terms = {"reward_forward": params[:, 0] * v}
        terms["reward_ctrl"] = _ctrl_cost(action, cls.ctrl_weight, xp)
        if cls.survive:
            terms["reward_survive"] = xp.full(v.shape[0], cls.survive)
        terms["reward"] = sum(terms.values())
        return terms


class AntVel(HalfCheetahVel):
    """Ant running forward at a target velocity (Finn et al. 2017, Sec. 5.3, rllab's ant).

    ``reward = −|v_x − v*| − 0.005‖a‖² + 0.05`` (``reward_velocity``, ``reward_ctrl``,
    ``reward_survive``), ``v* ~ U[0, 3]``; ends when the torso leaves heights [0.2, 1.0].
    """

    robot = ROBOTS["ant"]
    task_distribution = velocity_distribution("AntVel", 3.0)
    ctrl_weight = 0.005
    survive = 0.05


class AntDir(HalfCheetahDir):
    """Ant running forward or backward (Finn et al. 2017, Sec. 5.3).

    ``reward = d·v_x − 0.005‖a‖² + 0.05``; ends when the torso leaves heights [0.2, 1.0].
    """

    robot = ROBOTS["ant"]
    task_distribution = direction_distribution("AntDir")
    ctrl_weight = 0.005
    survive = 0.05


class AntDir2D(LocomotionEnv):
    """Ant running along a direction in the plane (Rakelly et al. 2019, PEARL's ant-dir).

    ``reward = u·v_xy − 0.5‖a‖² + 1`` with ``u = (cos θ, sin θ)``, ``θ ~ U[−π, π]``
    (``reward_forward``, ``reward_ctrl``, ``reward_survive``); ends when the torso leaves
    heights [0.2, 1.0].
    """

    robot = ROBOTS["ant"]
    task_distribution = BoxTaskDistribution(
        "AntDir2D",
        Direction2DTask,
        low={"angle": -math.pi},
        high={"angle": math.pi},
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        description="running direction, angle uniform in [-pi, pi]",
    )

    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        angle = np.array([t.angle for t in tasks], dtype=np.float64)
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        v = (pos_after - pos_before) / dt
        terms = {"reward_forward": (params * v).sum(axis=1)}
        terms["reward_ctrl"] = _ctrl_cost(action, 0.5, xp)
        terms["reward_survive"] = xp.ones(v.shape[0])
        terms["reward"] = sum(terms.values())
        return terms


class AntGoal(LocomotionEnv):
    """Ant walking to a goal position (Rakelly et al. 2019, PEARL's ant-goal).

    ``reward = −‖xy − g‖₁ − 0.1‖a‖²`` (``reward_goal``, ``reward_ctrl``), ``g`` uniform in
    the disc of radius 3; observes its ``x, y`` too; never terminates (as in PEARL).
    """

    robot = ROBOTS["ant"]
    obs_skip = 0
    terminates = False
    task_distribution = BoxTaskDistribution(
        "AntGoal",
        GoalTask,
        low={"goal": -3.0},
        high={"goal": 3.0},
        shape={"goal": 2},
        constraint=(lambda t: t.goal[0] ** 2 + t.goal[1] ** 2 <= 9.0, "inside the disc r <= 3"),
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        description="goal position, uniform in the disc of radius 3",
    )

    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        return np.array([t.goal for t in tasks], dtype=np.float64)

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        terms = {"reward_goal": -xp.abs(pos_after - params).sum(axis=1)}
        terms["reward_ctrl"] = _ctrl_cost(action, 0.1, xp)
        terms["reward"] = terms["reward_goal"] + terms["reward_ctrl"]
        return terms


# -- dynamics families -------------------------------------------------------------------------
_PARAM_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


class RandParamsEnv(LocomotionEnv):
    """A robot whose dynamics are the task (Rothfuss et al. 2019, ProMP's ``rand_param_envs``).

    The reward is the robot's Gymnasium v5 reward: ``v_x + 1[healthy] − ctrl_weight·‖a‖²``
    (``reward_forward``, ``reward_ctrl``, ``reward_survive``).
    """

    ctrl_weight: ClassVar[float]
    healthy_reward: ClassVar[float]

    def __init__(self, xml_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(xml_file, **kwargs)
        # The values the model was loaded with: every task scales these, never the last task's.
        self.base_params = {f: getattr(self.model, f).copy() for f in _PARAM_FIELDS}

    def _distribution(self) -> TaskDistribution[Any]:
        m = self.model
        return rand_params_distribution(type(self).__name__, m.nbody, m.nv, m.ngeom)

    def _apply_task(self, task: RandParamsTask) -> None:
        apply_rand_params(self.model, self.base_params, task)

    def model_for(self, task: Any) -> mujoco.MjModel:
        model = self.model.__copy__()
        apply_rand_params(model, self.base_params, task)
        return model

    @classmethod
    def task_params(cls, tasks: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(tasks), 0))

    @classmethod
    def reward_terms(
        cls, params: np.ndarray, pos_before: np.ndarray, pos_after: np.ndarray,
        action: np.ndarray, healthy: np.ndarray, dt: float, xp: Any = np,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        terms = {"reward_forward": (pos_after[:, 0] - pos_before[:, 0]) / dt}
        terms["reward_ctrl"] = _ctrl_cost(action, cls.ctrl_weight, xp)
        if cls.healthy_reward:  # Gymnasium v5: only while healthy
            terms["reward_survive"] = cls.healthy_reward * healthy
        terms["reward"] = sum(terms.values())
        return terms


def apply_rand_params(
    model: mujoco.MjModel, base: dict[str, np.ndarray], task: RandParamsTask
) -> None:
    """Write ``base · factors`` into ``model`` (in place)."""
    for f in _PARAM_FIELDS:
        target = getattr(model, f)
        target[:] = base[f] * np.asarray(getattr(task, f)).reshape(base[f].shape)


class HopperRandParams(RandParamsEnv):
    """Hopper with random dynamics (ProMP); ``reward = v_x + 1 − 0.001‖a‖²``, Hopper-v5's."""

    robot = ROBOTS["hopper"]
    ctrl_weight = 1e-3
    healthy_reward = 1.0


class Walker2dRandParams(RandParamsEnv):
    """Walker2d with random dynamics (ProMP); ``reward = v_x + 1 − 0.001‖a‖²``, Walker2d-v5's."""

    robot = ROBOTS["walker2d"]
    ctrl_weight = 1e-3
    healthy_reward = 1.0


class HalfCheetahRandParams(RandParamsEnv):
    """HalfCheetah with random dynamics; ``reward = v_x − 0.1‖a‖²``, HalfCheetah-v5's."""

    robot = ROBOTS["half_cheetah"]
    ctrl_weight = 0.1
    healthy_reward = 0.0
