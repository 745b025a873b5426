"""The batched stepping interface: every backend of every family equals the single env row by
row (same task, seed, actions), and the per-row done masks behave."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import metarl
from metarl.tasks import TaskError

ENV_IDS = metarl.family_ids()


def _backend_cases() -> list[tuple[str, str]]:
    # Approximate backends (MJX) are checked against the native one within a tolerance in
    # tests/test_mjx_backend.py.
    return [(env_id, b) for env_id in ENV_IDS for b in metarl.family(env_id).exact_backends]


def _batch_actions(space: gym.Space, num_envs: int, steps: int, seed: int) -> np.ndarray:
    space.seed(seed)
    return np.stack([np.stack([space.sample() for _ in range(num_envs)]) for _ in range(steps)])


@pytest.mark.parametrize(("env_id", "backend"), _backend_cases())
def test_batched_equals_single_env(env_id: str, backend: str) -> None:
    dist = metarl.task_distribution(env_id)
    tasks = list(dist.split("test")[:3])
    rows = [t for t in tasks for _ in range(2)]  # 3 tasks (2 in a two-task family) × 2 episodes
    seeds = list(range(11, 11 + len(rows)))
    batch = metarl.make_batched(env_id, len(rows), backend=backend)
    horizon = batch.horizon
    actions = _batch_actions(batch.single_action_space, len(rows), horizon, seed=3)
    obs, info = batch.reset(rows, seeds)
    assert info["active"].all()
    b_obs, b_rew, b_mask = [obs], [], []
    for t in range(horizon):
        if not batch.active.any():
            break
        obs, rew, term, trunc, info = batch.step(actions[t])
        b_obs.append(obs)
        b_rew.append(rew)
        b_mask.append(info["active"])
    b_obs_arr, b_rew_arr, b_mask_arr = np.stack(b_obs), np.stack(b_rew), np.stack(b_mask)
    assert not batch.active.any()

    for i, (task, seed) in enumerate(zip(rows, seeds, strict=True)):
        env = gym.make(env_id)
        o, _ = env.reset(seed=seed, options={"task": task})
        np.testing.assert_allclose(b_obs_arr[0, i], o, rtol=0, atol=1e-6)
        for t in range(horizon):
            o, r, term, trunc, _ = env.step(actions[t, i])
            assert b_mask_arr[t, i], f"row {i} stopped early at step {t}"
            np.testing.assert_allclose(b_obs_arr[t + 1, i], o, rtol=0, atol=1e-6)
            np.testing.assert_allclose(b_rew_arr[t, i], r, rtol=1e-12, atol=1e-12)
            if term or trunc:
                break
        # After its episode ended, the row is masked out and earns nothing.
        assert not b_mask_arr[t + 1 :, i].any()
        assert (b_rew_arr[t + 1 :, i] == 0).all()


def test_rows_that_finish_stay_finished() -> None:
    from metarl.envs.navigation import GoalTask

    batch = metarl.make_batched("metarl/Navigation2D-v0", 2, max_episode_steps=10)
    near, far = GoalTask(goal=(0.05, 0.05)), GoalTask(goal=(0.5, -0.5))
    batch.reset([near, far], seeds=0)
    step = np.full((2, 2), 0.05, dtype=np.float32)
    obs, _, term, _, info = batch.step(step)
    assert term.tolist() == [True, False] and info["active"].tolist() == [True, True]
    obs2, rew2, term2, _, info2 = batch.step(step)
    assert info2["active"].tolist() == [False, True]
    assert rew2[0] == 0 and not term2[0]
    np.testing.assert_array_equal(obs2[0], obs[0])
    for _ in range(8):
        *_, trunc, info = batch.step(step)
    assert trunc.tolist() == [False, True]
    assert not batch.active.any()
    with pytest.raises(RuntimeError, match="call reset"):
        batch.step(step)


def test_batched_bad_input() -> None:
    batch = metarl.make_batched("metarl/Navigation2D-v0", 4)
    with pytest.raises(TaskError, match="before reset"):
        batch.step(np.zeros((4, 2)))
    tasks = list(metarl.task_distribution("metarl/Navigation2D-v0").split("test")[:4])
    with pytest.raises(ValueError, match="one task per row"):
        batch.reset(tasks[:2])
    with pytest.raises(ValueError, match="one per row"):
        batch.reset(tasks, seeds=[1, 2])
    with pytest.raises(TaskError):
        batch.reset(["nope"] * 4)
    batch.reset(tasks, seeds=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(4, 2\)"):
        batch.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no batched backend 'mujoco'"):
        metarl.make_batched("metarl/Navigation2D-v0", 4, backend="mujoco")
    bandit = metarl.make_batched("metarl/BernoulliBandit-K5-v0", 2)
    bandit.reset(list(metarl.task_distribution("metarl/BernoulliBandit-K5-v0").split("test")[:2]))
    with pytest.raises(ValueError, match="arm indices"):
        bandit.step(np.array([0, 7]))


def test_unseeded_rows_continue_their_streams() -> None:
    # Seeding once, then resetting without seeds, must match a single env reset the same way.
    env_id = "metarl/BernoulliBandit-K5-v0"
    task = metarl.task_distribution(env_id).split("test")[0]
    batch = metarl.make_batched(env_id, 1, max_episode_steps=100)
    env = gym.make(env_id)
    actions = np.arange(100) % 5
    rewards_b, rewards_s = [], []
    for episode in range(3):
        batch.reset([task], seeds=[5] if episode == 0 else None)
        env.reset(seed=5 if episode == 0 else None, options={"task": task})
        for a in actions[: 30 + 10 * episode]:
            rewards_b.append(batch.step(np.array([a]))[1][0])
            rewards_s.append(env.step(a)[1])
    np.testing.assert_array_equal(rewards_b, rewards_s)
