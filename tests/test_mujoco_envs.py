"""The MuJoCo task families: rewards follow their formulas, the dynamics families at factor 1
are Gymnasium's v5 envs, tasks never leak between models, bad input is refused clearly.
(Checkers, determinism and task sensitivity run for every family in tests/test_envs.py.)"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

import metarl
from metarl.envs.mujoco import FAMILIES
from metarl.envs.mujoco.locomotion import (
    DirectionTask,
    GoalTask,
    HopperRandParams,
    RandParamsTask,
    VelocityTask,
)
from metarl.tasks import TaskError


def _ones_like(task: RandParamsTask) -> RandParamsTask:
    return RandParamsTask(**{f: (1.0,) * len(v) for f, v in dataclasses.asdict(task).items()})


def test_every_family_is_registered_with_the_papers_horizon() -> None:
    for name in FAMILIES:
        env_id = f"metarl/{name}-v0"
        assert env_id in metarl.family_ids()
        assert gym.spec(env_id).max_episode_steps == 200
    env = gym.make("metarl/HalfCheetahVel-v0", max_episode_steps=7)
    env.reset(seed=0)
    steps = [env.step(env.action_space.sample()) for _ in range(7)]
    assert steps[-1][3] and not any(s[3] for s in steps[:-1])


@pytest.mark.parametrize(
    ("env_id", "task", "check"),
    [
        ("metarl/HalfCheetahVel-v0", VelocityTask(1.5),
         lambda i, a: -abs(i["x_velocity"] - 1.5) - 0.05 * (a**2).sum()),
        ("metarl/HalfCheetahDir-v0", DirectionTask(-1.0),
         lambda i, a: -i["x_velocity"] - 0.05 * (a**2).sum()),
        ("metarl/AntVel-v0", VelocityTask(2.0),
         lambda i, a: -abs(i["x_velocity"] - 2.0) - 0.005 * (a**2).sum() + 0.05),
        ("metarl/AntDir-v0", DirectionTask(1.0),
         lambda i, a: i["x_velocity"] - 0.005 * (a**2).sum() + 0.05),
        ("metarl/AntGoal-v0", GoalTask((1.0, -2.0)),
         lambda i, a: -abs(i["x_position"] - 1) - abs(i["y_position"] + 2) - 0.1 * (a**2).sum()),
    ],
)  # fmt: skip
def test_rewards_follow_the_papers_formulas(env_id: str, task: object, check: object) -> None:
    env = gym.make(env_id)
    env.reset(seed=0, options={"task": task})
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        _, r, term, _, info = env.step(a)
        assert r == pytest.approx(check(info, a.astype(np.float64)), abs=1e-9)  # type: ignore[operator]
        terms = sum(v for k, v in info.items() if k.startswith("reward_"))
        assert r == pytest.approx(terms, abs=1e-12)
        if term:
            break


def test_ant_dir_2d_rewards_the_velocity_along_its_direction() -> None:
    from metarl.envs.mujoco.locomotion import Direction2DTask

    env = gym.make("metarl/AntDir2D-v0")
    env.reset(seed=1, options={"task": Direction2DTask(angle=np.pi / 2)})  # along +y
    _, r, _, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert info["reward_forward"] == pytest.approx(info["y_velocity"], abs=1e-9)
    assert r == pytest.approx(info["y_velocity"] + 1.0, abs=1e-9)


def test_ant_goal_observes_its_position_and_never_terminates() -> None:
    env = gym.make("metarl/AntGoal-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (29,) and obs[0] == env.unwrapped.data.qpos[0]
    assert gym.make("metarl/AntVel-v0").observation_space.shape == (27,)
    for _ in range(200):
        *_, term, trunc, _ = env.step(env.action_space.sample())
        assert not term
        if trunc:
            break


@pytest.mark.parametrize(("ours", "theirs"), [("Hopper", "Hopper-v5"), ("Walker2d", "Walker2d-v5")])
def test_dynamics_families_at_factor_one_are_gymnasiums_envs(ours: str, theirs: str) -> None:
    env = gym.make(f"metarl/{ours}RandParams-v0")
    ref = gym.make(theirs)
    task = _ones_like(metarl.task_distribution(f"metarl/{ours}RandParams-v0").split("test")[0])
    obs, _ = env.reset(seed=4, options={"task": task})
    ref_obs, _ = ref.reset(seed=4)
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, r, term, _, _ = env.step(a)
        ref_obs, ref_r, ref_term, _, _ = ref.step(a)
        # Only the solver's warm start differs (see the module docstring).
        np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)
        assert r == pytest.approx(ref_r, abs=1e-6) and term == ref_term
        if term:
            break


def test_a_task_is_applied_to_the_envs_own_model_from_its_original_values() -> None:
    dist = metarl.task_distribution("metarl/HopperRandParams-v0")
    t1, t2 = dist.split("train")[:2]
    a, b = HopperRandParams(), HopperRandParams()
    original = b.model.body_mass.copy()
    a.set_task(t1)
    a.set_task(t2)
    np.testing.assert_array_equal(b.model.body_mass, original)  # the other env is untouched
    np.testing.assert_allclose(a.model.body_mass, original * np.array(t2.body_mass))
    np.testing.assert_allclose(
        a.model.geom_friction, b.model.geom_friction * np.array(t2.geom_friction).reshape(-1, 3)
    )
    np.testing.assert_allclose(a.model.dof_damping, b.model.dof_damping * t2.dof_damping)
    # Factors are 1.5^U(-3, 3) (damping 1.3^U(-3, 3)): all inside, spread over the range.
    masses = np.array([t.body_mass for t in dist.split("train")])
    assert masses.min() >= 1.5**-3 and masses.max() <= 1.5**3
    assert np.log(masses).mean() == pytest.approx(0.0, abs=0.05)
    damping = np.array([t.dof_damping for t in dist.split("train")])
    assert damping.max() <= 1.3**3 + 1e-12 and damping.max() > 1.3**2.9


def test_bad_input_is_refused_with_what_to_do() -> None:
    env = gym.make("metarl/HalfCheetahVel-v0")
    with pytest.raises(TaskError, match=r"outside the distribution's range \[0.0, 2.0\]"):
        env.reset(options={"task": VelocityTask(2.5)})
    with pytest.raises(TaskError, match="not one of the family's tasks"):
        gym.make("metarl/AntDir-v0").unwrapped.set_task(DirectionTask(0.5))
    with pytest.raises(TaskError, match="inside the disc"):
        gym.make("metarl/AntGoal-v0").unwrapped.set_task(GoalTask((2.5, 2.5)))
    hopper = gym.make("metarl/HopperRandParams-v0")
    good = metarl.task_distribution("metarl/HopperRandParams-v0").split("test")[0]
    for bad_factor in (0.0, -1.0):
        masses = (bad_factor, *good.body_mass[1:])
        with pytest.raises(TaskError, match=r"body_mass factor must be > 0"):
            hopper.unwrapped.set_task(dataclasses.replace(good, body_mass=masses))
    with pytest.raises(TaskError, match="must have 5 entries"):
        hopper.unwrapped.set_task(dataclasses.replace(good, body_mass=(1.0,)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gym.make("metarl/HopperRandParams-v0", xml_file="/nonexistent/hopper.xml")
    with pytest.raises(FileNotFoundError, match="pass xml_file= an existing MJCF file"):
        gym.make("metarl/AntVel-v0", xml_file="no_such_ant.xml")


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahRandParams-v0", "metarl/AntVel-v0"])
def test_native_batched_backend_is_the_single_env_to_the_last_bit(env_id: str) -> None:
    # tests/test_batched.py checks every backend to a tolerance; MuJoCo's is exact, for any
    # thread count, with rows that end early (Ant) and one model per task (RandParams).
    tasks = metarl.task_distribution(env_id).split("train")[:4]
    rows = [t for t in tasks for _ in range(3)]
    steps = 40
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (steps, len(rows), *gym.make(env_id).action_space.shape))
    results = []
    for nthread in (1, 2):
        batch = metarl.make_batched(env_id, len(rows), backend="mujoco", nthread=nthread)
        obs, _ = batch.reset(rows, seeds=100)
        traj = [(obs, np.zeros(len(rows)), np.ones(len(rows), bool))]
        for t in range(steps):
            if not batch.active.any():
                break
            o, r, _, _, info = batch.step(actions[t].astype(np.float32))
            traj.append((o, r, info["active"]))
        batch.close()
        with pytest.raises(RuntimeError, match="closed"):
            batch.step(actions[0])
        results.append(traj)
    for (o1, r1, m1), (o2, r2, m2) in zip(*results, strict=True):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
    for i, task in enumerate(rows):
        env = gym.make(env_id)
        o, _ = env.reset(seed=100 + i, options={"task": task})
        np.testing.assert_array_equal(results[0][0][0][i], o)
        for t, (bo, br, bm) in enumerate(results[0][1:]):
            if not bm[i]:
                break
            o, r, *_ = env.step(actions[t, i].astype(np.float32))
            np.testing.assert_array_equal(bo[i], o)
            assert br[i] == r


def test_batched_backend_refuses_bad_input_and_reports_reward_terms() -> None:
    env_id = "metarl/HopperRandParams-v0"
    with pytest.raises(ValueError, match="nthread must be >= 1"):
        metarl.make_batched(env_id, 2, backend="mujoco", nthread=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metarl.make_batched(env_id, 2, backend="mujoco", xml_file="/nonexistent/hopper.xml")
    from metarl.envs.mujoco.batched import MujocoBatchedEnv

    with pytest.raises(TypeError, match="not a MuJoCo task family"):
        MujocoBatchedEnv("Pendulum", 2)
    batch = metarl.make_batched(env_id, 2, backend="mujoco", nthread=1)
    good = metarl.task_distribution(env_id).split("train")[0]
    bad = dataclasses.replace(good, dof_damping=(0.0, *good.dof_damping[1:]))
    with pytest.raises(TaskError, match="dof_damping factor must be > 0"):
        batch.reset([good, bad], seeds=0)
    batch.reset([good, good], seeds=0)
    _, reward, *_, info = batch.step(np.zeros((2, 3), dtype=np.float32))
    terms = info["reward_forward"] + info["reward_ctrl"] + info["reward_survive"]
    np.testing.assert_allclose(reward, terms, rtol=0, atol=1e-12)
    batch.close()


def test_loading_half_cheetah_prints_no_settotalmass_warning(capfd: pytest.CaptureFixture) -> None:
    gym.make("metarl/HalfCheetahVel-v0")
    assert "settotalmass" not in capfd.readouterr().err
    import mujoco

    assert mujoco.get_mju_user_warning() is None  # the user's handler (none) is restored
