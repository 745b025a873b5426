"""The baselines of Finn et al. 2017 (pretrained, random-init, oracle) through SB3: no test
task during training, SB3 → params exactness, the oracle's per-task reduction, resume, CLI,
bad input; learning (slow): pretrained beats random-init, the oracle beats pretrained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl
from metarl.agents import agent_names, get_agent, oracle, pretrained, random_init
from metarl.agents.sb3_baselines import (
    MultiTaskEnv,
    PPOBaselineConfig,
    make_model,
    oracle_task_params,
    sb3_policy_kwargs,
    sb3_policy_params,
    task_features,
)
from metarl.cli import main
from metarl.evaluation import evaluate_policy_adaptation
from metarl.learning.functional import forward, named_params
from metarl.learning.policies import make_policy
from metarl.numerics import NonFiniteError
from metarl.runs import load_checkpoint_file
from metarl.runs.config import ConfigError
from metarl.tasks import FiniteTaskDistribution, TaskDistribution, TaskError
from metarl.testing import register_faulty_family

NAV = "metarl/Navigation2D-v0"
#: A few seconds of PPO: 2 iterations of 2 envs × 50 steps, one epoch, a small network.
TINY = {
    "num_iterations": 2,
    "n_envs": 2,
    "n_steps": 50,
    "batch_size": 50,
    "n_epochs": 1,
    "hidden_sizes": (8, 8),
    "vf_hidden_sizes": (8,),
    "tensorboard": False,
    "device": "cpu",
}


def _ppo(env_id: str, cfg: PPOBaselineConfig, with_task: bool = False) -> Any:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: MultiTaskEnv(env_id, with_task=with_task)])
    return PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu",
               policy_kwargs=sb3_policy_kwargs(cfg))  # fmt: skip


def _perturb(module: torch.nn.Module) -> None:
    """Random weights everywhere (SB3 initialises biases to 0 and log σ to a constant, which
    would hide a bias or log-std mapped to the wrong place)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


# -- no test task during training ---------------------------------------------------------
@pytest.fixture
def seen_tasks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every task any env validates (each set_task and reset with a task goes through the
    distribution's ``validate``) while the fixture is active."""
    seen: list[Any] = []
    original = TaskDistribution.validate

    def record(self: TaskDistribution[Any], task: object) -> Any:
        seen.append(task)
        return original(self, task)

    monkeypatch.setattr(TaskDistribution, "validate", record)
    return seen


def test_the_recorder_sees_a_test_task_when_one_is_used(seen_tasks: list[Any]) -> None:
    """The check below can fail: an env on the test split is caught."""
    env = MultiTaskEnv(NAV, split="test")
    env.reset(seed=0)
    test = set(metarl.task_distribution(NAV).split("test"))
    assert seen_tasks and set(seen_tasks) <= test


@pytest.mark.parametrize("agent", ["pretrained", "oracle", "random-init"])
def test_training_never_sees_a_test_task(agent: str, seen_tasks: list[Any], tmp_path: Path) -> None:
    module = get_agent(agent)
    extra = {} if agent == "random-init" else TINY
    cfg = module.CONFIG.from_preset("quick", **{**extra, "tensorboard": False})
    module.train(cfg, tmp_path / "run")
    dist = metarl.task_distribution(NAV)
    train, test = set(dist.split("train")), set(dist.split("test"))
    assert not set(seen_tasks) & test
    assert set(seen_tasks) <= train
    if agent != "random-init":  # PPO: a task per episode, several episodes per env
        assert len(set(seen_tasks)) >= 4


# -- SB3 -> our params ----------------------------------------------------------------------
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_sb3_gaussian_policy_maps_onto_ours_exactly(nonlinearity: str) -> None:
    cfg = PPOBaselineConfig(hidden_sizes=(16, 8), nonlinearity=nonlinearity, init_std=0.5)
    model = _ppo(NAV, cfg)
    _perturb(model.policy)
    env = MultiTaskEnv(NAV)
    ours = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes, nonlinearity)
    params = sb3_policy_params(model.policy, ours)
    obs = torch.randn(64, 2)
    dist = model.policy.get_distribution(obs).distribution
    mean, log_std = forward(ours, params, obs)
    torch.testing.assert_close(mean, dist.mean, rtol=0, atol=0)  # the same ops, bit for bit
    torch.testing.assert_close(log_std.exp(), dist.stddev, rtol=1e-6, atol=0)
    actions = dist.sample()
    torch.testing.assert_close(ours.log_prob((mean, log_std), actions),
                               dist.log_prob(actions).sum(-1), rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("env_id", ["metarl/TabularMDP-S10A5-v0", "metarl/BernoulliBandit-K5-v0"])
def test_sb3_categorical_policy_maps_onto_ours_exactly(env_id: str) -> None:
    """Discrete actions (logits), Discrete observations (one-hot on both sides)."""
    cfg = PPOBaselineConfig(hidden_sizes=(16,), nonlinearity="tanh")
    model = _ppo(env_id, cfg)
    _perturb(model.policy)
    env = MultiTaskEnv(env_id)
    ours = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes, "tanh")
    params = sb3_policy_params(model.policy, ours)
    obs = torch.arange(env.observation_space.n).repeat(3)  # type: ignore[attr-defined]
    sb3 = model.policy.get_distribution(obs).distribution
    (logp,) = forward(ours, params, obs)
    torch.testing.assert_close(logp, torch.log_softmax(sb3.logits, -1), rtol=0, atol=1e-6)
    actions = sb3.sample()
    torch.testing.assert_close(ours.log_prob((logp,), actions), sb3.log_prob(actions),
                               rtol=0, atol=1e-6)  # fmt: skip


