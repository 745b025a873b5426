"""Meta-World (Yu et al. 2019, "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta
Reinforcement Learning") through metarl's task API: ML1, ML10 and ML45.

An optional extra: ``pip install -e ".[metaworld]"`` then ``pip install --no-deps
metaworld==3.1.1``. ``--no-deps`` because Meta-World pins ``mujoco==3.3.0``, which would
downgrade the MuJoCo that metarl's own families use; this module patches what breaks on the
newer MuJoCo (``eq_data`` grew from 11 to 12 numbers per constraint in MuJoCo 3.4/4.0, which
Meta-World's mocap-weld reset writes), so a user meets none of it.

* **ML1** (``metarl/MetaWorld-ML1-<env>-v0``, e.g. ``reach-v3``): one manipulation task, 50
  train and 50 test variations of the goal and object positions.
* **ML10** (``metarl/MetaWorld-ML10-v0``): 10 train task types, 5 held-out test types, 50
  variations each (500 / 250 tasks).
* **ML45** (``metarl/MetaWorld-ML45-v0``): 45 train types, 5 test types.

The train and test tasks are Meta-World's own, drawn by the benchmark with its seed (the
split seed; 0 by default). A task is a :class:`MetaWorldTask` (the env name, its place in the
benchmark and Meta-World's opaque task data). Episodes are Meta-World's 500 steps (a
registration argument); ``info["success"]`` and ``info["is_success"]`` say whether the task
was solved at that step. Each env builds Meta-World's env of a task's type on first use, and
sets the task before every reset (Meta-World needs it before ``reset``).

``render_mode="rgb_array"`` is Meta-World's own MuJoCo off-screen rendering (Gymnasium's
renderer, the camera ``camera_name``, ``"corner"`` by default, at ``width`` × ``height``,
turned upright: Meta-World's cameras see the scene upside down); on a
machine without a display MuJoCo needs EGL or OSMesa (``MUJOCO_GL=egl``, which
:func:`metarl.evaluation.video.headless_gl` sets where no display is found).

Registration is lazy, so that ``import metarl`` does not import Meta-World (about a second,
plus building benchmarks): the first use of one of these ids (``metarl.make``,
``metarl.family``, any ``metarl`` command) calls :func:`register`, which may also be called
directly.

Example:
    >>> import metarl
    >>> env = metarl.make("metarl/MetaWorld-ML1-reach-v3-v0")  # doctest: +SKIP
    >>> from metarl.envs import meta_world          # doctest: +SKIP
    >>> meta_world.register()  # all 52 ids, then gym.make works too  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metarl.tasks import TaskDistribution, TaskError
from metarl.tasks.env import TaskEnv

__all__ = [
    "BENCHMARKS",
    "MetaWorldDistribution",
    "MetaWorldEnv",
    "MetaWorldTask",
    "import_metaworld",
    "register",
]

HORIZON = 500  # Meta-World's max_path_length
BENCHMARKS = ("ML1", "ML10", "ML45")
INSTALL = (
    'Meta-World is an optional extra: pip install -e ".[metaworld]" && '
    "pip install --no-deps metaworld==3.1.1 (no-deps: it pins an older mujoco)"
)


@functools.cache
def import_metaworld() -> Any:
    """Import Meta-World, patched for the installed MuJoCo; a clear error if it is absent."""
    try:
        import metaworld
        from metaworld.sawyer_xyz_env import SawyerMocapBase
    except ImportError as e:
        raise ImportError(f"{INSTALL} ({e})") from e
    import mujoco

    def reset_mocap_welds(self: Any) -> None:
        # Meta-World writes 11 numbers per weld (anchor, relative pose, torque scale), the
        # layout of MuJoCo <= 3.3; newer MuJoCo appends fields, which keep their values.
        if self.model.nmocap > 0 and self.model.eq_data is not None:
            weld = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0]
            for i in range(self.model.eq_data.shape[0]):
                if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                    self.model.eq_data[i, : len(weld)] = weld

    setattr(SawyerMocapBase, "reset_mocap_welds", reset_mocap_welds)  # noqa: B010
    return metaworld


@functools.cache
def _benchmark(name: str, env_name: str | None, seed: int) -> Any:
    """Meta-World's benchmark object (its classes and train/test tasks); cached, it is slow."""
    metaworld = import_metaworld()
    if name not in BENCHMARKS:
        raise ValueError(f"unknown Meta-World benchmark {name!r}; choose one of {BENCHMARKS}")
    if name == "ML1":
        names = sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
        if env_name not in names:
            raise ValueError(f"ML1 needs env_name, one of Meta-World's {len(names)}: {names}")
        return metaworld.ML1(env_name, seed=seed)
    return getattr(metaworld, name)(seed=seed)


@dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: its env type, where it sits in the benchmark, and its data."""

    env_name: str
    split: str
    index: int
    data: bytes = field(repr=False)


class MetaWorldDistribution(TaskDistribution[MetaWorldTask]):
    """A Meta-World benchmark's tasks; its train and test splits are the benchmark's own.

    ``split(which, seed=s)`` is the benchmark built with seed ``s``; ``sample`` draws a
    training task.
    """

    def __init__(self, benchmark: str, env_name: str | None = None, seed: int = 0) -> None:
        self.benchmark = benchmark
        self.env_name = env_name
        bench = _benchmark(benchmark, env_name, seed)
        label = f"MetaWorld-{benchmark}" + (f"-{env_name}" if env_name else "")
        super().__init__(
            label,
            MetaWorldTask,
            num_train=len(bench.train_tasks),
            num_test=len(bench.test_tasks),
            description=(
                f"goal/object positions of {env_name}"
                if benchmark == "ML1"
                else f"{len(bench.train_classes)} train / {len(bench.test_classes)} test task types"
            ),
        )
        self.DEFAULT_SPLIT_SEED = seed  # type: ignore[misc]
        self._known: set[MetaWorldTask] = set()

    def _draw_splits(
        self, seed: int
    ) -> tuple[tuple[MetaWorldTask, ...], tuple[MetaWorldTask, ...]]:
        bench = _benchmark(self.benchmark, self.env_name, seed)
        train = tuple(
            MetaWorldTask(t.env_name, "train", i, t.data) for i, t in enumerate(bench.train_tasks)
        )
        test = tuple(
            MetaWorldTask(t.env_name, "test", i, t.data) for i, t in enumerate(bench.test_tasks)
        )
        self._known.update(train + test)
        return train, test

    def classes(self, seed: int | None = None) -> dict[str, type]:
        """Meta-World's env class of every task type in the benchmark."""
        bench = _benchmark(self.benchmark, self.env_name, self.DEFAULT_SPLIT_SEED)
        return {**bench.train_classes, **bench.test_classes}

    def _sample(self, rng: np.random.Generator) -> MetaWorldTask:
        train = self.split("train")
        return train[int(rng.integers(len(train)))]

    def _check(self, task: MetaWorldTask) -> None:
        if not self._known:
            self.split("train")
        if task not in self._known:
            raise TaskError(
                f"{task!r} is not a task of {self.name}; take tasks from "
                "task_distribution.split('train') or split('test')"
            )


