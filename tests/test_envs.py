"""Every registered task family through the same checks, so a family added later is checked
automatically: Gymnasium's and SB3's env checkers, determinism, task sensitivity, bad input."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import metarl
from metarl.tasks import TaskError

ENV_IDS = metarl.family_ids()


def _actions(env: gym.Env[Any, Any], n: int, seed: int = 0) -> list[Any]:
    space = env.action_space
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def _rollout(env: gym.Env[Any, Any], task: Any, seed: int, actions: list[Any]) -> tuple[list, list]:
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards = [np.asarray(obs)], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        observations.append(np.asarray(obs))
        rewards.append(r)
        if term or trunc:
            break
    return observations, rewards


def test_registry_is_not_empty() -> None:
    assert "metarl/Navigation2D-v0" in ENV_IDS
    assert len(ENV_IDS) >= 5


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_checker(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True)
    # The checker reports many problems as warnings; a warning about determinism or spaces
    # is a failure for us.
    bad = [str(w.message) for w in caught if "determinis" in str(w.message).lower()]
    assert not bad, bad


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_checker(env_id: str) -> None:
    env = gym.make(env_id)
    sb3_check_env(env.unwrapped, warn=False)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_trajectory(env_id: str) -> None:
    env = gym.make(env_id)
    task = metarl.task_distribution(env_id).split("test")[0]
    actions = _actions(env, 60)
    obs_a, rew_a = _rollout(env, task, 7, actions)
    obs_b, rew_b = _rollout(gym.make(env_id), task, 7, actions)
    assert len(rew_a) == len(rew_b) > 0
    np.testing.assert_array_equal(np.stack(obs_a), np.stack(obs_b))
    np.testing.assert_array_equal(rew_a, rew_b)
    # A plain reset (no task) draws the task from the seeded generator: also reproducible.
    e1, e2 = gym.make(env_id), gym.make(env_id)
    e1.reset(seed=3)
    e2.reset(seed=3)
    assert e1.unwrapped.task == e2.unwrapped.task


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_different_tasks_give_different_rewards(env_id: str) -> None:
    env = gym.make(env_id)
    split = metarl.task_distribution(env_id).split("test")
    # A sparse reward (the gridworld's hidden goal cell) differs only where the actions reach
    # the goal: a few random action sequences are tried.
    for seed in range(16):
        actions = _actions(env, 60, seed)
        _, rew_a = _rollout(env, split[0], 0, actions)
        _, rew_b = _rollout(env, split[1], 0, actions)
        n = min(len(rew_a), len(rew_b))
        if not np.allclose(rew_a[:n], rew_b[:n]):
            return
    raise AssertionError("the task does not change the rewards")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_set_task_matches_reset_option(env_id: str) -> None:
    split = metarl.task_distribution(env_id).split("test")
    task = split[min(2, len(split) - 1)]  # finite families may have only two tasks
    env_a, env_b = gym.make(env_id), gym.make(env_id)
    env_a.unwrapped.set_task(task)
    actions = _actions(env_a, 20)
    env_a.reset(seed=1)
    rew_a = [env_a.step(a)[1] for a in actions[:5]]
    _, rew_b = _rollout(env_b, task, 1, actions[:5])
    assert env_a.unwrapped.task == task
    np.testing.assert_array_equal(rew_a, rew_b)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_tasks_are_refused(env_id: str) -> None:
    env = gym.make(env_id)
    with pytest.raises(TaskError, match="expects"):
        env.unwrapped.set_task("not a task")
    with pytest.raises(TaskError, match="no task given"):
        env.unwrapped.set_task(None)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goal": 1})


def test_out_of_range_tasks_are_refused() -> None:
    from metarl.envs.bandits import BanditTask
    from metarl.envs.navigation import GoalTask
    from metarl.envs.tabular_mdp import TabularMDPTask

    nav = gym.make("metarl/Navigation2D-v0")
    with pytest.raises(TaskError, match="outside the distribution's range"):
        nav.reset(options={"task": GoalTask(goal=(0.9, 0.0))})
    with pytest.raises(TaskError, match="must have 2 entries"):
        nav.unwrapped.set_task(GoalTask(goal=(0.1, 0.1, 0.1)))
    with pytest.raises(TaskError, match="finite"):
        nav.unwrapped.set_task(GoalTask(goal=(float("nan"), 0.0)))
    bandit = gym.make("metarl/BernoulliBandit-K5-v0")
    with pytest.raises(TaskError, match="outside"):
        bandit.unwrapped.set_task(BanditTask(probs=(0.5, 0.5, 0.5, 0.5, 1.5)))
    with pytest.raises(TaskError, match="must have 5 entries"):
        bandit.unwrapped.set_task(BanditTask(probs=(0.5, 0.5)))
    mdp = gym.make("metarl/TabularMDP-S10A5-v0")
    bad = np.full((10, 5, 10), 0.2)
    with pytest.raises(TaskError, match="sum to 1"):
        mdp.unwrapped.set_task(TabularMDPTask.from_arrays(bad, np.zeros((10, 5))))
    with pytest.raises(TaskError, match="shape"):
        small = TabularMDPTask.from_arrays(np.full((2, 2, 2), 0.5), np.zeros((2, 2)))
        mdp.unwrapped.set_task(small)


def test_task_before_any_exists_is_a_clear_error() -> None:
    from metarl.envs.navigation import Navigation2D

    env = Navigation2D()
    with pytest.raises(TaskError, match="no task yet"):
        _ = env.task
    with pytest.raises(TaskError, match="before reset"):
        env.step(np.zeros(2, dtype=np.float32))


def test_unknown_env_id_names_the_problem() -> None:
    with pytest.raises(KeyError, match="Did you mean metarl/Navigation2D-v0"):
        metarl.make("metarl/Navigation2d-v0")
    with pytest.raises(KeyError, match="Registered:"):
        metarl.make_batched("metarl/Nope-v0", 4)


def test_navigation_follows_the_paper() -> None:
    from metarl.envs.navigation import GoalTask

    env = gym.make("metarl/Navigation2D-v0")
    obs, _ = env.reset(seed=0, options={"task": GoalTask(goal=(0.3, -0.4))})
    np.testing.assert_array_equal(obs, [0, 0])
    # Velocity clipped to 0.1 per coordinate; reward = -distance after the move.
    obs, r, term, trunc, info = env.step(np.array([1.0, -1.0], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.2, 0.3))
    assert not term
    # Walk to the goal: terminated within 0.01.
    for _ in range(2):
        obs, r, term, trunc, info = env.step(np.array([0.1, -0.1], dtype=np.float32))
    obs, r, term, trunc, info = env.step(np.array([0.0, -0.1], dtype=np.float32))
    assert term and info["is_success"]
    # The time limit comes from the registration: 100 steps.
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        *_, term, trunc, _ = env.step(np.zeros(2, dtype=np.float32))
        if term or trunc:
            break
    assert steps == 100 and trunc


def test_bandit_rewards_have_the_arm_means() -> None:
    from metarl.envs.bandits import BanditTask

    env = gym.make("metarl/BernoulliBandit-K5-v0", max_episode_steps=4000)
    probs = (0.1, 0.3, 0.5, 0.7, 0.9)
    env.reset(seed=0, options={"task": BanditTask(probs=probs)})
    for arm, p in enumerate(probs):
        mean = np.mean([env.step(arm)[1] for _ in range(800)])
        assert abs(mean - p) < 4 * np.sqrt(p * (1 - p) / 800)


def test_tabular_mdp_statistics() -> None:
    from metarl.envs.tabular_mdp import TabularMDPTask

    p = np.zeros((10, 5, 10))
    p[:, :, 3] = 0.25
    p[:, :, 7] = 0.75
    r = np.tile(np.arange(5.0), (10, 1))
    env = gym.make("metarl/TabularMDP-S10A5-v0", max_episode_steps=5000)
    env.reset(seed=0, options={"task": TabularMDPTask.from_arrays(p, r)})
    states, rewards = [], []
    for _ in range(4000):
        s, rew, *_ = env.step(2)
        states.append(s)
        rewards.append(rew)
    assert set(states) == {3, 7}
    assert np.mean(np.array(states) == 7) == pytest.approx(0.75, abs=0.03)
    assert np.mean(rewards) == pytest.approx(2.0, abs=0.06)  # mean R(s, 2) = 2, noise N(0, 1)
    assert np.std(rewards) == pytest.approx(1.0, abs=0.05)
