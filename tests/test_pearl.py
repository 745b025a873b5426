"""PEARL (Rakelly et al. 2019): the product-of-Gaussians posterior, the squashed policy's
density, the per-task replay with its encoder window, exact resume, non-finite stops, bad
options, and a learning test: on 2D navigation, acting with z from the posterior over one
episode of context returns more than the task-blind start (z from the prior)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.agents import pearl
from metarl.cli import main
from metarl.evaluation import AdaptationCurve
from metarl.numerics import NonFiniteError
from metarl.runs import load_checkpoint_file
from metarl.runs.config import ConfigError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(**changes: object) -> pearl.PEARLConfig:
    """A few seconds of PEARL on 2D navigation with 10-step episodes."""
    settings: dict[str, object] = {
        "env_id": "metarl/Navigation2D-v0", "device": "cpu", "horizon": 10,
        "num_train_tasks": 4, "num_tasks_sample": 2, "hidden_sizes": (8,),
        "encoder_hidden_sizes": (8,), "latent_size": 2, "meta_batch": 3, "batch_size": 8,
        "embedding_batch_size": 5, "num_initial_steps": 10, "num_steps_prior": 10,
        "num_extra_rl_steps_posterior": 10, "num_train_steps_per_itr": 3, "replay_size": 50,
        "num_iterations": 4, "checkpoint_every": 1, "tensorboard": False,
    }  # fmt: skip
    return pearl.PEARLConfig(**{**settings, **changes})  # type: ignore[arg-type]


# -- the pieces ---------------------------------------------------------------------------------
def test_posterior_is_the_product_of_the_transitions_gaussians() -> None:
    torch.manual_seed(0)
    enc = pearl.ContextEncoder(3, (16,), 2)
    ctx = torch.randn(2, 5, 3)
    mu, var = enc(ctx)
    out = enc.net(ctx)
    m_n, v_n = out[..., :2], torch.nn.functional.softplus(out[..., 2:])
    # Closed form: precision is the sum of precisions, the mean precision-weighted.
    expected_var = 1.0 / (1.0 / v_n).sum(1)
    torch.testing.assert_close(var, expected_var)
    torch.testing.assert_close(mu, expected_var * (m_n / v_n).sum(1))
    # Invariant to the order of the context; a masked transition counts for nothing; a row
    # without context is the prior N(0, I).
    perm = ctx[:, torch.randperm(5)]
    torch.testing.assert_close(enc(perm)[0], mu)
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    mu_m, var_m = enc(ctx, mask)
    torch.testing.assert_close(mu_m[0], enc(ctx[:1, :4])[0][0])
    torch.testing.assert_close(mu_m[1], torch.zeros(2))
    torch.testing.assert_close(var_m[1], torch.ones(2))
    # More context, a narrower posterior.
    assert bool((enc(ctx[:, :2])[1] > var).all())


def test_kl_to_the_unit_gaussian_closed_form() -> None:
    mu, var = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.25]])
    expected = sum(0.5 * (v + m * m - 1 - math.log(v)) for m, v in ((0.5, 2.0), (-1.0, 0.25)))
    assert float(pearl.kl_to_prior(mu, var)) == pytest.approx(expected)
    assert float(pearl.kl_to_prior(torch.zeros(3, 4), torch.ones(3, 4))) == 0.0


def test_squashed_policy_density_and_bounds() -> None:
    import gymnasium as gym

    space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
    torch.manual_seed(1)
    policy = pearl.TanhGaussianPolicy(3, 2, (16,), space)
    obs, z = torch.randn(64, 3), torch.randn(64, 2)
    gen = torch.Generator().manual_seed(0)
    action, logp, mean, log_std = policy.sample(obs, z, gen)
    assert bool((action.abs() <= 0.1).all())
    # The density of tanh(u) in [-1, 1]^2 as torch's transformed distribution computes it.
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(
        base, [torch.distributions.transforms.TanhTransform(cache_size=1)]
    )
    squashed = (action - 0.0) / 0.1
    expected = dist.log_prob(squashed.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(logp, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(policy.mode(obs, z), 0.1 * torch.tanh(mean))


def test_replay_rings_per_task_and_the_encoder_window() -> None:
    replay = pearl.TaskReplay(3, 4, obs_size=1, action_size=1, device=torch.device("cpu"))
    tasks = torch.tensor([0, 2])
    replay.clear_encoder(tasks)
    for step in range(6):  # task 0 wraps its ring of 4; task 2 stops stepping after 2
        rows = torch.full((2, replay.width), float(step))
        rows[1] += 100
        live = torch.tensor([True, step < 2])
        replay.add(tasks, rows, live, to_encoder=step < 5)
    assert replay.size.tolist() == [4, 0, 2] and replay.pos.tolist() == [2, 0, 2]
    assert replay.enc_count.tolist() == [4, 0, 2]
    gen = torch.Generator().manual_seed(0)
    whole = replay.sample(torch.tensor([0, 2]), 200, gen)
    assert set(whole.obs[0, :, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}
    assert set(whole.obs[1, :, 0].tolist()) == {100.0, 101.0}
    # The encoder window of task 0: its 5 encoder writes, the ring keeps the last 4 (1..4
    # were written, 5 was RL-only... and overwrote slot 1): positions from the window's
    # start, so what is there now.
    ctx = replay.context(torch.tensor([2]), 200, gen)
    assert set(ctx.obs[0, :, 0].tolist()) == {100.0, 101.0}
    state = replay.state()
    assert state["data"].shape[1] == 4  # only the slots in use are saved
    again = pearl.TaskReplay(3, 4, 1, 1, torch.device("cpu"))
    again.load_state(state)
    assert torch.equal(again.data, replay.data) and torch.equal(again.pos, replay.pos)


# -- training ----------------------------------------------------------------------------------
def test_training_resumes_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    whole = pearl.train(_tiny(), tmp_path / "whole")
    part = pearl.train(_tiny(num_iterations=2), tmp_path / "part")
    pearl.train(_tiny(), part.path, resume=True)
    a = load_checkpoint_file(whole.path / "checkpoint.pt", agent="pearl")
    b = load_checkpoint_file(part.path / "checkpoint.pt", agent="pearl")
    assert a["iteration"] == b["iteration"] == 4

    def same(x: object, y: object, where: str) -> None:
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
        elif isinstance(x, dict):
            assert isinstance(y, dict) and x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list | tuple):
            assert isinstance(y, list | tuple) and len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                same(u, v, f"{where}[{i}]")
        else:
            assert x == y, where

    same(a["state"], b["state"], "state")  # networks, optimisers and the replay buffers
    assert a["state"]["replay"]["size"].sum() > 0
    rows_a = [{k: v for k, v in r.items() if not k.endswith("_s") and "per_s" not in k}
              for r in whole.metrics()]  # fmt: skip
    rows_b = [{k: v for k, v in r.items() if not k.endswith("_s") and "per_s" not in k}
              for r in part.metrics()]  # fmt: skip
    assert rows_a == rows_b


def test_a_non_finite_loss_stops_the_run_naming_the_iteration(tmp_path: Path) -> None:
    iteration = pearl.PEARL.iteration

    def diverge(self: pearl.PEARL, it: int) -> dict[str, float]:
        if it == 2:  # an infinite reward scale: a stand-in for a diverged critic
            object.__setattr__(self.config, "reward_scale", float("inf"))
        return iteration(self, it)

    with (
        pytest.MonkeyPatch.context() as mp,
        pytest.raises(NonFiniteError, match=r"iteration 2: non-finite Q loss"),
    ):
        mp.setattr(pearl.PEARL, "iteration", diverge)
        pearl.train(_tiny(), tmp_path / "run")
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent="pearl")
    assert payload["iteration"] == 2  # the last good one, kept


def test_a_non_finite_observation_stops_the_run(tmp_path: Path) -> None:
    from metarl.testing import register_faulty_family

    env_id = register_faulty_family("nan_obs", at_step=2, from_episode=3)
    with pytest.raises(NonFiniteError, match=r"iteration \d+: non-finite observations"):
        pearl.train(_tiny(env_id=env_id), tmp_path / "run")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_tasks_sample": 5}, r"num_tasks_sample \(5\) must be <= num_train_tasks \(4\)"),
        ({"kl_lambda": -1.0}, r"kl_lambda \(--kl-lambda\) must be >= 0.0"),
        ({"replay_size": 5}, r"replay_size \(5\) must hold a collection round"),
        ({"env_id": "metarl/HalfCheetahDir-v0", "horizon": 0, "num_train_tasks": 3},
         r"more than metarl/HalfCheetahDir-v0's 2 training tasks"),
        ({"num_train_tasks": 1000, "replay_size": 20_000}, r"checkpoints .* are limited"),
        ({"env_id": "metarl/BernoulliBandit-K5-v0"}, r"continuous \(Box\) actions"),
        ({"env_id": "metarl/NoSuchFamily-v0"}, r"env_id"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_in_one_line(
    changes: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        pearl.PEARL(_tiny(**changes))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_bad_options_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    code = main(["train", "--agent", "pearl", "--preset", "quick", "--num-tasks-sample", "99",
                 "--run-dir", str(run)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "num_tasks_sample (99)" in err and len(err.splitlines()) == 1
    assert not (run / "checkpoint.pt").exists()


def test_cli_trains_evaluates_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    args = ["train", "--agent", "pearl", "--preset", "quick", "--num-iterations", "1",
            "--num-train-tasks", "5", "--num-train-steps-per-itr", "2", "--hidden-sizes", "8",
            "--encoder-hidden-sizes", "8", "--horizon", "10", "--no-tensorboard",
            "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    assert main(["train", "--resume", str(run), "--num-iterations", "2"]) == 0
    assert load_checkpoint_file(run / "checkpoint.pt", agent="pearl")["iteration"] == 2
    assert main(["evaluate", str(run), "--steps", "2", "--seeds", "0", "--max-tasks", "3",
                 "--episodes", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    curve = AdaptationCurve.load(run / "eval_test.json")
    assert curve.unit == "episodes" and curve.returns.shape == (1, 3, 3)


# -- learning ----------------------------------------------------------------------------------
def test_pearl_learns_to_infer_the_goal_from_context(tmp_path: Path) -> None:
    """The quick preset (2000 SAC steps on 2D navigation, 20-step episodes): on the held-out
    goals, the episodes after one episode of context (z from the posterior) return clearly
    more than the first (z from the prior, task-blind). Fails if the encoder learns nothing
    about the task (the posterior would be no better than the prior) or SAC learns nothing."""
    run = pearl.train(pearl.PEARLConfig.from_preset("quick", tensorboard=False), tmp_path / "r")
    curve, _, _ = pearl.evaluate(run.path, num_steps=2, seeds=(0, 1), episodes_per_step=4)
    gain, half = curve.improvement(1)
    assert gain > 1.0 and gain - half > 0, (curve.mean(), gain, half)
    assert curve.improvement(2)[0] > 1.0
