"""Meta-SGD in MAML-TRPO (``learn_inner_lr``; Li et al. 2017, "Meta-SGD: Learning to Learn
Quickly for Few-Shot Learning", Sec. 3): per-entry inner rates ``α`` meta-learned with ``θ``
by the TRPO step, saved in checkpoints, restored on resume, used by the evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import metarl
from metarl.adaptation.policy_gradient import adapt_policy, advantages, reinforce_loss
from metarl.agents import maml_trpo
from metarl.agents.maml_trpo import (
    MAMLTRPOConfig,
    _inner_advantages,
    evaluate,
    inner_step_fn,
    load_inner_lrs,
    load_policy,
    meta_step,
    train,
)
from metarl.cli import main
from metarl.learning import trpo
from metarl.learning.functional import forward, named_params
from metarl.learning.policies import GaussianMLPPolicy
from metarl.numerics import NonFiniteError
from metarl.runs import CheckpointError, load_checkpoint_file, save_checkpoint_file
from metarl.runs.config import ConfigError
from metarl.sampling.native import BatchedSampler, Episodes, per_task_rows

NAV = "metarl/Navigation2D-v0"
RATE = "α:"


def _tasks(n: int) -> list:
    return list(metarl.task_distribution(NAV).split("train"))[:n]


def _tiny(**kw: Any) -> MAMLTRPOConfig:
    base = dict(num_iterations=2, meta_batch_size=4, episodes_per_task=4, hidden_sizes=(8,),
                horizon=20, tensorboard=False, checkpoint_every=1, learn_inner_lr=True)  # fmt: skip
    return MAMLTRPOConfig(**{**base, **kw})


class _Captured:
    """What :func:`meta_step` hands to conjugate gradient (the meta-gradient ``b`` and the
    KL Hessian-vector product) and the episodes it sampled, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sampler: BatchedSampler) -> None:
        self.mvp: Any = None
        self.b: dict[str, torch.Tensor] = {}
        self.episodes: list[Episodes] = []
        real_cg, real_collect = trpo.conjugate_gradient, sampler.collect

        def cg(mvp: Any, b: dict, iters: int, **kw: Any) -> Any:
            self.mvp, self.b = mvp, {k: v.clone() for k, v in b.items()}
            return real_cg(mvp, b, iters, **kw)

        def collect(*args: Any, **kw: Any) -> Episodes:
            eps = real_collect(*args, **kw)
            self.episodes.append(eps)
            return eps

        monkeypatch.setattr(trpo, "conjugate_gradient", cg)
        monkeypatch.setattr(sampler, "collect", collect)