class MetaWorldEnv(TaskEnv[np.ndarray, np.ndarray, MetaWorldTask]):
    """A Meta-World benchmark as one task env (every task type behind one Gymnasium API).

    Args:
        benchmark: ``"ML1"``, ``"ML10"`` or ``"ML45"``.
        env_name: for ML1, the task type (``"reach-v3"``, ``"push-v3"``, ...).
        seed: the benchmark's seed, which draws its train and test tasks.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # noqa: RUF012

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str | None = "reach-v3",
        seed: int = 0,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        camera_name: str = "corner",
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._render_kwargs: dict[str, Any] = (
            {} if render_mode is None else {"render_mode": render_mode, "width": width,
                                            "height": height, "camera_name": camera_name}
        )  # fmt: skip
        self.task_distribution = MetaWorldDistribution(
            benchmark, env_name if benchmark == "ML1" else None, seed
        )
        self._classes = self.task_distribution.classes()
        self._envs: dict[str, Any] = {}
        first = self._env_for(next(iter(self._classes)))
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self._current: Any = None

    def _env_for(self, env_name: str) -> Any:
        if env_name not in self._envs:
            self._envs[env_name] = self._classes[env_name](**self._render_kwargs)
        return self._envs[env_name]

    def _apply_task(self, task: MetaWorldTask) -> None:
        from metaworld.types import Task

        env = self._env_for(task.env_name)
        env.set_task(Task(env_name=task.env_name, data=task.data))
        self._current = env

    def _reset_episode(self) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self._current.reset()
        return np.asarray(obs, dtype=np.float64), dict(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._require_task()
        if self._current.curr_path_length >= self._current.max_path_length:
            raise RuntimeError(
                f"Meta-World episodes last {self._current.max_path_length} steps; reset the env"
            )
        obs, reward, terminated, _, info = self._current.step(action)
        info = dict(info)
        info["is_success"] = bool(info.get("success", 0.0))
        return np.asarray(obs, dtype=np.float64), float(reward), bool(terminated), False, info

    def render(self) -> np.ndarray | None:
        """The current task's scene from Meta-World's off-screen renderer
        (``render_mode="rgb_array"``), else None."""
        if self.render_mode is None or self._current is None:
            return None
        frame = np.asarray(self._current.render(), dtype=np.uint8)
        # Meta-World's cameras are mounted upside down in its models (their frames come out
        # rotated by 180°); turned upright here.
        return np.ascontiguousarray(frame[::-1, ::-1])

    def close(self) -> None:
        for env in self._envs.values():
            env.close()


def register(benchmarks: tuple[str, ...] = BENCHMARKS) -> list[str]:
    """Register Meta-World's benchmarks as metarl task families; returns their ids.

    ML1 is registered once per task type (``metarl/MetaWorld-ML1-reach-v3-v0``...).
    """
    from metarl.stepping.registry import family_ids, register_family

    metaworld = import_metaworld()
    ids = []
    for name in benchmarks:
        if name == "ML1":
            targets = [(f"metarl/MetaWorld-ML1-{e}-v0", {"benchmark": "ML1", "env_name": e})
                       for e in sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)]  # fmt: skip
        elif name in BENCHMARKS:
            targets = [(f"metarl/MetaWorld-{name}-v0", {"benchmark": name, "env_name": None})]
        else:
            raise ValueError(f"unknown Meta-World benchmark {name!r}; choose from {BENCHMARKS}")
        for env_id, kwargs in targets:
            if env_id not in family_ids():
                register_family(
                    env_id,
                    "metarl.envs.meta_world:MetaWorldEnv",
                    max_episode_steps=HORIZON,
                    kwargs=kwargs,
                    paper="Yu et al. 2019, Meta-World",
                    listing=_listing(name, kwargs["env_name"]),
                )
            ids.append(env_id)
    return ids


#: (train task types, test task types) of the multi-task benchmarks; 50 variations each.
_TYPES = {"ML10": (10, 5), "ML45": (45, 5)}


def _listing(benchmark: str, env_name: str | None) -> dict[str, Any]:
    """What ``metarl envs`` shows without building the benchmark (that takes seconds)."""
    if benchmark == "ML1":
        return {"varies": f"goal/object positions of {env_name}", "num_train": 50,
                "num_test": 50, "splits_disjoint": True}  # fmt: skip
    train, test = _TYPES[benchmark]
    return {"varies": f"{train} train / {test} test task types", "num_train": 50 * train,
            "num_test": 50 * test, "splits_disjoint": True}  # fmt: skip
