"""Task distributions: sampling from injected generators, versioned disjoint splits, and the
helper that turns any Gymnasium env into a task env."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import metarl
from metarl.tasks import BoxTaskDistribution, FiniteTaskDistribution, TaskError, task_to_dict


@dataclass(frozen=True)
class GravityTask:
    gravity: float


@dataclass(frozen=True)
class DirTask:
    direction: int


def gravity_dist(**kw) -> BoxTaskDistribution[GravityTask]:
    return BoxTaskDistribution(
        "Gravity", GravityTask, low={"gravity": 5.0}, high={"gravity": 15.0}, **kw
    )


@pytest.mark.parametrize("env_id", metarl.family_ids())
def test_splits_are_fixed_and_disjoint(env_id: str) -> None:
    dist = metarl.task_distribution(env_id)
    train, test = dist.split("train"), dist.split("test")
    assert len(train) == dist.num_train and len(test) == dist.num_test
    if not dist.splits_disjoint:
        # A finite family smaller than its splits (HalfCheetahDir's two directions): both
        # splits are the whole set, as in the papers, and `metarl envs` says "(shared)".
        assert set(train) == set(test) == set(dist.tasks)  # type: ignore[attr-defined]
        return
    assert not set(train) & set(test)
    # A fresh distribution object (and another seed) — same and different splits.
    again = metarl.task_distribution(env_id)
    assert again.split("test") == test
    assert again.split("test", seed=1) != test
    for task in test[:3]:
        assert dist.validate(task) is task


def test_split_is_the_same_in_another_process() -> None:
    # Python salts str hashes per process; the split seed must not depend on them.
    code = (
        "import metarl; d = metarl.task_distribution('metarl/Navigation2D-v0');"
        "print(repr(d.split('test')[0]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = repr(metarl.task_distribution("metarl/Navigation2D-v0").split("test")[0])
    assert out.stdout.strip() == here


def test_split_values_are_pinned() -> None:
    # Changing how splits are drawn must bump the distribution's version; this catches it.
    task = metarl.task_distribution("metarl/Navigation2D-v0").split("test")[0]
    np.testing.assert_allclose(task.goal, PINNED_NAV_TEST_GOAL, rtol=0, atol=1e-12)


PINNED_NAV_TEST_GOAL = (0.15539116405272857, 0.003557995054471963)


def test_version_changes_the_split() -> None:
    assert gravity_dist(version=0).split("test") != gravity_dist(version=1).split("test")


def test_sampling_uses_the_injected_generator() -> None:
    dist = gravity_dist()
    a = dist.sample_tasks(np.random.default_rng(5), 10)
    b = dist.sample_tasks(np.random.default_rng(5), 10)
    assert a == b and len(set(a)) == 10
    assert all(5.0 <= t.gravity <= 15.0 for t in a)
    with pytest.raises(TypeError, match="numpy Generator"):
        dist.sample(np.random.RandomState(0))  # type: ignore[arg-type]


def test_log_uniform_fields() -> None:
    dist = BoxTaskDistribution(
        "Mass",
        GravityTask,
        low={"gravity": 1.5**-3},
        high={"gravity": 1.5**3},
        log_scale=["gravity"],
    )
    draws = np.array([t.gravity for t in dist.sample_tasks(np.random.default_rng(0), 4000)])
    logs = np.log(draws) / np.log(1.5)
    assert logs.min() >= -3 and logs.max() <= 3
    assert abs(logs.mean()) < 0.1 and abs(np.mean(logs < 0) - 0.5) < 0.03
    with pytest.raises(ValueError, match="low > 0"):
        BoxTaskDistribution(
            "M", GravityTask, low={"gravity": 0.0}, high={"gravity": 1.0}, log_scale=["gravity"]
        )


def test_box_validation_messages() -> None:
    dist = gravity_dist()
    with pytest.raises(TaskError, match=r"outside the distribution's range \[5.0, 15.0\]"):
        dist.validate(GravityTask(20.0))
    with pytest.raises(TaskError, match="expects a GravityTask"):
        dist.validate(DirTask(1))
    with pytest.raises(ValueError, match="exactly the fields"):
        BoxTaskDistribution("G", GravityTask, low={"g": 0.0}, high={"g": 1.0})
    with pytest.raises(ValueError, match="low"):
        BoxTaskDistribution("G", GravityTask, low={"gravity": 2.0}, high={"gravity": 1.0})


def test_constraint_by_rejection() -> None:
    @dataclass(frozen=True)
    class Pos:
        x: float
        y: float

    disc = BoxTaskDistribution(
        "Disc",
        Pos,
        low={"x": -3.0, "y": -3.0},
        high={"x": 3.0, "y": 3.0},
        constraint=(lambda t: t.x**2 + t.y**2 <= 9.0, "inside the disc of radius 3"),
    )
    tasks = disc.sample_tasks(np.random.default_rng(0), 500)
    assert all(t.x**2 + t.y**2 <= 9.0 for t in tasks)
    with pytest.raises(TaskError, match="disc of radius 3"):
        disc.validate(Pos(2.9, 2.9))


def test_task_types_must_be_frozen_dataclasses() -> None:
    @dataclass
    class Mutable:
        x: float

    with pytest.raises(TypeError, match="frozen"):
        BoxTaskDistribution("M", Mutable, low={"x": 0.0}, high={"x": 1.0})
    with pytest.raises(TypeError, match="dataclass"):
        BoxTaskDistribution("M", dict, low={}, high={})  # type: ignore[arg-type]


def test_finite_distributions() -> None:
    two = FiniteTaskDistribution("Dir", DirTask, [DirTask(-1), DirTask(1)], num_train=2, num_test=2)
    assert not two.splits_disjoint  # as in the papers: both directions in both splits
    assert set(two.split("test")) == {DirTask(-1), DirTask(1)}
    many = FiniteTaskDistribution(
        "Many", DirTask, [DirTask(i) for i in range(30)], num_train=20, num_test=10
    )
    assert many.splits_disjoint
    assert not set(many.split("train")) & set(many.split("test"))
    with pytest.raises(TaskError, match="not one of"):
        two.validate(DirTask(0))


def test_task_to_dict_is_json_ready() -> None:
    from metarl.envs.navigation import GoalTask

    assert task_to_dict(GoalTask(goal=(0.1, 0.2))) == {"goal": [0.1, 0.2]}
    with pytest.raises(TaskError):
        task_to_dict({"goal": 1})


def test_make_task_env_turns_any_env_into_a_task_env() -> None:
    import gymnasium as gym
    from gymnasium.envs.classic_control.pendulum import PendulumEnv
    from gymnasium.utils.env_checker import check_env

    PendulumGravity = metarl.make_task_env(
        PendulumEnv, gravity_dist(), lambda env, task: setattr(env, "g", task.gravity)
    )
    env = PendulumGravity()
    assert isinstance(env, PendulumEnv)
    env.reset(seed=0, options={"task": GravityTask(12.0)})
    assert env.g == 12.0 and env.task == GravityTask(12.0)
    with pytest.raises(TaskError, match="outside"):
        env.set_task(GravityTask(30.0))
    # Same seed: same initial state as the plain env, and the same drawn task.
    plain_obs, _ = PendulumEnv().reset(seed=4)
    obs, _ = PendulumGravity().reset(seed=4)
    np.testing.assert_array_equal(obs, plain_obs)
    e1, e2 = PendulumGravity(), PendulumGravity()
    e1.reset(seed=9)
    e2.reset(seed=9)
    assert e1.task == e2.task

    # Different gravity, same actions: different rewards.
    def run(task: GravityTask) -> list[float]:
        e = PendulumGravity()
        e.reset(seed=0, options={"task": task})
        return [e.step(np.array([0.5], dtype=np.float32))[1] for _ in range(30)]

    assert not np.allclose(run(GravityTask(5.0)), run(GravityTask(15.0)))
    check_env(PendulumGravity(), skip_render_check=True)
    # Registered as a family, it gets the batched fallback.
    metarl.register_family("test/PendulumGravity-v0", PendulumGravity, max_episode_steps=50)
    batch = metarl.make_batched("test/PendulumGravity-v0", 3)
    obs, _ = batch.reset([GravityTask(6.0)] * 3, seeds=0)
    assert obs.shape == (3, 3)
    assert gym.spec("test/PendulumGravity-v0").max_episode_steps == 50
    with pytest.raises(TypeError, match=r"gymnasium\.Env subclass"):
        metarl.make_task_env(dict, gravity_dist(), lambda e, t: None)  # type: ignore[arg-type]


def _pendulum_with_own_setter(store: str) -> type:
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    class OwnSetter(PendulumEnv):
        """An env written before metarl: it already has task/set_task of its own."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[GravityTask] = []
            self.task = GravityTask(10.0) if store == "task" else {"gravity": 10.0}

        def set_task(self, task: GravityTask) -> None:
            self.calls.append(task)
            self.g = task.gravity
            self.task = task if store == "task" else {"gravity": task.gravity}

    return OwnSetter


