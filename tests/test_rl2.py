"""RL²: memory within a trial and none across trials, trial-level GAE, resume, learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import metarl
from metarl.agents import rl2
from metarl.learning.returns import gae
from metarl.runs import RunMismatchError, save_checkpoint_file
from metarl.runs.training import train_loop

MDP = "metarl/TabularMDP-S10A5-v0"


@pytest.fixture(autouse=True)
def one_thread():
    # Small recurrent nets on a busy machine: more threads only spin (100x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _agent(**overrides) -> rl2.RL2:
    cfg = rl2.RL2Config(
        env_id=MDP, episodes_per_trial=3, num_trials=8, hidden_size=16, num_minibatches=2
    )
    return rl2.RL2(dataclasses.replace(cfg, **overrides))


def test_trial_gae_closed_form_and_masked_steps_skipped():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [9.0], [1.0]])
    mask = torch.tensor([[1.0], [0.0], [1.0]])
    adv = rl2.trial_gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # Step 1 is a row waiting (masked): skipped, so step 0 bootstraps from step 2's value.
    # t=2: δ = 2 − 1 = 1; t=0: δ = 1 + 0.9·1 − 0.5 = 1.4, A = 1.4 + 0.9·1 = 2.3.
    torch.testing.assert_close(adv, torch.tensor([[2.3], [0.0], [1.0]]))
    # With nothing masked it is the ordinary GAE of one episode.
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    ones = torch.ones(7, 4)
    torch.testing.assert_close(
        rl2.trial_gae(r, v, ones, 0.95, 0.7), gae(r, v, ones, gamma=0.95, lam=0.7)
    )


def test_hidden_state_kept_within_a_trial_and_reset_between_trials():
    agent = _agent()
    policy, env = agent.policy, agent.env
    tasks = list(agent.train_tasks[:8])
    trials = rl2.collect_trials(policy, env, tasks, 3, seed=0)
    horizon = env.horizon
    assert trials.inputs.shape[0] == 3 * horizon
    # The done flag marks exactly the first step of episodes 2 and 3, whose previous reward
    # is the one that ended the episode before.
    done = trials.inputs[:, :, -1]
    expected = torch.zeros_like(done)
    expected[[horizon, 2 * horizon]] = 1.0
    torch.testing.assert_close(done, expected)
    torch.testing.assert_close(trials.inputs[horizon, :, -2], trials.rewards[horizon - 1])

    with torch.no_grad():
        h0 = torch.zeros(8, policy.hidden_size)
        # One pass over the whole trial from a zero state reproduces the collected outputs:
        # the sampler kept its memory across the episodes of the trial ...
        heads, _, _ = policy(trials.inputs, h0)
        torch.testing.assert_close(heads, trials.heads)
        # ... and did not reset it at an episode boundary (which would give other outputs).
        reset_heads, _, _ = policy(trials.inputs[horizon:], h0)
        assert not torch.allclose(reset_heads[0], trials.heads[horizon], atol=1e-4)

    # A second trial starts from zero memory: its first outputs are those of a fresh state,
    # the same for every row (same first observation), whatever the first trial did.
    again = rl2.collect_trials(policy, env, tasks[::-1], 3, seed=1)
    with torch.no_grad():
        fresh, _, _ = policy(again.inputs[:1], h0)
    torch.testing.assert_close(again.heads[0], fresh[0])
    torch.testing.assert_close(again.heads[0], trials.heads[0])


def _config(**overrides) -> rl2.RL2Config:
    cfg = rl2.RL2Config(env_id=MDP, episodes_per_trial=3, num_trials=8, hidden_size=16,
                        num_minibatches=2, tensorboard=False)  # fmt: skip
    return dataclasses.replace(cfg, **overrides)


def test_training_resumes_exactly_from_a_checkpoint(tmp_path):
    whole = rl2.train(_config(num_iterations=3), tmp_path / "whole")
    part = rl2.train(_config(num_iterations=2), tmp_path / "part")
    rl2.train(_config(num_iterations=3), part.path, resume=True)  # iteration 2 only
    a, b = rl2.load_agent(whole.path), rl2.load_agent(part.path)
    assert a.iterations == b.iterations == 3 and a.env_steps == b.env_steps
    assert a.value_scale == b.value_scale
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], msg=name)
    assert whole.metrics()[2]["trial_return"] == part.metrics()[2]["trial_return"]
    assert not list(part.path.glob("*.tmp"))
    with pytest.raises(RunMismatchError, match="another configuration"):
        rl2.train(_config(num_iterations=4, hidden_size=8), part.path, resume=True)
    assert a.config.hidden_size == 16


def test_init_from_starts_with_a_saved_policy_and_refuses_a_misfit(tmp_path):
    run = rl2.train(_config(num_iterations=1), tmp_path / "short")
    a = rl2.load_agent(run.path)
    b = _agent(episodes_per_trial=5, init_from=str(run.path))  # longer trials, same network
    for name, value in a.policy.state_dict().items():
        torch.testing.assert_close(b.policy.state_dict()[name], value, msg=name)
    assert b.iterations == 0
    with pytest.raises(ValueError, match="does not fit"):
        _agent(hidden_size=8, init_from=str(run.path))
    with pytest.raises(ValueError, match="init_from: no checkpoint"):
        _agent(init_from=str(tmp_path / "missing.pt"))
    # A checkpoint file of the RL² of earlier versions (its policy at the top level) still
    # starts a run; a checkpoint of RL² without a policy is refused in one line.
    old = save_checkpoint_file(tmp_path / "old.pt", {"policy": a.policy.state_dict()},
                               agent="rl2", task_family=MDP)  # fmt: skip
    c = _agent(init_from=str(old))
    torch.testing.assert_close(
        c.policy.state_dict()["pi.weight"], a.policy.state_dict()["pi.weight"]
    )
    empty = save_checkpoint_file(tmp_path / "empty.pt", {"iteration": 1}, agent="rl2")
    with pytest.raises(ValueError, match="holds no RL² policy"):
        _agent(init_from=str(empty))


def _mc_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted returns-to-go over the whole trial (no masked steps here)."""
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def test_value_head_regresses_on_the_trials_discounted_returns():
    """The value head's target and its scale are the trial's discounted Monte-Carlo returns
    (rllab's baseline target, which Duan et al. 2016 used), not GAE(λ = 0.3) returns, which
    bootstrap on the untrained value: on a 10-episode MDP trial their spread is that of one
    step's reward, ~14× too small, and the value then learned slowly (it could not tell a
    trial's start, worth ~60, from its end, worth ~1)."""
    agent = _agent(episodes_per_trial=10, num_trials=16, update_epochs=1)
    tasks = list(agent.train_tasks[:16])
    trials = rl2.collect_trials(agent.policy, agent.env, tasks, 10, seed=0)
    mc = _mc_returns(trials.rewards, agent.config.gamma)
    agent._ppo_update(trials)
    assert agent.value_scale == pytest.approx(float(mc.std()), rel=1e-5)
    assert agent.value_scale > 10  # the 100-step trial's returns, not one step's reward
    # value_target="gae" keeps PPO's usual target (and its scale).
    old = _agent(episodes_per_trial=10, num_trials=16, update_epochs=1, value_target="gae")
    old._ppo_update(trials)
    values = trials.values * 1.0  # value_scale starts at 1
    adv = rl2.trial_gae(trials.rewards, values, trials.mask, 0.99, 0.3)
    assert old.value_scale == pytest.approx(float((adv + values).std()), rel=1e-5)
    assert old.value_scale < agent.value_scale / 5


