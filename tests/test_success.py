"""Success rates where a family defines success (``info["is_success"]``): recorded per
episode by every env backend and sampler, carried into the adaptation curves of the
gradient agents and RL², and shown as a column of the ``metarl benchmark`` report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metarl
from metarl.cli.benchmark import BenchmarkEntry, BenchmarkReport
from metarl.envs.navigation import GoalTask
from metarl.evaluation import AdaptationCurve, evaluate_policy_adaptation
from metarl.learning.policies import make_policy
from metarl.sampling.native import BatchedSampler

NAV = "metarl/Navigation2D-v0"
# From the origin, an action of (0.05, 0) reaches the first goal (within the tolerance 0.01)
# at step 1 and the second at step 3; it never reaches the third.
TASKS = [GoalTask((0.05, 0.0)), GoalTask((0.15, 0.005)), GoalTask((-0.3, 0.3))]
REACHED = [1.0, 1.0, 0.0]


def _straight_policy() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A deterministic policy that always moves by (0.05, 0)."""
    env = metarl.make(NAV)
    policy = make_policy(env.observation_space, env.action_space, hidden_sizes=(4,))
    env.close()
    params = {k: torch.zeros_like(v) for k, v in policy.named_parameters()}
    last_bias = [k for k in params if k.endswith("bias")][-1]
    params[last_bias] = torch.tensor([0.05, 0.0])
    return policy, params


@pytest.mark.parametrize("backend", ["auto", "torch", "generic", "subprocess"])
def test_every_backend_records_which_episodes_reached_the_goal(backend: str) -> None:
    policy, params = _straight_policy()
    kwargs = {"env_kwargs": {"max_episode_steps": 10}}
    if backend == "torch":
        sampler = BatchedSampler(NAV, 3, 2, backend="torch", **kwargs)  # type: ignore[arg-type]
    else:
        sampler = BatchedSampler(NAV, 3, 2, backend=backend, **kwargs)  # type: ignore[arg-type]
    try:
        eps = sampler.collect(policy, params, TASKS, seed=0, deterministic=True)
    finally:
        sampler.close()
    assert eps.success is not None
    np.testing.assert_array_equal(eps.success.numpy(), np.repeat(REACHED, 2))
    np.testing.assert_array_equal(eps.task_success().numpy(), REACHED)  # type: ignore[union-attr]
    # Reaching the goal ends the episode: the successful rows stopped early.
    np.testing.assert_array_equal(eps.mask.sum(0).numpy(), [1, 1, 3, 3, 10, 10])


def test_families_without_success_report_none() -> None:
    env = metarl.make("metarl/TabularMDP-S10A5-v0")
    policy = make_policy(env.observation_space, env.action_space, hidden_sizes=(4,))
    env.close()
    params = dict(policy.named_parameters())
    tasks = metarl.task_distribution("metarl/TabularMDP-S10A5-v0").split("test")[:2]
    for backend in ("torch", "numpy"):
        sampler = BatchedSampler("metarl/TabularMDP-S10A5-v0", 2, 2, backend=backend)
        eps = sampler.collect(policy, params, tasks, seed=0)
        assert eps.success is None and eps.task_success() is None


def test_evaluation_curve_holds_the_success_rate_per_seed_task_and_step() -> None:
    policy, params = _straight_policy()

    def no_step(p, eps, lr, per_task):  # the protocol's inner step, here a no-op
        if per_task:
            return p
        return {k: v.unsqueeze(0).expand(eps.num_tasks, *v.shape) for k, v in p.items()}

    curve = evaluate_policy_adaptation(
        policy, params, NAV, no_step, agent="test", num_steps=2, lrs=(0.1,),
        episodes_per_step=2, seeds=(0, 1), env_kwargs={"max_episode_steps": 10}, max_tasks=3,
    )  # fmt: skip
    assert curve.success is not None and curve.success.shape == curve.returns.shape
    # The policy is stochastic here (std 1): the rate is a measured share of episodes.
    assert ((curve.success >= 0) & (curve.success <= 1)).all()
    assert curve.summary()["success_rate"] == curve.success.reshape(-1, 3).mean(0).tolist()
    again = AdaptationCurve(**{k: v for k, v in curve.to_json().items() if k != "summary"})
    np.testing.assert_array_equal(again.success, curve.success)


def test_rl2_reports_success_per_episode_of_a_trial() -> None:
    from metarl.agents import rl2

    cfg = rl2.RL2Config(env_id=NAV, episodes_per_trial=3, max_episode_steps=10, num_trials=4,
                        hidden_size=8, num_iterations=1)  # fmt: skip
    agent = rl2.RL2(cfg)
    with torch.no_grad():  # an RL² policy that always moves by (0.05, 0)
        for p in agent.policy.parameters():
            p.zero_()
        agent.policy.pi.bias.copy_(torch.tensor([0.05, 0.0]))
        agent.policy.log_std.fill_(-20.0)
    curve = agent.evaluate(TASKS, trials_per_task=2, seed=0)
    assert curve.success is not None and curve.success.shape == (2, 3, 3)
    np.testing.assert_array_equal(curve.success.mean((0, 2)), REACHED)
    bandit = rl2.RL2(rl2.RL2Config(max_episode_steps=5, num_trials=4, hidden_size=8))
    assert bandit.evaluate(num_tasks=2, trials_per_task=1).success is None


def _entry(agent: str, success: np.ndarray | None) -> BenchmarkEntry:
    returns = np.arange(12, dtype=float).reshape(1, 4, 3)
    curve = AdaptationCurve(agent, NAV, "gradient steps", returns, success=success,
                            env_steps=[0, 10, 20], wall_clock_s=[0.0, 0.1, 0.2])  # fmt: skip
    runs = [{"seed": 0, "run_dir": "r", "reused": "trained", "iterations": 1, "env_steps": 1,
             "wall_clock_s": 1.0}]  # fmt: skip
    return BenchmarkEntry(agent, NAV, "quick", curve, runs)


def test_benchmark_report_has_a_success_column_where_the_family_defines_success() -> None:
    settings = {"split": "test", "seeds": [0], "eval_seeds": [0], "command": "c", "machine": "m"}
    success = np.zeros((1, 4, 3))
    success[0, :, 2] = [1, 1, 0, 1]  # 0.75 after two steps, none before
    md = BenchmarkReport([_entry("a", success)], settings).markdown(None)
    header = next(line for line in md.splitlines() if line.startswith("| agent"))
    assert "success k=0 → 2" in header
    row = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "| 0.00 → 0.75 |" in row
    assert 'info["is_success"]' in md
    data = BenchmarkReport([_entry("a", success)], settings).to_json()
    assert data["entries"][0]["success_rate"] == [0.0, 0.0, 0.75]
    # No curve with success (bandits, MDPs, MuJoCo locomotion): no column.
    plain = BenchmarkReport([_entry("a", None)], settings).markdown(None)
    assert "success" not in plain.split("## ")[-1]
