"""The classic baselines of the RL² paper's tabular-MDP table (Duan et al. 2016, Table 2).

On ``metarl/TabularMDP-S10A5-v0`` a trial is ``n`` episodes of 10 steps on one random MDP
(transitions from a flat Dirichlet, mean rewards from N(1, 1), unit Gaussian reward noise);
its return is the total reward of the ``n`` episodes. Every baseline below keeps, per trial,
the counts of observed transitions and the sums of observed rewards, and at the start of
each episode plans on a model built from them by finite-horizon dynamic programming over the
episode's remaining steps:

=================  ===========================================================================
name               model it plans on
=================  ===========================================================================
``random``         none: uniformly random actions
``psrl``           one MDP drawn from the exact posterior (Strens 2000; Osband, Russo, Van Roy
                   2013): ``P(·|s,a) ~ Dir(1 + counts)``, ``R(s,a) ~ N(μ_n, 1/(1+n))`` with
                   ``μ_n = (1 + Σr)/(1 + n)`` — the posterior of the task distribution itself
``ucrl2``          the most optimistic MDP within UCRL2's confidence sets (Jaksch, Ortner,
                   Auer 2010): rewards ``r̂ + c·sqrt(7 ln(2SAt/δ) / (2 max(1, n)))`` and
                   transitions within L1 distance ``c·sqrt(14 S ln(2At/δ) / max(1, n))`` of the
                   empirical ones, solved by extended value iteration (episodic form)
``beb``            the posterior-mean MDP with the exploration bonus ``β / (1 + n(s, a))``
                   added to the rewards (Kolter & Ng 2009)
``epsilon_greedy`` the posterior-mean MDP, with a uniformly random action with probability ε
``greedy``         the posterior-mean MDP (ε = 0)
=================  ===========================================================================

Hyperparameters (UCRL2's scale ``c``, BEB's ``β``, ε) are chosen by :func:`tune` on training
tasks only; it refuses any held-out task. Ties between actions are broken at random.

References:
    Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel 2016, "RL²: Fast Reinforcement Learning
    via Slow Reinforcement Learning", Sec. 4.2 and Table 2.
    Strens 2000, "A Bayesian Framework for Reinforcement Learning"; Osband, Russo, Van Roy 2013,
    "(More) Efficient Reinforcement Learning via Posterior Sampling".
    Jaksch, Ortner, Auer 2010, "Near-optimal Regret Bounds for Reinforcement Learning".
    Kolter, Ng 2009, "Near-Bayesian Exploration in Polynomial Time".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metarl.stepping.registry import make_batched, task_distribution

__all__ = [
    "BASELINES",
    "BEB",
    "PSRL",
    "UCRL2",
    "EpsilonGreedy",
    "Knowledge",
    "MDPBaseline",
    "RandomAction",
    "evaluate",
    "finite_horizon_q",
    "optimistic_transition_values",
    "tune",
]

ENV_ID = "metarl/TabularMDP-S10A5-v0"


@dataclass
class Knowledge:
    """What a trial has seen so far, per row: ``counts`` (B, S, A, S) of transitions,
    ``visits`` (B, S, A) and ``reward_sums`` (B, S, A)."""

    counts: np.ndarray
    visits: np.ndarray
    reward_sums: np.ndarray

    @classmethod
    def empty(cls, batch: int, num_states: int, num_actions: int) -> Knowledge:
        return cls(
            np.zeros((batch, num_states, num_actions, num_states)),
            np.zeros((batch, num_states, num_actions)),
            np.zeros((batch, num_states, num_actions)),
        )

    def update(
        self, state: np.ndarray, action: np.ndarray, reward: np.ndarray, nxt: np.ndarray
    ) -> None:
        rows = np.arange(len(state))
        self.counts[rows, state, action, nxt] += 1
        self.visits[rows, state, action] += 1
        self.reward_sums[rows, state, action] += reward

    @property
    def steps(self) -> int:
        return int(self.visits[0].sum())

    def posterior_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-mean transitions ``(B, S, A, S)`` and rewards ``(B, S, A)`` under the
        task distribution's prior (flat Dirichlet; N(1, 1) means, unit noise)."""
        trans = (1.0 + self.counts) / (self.counts.shape[-1] + self.visits[..., None])
        rewards = (1.0 + self.reward_sums) / (1.0 + self.visits)
        return trans, rewards