def test_separate_value_network_keeps_the_value_loss_out_of_the_policys_memory(tmp_path):
    """value_network="separate": the value head reads from a GRU of its own (as the rllab
    baseline Duan et al. 2016 trained), the hidden state carries both memories through the
    trial, the value loss moves no policy weight and the policy loss no value weight, and
    the gradient norms are clipped per network."""
    agent = _agent(value_network="separate", num_iterations=2)
    policy = agent.policy
    assert policy.state_size == 2 * policy.hidden_size
    tasks = list(agent.train_tasks[:8])
    trials = rl2.collect_trials(policy, agent.env, tasks, 3, seed=0)
    h0 = torch.zeros(8, policy.state_size)
    heads, values, _ = policy(trials.inputs, h0)
    torch.testing.assert_close(heads.detach(), trials.heads)  # memory kept over the trial
    torch.testing.assert_close(values.detach(), trials.values)
    values.square().sum().backward()
    value_params = {id(p) for m in (policy.v_gru, policy.v) for p in m.parameters()}
    for name, p in policy.named_parameters():
        moved = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert moved == (id(p) in value_params), name
    policy.zero_grad()
    heads, _, _ = policy(trials.inputs, h0)
    heads.square().sum().backward()
    for name, p in policy.named_parameters():
        if id(p) in value_params:
            assert p.grad is None or not bool(p.grad.abs().sum() > 0), name
    assert [len(g) for g in agent._clip_groups] == [7, 6]  # GRU 4 + pi 2 + log_std; GRU + v
    # A run with it trains and checkpoints; a shared-value checkpoint does not fit it.
    sep = rl2.train(_config(value_network="separate", num_iterations=2), tmp_path / "sep")
    again = rl2.load_agent(sep.path)
    assert again.config.value_network == "separate" and again.iterations == 2
    shared = rl2.train(_config(num_iterations=1), tmp_path / "shared")
    with pytest.raises(ValueError, match="does not fit"):
        _agent(value_network="separate", init_from=str(shared.path))


