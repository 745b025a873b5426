"""The MuJoCo families on MJX (MuJoCo XLA): physics, observations and rewards on JAX's device.

An optional backend (extra ``mjx``: ``pip install -e ".[mjx]"``, which brings ``jax`` and
``mujoco-mjx``) of the batched stepping interface, for accelerators: all ``B`` rows of a
meta-batch are one ``jax.vmap`` of ``mjx.step`` over the rows, ``frame_skip`` physics steps
per env step inside one compiled call, and the observations, rewards and terminations are
computed on the same device with the very functions the single env uses
(:meth:`~metarl.envs.mujoco.locomotion.LocomotionEnv.reward_terms`, ``observe``, the robot's
``healthy``, called with ``xp=jax.numpy``). Families whose task changes the model
(RandParams) put the task's fields (``body_mass``, ``body_inertia``, ``dof_damping``,
``geom_friction``) in the model with a leading row dimension: one compiled program steps
every row with its own dynamics.

Two faces on the same engine:

* :class:`MjxBatchedEnv`, the NumPy interface of :class:`~metarl.stepping.batched.BatchedTaskEnv`
  (``metarl.make_batched(env_id, B, backend="mjx")``): one device → host copy of the
  step's outputs per step;
* :class:`MjxTorchBatchedEnv`, the torch interface of
  :class:`~metarl.stepping.torch_batched.TorchBatchedTaskEnv` (``BatchedSampler(backend="mjx")``,
  ``--sampler mjx``): observations, rewards and masks reach torch through DLPack with no
  copy (``torch.from_dlpack`` of the JAX arrays, on the CPU or the same GPU), and the
  policy's actions go back the same way.

Initial states are drawn on the host by the same per-row NumPy generators as the native
backend (:func:`metarl.envs.mujoco.locomotion.reset_state`), so the same seeds give the same
initial states to the last bit. The physics then differs from the native backend's:
MJX is another implementation of MuJoCo's pipeline (its own collision routines, a
fixed-iteration line search in the solver), and runs in float32 unless JAX's
``jax_enable_x64`` is set. Plane–capsule contacts get native MuJoCo's tangent frame
(:func:`native_contact_frames`; MJX's own differs for steep capsules, which rotated the
friction cone of Ant's feet). Each env step starts the solver cold (``qacc_warmstart = 0``) as
the native backend does. ``tests/test_mjx_backend.py`` states and checks the agreement with
the native backend over short horizons; over long ones trajectories of these chaotic systems
drift apart, as two MuJoCo builds' would.

Compilation: the first step of a robot × batch size compiles the physics (tens of seconds on
a CPU); the compiled program is shared by every env of the same robot and size in the
process (HalfCheetahVel and HalfCheetahDir share theirs).

Example:
    >>> import metarl
    >>> batch = metarl.make_batched("metarl/HalfCheetahVel-v0", 40 * 20, backend="mjx")
    >>> tasks = metarl.task_distribution("metarl/HalfCheetahVel-v0").split("train")[:40]
    >>> obs, info = batch.reset([t for t in tasks for _ in range(20)], seeds=0)
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metarl.envs.mujoco import HORIZON, locomotion
from metarl.stepping.batched import BatchedTaskEnv, row_seeds
from metarl.stepping.torch_batched import TorchBatchedTaskEnv

__all__ = [
    "MjxBatchedEnv",
    "MjxEngine",
    "MjxTorchBatchedEnv",
    "available",
    "import_mjx",
    "jax_device",
]

INSTALL_HINT = (
    'pip install -e ".[mjx]" (JAX and MuJoCo\'s MJX, mujoco-mjx; on an NVIDIA GPU also '
    "`pip install -U \"jax[cuda12]\"`), or use backend 'mujoco' (the native CPU backend)"
)


def import_mjx() -> tuple[Any, Any, Any]:
    """``(jax, jax.numpy, mujoco.mjx)``; an ImportError that says what to install if absent."""
    try:
        import jax
        import jax.numpy as jnp

        # mujoco.mjx prints a line on import when MuJoCo Warp (its other engine) is absent.
        with contextlib.redirect_stdout(io.StringIO()):
            from mujoco import mjx
    except ImportError as e:
        raise ImportError(
            f"the 'mjx' backend needs JAX and MuJoCo's MJX, which are not installed ({e}); "
            + INSTALL_HINT
        ) from e
    return jax, jnp, mjx


def available() -> bool:
    """Whether the ``mjx`` extra is installed (JAX and ``mujoco.mjx`` import)."""
    try:
        import_mjx()
    except ImportError:
        return False
    return True


def jax_device(device: Any = None) -> Any:
    """The JAX device for ``device``: None (JAX's default), a JAX device, ``"cpu"``,
    ``"gpu"``/``"cuda"`` (``":k"`` for the k-th) or a ``torch.device``; a clear error when
    JAX has no such device."""
    jax, _, _ = import_mjx()
    if device is None:
        return jax.devices()[0]
    if not isinstance(device, str | torch.device):
        return device  # a JAX device
    dev = torch.device("cuda" if str(device) == "gpu" else str(device).replace("gpu", "cuda"))
    platform = "cpu" if dev.type == "cpu" else "gpu"
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    index = dev.index or 0
    if index >= len(devices):
        have = ", ".join(str(d) for d in jax.devices())
        raise ValueError(
            f"JAX has no device {str(device)!r} here (it has: {have}); for an NVIDIA GPU install "
            'JAX\'s CUDA build (`pip install -U "jax[cuda12]"`), or use device "cpu"'
        )
    return devices[index]


def torch_device_of(jax_dev: Any) -> torch.device:
    """The torch device that shares memory with a JAX device (DLPack)."""
    if jax_dev.platform == "cpu":
        return torch.device("cpu")
    if jax_dev.platform == "gpu":
        return torch.device("cuda", jax_dev.id)
    raise ValueError(f"no torch device for JAX's {jax_dev.platform} device {jax_dev}")


# -- contact frames as native MuJoCo builds them --------------------------------------------
#
# A contact's tangent frame orients the pyramidal friction cone (``cone="pyramidal"``, the
# default, which the MuJoCo families use): its four edges are normal ± μ·tangent₁ and
# normal ± μ·tangent₂, so two frames rotated about the normal are two different friction
# models. For a plane–capsule contact native MuJoCo takes tangent₁ along the capsule's axis
# projected onto the plane, whatever the capsule's tilt (``mjc_PlaneCapsule`` hands the axis
# to ``mju_makeFrame``, which orthogonalises it against the normal). MJX's ``plane_capsule``
# does the same only while that projection is at least 0.5 long, i.e. the capsule lies
# within 60° of the plane; a steeper capsule gets the fixed frame (y, or z) instead. Ant's
# legs meet the ground steeper than that, so at every foot contact MJX's cone was rotated
# against native MuJoCo's, the friction forces differed (by tens of N at the first contact,
# with the same contact point, distance, normal and solver) and the trajectories parted
# (found by comparing efc_J, efc_aref and efc_force row by row in float64; the history is in
# README, "MuJoCo on an accelerator"). HalfCheetah's, Hopper's and Walker's capsules move in
# the x–z plane, where the two frames are the same up to the order and sign of the edges.
#
# The fix: MJX's collision step is wrapped, while our programs are traced, so that
# plane–capsule contacts get native MuJoCo's frame; everything else is MJX's own code.
_CAPSULE_FRAME_EPS = 1e-6  # below this projected length (axis ⟂ plane) MJX's frame is kept


def _native_capsule_frames(m: Any, d: Any) -> Any:
    """``d`` with the frames of its plane–capsule contacts as native MuJoCo makes them."""
    import mujoco

    _, jnp, _ = import_mjx()
    contact = d._impl.contact
    if contact.frame.shape[0] == 0:
        return d
    types = np.asarray(m.geom_type)
    geom = contact.geom
    # Which side is the plane: MJX orders a pair by geom type (the plane first), as native does.
    is_pair = (jnp.asarray(types)[geom[:, 0]] == int(mujoco.mjtGeom.mjGEOM_PLANE)) & (
        jnp.asarray(types)[geom[:, 1]] == int(mujoco.mjtGeom.mjGEOM_CAPSULE)
    )
    normal = contact.frame[:, 0, :]
    axis = d.geom_xmat[geom[:, 1]][:, :, 2]  # the capsule's axis (its local z) in the world
    tangent = axis - normal * jnp.sum(normal * axis, axis=-1, keepdims=True)
    length = jnp.linalg.norm(tangent, axis=-1, keepdims=True)
    use = is_pair[:, None] & (length > _CAPSULE_FRAME_EPS)
    tangent = jnp.where(use, tangent / jnp.where(use, length, 1.0), contact.frame[:, 1, :])
    bitangent = jnp.where(use, jnp.cross(normal, tangent), contact.frame[:, 2, :])
    frame = jnp.stack([normal, tangent, bitangent], axis=1)
    return d.tree_replace({"_impl.contact": contact.replace(frame=frame)})


@contextlib.contextmanager
def native_contact_frames() -> Any:
    """While tracing MJX's step inside this context, plane–capsule contacts get native
    MuJoCo's tangent frame (see the note above :func:`_native_capsule_frames`).

    MJX's forward pass looks its collision function up on the ``collision_driver`` module at
    call time, so replacing that attribute for the duration of a trace changes the traced
    program and nothing else (MJX's own calls outside this context are untouched)."""
    from mujoco.mjx._src import collision_driver

    original = collision_driver.collision

    def collision(m: Any, d: Any) -> Any:
        return _native_capsule_frames(m, original(m, d))

    with _PATCH_LOCK:
        collision_driver.collision = collision
        try:
            yield
        finally:
            collision_driver.collision = original


_PATCH_LOCK = threading.RLock()


# -- compiled programs: module-level, so every env of the same robot and batch size shares them
@functools.cache
def _programs() -> dict[str, Any]:
    jax, jnp, mjx = import_mjx()

    @functools.partial(jax.jit, static_argnames=("frame_skip",))
    def physics(model: Any, fields: Any, data: Any, ctrl: Any, active: Any, frame_skip: int) -> Any:
        """One env step of every row: ``frame_skip`` MJX steps from a cold solver start.
        ``fields`` holds per-row model fields (leading row dimension), or is empty."""

        def row(f: Any, d: Any, c: Any) -> Any:
            m = model.replace(**f) if f else model
            d = d.replace(ctrl=c, qacc_warmstart=jnp.zeros_like(d.qacc_warmstart))
            return jax.lax.fori_loop(0, frame_skip, lambda _, x: mjx.step(m, x), d)

        with native_contact_frames():  # runs while the program is traced
            new = jax.vmap(row)(fields, data, ctrl)

        def keep(n: Any, o: Any) -> Any:  # finished rows keep their state
            return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

        return new.replace(
            qpos=keep(new.qpos, data.qpos),
            qvel=keep(new.qvel, data.qvel),
            time=keep(new.time, data.time),
        )

    @functools.partial(jax.jit, static_argnames=("env_cls", "skip", "qvel_clip", "dt"))
    def outputs(
        params: Any, before: Any, data: Any, action: Any, env_cls: Any, skip: int,
        qvel_clip: float | None, dt: float,
    ) -> tuple[Any, Any, Any, dict[str, Any]]:  # fmt: skip
        """Observations, rewards, healthy masks and reward terms of every row, on the device."""
        qpos, qvel = data.qpos, data.qvel
        r = env_cls.robot.num_root
        after = qpos[:, :r]
        healthy = env_cls.robot.healthy(qpos, qvel, xp=jnp)
        terms = env_cls.reward_terms(params, before, after, action, healthy, dt, xp=jnp)
        terms["x_velocity"] = (after[:, 0] - before[:, 0]) / dt
        obs = locomotion.observe(qpos, qvel, skip, qvel_clip, xp=jnp)
        return obs, terms.pop("reward"), healthy, terms

    @jax.jit
    def start(data0: Any, qpos: Any, qvel: Any) -> Any:
        """Every row at time 0 in the given ``(qpos, qvel)``, the rest as after ``make_data``."""
        b = qpos.shape[0]
        batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (b, *x.shape)), data0)
        return batch.replace(qpos=qpos, qvel=qvel)

    @functools.partial(jax.jit, static_argnames=("skip", "qvel_clip"))
    def observe(data: Any, skip: int, qvel_clip: float | None) -> Any:
        return locomotion.observe(data.qpos, data.qvel, skip, qvel_clip, xp=jnp)

    return {"physics": physics, "outputs": outputs, "start": start, "observe": observe}