def _flat(d: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([d[k].flatten() for k in names])


@pytest.mark.parametrize("curvature", ["structured", "gauss-newton", "exact"])
@pytest.mark.parametrize("num_adapt_steps", [1, 2])
def test_meta_gradient_and_kl_hessian_on_theta_and_rates_equal_brute_force(
    num_adapt_steps: int, curvature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The structured products of the outer step on ``(θ, α)`` against autograd on the flat
    function of the concatenated ``(θ, α)``: the meta-gradient (CG's right-hand side) and the
    KL Hessian times random vectors, in float64, for one and two inner steps (the same ``α``
    in both). A wrong sign or a missing transpose in ``J_θᵀ w = w − H(α ∘ w)``,
    ``J_αᵀ w = −∇L ∘ w`` or their forward forms fails it: ``α`` differs per entry, so
    ``H(α ∘ w) ≠ α ∘ (H w)``."""
    torch.set_default_dtype(torch.float64)
    try:
        n, e = 3, 3
        cfg = _tiny(meta_batch_size=n, episodes_per_task=e, horizon=8, hidden_sizes=(5,),
                    nonlinearity="tanh", num_adapt_steps=num_adapt_steps,
                    cg_damping=0.0, curvature=curvature)  # fmt: skip
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, hidden_sizes=(5,), nonlinearity="tanh", init_std=0.5)
        theta = {k: v.detach().clone() for k, v in policy.named_parameters()}
        rates = {k: 0.05 + 0.2 * torch.rand_like(v) for k, v in theta.items()}
        sampler = BatchedSampler(NAV, n, e, env_kwargs=cfg.env_kwargs())
        cap = _Captured(monkeypatch, sampler)
        meta_step(policy, sampler, _tasks(n), 7, cfg, inner_lrs={k: v.clone() for k, v in
                                                                  rates.items()})  # fmt: skip
        assert len(cap.episodes) == num_adapt_steps + 1

        names = list(theta)
        shapes, sizes = [theta[k].shape for k in names], [theta[k].numel() for k in names]
        inner = []
        for eps in cap.episodes[:-1]:
            adv = _inner_advantages(eps, cfg)
            inner.append([per_task_rows(x, n) for x in (eps.obs, eps.actions, adv, eps.mask)])
        valid = cap.episodes[-1]
        vadv = advantages(valid, cfg.gamma, cfg.gae_lambda)
        vdata = [per_task_rows(x, n) for x in (valid.obs, valid.actions, vadv, valid.mask)]

        def unflat(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: c.view(s) for k, c, s in zip(names, x.split(sizes), shapes, strict=True)}

        def adapted(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            th, al = unflat(x[: sum(sizes)]), unflat(x[sum(sizes) :])
            out = []
            for i in range(n):
                p = dict(th)
                for data in inner:
                    loss = reinforce_loss(policy, p, *(d[i] for d in data))
                    g = torch.autograd.grad(loss, [p[k] for k in names], create_graph=True)
                    p = {k: p[k] - al[k] * gk for k, gk in zip(names, g, strict=True)}
                out.append(p)
            return out

        def dists(x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
            return [tuple(forward(policy, p, vdata[0][i])) for i, p in enumerate(adapted(x))]

        x0 = torch.cat([_flat(theta, names), _flat(rates, names)]).requires_grad_(True)
        old = [tuple(t.detach() for t in d) for d in dists(x0)]

        def surrogate_and_kl(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            surr, kls = [], []
            for i, d in enumerate(dists(x)):
                _, act, adv, mask = (v[i] for v in vdata)
                count = mask.sum().clamp_min(1.0)
                ratio = torch.exp(policy.log_prob(d, act) - policy.log_prob(old[i], act))
                surr.append((ratio * adv * mask).sum() / count)
                kls.append((policy.kl(old[i], d) * mask).sum() / count)
            return -torch.stack(surr).mean(), torch.stack(kls).mean()

        surrogate, kl = surrogate_and_kl(x0)
        want_b = torch.autograd.grad(surrogate, x0, retain_graph=True)[0]
        got_b = torch.cat([_flat(cap.b, names), _flat(cap.b, [RATE + k for k in names])])
        assert got_b[sum(sizes) :].abs().max() > 1e-8, "the rates' gradient is zero: vacuous"
        torch.testing.assert_close(got_b, want_b, rtol=1e-7, atol=1e-10)

        kl_grad = torch.autograd.grad(kl, x0, create_graph=True)[0]
        gen = torch.Generator().manual_seed(1)
        for _ in range(2):
            v = torch.randn(x0.numel(), generator=gen)
            want_hv = torch.autograd.grad(kl_grad @ v, x0, retain_graph=True)[0]
            vt, va = unflat(v[: sum(sizes)]), unflat(v[sum(sizes) :])
            hv = cap.mvp({**vt, **{RATE + k: va[k] for k in names}})
            got_hv = torch.cat([_flat(hv, names), _flat(hv, [RATE + k for k in names])])
            torch.testing.assert_close(got_hv, want_hv, rtol=1e-7, atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_uniform_rates_give_the_scalar_paths_meta_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every entry of ``α`` at ``inner_lr``, the ``θ`` part of the meta-gradient and of
    the curvature product equals those of plain MAML-TRPO on the same episodes."""
    torch.set_default_dtype(torch.float64)
    try:
        cfg = _tiny(meta_batch_size=3, episodes_per_task=3, horizon=10, cg_damping=0.0)
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, hidden_sizes=(6,), nonlinearity="tanh")
        start = {k: v.detach().clone() for k, v in policy.named_parameters()}
        got: dict[bool, tuple[dict, dict]] = {}
        v = {k: torch.randn_like(t) for k, t in start.items()}
        for learned in (True, False):
            policy.load_state_dict({k: t.clone() for k, t in start.items()})
            sampler = BatchedSampler(NAV, 3, 3, env_kwargs=cfg.env_kwargs())
            cap = _Captured(monkeypatch, sampler)
            rates = {k: torch.full_like(t, cfg.inner_lr) for k, t in start.items()}
            meta_step(policy, sampler, _tasks(3), 5, cfg.replace(learn_inner_lr=learned),
                      inner_lrs=rates if learned else None)  # fmt: skip
            probe = {**v, **{RATE + k: torch.zeros_like(t) for k, t in v.items()}} if learned else v
            got[learned] = (cap.b, cap.mvp(probe))
        for k in start:
            torch.testing.assert_close(got[True][0][k], got[False][0][k], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got[True][1][k], got[False][1][k], rtol=1e-9, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_rates_are_meta_learned_saved_and_stay_finite(tmp_path: Path) -> None:
    """A few meta-iterations move ``α`` away from its initial ``inner_lr`` (an accepted TRPO
    step changes it), the rates stay finite, are in the checkpoint and logged."""
    cfg = _tiny(num_iterations=3)
    run = train(cfg, tmp_path / "r")
    rows = _rows(run.path)
    assert any(float(r["step_size"]) > 0 for r in rows), "no step accepted: vacuous"
    _, params, _, rates = load_inner_lrs(run.path)
    assert rates is not None and set(rates) == set(params)
    flat = torch.cat([v.flatten() for v in rates.values()])
    assert torch.isfinite(flat).all()
    assert (flat - cfg.inner_lr).abs().max() > 1e-6, "α never moved"
    assert float(rows[-1]["inner_lr_min"]) == pytest.approx(flat.min().item())
    assert float(rows[-1]["inner_lr_max"]) == pytest.approx(flat.max().item())
    for r in rows:
        assert float(r["kl"]) <= cfg.max_kl + 1e-6


def test_resume_restores_the_rates_exactly(tmp_path: Path) -> None:
    cfg = _tiny(num_iterations=4)
    full = train(cfg, tmp_path / "full")
    train(cfg.replace(num_iterations=2), tmp_path / "part")
    resumed = train(cfg, tmp_path / "part", resume=True)
    _, p_full, _, r_full = load_inner_lrs(full.path)
    _, p_res, _, r_res = load_inner_lrs(resumed.path)
    assert r_full is not None and r_res is not None
    for k in p_full:
        assert torch.equal(p_full[k], p_res[k]), k
        assert torch.equal(r_full[k], r_res[k]), k
    assert any(not torch.equal(r_full[k], torch.full_like(r_full[k], cfg.inner_lr))
               for k in r_full)  # fmt: skip


def test_evaluation_adapts_with_the_learned_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``inner_step_fn`` with rates is ``θ − α ∘ ∇L`` (not the scalar step), and
    :func:`evaluate` hands it the checkpoint's ``α`` at every step (multiplier 1) and records
    the protocol in the JSON."""
    run = train(_tiny(num_iterations=2), tmp_path / "r")
    policy, params, cfg, rates = load_inner_lrs(run.path)
    assert rates is not None
    sampler = BatchedSampler(NAV, 2, 3, env_kwargs=cfg.env_kwargs())
    eps = sampler.collect(policy, params, _tasks(2), seed=0)
    adv = _inner_advantages(eps, cfg)
    got = inner_step_fn(policy, cfg, rates)(params, eps, 1.0, False)
    want = adapt_policy(policy, params, eps, adv, lr=rates, first_order=True)
    scalar = adapt_policy(policy, params, eps, adv, lr=cfg.inner_lr, first_order=True)
    assert all(torch.allclose(got[k], want[k]) for k in got)
    assert not all(torch.allclose(got[k], scalar[k]) for k in got)

    seen: list[Any] = []
    real = maml_trpo.inner_step_fn

    def spy(policy: Any, cfg: Any, inner_lrs: Any = None) -> Any:
        seen.append(inner_lrs)
        return real(policy, cfg, inner_lrs)

    monkeypatch.setattr(maml_trpo, "inner_step_fn", spy)
    curve, json_path, _ = evaluate(run.path, num_steps=2, seeds=(0,), episodes_per_step=2,
                                   max_tasks=2)  # fmt: skip
    assert len(seen) == 1 and all(torch.equal(seen[0][k], rates[k]) for k in rates)
    meta = json.loads(json_path.read_text())["meta"]
    assert meta["lrs"] == [1.0] and meta["inner_lr"]["learned"] is True
    flat = torch.cat([v.flatten() for v in rates.values()])
    assert meta["inner_lr"]["inner_lr_mean"] == pytest.approx(flat.mean().item())
    assert curve.returns.shape == (1, 2, 3)


def test_cli_flag_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--learn-inner-lr`` reaches the config; with ``--first-order`` it is refused with a
    clear message; a NaN rate stops the meta-step with a clear error (entries ≤ 0 are
    allowed: Li et al.'s α sets the direction too)."""
    d = tmp_path / "cli"
    argv = ["train", "--agent", "maml-trpo", "--run-dir", str(d), "--num-iterations", "1",
            "--meta-batch-size", "2", "--episodes-per-task", "2", "--hidden-sizes", "8",
            "--horizon", "10", "--no-tensorboard", "--learn-inner-lr"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((d / "config.json").read_text())["config"]["learn_inner_lr"] is True
    assert "inner_lr" in load_checkpoint_file(d / "checkpoint.pt")["state"]
    assert main([*argv[:4], str(tmp_path / "x"), *argv[5:], "--first-order"]) == 2
    err = capsys.readouterr().err
    assert "--learn-inner-lr" in err and "--first-order" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="first-order"):
        _tiny(first_order=True)

    cfg = _tiny(meta_batch_size=2, episodes_per_task=2, horizon=10)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    sampler = BatchedSampler(NAV, 2, 2, env_kwargs=cfg.env_kwargs())
    rates = {k: torch.full_like(v, 0.1) for k, v in named_params(policy).items()}
    rates["log_std"] = torch.full_like(rates["log_std"], math.nan)
    with pytest.raises(NonFiniteError, match="Meta-SGD inner rates"):
        meta_step(policy, sampler, _tasks(2), 0, cfg, inner_lrs=rates)
    with pytest.raises(ValueError, match="inner_lrs"):
        meta_step(policy, sampler, _tasks(2), 0, cfg)
    rates = {k: torch.full_like(v, 0.1) for k, v in named_params(policy).items()}
    rates["log_std"] = torch.full_like(rates["log_std"], -0.1)
    stats = meta_step(policy, sampler, _tasks(2), 0, cfg, inner_lrs=rates)
    assert stats["inner_lr_nonpositive"] > 0 and math.isfinite(stats["surrogate_before"])


def _strip_option(run_dir: Path, name: str) -> None:
    """Make ``run_dir`` look as if written before option ``name`` existed."""
    record = json.loads((run_dir / "config.json").read_text())
    record["config"].pop(name, None)
    (run_dir / "config.json").write_text(json.dumps(record))
    path = run_dir / "checkpoint.pt"
    payload = load_checkpoint_file(path)
    payload["config"].pop(name, None)
    save_checkpoint_file(path, payload, agent="maml-trpo", task_family=NAV)


def test_runs_without_rates_resume_and_evaluate_as_before(tmp_path: Path) -> None:
    """A run of a metarl before Meta-SGD (no ``learn_inner_lr`` in its config, no rates in
    its checkpoint) resumes and evaluates with the scalar rate; a run configured to learn
    rates whose checkpoint lacks them is refused with a clear error."""
    d = tmp_path / "old"
    train(_tiny(learn_inner_lr=False, num_iterations=1), d)
    _strip_option(d, "learn_inner_lr")
    assert main(["train", "--resume", str(d), "--num-iterations", "2"]) == 0
    assert len(_rows(d)) == 2 and "inner_lr_mean" not in _rows(d)[0]
    _, _, cfg = load_policy(d)
    assert not cfg.learn_inner_lr
    curve, _, _ = evaluate(d, num_steps=1, seeds=(0,), episodes_per_step=2, max_tasks=2)
    assert curve.meta["lrs"] == [0.1, 0.05] and "inner_lr" not in curve.meta

    _strip_option(d, "learn_inner_lr")  # an old checkpoint, now asked to learn rates
    record = json.loads((d / "config.json").read_text())
    record["config"]["learn_inner_lr"] = True
    (d / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="holds no 'inner_lr'"):
        train(MAMLTRPOConfig.from_dict({**record["config"], "num_iterations": 3}), d,
              resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="holds no learned"):
        evaluate(d, num_steps=1, seeds=(0,), episodes_per_step=2, max_tasks=2)


def test_meta_sgd_learns_to_adapt_on_held_out_tasks(tmp_path: Path) -> None:
    """The quick 2D-navigation run with learned rates: after one inner step with the learned
    ``α`` on held-out tasks, the meta-learned policy beats the initial policy after one step
    with the initial rates by a wide margin, and the step helps. Fails if the outer step on
    ``(θ, α)`` or the evaluation with the learned rates breaks."""
    from metarl.evaluation import evaluate_policy_adaptation
    from metarl.learning.policies import make_policy

    cfg = MAMLTRPOConfig.from_preset("quick", num_iterations=12, tensorboard=False,
                                     checkpoint_every=100, learn_inner_lr=True)  # fmt: skip
    torch.manual_seed(cfg.seed)
    env = metarl.make(NAV)
    policy = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes)
    init_rates = {k: torch.full_like(v, cfg.inner_lr) for k, v in named_params(policy).items()}
    before = evaluate_policy_adaptation(
        policy, named_params(policy), NAV, inner_step_fn(policy, cfg, init_rates), agent="init",
        num_steps=1, lrs=(1.0,), seeds=(0,), episodes_per_step=10, max_tasks=20,
    )  # fmt: skip
    run = train(cfg, tmp_path / "meta")
    after, _, _ = evaluate(run.path, num_steps=1, seeds=(0,), episodes_per_step=10,
                           max_tasks=20)  # fmt: skip
    b1, a0, a1 = before.mean()[1], after.mean()[0], after.mean()[1]
    assert a1 > b1 + 30, (b1, a1)
    assert a1 > a0 + 2, (a0, a1)
    assert after.meta["inner_lr"]["learned"] is True
