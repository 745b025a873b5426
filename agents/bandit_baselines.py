"""The classic baselines of the RL² paper's bandit table (Duan et al. 2016, Table 1).

For Bernoulli bandits whose arm probabilities are drawn uniformly from [0, 1]
(``metarl/BernoulliBandit-K{5,10,50}-v0``) a trial is ``n`` pulls of one task; its return is
the number of successes. Every baseline here is a Bayesian or frequentist bandit algorithm
with the uniform ``Beta(1, 1)`` prior of the task distribution, run by simulation on the
same held-out tasks as RL²:

========================  ======================================================================
name                      arm chosen at each pull
========================  ======================================================================
``random``                uniformly at random
``gittins``               largest Gittins index of the arm's ``Beta(1 + s, 1 + f)`` posterior at
                          discount ``gamma`` (Gittins 1979), computed exactly by calibration
                          (:func:`gittins_index_table`)
``thompson``              largest draw from each arm's posterior (Thompson 1933)
``optimistic_thompson``   largest ``max(draw, posterior mean)`` (May et al. 2012)
``ucb1``                  the largest ``mean + c·sqrt(2 ln t / n_i)`` (Auer, Cesa-Bianchi,
                          Fischer 2002; ``c = 1`` is UCB1) with the statistics started at one
                          success and one failure, as in the RL² paper (``prior=False``:
                          every arm once first, as Auer et al.)
``epsilon_greedy``        with probability ε uniformly at random, else the largest posterior mean
``greedy``                the largest posterior mean (ε = 0)
========================  ======================================================================

Ties are broken uniformly at random. Hyperparameters (Gittins' discount, UCB1's ``c``, ε)
are chosen by :func:`tune` on **training** tasks only, as the paper tunes its baselines;
:func:`tune` refuses any task of the held-out split.

Example:
    >>> import metarl
    >>> from metarl.agents import bandit_baselines as bb
    >>> dist = metarl.task_distribution("metarl/BernoulliBandit-K5-v0")
    >>> returns = bb.evaluate(bb.UCB1(), "metarl/BernoulliBandit-K5-v0",
    ...                       dist.split("test")[:4], num_pulls=10, num_runs=2, seed=0)
    >>> returns.shape
    (4,)

References:
    Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel 2016, "RL²: Fast Reinforcement Learning
    via Slow Reinforcement Learning", Sec. 4.1 and Table 1.
    Gittins 1979, "Bandit processes and dynamic allocation indices"; Gittins, Glazebrook,
    Weber 2011, "Multi-armed Bandit Allocation Indices" (2nd ed.), the calibration method.
    Auer, Cesa-Bianchi, Fischer 2002, "Finite-time Analysis of the Multiarmed Bandit Problem".
    Thompson 1933; May, Korda, Lee, Leslie 2012, "Optimistic Bayesian Sampling in
    Contextual-Bandit Problems".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from metarl.stepping.registry import make_batched, task_distribution

__all__ = [
    "BASELINES",
    "UCB1",
    "BanditBaseline",
    "EpsilonGreedy",
    "Gittins",
    "OptimisticThompson",
    "RandomArm",
    "Thompson",
    "evaluate",
    "gittins_index",
    "gittins_index_table",
    "tune",
]


def _argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise argmax of ``(B, K)`` scores, ties broken uniformly at random."""
    best = scores >= scores.max(axis=1, keepdims=True) - 1e-12
    # A random key per arm; the largest key among the tied arms wins.
    keys = np.where(best, rng.random(scores.shape), -1.0)
    return keys.argmax(axis=1)


def _posterior_mean(successes: np.ndarray, failures: np.ndarray) -> np.ndarray:
    return (1.0 + successes) / (2.0 + successes + failures)