def finite_horizon_q(transitions: np.ndarray, rewards: np.ndarray, horizon: int) -> np.ndarray:
    """Optimal action values ``Q[h]`` with ``horizon - h`` steps to go, ``(B, H, S, A)``.

    ``Q_h(s, a) = R(s, a) + Σ_s' P(s'|s, a) max_a' Q_{h+1}(s', a')``, ``Q_H = 0``.
    """
    batch, num_states, num_actions = rewards.shape
    q = np.zeros((batch, horizon, num_states, num_actions))
    value = np.zeros((batch, num_states))
    for h in range(horizon - 1, -1, -1):
        q[:, h] = rewards + np.einsum("bsan,bn->bsa", transitions, value)
        value = q[:, h].max(axis=-1)
    return q


def optimistic_transition_values(
    transitions: np.ndarray, radius: np.ndarray, value: np.ndarray
) -> np.ndarray:
    """``max Σ_s' p(s') V(s')`` over ``p`` with ``||p − p̂||₁ ≤ radius`` (Jaksch et al. 2010,
    Fig. 2): move up to ``radius/2`` of mass onto the best next state, taken from the worst.

    Args:
        transitions: ``p̂`` ``(B, S, A, S)``; radius ``(B, S, A)``; value ``(B, S)``.

    Returns:
        ``(B, S, A)``.
    """
    order = np.argsort(-value, axis=-1)  # best next state first
    v_sorted = np.take_along_axis(value, order, axis=-1)[:, None, None, :]
    p = np.take_along_axis(
        transitions, np.broadcast_to(order[:, None, None, :], transitions.shape), -1
    )
    q = p.copy()
    q[..., 0] = np.minimum(1.0, p[..., 0] + radius / 2.0)
    excess = q.sum(-1) - 1.0  # (B, S, A), what the other states must give up
    # Mass of the states after j (the worse ones), which give up theirs first.
    after = np.cumsum(q[..., ::-1], axis=-1)[..., ::-1] - q
    removal = np.clip(excess[..., None] - after, 0.0, q)
    removal[..., 0] = 0.0
    return ((q - removal) * v_sorted).sum(-1)


