"""The classic tabular-MDP baselines of the RL² paper: closed forms and no test leak."""

from __future__ import annotations

import numpy as np
import pytest

import metarl
from metarl.agents import mdp_baselines as mb


def test_finite_horizon_q_closed_form():
    # One state, two actions paying 1 and 2: with k steps to go the best is 2k.
    trans = np.ones((1, 1, 2, 1))
    rewards = np.array([[[1.0, 2.0]]])
    q = mb.finite_horizon_q(trans, rewards, horizon=3)
    np.testing.assert_allclose(q[0, :, 0], [[5.0, 6.0], [3.0, 4.0], [1.0, 2.0]])
    # Two states: action 1 moves to the rewarding absorbing state 1 (reward 3 per step).
    trans = np.zeros((1, 2, 2, 2))
    trans[0, 0, 0, 0] = trans[0, 0, 1, 1] = trans[0, 1, :, 1] = 1.0
    rewards = np.array([[[1.0, 0.0], [3.0, 3.0]]])
    q = mb.finite_horizon_q(trans, rewards, horizon=2)
    np.testing.assert_allclose(q[0, 0, 0], [1.0 + 1.0, 0.0 + 3.0])


def test_optimistic_transition_values_closed_form():
    p = np.array([0.5, 0.3, 0.2]).reshape(1, 1, 1, 3)
    value = np.array([[0.0, 1.0, 2.0]])
    # Radius 0.4: 0.2 more onto the best state (2), taken from the worst (0): (0.3, 0.3, 0.4).
    got = mb.optimistic_transition_values(p, np.array([[[0.4]]]), value)
    assert got[0, 0, 0] == pytest.approx(0.3 * 0 + 0.3 * 1 + 0.4 * 2)
    # Radius 1.2: 0.6 moves; the worst state has only 0.5, the middle one gives the rest.
    got = mb.optimistic_transition_values(p, np.array([[[1.2]]]), value)
    assert got[0, 0, 0] == pytest.approx(0.2 * 1 + 0.8 * 2)
    # Radius 0: the empirical expectation.
    got = mb.optimistic_transition_values(p, np.array([[[0.0]]]), value)
    assert got[0, 0, 0] == pytest.approx(0.3 + 0.4)
    # Unlimited radius: everything on the best state.
    assert mb.optimistic_transition_values(p, np.array([[[5.0]]]), value)[0, 0, 0] == 2.0


def test_posterior_mean_is_the_conjugate_update():
    k = mb.Knowledge.empty(1, 2, 1)
    k.update(np.array([0]), np.array([0]), np.array([3.0]), np.array([1]))
    k.update(np.array([0]), np.array([0]), np.array([1.0]), np.array([1]))
    trans, rewards = k.posterior_mean()
    np.testing.assert_allclose(trans[0, 0, 0], [1 / 4, 3 / 4])  # Dir(1, 1) + counts (0, 2)
    assert rewards[0, 0, 0] == pytest.approx((1.0 + 4.0) / 3.0)  # N(1, 1) prior, unit noise
    assert rewards[0, 1, 0] == 1.0 and k.steps == 2


def test_informed_baselines_beat_random():
    tasks = metarl.task_distribution(mb.ENV_ID).split("test")[:20]
    rand = mb.evaluate(mb.RandomAction(), tasks, num_episodes=8, num_runs=3, seed=0).mean()
    for policy in (mb.PSRL(), mb.UCRL2(0.3), mb.BEB(0.3), mb.EpsilonGreedy(0.0)):
        got = mb.evaluate(policy, tasks, num_episodes=8, num_runs=3, seed=0).mean()
        assert got > 1.2 * rand, (policy.name, got, rand)


def test_tuning_never_sees_held_out_tasks(monkeypatch):
    dist = metarl.task_distribution(mb.ENV_ID)
    with pytest.raises(ValueError, match="held-out test split"):
        mb.tune("beb", [dist.split("train")[0], dist.split("test")[1]], num_episodes=2)
    seen: list[object] = []
    make_batched = metarl.make_batched

    def spy(*args, **kwargs):
        env = make_batched(*args, **kwargs)
        reset = env.reset

        def recording_reset(tasks, seeds=None):
            seen.extend(tasks)
            return reset(tasks, seeds)

        env.reset = recording_reset  # type: ignore[method-assign]
        return env

    monkeypatch.setattr(mb, "make_batched", spy)
    policy, scores = mb.tune("beb", dist.split("train")[:4], num_episodes=2, num_runs=1)
    assert seen and not (set(seen) & set(dist.split("test")))
    assert len(scores) == len(mb.BASELINES["beb"][1]["beta"]) and policy.name == "beb"
    with pytest.raises(ValueError, match="epsilon"):
        mb.EpsilonGreedy(-0.1)