def test_bad_config_is_refused_clearly():
    with pytest.raises(ValueError, match="multiple of num_minibatches"):
        rl2.RL2Config(num_trials=10, num_minibatches=4).validate()
    with pytest.raises(KeyError, match="no task family"):
        rl2.RL2Config(env_id="metarl/Nope-v0").validate()
    with pytest.raises(ValueError, match="episodes_per_trial"):
        rl2.RL2Config(episodes_per_trial=0).validate()
    with pytest.raises(ValueError, match="value_target"):
        rl2.RL2Config(value_target="td").validate()
    with pytest.raises(ValueError, match="value_network"):
        rl2.RL2Config(value_network="own").validate()


def test_continuous_actions_and_early_ends_through_the_numpy_backend():
    # 2D navigation ends an episode early at the goal: rows wait (masked) for the others.
    agent = rl2.RL2(
        rl2.RL2Config(
            env_id="metarl/Navigation2D-v0",
            episodes_per_trial=2,
            max_episode_steps=5,
            num_trials=4,
            hidden_size=8,
            num_minibatches=2,
            backend="numpy",
        )
    )
    stats = agent.iteration(0)
    assert np.isfinite(stats["policy_loss"]) and stats["env_steps"] == 4 * 2 * 5
    assert agent.iterations == 1 and agent.env_steps == 4 * 2 * 5
    curve = agent.evaluate(num_tasks=3, trials_per_task=2)
    assert curve.returns.shape == (2, 3, 2) and curve.unit == "episodes"
    assert not set(agent.train_tasks) & set(
        metarl.task_distribution(agent.config.env_id).split("test")
    )


def test_halfcheetah_vel_preset_runs_an_iteration_on_its_family():
    # The preset as given (family, trials of 2 episodes, GAE value target), cut to 2 trials
    # of 2 x 10 steps: one PPO iteration on MuJoCo, finite, with the preset's episode count.
    cfg = rl2.PRESETS["halfcheetah-vel"]
    assert cfg.env_id == "metarl/HalfCheetahVel-v0" and cfg.episodes_per_trial == 2
    agent = rl2.RL2(dataclasses.replace(cfg, num_trials=4, max_episode_steps=10, hidden_size=8))
    stats = agent.iteration(0)
    assert np.isfinite(stats["policy_loss"]) and stats["env_steps"] == 4 * 2 * 10
    assert agent.evaluate(num_tasks=2, trials_per_task=1).returns.shape == (1, 2, 2)