class BanditBaseline:
    """A bandit algorithm run on ``B`` bandits at once.

    :meth:`select` sees, per row, only the success and failure counts of every arm and the
    number of pulls so far — never the task.
    """

    name: str = ""

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Arms to pull ``(B,)`` given ``(B, K)`` counts and ``t`` pulls so far."""
        raise NotImplementedError

    def prepare(self, num_pulls: int) -> None:
        """Called once before a trial of ``num_pulls`` pulls (precomputation)."""

    def hyperparameters(self) -> dict[str, float]:
        return {}


@dataclass
class RandomArm(BanditBaseline):
    name = "random"

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        return np.asarray(rng.integers(0, successes.shape[1], size=successes.shape[0]))


@dataclass
class EpsilonGreedy(BanditBaseline):
    """ε-greedy on the posterior means; ``epsilon=0`` is greedy."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        self.name = "greedy" if self.epsilon == 0.0 else "epsilon_greedy"

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        greedy = _argmax_random_ties(_posterior_mean(successes, failures), rng)
        explore = rng.random(successes.shape[0]) < self.epsilon
        return np.where(explore, rng.integers(0, successes.shape[1], successes.shape[0]), greedy)

    def hyperparameters(self) -> dict[str, float]:
        return {"epsilon": self.epsilon}


@dataclass
class Thompson(BanditBaseline):
    """Thompson sampling from the ``Beta(1 + s, 1 + f)`` posteriors (Thompson 1933)."""

    name = "thompson"

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        return _argmax_random_ties(rng.beta(1.0 + successes, 1.0 + failures), rng)


@dataclass
class OptimisticThompson(BanditBaseline):
    """Optimistic Thompson sampling: draws below the posterior mean are raised to it
    (May et al. 2012)."""

    name = "optimistic_thompson"

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        draws = rng.beta(1.0 + successes, 1.0 + failures)
        return _argmax_random_ties(np.maximum(draws, _posterior_mean(successes, failures)), rng)


def ucb1_index(
    successes: np.ndarray, failures: np.ndarray, t: int, c: float = 1.0, prior: bool = False
) -> np.ndarray:
    """UCB1's index ``x̄_i + c·sqrt(2 ln t / n_i)`` (Auer et al. 2002, Fig. 1).

    ``t`` is the number of pulls so far. Without ``prior``, arms never pulled get +inf (each
    arm is pulled once first) and ``t`` is used as is; with ``prior``, as in the RL² paper's
    UCB1 (Duan et al. 2016, Sec. 4.1: the statistics start at one success and one failure, a
    ``Beta(1, 1)`` prior), ``x̄_i = (1 + s_i) / (2 + n_i)``, ``n_i`` counts the two prior
    pulls and ``t`` counts the current pull (``ln(t + 1)``), so no arm must be tried first.
    """
    n = successes + failures
    if prior:
        t_now = t + 1
        return (1.0 + successes) / (2.0 + n) + c * np.sqrt(2.0 * math.log(t_now) / (2.0 + n))
    with np.errstate(divide="ignore", invalid="ignore"):
        index = successes / n + c * np.sqrt(2.0 * math.log(max(t, 1)) / n)
    return np.where(n > 0, index, np.inf)


@dataclass
class UCB1(BanditBaseline):
    """UCB1 (Auer et al. 2002) with an exploration scale ``c`` (tuned in the RL² paper).

    ``prior=True`` (default) is the RL² paper's variant, statistics started at one success
    and one failure; ``prior=False`` is Auer et al.'s, every arm pulled once first — with
    ``n`` pulls of ``k`` arms and ``n`` close to ``k`` that is nearly a random policy (the
    ``n = 10, k = 10`` bandits: all ten pulls go to trying each arm).
    """

    c: float = 1.0
    prior: bool = True
    name = "ucb1"

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        return _argmax_random_ties(ucb1_index(successes, failures, t, self.c, self.prior), rng)

    def hyperparameters(self) -> dict[str, float]:
        return {"c": self.c, "prior": float(self.prior)}


