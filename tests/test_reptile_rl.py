"""Reptile-RL: the outer step in closed form on quadratics, resume, learning, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import vmap

import metarl
from metarl.agents import agent_names, get_agent
from metarl.agents.reptile_rl import (
    ReptileRLConfig,
    evaluate,
    inner_step_fn,
    outer_step_size,
    reptile_iteration,
    train,
)
from metarl.cli import main
from metarl.evaluation import evaluate_policy_adaptation
from metarl.learning.functional import Params, adapt_func, named_params
from metarl.learning.policies import make_policy
from metarl.runs import load_checkpoint_file

NAV = "metarl/Navigation2D-v0"


def test_outer_step_matches_the_closed_form_on_quadratics() -> None:
    """Task i's loss ½(φ − c_i)ᵀ A_i (φ − c_i): k steps of gradient descent with rate α give
    φ̃_i = c_i + (I − α A_i)^k (φ − c_i), so the outer step is
    φ + ε · mean_i(φ̃_i − φ) exactly. Fails if the inner loop, the averaging or the
    interpolation is wrong (e.g. a step towards, not from, φ; a sum, not a mean)."""
    torch.manual_seed(0)
    d, n, k, alpha, eps = 3, 4, 3, 0.15, 0.3
    m = torch.randn(n, d, d, dtype=torch.float64)
    a = m @ m.transpose(1, 2) / d + torch.eye(d, dtype=torch.float64)  # SPD, per task
    c = torch.randn(n, d, dtype=torch.float64)
    phi = {"w": torch.randn(d, dtype=torch.float64)}

    def loss(p: Params, a_i: torch.Tensor, c_i: torch.Tensor) -> torch.Tensor:
        r = p["w"] - c_i
        return 0.5 * r @ a_i @ r

    def inner_step(params: Params, per_task: bool, step: int) -> Params:
        def one(p: Params, a_i: torch.Tensor, c_i: torch.Tensor) -> Params:
            return adapt_func(loss, p, a_i, c_i, num_steps=1, lr=alpha, first_order=True)

        return vmap(one, in_dims=(0 if per_task else None, 0, 0))(params, a, c)

    new, adapted = reptile_iteration(phi, inner_step, k, eps)

    eye = torch.eye(d, dtype=torch.float64)
    expected_adapted = torch.stack(
        [c[i] + torch.linalg.matrix_power(eye - alpha * a[i], k) @ (phi["w"] - c[i])
         for i in range(n)]
    )  # fmt: skip
    expected = phi["w"] + eps * (expected_adapted.mean(0) - phi["w"])
    torch.testing.assert_close(adapted["w"], expected_adapted)
    torch.testing.assert_close(new["w"], expected)
    # With ε = 1 the meta-parameters jump to the mean of the adapted ones.
    jump, _ = reptile_iteration(phi, inner_step, k, 1.0)
    torch.testing.assert_close(jump["w"], expected_adapted.mean(0))


def test_outer_step_size_annealing() -> None:
    cfg = ReptileRLConfig(num_iterations=10, outer_step_size=0.8, anneal=True)
    assert outer_step_size(cfg, 0) == pytest.approx(0.8)
    assert outer_step_size(cfg, 5) == pytest.approx(0.4)
    assert outer_step_size(cfg.replace(anneal=False), 9) == pytest.approx(0.8)


def _quick(**kw: object) -> ReptileRLConfig:
    base: dict[str, object] = {"tensorboard": False, "meta_batch_size": 4,
                               "episodes_per_task": 4, "hidden_sizes": (8,)}  # fmt: skip
    base.update(kw)
    return ReptileRLConfig.from_preset("quick", **base)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(_quick(num_iterations=4, checkpoint_every=2), tmp_path / "full")
    part = _quick(num_iterations=2, checkpoint_every=2)
    train(part, tmp_path / "part")
    train(part.replace(num_iterations=4), tmp_path / "part", resume=True)
    a = load_checkpoint_file(full.checkpoint_path)
    b = load_checkpoint_file(tmp_path / "part" / "checkpoint.pt")
    pa, pb = a["state"]["params"], b["state"]["params"]
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=0)


def test_meta_training_learns_on_held_out_tasks(tmp_path: Path) -> None:
    """A short 2D-navigation run: after one inner step on held-out tasks, the meta-trained
    policy must beat the initial policy after one inner step by a wide margin."""
    cfg = ReptileRLConfig.from_preset(
        "quick", num_iterations=12, tensorboard=False, checkpoint_every=100
    )
    torch.manual_seed(cfg.seed)
    env = metarl.make(NAV)
    policy = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes)
    before = evaluate_policy_adaptation(
        policy, named_params(policy), NAV, inner_step_fn(policy, cfg), agent="init",
        num_steps=1, seeds=(0,), episodes_per_step=10, max_tasks=20,
    )  # fmt: skip
    run = train(cfg, tmp_path / "meta")
    after, json_path, png_path = evaluate(run.path, num_steps=1, seeds=(0,),
                                          episodes_per_step=10, max_tasks=20)  # fmt: skip
    assert json_path.exists() and png_path.exists()
    b1, a1 = before.mean()[1], after.mean()[1]
    assert a1 > b1 + 20, (b1, a1)  # about +30 after 12 iterations; none without learning


def test_registry_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "reptile-rl" in agent_names()
    assert get_agent("reptile-rl").CONFIG is ReptileRLConfig
    run_dir = tmp_path / "run"
    rc = main(["train", "--agent", "reptile-rl", "--preset", "quick", "--num-iterations", "2",
               "--meta-batch-size", "3", "--episodes-per-task", "2", "--run-dir", str(run_dir),
               "--no-tensorboard"])  # fmt: skip
    assert rc == 0
    assert json.loads((run_dir / "config.json").read_text())["agent"] == "reptile-rl"
    rc = main(["evaluate", str(run_dir), "--steps", "2", "--seeds", "0", "--max-tasks", "3",
               "--episodes", "2"])  # fmt: skip
    assert rc == 0
    curve = json.loads((run_dir / "eval_test.json").read_text())
    assert curve["agent"] == "reptile-rl" and len(curve["summary"]["mean"]) == 3
    assert curve["meta"]["iterations"] == 2  # the checkpoint evaluated


def test_bad_outer_step_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outer_step_size"):
        ReptileRLConfig(outer_step_size=1.5)
