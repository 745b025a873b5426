"""MAML-TRPO with rllab's previous-task baseline (``--inner-baseline previous-task``,
``--outer-baseline previous-task``): one predict-then-fit linear baseline shared by the tasks
of a meta-batch, its fit carried from round to round, across meta-iterations and through
checkpoints (:class:`metarl.learning.returns.PreviousTaskBaseline` has the shift itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import metarl
from metarl.adaptation.policy_gradient import advantages
from metarl.agents import maml_trpo
from metarl.agents.maml_trpo import (
    MAMLTRPOConfig,
    _inner_advantages,
    evaluate,
    load_policy,
    meta_step,
    shared_baseline,
    train,
)
from metarl.cli import main
from metarl.learning.policies import GaussianMLPPolicy
from metarl.learning.returns import LinearFeatureBaseline, PreviousTaskBaseline
from metarl.runs import load_checkpoint_file
from metarl.runs.config import ConfigError
from metarl.sampling.native import BatchedSampler, Episodes

NAV = "metarl/Navigation2D-v0"


def _tasks(n: int) -> list:
    return list(metarl.task_distribution(NAV).split("train"))[:n]


def _tiny(**kw: Any) -> MAMLTRPOConfig:
    base = dict(num_iterations=2, meta_batch_size=3, episodes_per_task=3, hidden_sizes=(8,),
                horizon=15, tensorboard=False, checkpoint_every=1,
                inner_baseline="previous-task", outer_baseline="previous-task")  # fmt: skip
    return MAMLTRPOConfig(**{**base, **kw})


@pytest.mark.parametrize("outer", ["previous-task", "linear"])
def test_meta_step_chains_the_shared_baseline_through_its_rounds(
    outer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two meta-iterations of two inner steps each: every round's advantages (inner steps,
    then validation) equal those of a PreviousTaskBaseline replayed by hand over the same
    episodes in the same order, starting from zero coefficients, and the validation round
    always passes through it (the next iteration's first task depends on it); the outer
    advantages use it only with --outer-baseline previous-task."""
    cfg = _tiny(num_adapt_steps=2, outer_baseline=outer)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    sampler = BatchedSampler(NAV, 3, 3, env_kwargs=cfg.env_kwargs())
    collected: list[Episodes] = []
    inner: list[torch.Tensor] = []
    outer_adv: list[torch.Tensor] = []
    real_collect = sampler.collect
    real_inner, real_outer = maml_trpo._inner_advantages, maml_trpo._outer_advantages

    def collect(*args: Any, **kw: Any) -> Episodes:
        collected.append(real_collect(*args, **kw))
        return collected[-1]

    def spy_inner(*args: Any) -> torch.Tensor:
        inner.append(real_inner(*args))
        return inner[-1]

    def spy_outer(*args: Any) -> torch.Tensor:
        outer_adv.append(real_outer(*args))
        return outer_adv[-1]

    monkeypatch.setattr(sampler, "collect", collect)
    monkeypatch.setattr(maml_trpo, "_inner_advantages", spy_inner)
    monkeypatch.setattr(maml_trpo, "_outer_advantages", spy_outer)
    shared = shared_baseline(policy, cfg)
    assert shared is not None and (shared.coeffs == 0).all()
    for it in range(2):
        meta_step(policy, sampler, _tasks(3), 11 + it, cfg, baseline=shared)
    assert len(collected) == 6 and len(inner) == 4 and len(outer_adv) == 2

    replay = PreviousTaskBaseline(8)
    for it in range(2):
        for k in range(2):
            eps = collected[3 * it + k]
            expected = advantages(eps, cfg.gamma, cfg.gae_lambda, replay)
            torch.testing.assert_close(inner[2 * it + k], expected, rtol=0, atol=0)
        valid = collected[3 * it + 2]
        if outer == "previous-task":
            expected = advantages(valid, cfg.gamma, cfg.gae_lambda, replay)
        else:
            advantages(valid, cfg.gamma, cfg.gae_lambda, replay)  # carry the pooled fit
            expected = advantages(valid, cfg.gamma, cfg.gae_lambda, LinearFeatureBaseline())
        torch.testing.assert_close(outer_adv[it], expected, rtol=0, atol=0)
    torch.testing.assert_close(shared.coeffs, replay.coeffs, rtol=0, atol=0)
    # The shift changes the advantages: the own-task fit gives others.
    own = advantages(collected[3], cfg.gamma, cfg.gae_lambda, LinearFeatureBaseline())
    assert (inner[2] - own).abs().max() > 1e-3