class MjxEngine:
    """The state of ``num_envs`` rows of a MuJoCo family on a JAX device, and its steps.

    Args:
        family: the family's class name (``"HalfCheetahVel"``) or class.
        num_envs: number of rows ``B``.
        device: the JAX device (see :func:`jax_device`); default JAX's first.
        xml_file: another model for the robot, as for the single env.
    """

    def __init__(
        self,
        family: str | type[locomotion.LocomotionEnv],
        num_envs: int,
        *,
        device: Any = None,
        xml_file: str | None = None,
    ) -> None:
        from metarl.envs.mujoco.batched import family_class

        self.jax, self.jnp, mjx = import_mjx()
        self.env_cls = family_class(family)
        self.num_envs = int(num_envs)
        self.device = jax_device(device)
        self.template = self.env_cls(xml_file=xml_file)
        self.robot = self.env_cls.robot
        self.task_distribution = self.template.task_distribution
        self.dt = float(self.template.dt)
        self.frame_skip = int(self.template.frame_skip)
        self.changes_model = isinstance(self.template, locomotion.RandParamsEnv)
        self.ends_when_unhealthy = self.env_cls.ends_when_unhealthy()
        with self.jax.default_device(self.device):
            self.model = mjx.put_model(self.template.model, device=self.device)
            self._data0 = mjx.make_data(self.model, device=self.device)
        self.dtype = np.dtype(self.model.body_mass.dtype)  # float32 unless jax_enable_x64
        self._programs = _programs()
        self._fields: dict[str, Any] = {}
        self._params: Any = None
        self._rngs: list[np.random.Generator] = []
        self.data: Any = None

    def _put(self, x: np.ndarray, dtype: Any = None) -> Any:
        return self.jax.device_put(np.asarray(x, dtype=dtype or self.dtype), self.device)

    def reset(self, tasks: list[Any], seeds: list[int | None]) -> Any:
        """Start every row (tasks already validated); returns the observations on the device."""
        if len(self._rngs) != self.num_envs:
            self._rngs = [np.random.default_rng(s) for s in seeds]
        else:
            self._rngs = [
                rng if s is None else np.random.default_rng(s)
                for rng, s in zip(self._rngs, seeds, strict=True)
            ]
        init = self.template.init_qpos, self.template.init_qvel
        states = [locomotion.reset_state(self.robot, rng, *init) for rng in self._rngs]
        qpos = np.stack([q for q, _ in states])
        qvel = np.stack([v for _, v in states])
        self.data = self._programs["start"](self._data0, self._put(qpos), self._put(qvel))
        self._params = self._put(self.env_cls.task_params(tasks))
        if self.changes_model:
            base = self.template.base_params  # type: ignore[attr-defined]
            self._fields = {
                f: self._put(
                    np.stack([base[f] * np.reshape(getattr(t, f), base[f].shape) for t in tasks])
                )
                for f in base
            }
        return self.observe()

    def observe(self) -> Any:
        return self._programs["observe"](self.data, self.template.skip, self.robot.qvel_clip)

    def step(self, actions: Any, active: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
        """Step the rows where ``active`` (device arrays, or anything ``device_put`` takes);
        returns ``(obs, reward, terminated, terms)`` on the device, terms including
        ``x_velocity``. Finished rows keep their state; their outputs are to be ignored."""
        if self.data is None:
            raise RuntimeError("step before reset")
        jax, jnp = self.jax, self.jnp
        # Committed to the device either way (from NumPy, or from torch by DLPack), so that
        # both faces hit the same compiled program.
        ctrl = jax.device_put(jnp.asarray(actions, dtype=self.dtype), self.device)
        active = jax.device_put(jnp.asarray(active, dtype=bool), self.device)
        r = self.robot.num_root
        before = self.data.qpos[:, :r]
        self.data = self._programs["physics"](
            self.model, self._fields, self.data, ctrl, active, frame_skip=self.frame_skip
        )
        obs, reward, healthy, terms = self._programs["outputs"](
            self._params, before, self.data, ctrl, env_cls=self.env_cls,
            skip=self.template.skip, qvel_clip=self.robot.qvel_clip, dt=self.dt,
        )  # fmt: skip
        terminated = ~healthy if self.ends_when_unhealthy else jnp.zeros_like(healthy)
        return obs, reward, terminated, terms

    def close(self) -> None:
        self.template.close()
        self.data = None


class MjxBatchedEnv(BatchedTaskEnv):
    """``num_envs`` rows of a MuJoCo family on MJX, with the NumPy interface.

    The step runs on JAX's device; its outputs come back to the host once per step as
    NumPy arrays (observations float64 like the native backend's). For the sampler, the
    torch face :class:`MjxTorchBatchedEnv` avoids that copy.

    Args:
        family: the family's class name or class.
        num_envs: number of rows ``B``.
        max_episode_steps: the horizon (default 200, the registration's).
        device: the JAX device (default JAX's first: a GPU when JAX has one).
        xml_file: another model for the robot, as for the single env.
    """

    def __init__(
        self,
        family: str | type[locomotion.LocomotionEnv],
        num_envs: int,
        *,
        max_episode_steps: int | None = None,
        device: Any = None,
        xml_file: str | None = None,
    ) -> None:
        super().__init__(num_envs, HORIZON if max_episode_steps is None else max_episode_steps)
        self.engine = MjxEngine(family, self.num_envs, device=device, xml_file=xml_file)
        self.task_distribution = self.engine.task_distribution
        self.single_observation_space = self.engine.template.observation_space
        self.single_action_space = self.engine.template.action_space

    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        return np.asarray(self.engine.reset(tasks, seeds), dtype=np.float64)

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        out = self.engine.step(np.asarray(actions), active)
        obs, reward, terminated, terms = self.engine.jax.device_get(out)
        info = {k: np.where(active, np.asarray(v, dtype=np.float64), 0.0) for k, v in terms.items()}
        return (
            np.asarray(obs, dtype=np.float64),
            np.asarray(reward, dtype=np.float64),
            np.asarray(terminated, dtype=bool),
            info,
        )

    def close(self) -> None:
        self.engine.close()


class MjxTorchBatchedEnv(TorchBatchedTaskEnv):
    """``num_envs`` rows of a MuJoCo family on MJX, as torch tensors on the same device.

    Observations (float32, or float64 under ``jax_enable_x64``), rewards and masks are
    ``torch.from_dlpack`` views of the JAX arrays: no copy, on the CPU or the GPU JAX runs
    on; actions go to JAX the same way. ``reset(tasks, seed)`` seeds row ``i``'s initial
    state with ``seed + i``, as the NumPy backends' ``reset(tasks, seeds=seed)`` does.

    Args:
        family: the family's class name or class.
        num_envs: number of rows ``B``.
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``); JAX must
            have the same device.
        max_episode_steps: the horizon (default 200).
        xml_file: another model for the robot.
    """

    def __init__(
        self,
        family: str | type[locomotion.LocomotionEnv],
        num_envs: int,
        *,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        xml_file: str | None = None,
    ) -> None:
        horizon = HORIZON if max_episode_steps is None else max_episode_steps
        super().__init__(num_envs, horizon, device)
        self.engine = MjxEngine(family, self.num_envs, device=self.device, xml_file=xml_file)
        shared = torch_device_of(self.engine.device)
        if (shared.type, shared.index or 0) != (self.device.type, self.device.index or 0):
            raise ValueError(f"JAX's device {self.engine.device} is not torch's {self.device}")
        self.task_distribution = self.engine.task_distribution
        template = self.engine.template
        self.obs_shape = tuple(template.observation_space.shape or ())
        self.action_shape = tuple(template.action_space.shape or ())
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self._seed: int | None = None
        self.last_terms: dict[str, torch.Tensor] = {}

    def _to_torch(self, x: Any) -> torch.Tensor:
        return torch.from_dlpack(x)

    def _to_jax(self, x: torch.Tensor) -> Any:
        return self.engine.jax.dlpack.from_dlpack(x.detach().contiguous())

    def reset(
        self, tasks: Sequence[Any], seed: int | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        self._seed = seed
        return super().reset(tasks, seed)

    def _reset_rows(self, tasks: list[Any]) -> torch.Tensor:
        seeds = row_seeds(self._seed, self.num_envs)
        return self._to_torch(self.engine.reset(tasks, seeds))

    def _step_rows(
        self, actions: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if self.engine.dtype == np.float64 else torch.float32
        obs, reward, terminated, terms = self.engine.step(
            self._to_jax(actions.to(dtype)), self._to_jax(active)
        )
        self.last_terms = {k: self._to_torch(v) for k, v in terms.items()}
        return self._to_torch(obs), self._to_torch(reward), self._to_torch(terminated)

    def close(self) -> None:
        self.engine.close()


def make_mjx_torch_batched(
    env_id: str, num_envs: int, *, device: str | torch.device = "cpu", **kwargs: Any
) -> MjxTorchBatchedEnv:
    """The torch face of the MJX backend for a registered MuJoCo family (``env_id``): what
    ``metarl.make_torch_batched(env_id, n, backend="mjx")`` builds."""
    from metarl.stepping.registry import make_torch_batched

    env = make_torch_batched(env_id, num_envs, device=device, backend="mjx", **kwargs)  # type: ignore[arg-type]
    assert isinstance(env, MjxTorchBatchedEnv)
    return env
