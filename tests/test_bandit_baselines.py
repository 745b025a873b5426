"""The classic bandit baselines of the RL² paper: closed forms, known values, no test leak."""

from __future__ import annotations

import math

import numpy as np
import pytest

import metarl
from metarl.agents import bandit_baselines as bb

ENV = "metarl/BernoulliBandit-K5-v0"


@pytest.mark.parametrize(
    ("successes", "failures", "expected"),
    # Gittins indices of a Bernoulli arm with a uniform prior at discount 0.9, as tabulated
    # by Gittins, Glazebrook & Weber 2011 and reproduced in Christian & Griffiths 2016,
    # "Algorithms to Live By", ch. 2 (0-0: 0.7029, 1-1: 0.6346, 2-2: 0.6010, 9-1: 0.8695).
    [(0, 0, 0.7029), (1, 1, 0.6346), (2, 2, 0.6010), (9, 1, 0.8695)],
)
def test_gittins_index_matches_published_values(successes, failures, expected):
    assert bb.gittins_index(successes, failures, 0.9) == pytest.approx(expected, abs=1e-4)


def test_gittins_index_properties():
    table = bb.gittins_index_table(0.9, 12)
    s, f = np.meshgrid(np.arange(13), np.arange(13), indexing="ij")
    valid = s + f <= 12
    mean = (1 + s) / (2 + s + f)
    # An exploration bonus over the posterior mean, below 1; more successes, higher index.
    assert (table[valid] > mean[valid]).all() and (table[valid] < 1).all()
    assert (np.diff(table[:, 0]) > 0).all() and (np.diff(table[0, :]) < 0).all()
    # More patience, more exploration.
    assert bb.gittins_index(0, 0, 0.95) > bb.gittins_index(0, 0, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        bb.gittins_index_table(1.0, 5)


def test_ucb1_index_formula():
    s = np.array([[3.0, 1.0, 0.0]])
    f = np.array([[1.0, 3.0, 0.0]])
    index = bb.ucb1_index(s, f, t=8)
    bonus = math.sqrt(2 * math.log(8) / 4)  # Auer et al. 2002: x̄ + sqrt(2 ln t / n_i)
    assert index[0, 0] == pytest.approx(0.75 + bonus)
    assert index[0, 1] == pytest.approx(0.25 + bonus)
    assert index[0, 2] == np.inf  # never pulled: pulled first
    rng = np.random.default_rng(0)
    assert bb.UCB1(prior=False).select(s, f, 8, rng)[0] == 2


def test_ucb1_with_the_papers_beta_prior():
    s = np.array([[3.0, 0.0]])
    f = np.array([[1.0, 0.0]])
    # Duan et al. 2016: statistics start at one success and one failure; t counts this pull.
    index = bb.ucb1_index(s, f, t=4, c=0.5, prior=True)
    assert index[0, 0] == pytest.approx(4 / 6 + 0.5 * math.sqrt(2 * math.log(5) / 6))
    assert index[0, 1] == pytest.approx(0.5 + 0.5 * math.sqrt(2 * math.log(5) / 2))
    # With 10 pulls of 10 arms, Auer et al.'s UCB1 spends every pull trying each arm once
    # (a random policy); the prior lets it exploit after a success.
    env = "metarl/BernoulliBandit-K10-v0"
    tasks = metarl.task_distribution(env).split("train")[:40]
    classic = bb.evaluate(bb.UCB1(0.1, prior=False), env, tasks, num_pulls=10, num_runs=10)
    paper = bb.evaluate(bb.UCB1(0.1, prior=True), env, tasks, num_pulls=10, num_runs=10)
    rand = bb.evaluate(bb.RandomArm(), env, tasks, num_pulls=10, num_runs=10)
    assert abs(classic.mean() - rand.mean()) < 0.3
    assert paper.mean() > rand.mean() + 1.0


def test_greedy_and_optimistic_thompson_choices():
    rng = np.random.default_rng(0)
    s = np.array([[5.0, 1.0], [0.0, 0.0]])
    f = np.array([[1.0, 5.0], [0.0, 0.0]])
    assert bb.EpsilonGreedy(0.0).select(s, f, 12, rng)[0] == 0
    # Ties (the untouched row) are broken at random: both arms show up.
    picks = {int(bb.EpsilonGreedy(0.0).select(s, f, 0, rng)[1]) for _ in range(50)}
    assert picks == {0, 1}
    # Optimistic draws never fall below the posterior mean: with a near-certain arm at 0.99,
    # the other arm (mean 0.5) is picked only when its draw exceeds 0.99.
    s2, f2 = np.array([[980.0, 0.0]]), np.array([[9.0, 0.0]])
    picks2 = [int(bb.OptimisticThompson().select(s2, f2, 989, rng)[0]) for _ in range(400)]
    assert 0 < picks2.count(1) < 40
    with pytest.raises(ValueError, match="epsilon"):
        bb.EpsilonGreedy(1.5)


def test_random_baseline_earns_the_mean_arm_probability():
    tasks = metarl.task_distribution(ENV).split("test")[:10]
    returns = bb.evaluate(bb.RandomArm(), ENV, tasks, num_pulls=50, num_runs=40, seed=0)
    expected = np.array([50 * np.mean(t.probs) for t in tasks])
    # Per task: 2000 pulls, standard error <= 0.5/sqrt(2000)*50 ≈ 0.56 per task mean.
    assert np.abs(returns - expected).mean() < 1.0


def test_informed_baselines_beat_random():
    tasks = metarl.task_distribution(ENV).split("test")[:30]
    rand = bb.evaluate(bb.RandomArm(), ENV, tasks, num_pulls=30, num_runs=4, seed=1).mean()
    for policy in (bb.Gittins(0.9), bb.UCB1(0.2), bb.Thompson(), bb.EpsilonGreedy(0.05)):
        got = bb.evaluate(policy, ENV, tasks, num_pulls=30, num_runs=4, seed=1).mean()
        assert got > rand + 3.0, (policy.name, got, rand)


def test_tuning_never_sees_held_out_tasks(monkeypatch):
    dist = metarl.task_distribution(ENV)
    test_tasks = set(dist.split("test"))
    with pytest.raises(ValueError, match="held-out test split"):
        bb.tune("ucb1", ENV, [*dist.split("train")[:3], dist.split("test")[0]], num_pulls=5)

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

    monkeypatch.setattr(bb, "make_batched", spy)
    policy, scores = bb.tune("epsilon_greedy", ENV, dist.split("train")[:8], num_pulls=10)
    assert seen and not (set(seen) & test_tasks)
    assert set(scores) == {f"epsilon={e}" for e in bb.BASELINES["epsilon_greedy"][1]["epsilon"]}
    assert policy.hyperparameters()["epsilon"] == float(
        max(scores, key=scores.__getitem__).split("=")[1]
    )
    with pytest.raises(ValueError, match="unknown bandit baseline"):
        bb.tune("nope", ENV, dist.split("train")[:3], num_pulls=5)