@lru_cache(maxsize=16)
def gittins_index_table(
    gamma: float, max_pulls: int, num_lambdas: int = 2001, tol: float = 1e-6
) -> np.ndarray:
    """Gittins indices of a Bernoulli arm with a ``Beta(1, 1)`` prior, by calibration.

    The index of posterior state ``(s, f)`` (successes, failures) is the per-pull reward
    ``λ`` of a standard arm at which one is indifferent between retiring on ``λ`` forever
    and pulling the unknown arm at least once more (Gittins et al. 2011, the calibration
    method). For every ``λ`` on a grid of ``num_lambdas`` points in [0, 1] the value of the
    retirement problem ``V(s, f) = max(λ/(1-γ), p + γ(p V(s+1, f) + (1-p) V(s, f+1)))``,
    ``p = (1+s)/(2+s+f)``, is found by backward induction over the whole lattice at once;
    the lattice is cut at a depth where ``γ^depth < tol`` (beyond it the posterior is frozen),
    and the indifference point is interpolated linearly between grid points.

    Args:
        gamma: the discount, in (0, 1).
        max_pulls: indices are returned for every state with ``s + f <= max_pulls``.

    Returns:
        ``(max_pulls + 1, max_pulls + 1)`` array ``G[s, f]`` (NaN where ``s + f > max_pulls``).
    """
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    if max_pulls < 0:
        raise ValueError(f"max_pulls must be >= 0, got {max_pulls}")
    tail = math.ceil(math.log(tol) / math.log(gamma))
    depth = max_pulls + tail
    lam = np.linspace(0.0, 1.0, num_lambdas)[:, None]  # (L, 1)
    retire = lam / (1.0 - gamma)
    table = np.full((max_pulls + 1, max_pulls + 1), np.nan)

    s = np.arange(depth + 1, dtype=np.float64)
    p = (1.0 + s) / (2.0 + depth)
    values = np.maximum(retire, p / (1.0 - gamma))  # (L, depth + 1), frozen posterior
    for d in range(depth - 1, -1, -1):
        s = np.arange(d + 1, dtype=np.float64)  # successes; failures = d - s
        p = (1.0 + s) / (2.0 + d)
        # values[:, j] is state (j, d + 1 - j): a success from (s, d-s) goes to j = s + 1.
        cont = p + gamma * (p * values[:, 1 : d + 2] + (1.0 - p) * values[:, : d + 1])
        if d <= max_pulls:
            diff = cont - retire  # (L, d + 1), non-increasing in λ
            # First grid point where retiring is at least as good, then interpolate.
            k = np.clip((diff > 0).sum(axis=0), 1, num_lambdas - 1)
            cols = np.arange(d + 1)
            d0, d1 = diff[k - 1, cols], diff[k, cols]
            l0, l1 = lam[k - 1, 0], lam[k, 0]
            frac = np.where(d0 != d1, d0 / np.where(d0 != d1, d0 - d1, 1.0), 0.0)
            table[s.astype(int), d - s.astype(int)] = l0 + frac * (l1 - l0)
        values = np.maximum(retire, cont)
    table.setflags(write=False)
    return table


def gittins_index(successes: int, failures: int, gamma: float) -> float:
    """The Gittins index of ``Beta(1 + successes, 1 + failures)`` at discount ``gamma``."""
    return float(gittins_index_table(gamma, successes + failures)[successes, failures])


@dataclass
class Gittins(BanditBaseline):
    """The Gittins index policy at discount ``gamma`` (Bayes-optimal for the discounted
    infinite-horizon problem; the paper uses it on the finite horizon too)."""

    gamma: float = 0.9
    name = "gittins"

    def __post_init__(self) -> None:
        self._table: np.ndarray | None = None

    def prepare(self, num_pulls: int) -> None:
        self._table = gittins_index_table(self.gamma, num_pulls)

    def select(
        self, successes: np.ndarray, failures: np.ndarray, t: int, rng: np.random.Generator
    ) -> np.ndarray:
        if self._table is None or (successes + failures).max() >= self._table.shape[0]:
            self.prepare(int(t) + 1)
        assert self._table is not None
        s, f = successes.astype(int), failures.astype(int)
        return _argmax_random_ties(self._table[s, f], rng)

    def hyperparameters(self) -> dict[str, float]:
        return {"gamma": self.gamma}