def test_resume_carries_the_baseline_exactly(tmp_path: Path) -> None:
    """Four iterations in one go equal two, then two more resumed: parameters and the
    carried baseline bit for bit (a resume that dropped the carried fit would start the next
    iteration's first task from zero coefficients and differ)."""
    cfg = _tiny(num_iterations=4)
    full = train(cfg, tmp_path / "full")
    train(cfg.replace(num_iterations=2), tmp_path / "part")
    resumed = train(cfg, tmp_path / "part", resume=True)
    _, p_full, _ = load_policy(full.path)
    _, p_res, _ = load_policy(resumed.path)
    for k in p_full:
        assert torch.equal(p_full[k], p_res[k]), k
    c_full = load_checkpoint_file(full.path / "checkpoint.pt")["state"]["baseline"]["coeffs"]
    c_res = load_checkpoint_file(resumed.path / "checkpoint.pt")["state"]["baseline"]["coeffs"]
    assert c_full.shape == (8,) and c_full.abs().sum() > 0
    assert torch.equal(c_full, c_res)


def test_dropping_the_carried_fit_changes_the_run(tmp_path: Path) -> None:
    """The carried fit matters (so the resume test above can fail): zeroing it in the
    iteration-2 checkpoint before resuming gives other parameters than the uninterrupted
    run."""
    from metarl.runs import save_checkpoint_file

    cfg = _tiny(num_iterations=3)
    full = train(cfg, tmp_path / "full")
    part = tmp_path / "part"
    train(cfg.replace(num_iterations=2), part)
    payload = load_checkpoint_file(part / "checkpoint.pt")
    payload["state"]["baseline"]["coeffs"].zero_()
    save_checkpoint_file(part / "checkpoint.pt", payload, agent="maml-trpo", task_family=NAV)
    train(cfg, part, resume=True)
    _, p_full, _ = load_policy(full.path)
    _, p_res, _ = load_policy(part)
    assert any(not torch.equal(p_full[k], p_res[k]) for k in p_full)


def test_evaluation_uses_each_tasks_own_fit(tmp_path: Path) -> None:
    """Held-out tasks adapt alone (Finn et al.'s test scripts: a fresh baseline per goal),
    so a previous-task run's evaluation uses the task's own linear fit."""
    cfg = _tiny()
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    eps = BatchedSampler(NAV, 3, 3, env_kwargs=cfg.env_kwargs()).collect(
        policy, dict(policy.named_parameters()), _tasks(3), seed=0
    )
    got = _inner_advantages(eps, cfg)
    torch.testing.assert_close(got, _inner_advantages(eps, cfg.replace(inner_baseline="linear",
                               outer_baseline="linear")), rtol=0, atol=0)  # fmt: skip
    d = tmp_path / "r"
    train(cfg.replace(num_iterations=1), d)
    curve, _, _ = evaluate(d, num_steps=1, seeds=(0,), episodes_per_step=2, max_tasks=2)
    assert curve.meta["config"]["inner_baseline"] == "previous-task"


def test_bad_choices_are_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="inner_baseline"):
        _tiny(inner_baseline="previous")
    with pytest.raises(ConfigError, match="outer_baseline"):
        _tiny(outer_baseline="zero")
    with pytest.raises(ConfigError, match="--inner-baseline previous-task"):
        _tiny(inner_baseline="linear")  # outer previous-task alone
    argv = ["train", "--agent", "maml-trpo", "--run-dir", str(tmp_path / "x"),
            "--num-iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "2",
            "--hidden-sizes", "8", "--horizon", "10", "--no-tensorboard"]  # fmt: skip
    assert main([*argv, "--outer-baseline", "previous-task"]) == 2
    err = capsys.readouterr().err
    assert "--inner-baseline previous-task" in err and "Traceback" not in err
    assert main([*argv, "--inner-baseline", "previous-task"]) == 0
    record = json.loads((tmp_path / "x" / "config.json").read_text())["config"]
    assert record["inner_baseline"] == "previous-task" and record["outer_baseline"] == "linear"
    assert "baseline" in load_checkpoint_file(tmp_path / "x" / "checkpoint.pt")["state"]

    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    sampler = BatchedSampler(NAV, 2, 2, env_kwargs={"max_episode_steps": 10})
    with pytest.raises(ValueError, match="shared_baseline"):
        meta_step(policy, sampler, _tasks(2), 0, _tiny(meta_batch_size=2))
    with pytest.raises(ValueError, match="shared_baseline"):
        meta_step(policy, sampler, _tasks(2), 0,
                  _tiny(inner_baseline="linear", outer_baseline="linear"),
                  baseline=PreviousTaskBaseline(8))  # fmt: skip