def _trained(cfg: rl2.RL2Config, run_dir, make=None) -> rl2.RL2:
    """The agent after training ``cfg`` in ``run_dir`` through the one training loop."""
    cfg = cfg.replace(tensorboard=False, num_threads=1)
    if make is None:
        rl2.train(cfg, run_dir)
    else:
        train_loop(cfg, run_dir, rl2.AGENT, make)
    return rl2.load_agent(run_dir)


def test_rl2_learns_a_bandit_beyond_random(tmp_path):
    """A short run on 5-armed bandits of 10 pulls beats uniform play (5.0 expected) on the
    held-out tasks; fails if the policy cannot use its within-trial memory."""
    agent = _trained(
        dataclasses.replace(
            rl2.PRESETS["bandit-k5-n10"], num_trials=64, hidden_size=32, num_iterations=100, lr=3e-3
        ),
        tmp_path / "run",
    )
    curve = agent.evaluate(trials_per_task=4)
    assert curve.returns.shape == (4, 100, 1)
    assert curve.mean()[0] > 5.8, curve.mean()  # Gittins: 6.6


@pytest.mark.slow
def test_rl2_approaches_gittins_on_short_bandits(tmp_path):
    """bandit-k5-n10 (Duan et al. 2016, Table 1: Gittins 6.6, RL² 6.7, random 5.0)."""
    cfg = dataclasses.replace(rl2.PRESETS["bandit-k5-n10"], num_iterations=200)
    agent = _trained(cfg, tmp_path / "run")
    # 100 test tasks × 10 trials: the mean's standard error is about 0.05, so 6.0 is far above
    # a policy that learned nothing (random: 5.0) while leaving room below the paper's 6.7 for
    # this shortened schedule (200 iterations gave 6.24 here; the preset's 300 gave 6.4).
    assert agent.evaluate(trials_per_task=10).mean()[0] > 6.0


def _optimal_and_random_return(task, horizon: int) -> tuple[float, float]:
    """Expected return of one episode from state 0: optimal (finite-horizon value iteration)
    and uniformly random play."""
    p, r = np.asarray(task.transitions), np.asarray(task.rewards)
    best, rand = np.zeros(len(r)), np.zeros(len(r))
    for _ in range(horizon):
        best = (r + p @ best).max(1)
        rand = (r + p @ rand).mean(1)
    return float(best[0]), float(rand[0])


@pytest.mark.slow
def test_rl2_learns_one_fixed_mdp_with_the_mdp_presets_update(tmp_path):
    """The mdp presets' PPO update moves the policy: trained on a single MDP (every trial the
    same task), RL² plays it near-optimally. With the 4 Adam steps per iteration the presets
    had (2 epochs × 2 minibatches) it reached 10.5 per episode here (random 8.9, optimum
    17.6): it could not learn even one MDP, let alone the distribution."""
    cfg = dataclasses.replace(rl2.PRESETS["mdp-n10"], num_trials=64, num_iterations=30)

    def one_task(cfg: rl2.RL2Config, device: torch.device, resume: bool) -> rl2.RL2:
        agent = rl2.RL2(cfg)
        agent.train_tasks = agent.train_tasks[:1]
        return agent

    agent = _trained(cfg, tmp_path / "run", one_task)
    agent.train_tasks = agent.train_tasks[:1]
    best, rand = _optimal_and_random_return(agent.train_tasks[0], 10)
    curve = agent.evaluate(agent.train_tasks, trials_per_task=32, split="train")
    per_episode = float(curve.mean().mean())
    assert per_episode > rand + 0.8 * (best - rand), (per_episode, rand, best)


def _tiny_run_config(**changes) -> rl2.RL2Config:
    tiny = {"num_iterations": 3, "num_trials": 4, "hidden_size": 8, "max_episode_steps": 5,
            "episodes_per_trial": 2, "checkpoint_every": 1, "tensorboard": False}  # fmt: skip
    return rl2.CONFIG.from_preset("quick", **{**tiny, **changes})