class MDPBaseline:
    """A tabular-MDP algorithm run on ``B`` trials at once; it sees only its
    :class:`Knowledge` and the current state, never the task."""

    name: str = ""

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        """Action values ``(B, H, S, A)`` for the coming episode."""
        raise NotImplementedError

    def act(self, q: np.ndarray, h: int, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = q[np.arange(len(state)), h, state]  # (B, A)
        best = values >= values.max(-1, keepdims=True) - 1e-12
        return np.where(best, rng.random(values.shape), -1.0).argmax(-1)

    def hyperparameters(self) -> dict[str, float]:
        return {}


class RandomAction(MDPBaseline):
    name = "random"

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        b, s, a = knowledge.visits.shape
        return np.zeros((b, horizon, s, a))  # all tied: uniformly random


class PSRL(MDPBaseline):
    """Posterior sampling (Strens 2000; Osband et al. 2013), one draw per episode."""

    name = "psrl"

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        g = rng.gamma(1.0 + knowledge.counts)
        trans = g / g.sum(-1, keepdims=True)
        mean = (1.0 + knowledge.reward_sums) / (1.0 + knowledge.visits)
        rewards = mean + rng.standard_normal(mean.shape) / np.sqrt(1.0 + knowledge.visits)
        return finite_horizon_q(trans, rewards, horizon)


@dataclass
class UCRL2(MDPBaseline):
    """UCRL2's optimism (Jaksch et al. 2010) in episodic form; ``scale`` multiplies both
    confidence radii (1: the paper's), ``delta`` is the confidence parameter."""

    scale: float = 1.0
    delta: float = 0.1
    name = "ucrl2"

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        _, num_states, num_actions = knowledge.visits.shape
        t = max(knowledge.steps, 1)
        n = np.maximum(knowledge.visits, 1.0)
        log_r = math.log(2 * num_states * num_actions * t / self.delta)
        log_p = math.log(2 * num_actions * t / self.delta)
        rewards = knowledge.reward_sums / n + self.scale * np.sqrt(7 * log_r / (2 * n))
        radius = self.scale * np.sqrt(14 * num_states * log_p / n)
        empirical = np.where(
            knowledge.visits[..., None] > 0,
            knowledge.counts / n[..., None],
            1.0 / num_states,
        )
        q = np.zeros((*rewards.shape[:1], horizon, num_states, num_actions))
        value = np.zeros(rewards.shape[:2])
        for h in range(horizon - 1, -1, -1):
            q[:, h] = rewards + optimistic_transition_values(empirical, radius, value)
            value = q[:, h].max(-1)
        return q

    def hyperparameters(self) -> dict[str, float]:
        return {"scale": self.scale}


@dataclass
class BEB(MDPBaseline):
    """Bayesian exploration bonus (Kolter & Ng 2009): posterior mean + ``beta / (1 + n)``."""

    beta: float = 1.0
    name = "beb"

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        trans, rewards = knowledge.posterior_mean()
        return finite_horizon_q(trans, rewards + self.beta / (1.0 + knowledge.visits), horizon)

    def hyperparameters(self) -> dict[str, float]:
        return {"beta": self.beta}


@dataclass
class EpsilonGreedy(MDPBaseline):
    """Certainty equivalence on the posterior-mean MDP, ε-random; ``epsilon=0``: greedy."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        self.name = "greedy" if self.epsilon == 0.0 else "epsilon_greedy"

    def plan(self, knowledge: Knowledge, horizon: int, rng: np.random.Generator) -> np.ndarray:
        return finite_horizon_q(*knowledge.posterior_mean(), horizon)

    def act(self, q: np.ndarray, h: int, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        greedy = super().act(q, h, state, rng)
        explore = rng.random(len(state)) < self.epsilon
        return np.where(explore, rng.integers(0, q.shape[-1], len(state)), greedy)

    def hyperparameters(self) -> dict[str, float]:
        return {"epsilon": self.epsilon}


#: name -> (constructor, grid of the one hyperparameter :func:`tune` searches)
BASELINES: dict[str, tuple[Callable[..., MDPBaseline], dict[str, list[float]]]] = {
    "random": (RandomAction, {}),
    "psrl": (PSRL, {}),
    "ucrl2": (UCRL2, {"scale": [0.03, 0.1, 0.2, 0.3, 0.5, 1.0]}),
    "beb": (BEB, {"beta": [0.1, 0.3, 1.0, 3.0]}),
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": [0.01, 0.03, 0.1, 0.2]}),
    "greedy": (lambda: EpsilonGreedy(0.0), {}),
}


def evaluate(
    policy: MDPBaseline,
    tasks: Sequence[Any],
    num_episodes: int,
    num_runs: int = 10,
    seed: int = 0,
    env_id: str = ENV_ID,
) -> np.ndarray:
    """Mean trial return (total reward of ``num_episodes`` episodes) of ``policy`` per task.

    Every task runs ``num_runs`` independent trials; all rows step together through the
    family's batched env.

    Returns:
        ``(len(tasks),)``.
    """
    if num_episodes < 1 or num_runs < 1:
        raise ValueError(f"num_episodes and num_runs must be >= 1, got {num_episodes}, {num_runs}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("evaluate needs at least one task")
    rows = [task for task in tasks for _ in range(num_runs)]
    env = make_batched(env_id, num_envs=len(rows))
    num_states = int(env.single_observation_space.n)  # type: ignore[attr-defined]
    num_actions = int(env.single_action_space.n)  # type: ignore[attr-defined]
    rng = np.random.default_rng([seed, 0x3D9])
    knowledge = Knowledge.empty(len(rows), num_states, num_actions)
    total = np.zeros(len(rows))
    for _ in range(num_episodes):
        state, _ = env.reset(rows, seeds=int(rng.integers(2**31)))
        q = policy.plan(knowledge, env.horizon, rng)
        for h in range(env.horizon):
            action = policy.act(q, h, state, rng)
            nxt, reward, _, _, _ = env.step(action)
            knowledge.update(state, action, reward, nxt)
            total += reward
            state = nxt
    env.close()
    return total.reshape(len(tasks), num_runs).mean(axis=1)


def tune(
    name: str,
    train_tasks: Sequence[Any],
    num_episodes: int,
    num_runs: int = 5,
    seed: int = 0,
    env_id: str = ENV_ID,
) -> tuple[MDPBaseline, dict[str, float]]:
    """The baseline ``name`` with the grid setting that scores best on ``train_tasks``
    (held-out tasks are refused). Returns (baseline, {setting: mean training return})."""
    if name not in BASELINES:
        raise ValueError(f"unknown MDP baseline {name!r}; choose from {', '.join(BASELINES)}")
    test = set(task_distribution(env_id).split("test"))
    tasks = list(train_tasks)
    if any(t in test for t in tasks):
        raise ValueError(
            f"some tuning tasks belong to the held-out test split of {env_id}; "
            "tune on dist.split('train') only"
        )
    factory, grid = BASELINES[name]
    if not grid:
        return factory(), {}
    ((param, values),) = grid.items()
    scores: dict[str, float] = {}
    best: tuple[float, MDPBaseline] | None = None
    for value in values:
        policy = factory(**{param: value})
        score = float(evaluate(policy, tasks, num_episodes, num_runs, seed, env_id).mean())
        scores[f"{param}={value}"] = score
        if best is None or score > best[0]:
            best = (score, policy)
    assert best is not None
    return best[1], scores