#: name -> (constructor, grid of hyperparameters searched by :func:`tune`)
BASELINES: dict[str, tuple[Callable[..., BanditBaseline], dict[str, list[float]]]] = {
    "random": (RandomArm, {}),
    "gittins": (Gittins, {"gamma": [0.8, 0.9, 0.95, 0.98]}),
    "thompson": (Thompson, {}),
    "optimistic_thompson": (OptimisticThompson, {}),
    "ucb1": (UCB1, {"c": [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]}),
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": [0.01, 0.02, 0.05, 0.1, 0.2]}),
    "greedy": (lambda: EpsilonGreedy(0.0), {}),
}


def evaluate(
    policy: BanditBaseline,
    env_id: str,
    tasks: Sequence[Any],
    num_pulls: int,
    num_runs: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Mean return (successes in ``num_pulls`` pulls) of ``policy`` on each task.

    Runs ``num_runs`` independent trials per task through the family's batched env, all
    tasks and runs stepped together.

    Returns:
        ``(len(tasks),)`` mean return per task over the runs.
    """
    if num_pulls < 1 or num_runs < 1:
        raise ValueError(f"num_pulls and num_runs must be >= 1, got {num_pulls}, {num_runs}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("evaluate needs at least one task")
    rows = [task for task in tasks for _ in range(num_runs)]
    env = make_batched(env_id, num_envs=len(rows), max_episode_steps=num_pulls)
    num_arms = int(env.single_action_space.n)  # type: ignore[attr-defined]
    rng = np.random.default_rng([seed, 0xBA4D])
    env.reset(rows, seeds=int(rng.integers(2**31)))
    policy.prepare(num_pulls)
    successes = np.zeros((len(rows), num_arms))
    failures = np.zeros((len(rows), num_arms))
    total = np.zeros(len(rows))
    arange = np.arange(len(rows))
    for t in range(num_pulls):
        arms = policy.select(successes, failures, t, rng)
        _, reward, _, _, _ = env.step(arms)
        successes[arange, arms] += reward
        failures[arange, arms] += 1.0 - reward
        total += reward
    env.close()
    return total.reshape(len(tasks), num_runs).mean(axis=1)


def _check_training_tasks(env_id: str, tasks: Iterable[Any]) -> list[Any]:
    test = set(task_distribution(env_id).split("test"))
    tasks = list(tasks)
    leaked = [t for t in tasks if t in test]
    if leaked:
        raise ValueError(
            f"{len(leaked)} of the tuning tasks belong to the held-out test split of {env_id}; "
            "tune on dist.split('train') only"
        )
    return tasks


def tune(
    name: str,
    env_id: str,
    train_tasks: Sequence[Any],
    num_pulls: int,
    num_runs: int = 5,
    seed: int = 0,
) -> tuple[BanditBaseline, dict[str, float]]:
    """The baseline ``name`` with the hyperparameters of its grid that score best on
    ``train_tasks`` (never held-out tasks: refused).

    Returns:
        (the tuned baseline, {hyperparameter setting as text: mean training return}).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown bandit baseline {name!r}; choose from {', '.join(BASELINES)}")
    tasks = _check_training_tasks(env_id, train_tasks)
    factory, grid = BASELINES[name]
    if not grid:
        return factory(), {}
    (param, values), *rest = grid.items()
    assert not rest, "one hyperparameter per baseline"
    scores: dict[str, float] = {}
    best: tuple[float, BanditBaseline] | None = None
    for value in values:
        policy = factory(**{param: value})
        score = float(evaluate(policy, env_id, tasks, num_pulls, num_runs, seed).mean())
        scores[f"{param}={value}"] = score
        if best is None or score > best[0]:
            best = (score, policy)
    assert best is not None
    return best[1], scores