def _params(run_dir) -> dict[str, torch.Tensor]:
    return rl2.load_agent(run_dir).policy.state_dict()


def test_registry_run_directory_resumes_exactly_and_evaluates_held_out(tmp_path):
    from metarl.agents import get_agent
    from metarl.runs import Run, load_checkpoint_file

    assert get_agent("rl2") is rl2 and rl2.CONFIG.presets["quick"]["env_id"].endswith(
        "Navigation2D-v0"
    )
    whole = rl2.train(_tiny_run_config(), tmp_path / "whole")
    part = rl2.train(_tiny_run_config(num_iterations=2), tmp_path / "part")
    rl2.train(_tiny_run_config(), part.path, resume=True)
    for name, value in _params(whole.path).items():
        torch.testing.assert_close(_params(part.path)[name], value, msg=name)
    assert Run.read_record(whole.path)["agent"] == Run.read_record(part.path)["agent"] == "rl2"
    ma, mb = whole.metrics(), Run(part.path, "rl2", _tiny_run_config()).metrics()
    assert [r["iteration"] for r in mb] == ["0", "1", "2"]
    assert [r["trial_return"] for r in ma] == [r["trial_return"] for r in mb]
    assert [r["env_steps"] for r in mb] == ["40", "40", "40"]  # 4 trials × 2 episodes × 5
    # The checkpoint is the safe envelope of metarl.runs, written for this agent and family.
    payload = load_checkpoint_file(whole.path / "checkpoint.pt", agent="rl2",
                                   task_family="metarl/Navigation2D-v0")  # fmt: skip
    assert payload["iteration"] == 3
    # init_from takes a run directory too.
    b = rl2.RL2(_tiny_run_config(init_from=str(whole.path)))
    torch.testing.assert_close(b.policy.state_dict()["pi.weight"], _params(whole.path)["pi.weight"])

    curve, json_path, png_path = rl2.evaluate(
        whole.path, num_steps=2, seeds=(0, 1), episodes_per_step=3, max_tasks=4
    )
    assert curve.unit == "episodes" and curve.returns.shape == (2, 4, 3)
    assert curve.env_steps == [0, 4 * 5, 4 * 10]  # one trial of 5-step episodes per task
    assert curve.meta["episodes_per_trial"] == 3 and curve.meta["trained_episodes_per_trial"] == 2
    assert json_path.exists() and png_path.exists()
    # The trained trial length by default; the split's tasks only.
    assert rl2.evaluate(whole.path, seeds=(0,), episodes_per_step=1, max_tasks=2)[0].num_units == 1
    with pytest.raises(ValueError, match=r"split \(--tasks\) must be"):
        rl2.evaluate(whole.path, split="val")
    with pytest.raises(ValueError, match="is a rl2 run, not"):
        from metarl.agents import reptile_rl

        reptile_rl.load_policy(whole.path)
    with pytest.raises(FileExistsError, match="--resume"):
        rl2.train(_tiny_run_config(), whole.path)


def test_cli_trains_and_evaluates_rl2(tmp_path, capsys):
    from metarl.cli import main

    run_dir = tmp_path / "r"
    assert main(["train", "--agent", "rl2", "--preset", "quick", "--num-iterations", "1",
                 "--num-trials", "4", "--hidden-size", "8", "--max-episode-steps", "5",
                 "--no-tensorboard", "--run-dir", str(run_dir)]) == 0  # fmt: skip
    assert main(["evaluate", str(run_dir), "--seeds", "0", "--episodes", "2",
                 "--max-tasks", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "after k episodes" in out and "k=3:" in out and "k=4:" not in out
    # RL² adapts in its memory, not by gradient steps: inner learning rates are refused.
    assert main(["evaluate", str(run_dir), "--lrs", "0.1"]) == 2
    assert "does not adapt by gradient steps; drop --lrs" in capsys.readouterr().err
    assert main(["train", "--agent", "rl2", "--num-trials", "10", "--num-minibatches", "4",
                 "--run-dir", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "multiple of num_minibatches" in capsys.readouterr().err
