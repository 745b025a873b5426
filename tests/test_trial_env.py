"""RL2TrialEnv: one RL² trial per episode, through Gymnasium's and SB3's checkers."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import metarl
from metarl.stepping.trial_env import RL2TrialEnv

MDP = "metarl/TabularMDP-S10A5-v0"


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("metarl/BernoulliBandit-K5-v0", {"episodes_per_trial": 1, "max_episode_steps": 10}),
        (MDP, {"episodes_per_trial": 3}),
        ("metarl/Navigation2D-v0", {"episodes_per_trial": 2, "max_episode_steps": 20}),
    ],
)
def test_passes_gymnasium_and_sb3_checkers(env_id, kwargs):
    gym_check_env(RL2TrialEnv(env_id, **kwargs), skip_render_check=True)
    sb3_check_env(RL2TrialEnv(env_id, **kwargs), warn=True)


def test_a_trial_is_n_episodes_of_one_task():
    env = RL2TrialEnv(MDP, episodes_per_trial=3)
    obs, info = env.reset(seed=0)
    task = info["task"]
    assert obs.shape == (10 + 5 + 2,) and obs[10:].sum() == 0.0  # no previous step yet
    assert task in set(metarl.task_distribution(MDP).split("train"))
    ends, done_flags, returns = [], [], []
    for t in range(30):
        action = t % 5
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["task"] == task and not truncated
        np.testing.assert_array_equal(obs[10:15], np.eye(5)[action])  # previous action
        assert obs[15] == np.float32(reward)  # previous reward
        done_flags.append(obs[16])
        if "episode_return" in info:
            returns.append(info["episode_return"])
        if terminated:
            ends.append(t)
    # Inner episodes end at steps 9, 19, 29; the trial (the wrapper's episode) only at 29.
    assert ends == [29] and len(returns) == 3
    assert [i for i, d in enumerate(done_flags) if d == 1.0] == [9, 19, 29]
    # The next trial draws another task; a task can also be given, and the test split asked.
    _, info2 = env.reset()
    assert info2["task"] != task
    test_task = metarl.task_distribution(MDP).split("test")[0]
    assert env.reset(options={"task": test_task})[1]["task"] == test_task
    test_env = RL2TrialEnv(MDP, episodes_per_trial=1, split="test")
    assert test_env.reset(seed=3)[1]["task"] in set(test_env.tasks)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="episodes_per_trial"):
        RL2TrialEnv(MDP, episodes_per_trial=0)
    with pytest.raises(ValueError, match="split"):
        RL2TrialEnv(MDP, split="validation")
    with pytest.raises(KeyError, match="no task family"):
        RL2TrialEnv("metarl/Nope-v0")
    env = RL2TrialEnv(MDP, episodes_per_trial=1)
    with pytest.raises(metarl.TaskError, match="before reset"):
        env.step(0)


def test_recurrent_ppo_trains_on_trials():
    sb3_contrib = pytest.importorskip("sb3_contrib")
    env = RL2TrialEnv("metarl/BernoulliBandit-K5-v0", episodes_per_trial=1, max_episode_steps=10)
    model = sb3_contrib.RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=40, batch_size=20, n_epochs=1, seed=0, device="cpu",
        policy_kwargs={"lstm_hidden_size": 16, "net_arch": [16]},
    )  # fmt: skip
    model.learn(80)
    obs, _ = env.reset(seed=0)
    state, start = None, np.ones((1,), dtype=bool)
    for _ in range(10):
        action, state = model.predict(obs, state=state, episode_start=start)
        obs, _, terminated, _, _ = env.step(int(action))
        start = np.array([terminated])
    assert terminated