def test_sb3_mapping_refuses_another_architecture() -> None:
    model = _ppo(NAV, PPOBaselineConfig(hidden_sizes=(16, 8)))
    env = MultiTaskEnv(NAV)
    with pytest.raises(TypeError, match="linear layers"):
        sb3_policy_params(model.policy, make_policy(env.observation_space, env.action_space, (16,)))
    with pytest.raises(TypeError, match="shape"):
        sb3_policy_params(
            model.policy, make_policy(env.observation_space, env.action_space, (16, 9))
        )


# -- the oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [NAV, "metarl/TabularMDP-S10A5-v0"])
def test_oracle_per_task_params_equal_the_task_conditioned_policy(env_id: str) -> None:
    """π(a | [s, z_i]) with the oracle's params == π(a | s) with task i's params (Box
    observations; Discrete ones, one-hot on the oracle's side, an index on the plain one)."""
    env = MultiTaskEnv(env_id, with_task=True)
    aug = make_policy(env.observation_space, env.action_space, (16, 16), "tanh")
    _perturb(aug)
    inner = env.inner_observation_space
    plain = make_policy(inner, env.action_space, (16, 16), "tanh")
    dist = metarl.task_distribution(env_id)
    tasks = dist.split("test")[:5]
    z = torch.as_tensor(np.stack([task_features(dist, t) for t in tasks]))
    per = oracle_task_params(named_params(aug), plain, z)
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        if isinstance(inner, gym.spaces.Discrete):
            obs = torch.randint(int(inner.n), (7,), generator=gen)
            flat = torch.nn.functional.one_hot(obs, int(inner.n)).float()
        else:
            obs = flat = torch.randn(7, 2, generator=gen)
        want = forward(aug, named_params(aug), torch.cat([flat, z[i].expand(7, -1)], -1))
        got = forward(plain, {k: v[i] for k, v in per.items()}, obs)
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_task_features_scale_to_unit_range_and_the_oracle_sees_the_goal() -> None:
    dist = metarl.task_distribution(NAV)
    task = dist.split("train")[3]
    np.testing.assert_allclose(task_features(dist, task), np.asarray(task.goal) * 2, rtol=1e-6)
    env = MultiTaskEnv(NAV, with_task=True)
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(obs[2:], np.asarray(info["task"].goal) * 2, rtol=1e-6)
    obs, *_ = env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(obs[2:], np.asarray(info["task"].goal) * 2, rtol=1e-6)
    test_task = dist.split("test")[0]
    obs, info = env.reset(options={"task": test_task})  # a given task is run, and shown
    assert info["task"] == test_task
    np.testing.assert_allclose(obs[2:], np.asarray(test_task.goal) * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goal": (0.1, 0.1)})


@pytest.mark.parametrize("with_task", [False, True])
def test_multi_task_env_passes_gymnasium_and_sb3_checkers(with_task: bool) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = MultiTaskEnv(NAV, with_task=with_task)
    gym_check(env, skip_render_check=True)
    with pytest.warns(UserWarning, match="symmetric"):  # Nav2D's actions are ±0.1, as the paper
        sb3_check(MultiTaskEnv(NAV, with_task=with_task))


def test_non_numeric_tasks_are_a_clear_error_for_the_oracle() -> None:
    @dataclass(frozen=True)
    class Named:
        name: str

    dist = FiniteTaskDistribution("Named", Named, [Named("a"), Named("b")], num_train=1,
                                  num_test=1)  # fmt: skip
    with pytest.raises(TaskError, match="numbers"):
        task_features(dist, Named("a"))


# -- runs: resume, registry, CLI, bad input ---------------------------------------------------
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = pretrained.PretrainedConfig.from_preset("quick", **{**TINY, "checkpoint_every": 2})
    full = pretrained.train(cfg.replace(num_iterations=4), tmp_path / "full")
    pretrained.train(cfg, tmp_path / "part")
    part = pretrained.train(cfg.replace(num_iterations=4), tmp_path / "part", resume=True)
    a = load_checkpoint_file(full.checkpoint_path)["state"]
    b = load_checkpoint_file(part.checkpoint_path)["state"]
    assert a["num_timesteps"] == b["num_timesteps"] == 4 * 2 * 50
    for group in ("params", "sb3_policy"):
        for name in a[group]:
            torch.testing.assert_close(a[group][name], b[group][name], rtol=0, atol=0)
    drop = {"env_steps_per_s", "iteration_s"}
    rows_a = [{k: v for k, v in r.items() if k not in drop} for r in full.metrics()]
    rows_b = [{k: v for k, v in r.items() if k not in drop} for r in part.metrics()]
    assert rows_a == rows_b and len(rows_a) == 4


def test_every_ppo_iteration_starts_from_envs_reset_with_its_own_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What resume's exactness rests on, through SB3's public API only (``learn(
    reset_num_timesteps=True)`` after ``VecEnv.seed``): each iteration begins with every env
    reset with the seeds of (seed, iteration), and the step count runs on across them."""
    from metarl.agents.sb3_baselines import _iteration_seed

    seeds: list[int | None] = []
    original = MultiTaskEnv.reset

    def record(self: MultiTaskEnv, *, seed: int | None = None, options: Any = None) -> Any:
        seeds.append(seed)
        return original(self, seed=seed, options=options)

    monkeypatch.setattr(MultiTaskEnv, "reset", record)
    cfg = pretrained.PretrainedConfig.from_preset("quick", **{**TINY, "num_iterations": 3})
    run = pretrained.train(cfg, tmp_path / "p")
    # Inside an iteration, an env whose episode ends (the goal reached) is reset by SB3
    # with no seed: those are the Nones. The seeded resets are the iterations' starts.
    want = [_iteration_seed(cfg.seed, it) + i for it in range(3) for i in range(2)]
    assert [s for s in seeds if s is not None][-6:] == want
    assert [float(r["env_steps_total"]) for r in run.metrics()] == [100, 200, 300]
    assert load_checkpoint_file(run.checkpoint_path)["state"]["num_timesteps"] == 300


def test_training_changes_the_policy_and_logs_ppo(tmp_path: Path) -> None:
    cfg = oracle.OracleConfig.from_preset("quick", **TINY)
    run = oracle.train(cfg, tmp_path / "o")
    rows = run.metrics()
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    for key in ("train_return", "approx_kl", "value_loss", "clip_fraction", "env_steps"):
        assert key in rows[0]
    assert float(rows[1]["env_steps"]) == 2 * 50
    assert float(rows[1]["env_steps_total"]) == 2 * 2 * 50
    params = load_checkpoint_file(run.checkpoint_path)["state"]["params"]
    assert params["mean.0.weight"].shape == (8, 4)  # [position, goal] inputs
    model = make_model(cfg, with_task=True, device="cpu")  # the same seed: the initial policy
    env = MultiTaskEnv(NAV, with_task=True)
    policy = make_policy(env.observation_space, env.action_space, (8, 8), "tanh")
    initial = sb3_policy_params(model.policy, policy)
    for name, value in params.items():  # PPO moved every parameter
        assert not torch.allclose(value, initial[name], rtol=0, atol=1e-6), name
    with pytest.raises(ValueError, match=r"max_tasks \(--max-tasks\) must be an integer >= 1"):
        oracle.evaluate(run.path, max_tasks=0)


def test_registry_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("pretrained", "random-init", "oracle"):
        assert name in agent_names()
    tiny = ["--num-iterations", "1", "--n-envs", "2", "--n-steps", "50", "--batch-size", "50",
            "--n-epochs", "1", "--hidden-sizes", "8", "8", "--no-tensorboard"]  # fmt: skip
    for name, opts in (("pretrained", tiny), ("oracle", tiny), ("random-init", [])):
        run_dir = tmp_path / name
        rc = main(["train", "--agent", name, "--preset", "quick", "--run-dir", str(run_dir),
                   *opts])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        assert json.loads((run_dir / "config.json").read_text())["agent"] == name
        rc = main(["evaluate", str(run_dir), "--steps", "2", "--seeds", "0", "1",
                   "--max-tasks", "3", "--episodes", "2"])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        curve = json.loads((run_dir / "eval_test.json").read_text())
        assert curve["agent"] == name and len(curve["summary"]["mean"]) == 3
        # the evaluated checkpoint: after PPO's one iteration (random-init's single "iteration"
        # saves the initial policy)
        assert curve["meta"]["iterations"] == 1
        assert np.asarray(curve["returns"]).shape == (2, 3, 3)
        assert (run_dir / "eval_test.png").exists()
        if name == "oracle":  # a flat line, said so, no adaptation steps
            r = np.asarray(curve["returns"])
            assert (r == r[:, :, :1]).all() and curve["meta"]["flat"] is True
            assert curve["env_steps"] == [0, 0, 0] and "flat" in curve["meta"]["adaptation"]
        else:  # fine-tuned: fresh episodes and a step per unit
            assert curve["env_steps"][2] > curve["env_steps"][1] > 0
            assert "inner step" in curve["meta"]["adaptation"]


def test_random_init_is_the_seeded_initial_policy(tmp_path: Path) -> None:
    cfg = random_init.RandomInitConfig.from_preset("quick", tensorboard=False)
    a = random_init.train(cfg, tmp_path / "a")
    b = random_init.train(cfg, tmp_path / "b")
    c = random_init.train(cfg.replace(seed=1), tmp_path / "c")
    pa, pb, pc = (load_policy_params(r.path) for r in (a, b, c))
    torch.manual_seed(0)
    env = metarl.make(NAV)
    fresh = make_policy(env.observation_space, env.action_space, (64, 64), "tanh")
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)
        torch.testing.assert_close(pa[k], named_params(fresh)[k], rtol=0, atol=0)
    assert not torch.equal(pa["mean.0.weight"], pc["mean.0.weight"])
    random_init.train(cfg, tmp_path / "a", resume=True)  # nothing to do, nothing changes
    for k, v in load_policy_params(a.path).items():
        torch.testing.assert_close(v, pa[k], rtol=0, atol=0)


def load_policy_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint_file(run_dir / "checkpoint.pt")["state"]["params"])


@pytest.mark.parametrize(("fault", "quantity"), [("nan_obs", "observations"),
                                                 ("inf_reward", "rewards")])  # fmt: skip
def test_a_bad_env_value_stops_the_run_naming_iteration_env_and_task(
    fault: str, quantity: str, tmp_path: Path
) -> None:
    """Each env's episodes are 20 steps, each iteration 50 steps per env from a reset:
    episodes 1-3 of an env are iteration 0, 4-6 iteration 1, so the fault from episode 7 on
    hits iteration 2, after two checkpointed iterations."""
    env_id = register_faulty_family(fault, at_step=2, from_episode=7)
    cfg = pretrained.PretrainedConfig(**{**TINY, "env_id": env_id, "num_iterations": 4,
                                         "checkpoint_every": 1})  # fmt: skip
    with pytest.raises(NonFiniteError) as info:
        pretrained.train(cfg, tmp_path / "run")
    text = str(info.value)
    assert text.startswith(f"iteration 2: non-finite {quantity} from {env_id} at step 2")
    assert "GoalTask(goal=(" in text and "checkpoint.pt) is kept" in text
    assert info.value.iteration == 2 and info.value.quantity == quantity
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        pretrained.PretrainedConfig(n_envs=2, n_steps=50, batch_size=64)
    with pytest.raises(ConfigError, match="learning_rate"):
        oracle.OracleConfig(learning_rate=-1.0)
    with pytest.raises(KeyError, match="Navigation2D"):
        pretrained.train(pretrained.PretrainedConfig(env_id="metarl/Navigaton2D-v0", **TINY),
                         tmp_path / "typo")  # fmt: skip
    assert not (tmp_path / "typo").exists()
    run = random_init.train(random_init.RandomInitConfig(tensorboard=False), tmp_path / "ri")
    with pytest.raises(ValueError, match="random-init run, not pretrained"):
        pretrained.evaluate(run.path)
    with pytest.raises(FileExistsError, match="--resume"):
        random_init.train(random_init.RandomInitConfig(tensorboard=False), tmp_path / "ri")
    with pytest.raises(ValueError, match="leading dimension"):
        env = metarl.make(NAV)
        policy = make_policy(env.observation_space, env.action_space, (8,))
        evaluate_policy_adaptation(
            policy, named_params(policy), NAV, lambda *a: {}, agent="x", num_steps=0,
            max_tasks=3, per_task_params=True,
        )  # fmt: skip
    assert main(["train", "--agent", "oracle", "--n-steps", "7", "--batch-size", "64",
                 "--run-dir", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert isinstance(gym.spec(NAV), gym.envs.registration.EnvSpec)


# -- learning (slow) ----------------------------------------------------------------------
@pytest.mark.slow
def test_pretrained_beats_random_init_and_the_oracle_beats_pretrained(tmp_path: Path) -> None:
    """The quick presets on 2D navigation, held-out tasks, 0 steps. Staying near the centre
    of the goal square (the best a task-blind policy can do) is worth about −38; an untrained
    policy wanders (SB3's initial one about −100 on training tasks, our random init about
    −170); the oracle walks to the goal it is told (about −20 after the quick preset)."""
    curves = {}
    for name in ("random-init", "pretrained", "oracle"):
        module = get_agent(name)
        run = module.train(module.CONFIG.from_preset("quick", tensorboard=False),
                           tmp_path / name)  # fmt: skip
        curves[name], _, _ = module.evaluate(run.path, num_steps=1, seeds=(0,),
                                             episodes_per_step=20)  # fmt: skip
    r0 = {k: float(c.mean()[0]) for k, c in curves.items()}
    assert r0["pretrained"] > -55, r0  # learnt the centre; not learning stays near −100
    assert r0["pretrained"] > r0["random-init"] + 30, r0
    assert r0["oracle"] > r0["pretrained"] + 10, r0  # it uses the task it is given
    # Fine-tuning helps the random initialisation (MAML's inner step works on it).
    assert curves["random-init"].mean()[1] > r0["random-init"] + 5, r0