@pytest.mark.parametrize("how", ["own", "lambda"])
def test_make_task_env_calls_an_envs_own_set_task(how: str) -> None:
    own = _pendulum_with_own_setter("task")
    apply = None if how == "own" else (lambda env, task: env.set_task(task))
    cls = metarl.make_task_env(own, gravity_dist(), apply)
    env = cls()
    assert env.task == GravityTask(10.0)  # what the env's __init__ set
    env.reset(seed=0, options={"task": GravityTask(12.0)})
    assert env.g == 12.0 and env.task == GravityTask(12.0)
    assert env.calls == [GravityTask(12.0)]  # the env's own setter, once: no recursion
    with pytest.raises(TaskError, match="outside"):
        env.set_task(GravityTask(30.0))
    assert env.calls == [GravityTask(12.0)]  # refused before it reached the env


def test_make_task_env_says_what_to_change_when_the_env_uses_task_otherwise() -> None:
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    own = _pendulum_with_own_setter("dict")
    with pytest.raises(TypeError, match=r"store that value under another name .*self\.task_"):
        metarl.make_task_env(own, gravity_dist())()
    with pytest.raises(TypeError, match="has no set_task of its own: pass apply_task"):
        metarl.make_task_env(PendulumEnv, gravity_dist())
    calls_itself = metarl.make_task_env(
        PendulumEnv, gravity_dist(), lambda env, task: env.set_task(task)
    )
    with pytest.raises(TypeError, match="write the task into the env's attributes"):
        calls_itself().set_task(GravityTask(6.0))
