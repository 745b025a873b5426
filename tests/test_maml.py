"""Policies, the batched sampler, the MAML inner step, MAML-TRPO's outer step, and the
train/evaluate/resume machinery around them."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

import metarl
from metarl.adaptation.policy_gradient import InnerStep, adapt_policy, advantages, reinforce_loss
from metarl.agents import agent_names, get_agent
from metarl.agents.maml_trpo import (
    MAMLTRPOConfig,
    evaluate,
    inner_step_fn,
    kl_hessian_product,
    load_policy,
    train,
)
from metarl.cli import main
from metarl.evaluation import evaluate_policy_adaptation
from metarl.learning.functional import forward, named_params
from metarl.learning.policies import CategoricalMLPPolicy, GaussianMLPPolicy, make_policy
from metarl.runs import Run
from metarl.sampling.native import BatchedSampler, per_task, per_task_rows

NAV = "metarl/Navigation2D-v0"


def _tasks(n: int, env_id: str = NAV) -> list:
    return list(metarl.task_distribution(env_id).split("train"))[:n]


# -- policies --------------------------------------------------------------------------------
def test_gaussian_log_prob_and_kl_match_torch_distributions() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(8,), init_std=0.7)
    obs = torch.randn(5, 3)
    mean, log_std = policy(obs)
    assert torch.allclose(log_std, torch.full_like(log_std, math.log(0.7)))
    act = policy.sample((mean, log_std))
    ref = Independent(Normal(mean, log_std.exp()), 1)
    assert torch.allclose(policy.log_prob((mean, log_std), act), ref.log_prob(act), atol=1e-5)
    other = (mean + 0.3, log_std - 0.2)
    ref_other = Independent(Normal(other[0], other[1].exp()), 1)
    assert torch.allclose(
        policy.kl((mean, log_std), other), kl_divergence(ref, ref_other), atol=1e-5
    )
    assert torch.allclose(policy.entropy((mean, log_std)), ref.entropy(), atol=1e-5)


def test_categorical_log_prob_and_kl_match_torch_distributions() -> None:
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(4, 3, hidden_sizes=(8,), discrete_obs=True)
    obs = torch.tensor([0, 1, 3])
    (logp,) = policy(obs)
    act = policy.sample((logp,))
    ref = Categorical(logits=logp)
    assert torch.allclose(policy.log_prob((logp,), act), ref.log_prob(act), atol=1e-6)
    other = torch.log_softmax(logp + torch.randn_like(logp), -1)
    assert torch.allclose(
        policy.kl((logp,), (other,)), kl_divergence(ref, Categorical(logits=other)), atol=1e-6
    )


def test_make_policy_picks_by_space_and_refuses_others() -> None:
    box = gym.spaces.Box(-1, 1, (2,))
    assert isinstance(make_policy(box, box), GaussianMLPPolicy)
    assert isinstance(make_policy(gym.spaces.Discrete(5), gym.spaces.Discrete(2)),
                      CategoricalMLPPolicy)  # fmt: skip
    with pytest.raises(TypeError, match="Box or Discrete actions"):
        make_policy(box, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="nonlinearity"):
        GaussianMLPPolicy(2, 2, nonlinearity="sigmoid")


# -- sampler ---------------------------------------------------------------------------------
def test_sampler_shapes_masks_and_seeding() -> None:
    sampler = BatchedSampler(NAV, num_tasks=3, episodes_per_task=4)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    tasks = _tasks(3)
    eps = sampler.collect(policy, named_params(policy), tasks, seed=1)
    assert eps.obs.shape == (100, 12, 2) and eps.actions.shape == (100, 12, 2)
    assert eps.mask.shape == eps.rewards.shape == (100, 12)
    assert ((eps.mask == 0) | (eps.mask == 1)).all()
    assert (eps.rewards[eps.mask == 0] == 0).all()
    assert eps.task_returns().shape == (3,) and eps.episodes_per_task == 4
    again = sampler.collect(policy, named_params(policy), tasks, seed=1)
    assert torch.equal(eps.actions, again.actions) and torch.equal(eps.rewards, again.rewards)
    other = sampler.collect(policy, named_params(policy), tasks, seed=2)
    assert not torch.equal(eps.actions, other.actions)
    with pytest.raises(ValueError, match="needs 3 tasks"):
        sampler.collect(policy, named_params(policy), tasks[:2])


def test_per_task_parameters_act_on_their_own_rows() -> None:
    """vmap over per-task parameters == running each task alone with its parameters."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    theta = named_params(policy)
    n, tasks = 3, _tasks(3)
    stacked = {k: torch.stack([v + 0.3 * i for i in range(n)]) for k, v in theta.items()}
    together = BatchedSampler(NAV, n, 2).collect(
        policy, stacked, tasks, per_task_params=True, deterministic=True, seed=0
    )
    alone = BatchedSampler(NAV, 1, 2)
    for i in range(n):
        eps = alone.collect(policy, {k: v[i] for k, v in stacked.items()}, [tasks[i]],
                            deterministic=True, seed=0)  # fmt: skip
        t = eps.rewards.shape[0]
        assert torch.allclose(together.obs[:t, 2 * i : 2 * i + 2], eps.obs, atol=1e-5)
        assert torch.allclose(together.rewards[:t, 2 * i : 2 * i + 2], eps.rewards, atol=1e-5)
    with pytest.raises(ValueError, match="leading dimension 3"):
        BatchedSampler(NAV, n, 2).collect(policy, theta, tasks, per_task_params=True)


def test_numpy_and_torch_backends_give_the_same_episodes() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    tasks = _tasks(2)
    a = BatchedSampler(NAV, 2, 3, backend="torch").collect(
        policy, named_params(policy), tasks, seed=4
    )
    b = BatchedSampler(NAV, 2, 3, backend="numpy").collect(
        policy, named_params(policy), tasks, seed=4
    )
    assert torch.equal(a.actions, b.actions)
    assert torch.allclose(a.rewards, b.rewards, atol=1e-4)
    assert torch.equal(a.mask, b.mask)


def test_sampler_on_a_discrete_family() -> None:
    env_id = next(i for i in metarl.family_ids() if "Bandit" in i)
    env = metarl.make(env_id)
    policy = make_policy(env.observation_space, env.action_space, (8,))
    env.close()
    sampler = BatchedSampler(env_id, 2, 3)
    eps = sampler.collect(policy, named_params(policy), _tasks(2, env_id), seed=0)
    assert eps.actions.dtype == torch.int64 and eps.rewards.shape[1] == 6


# -- inner step ------------------------------------------------------------------------------
def _episodes(n: int = 3, e: int = 4):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(6,))
    eps = BatchedSampler(NAV, n, e, env_kwargs={"max_episode_steps": 10}).collect(
        policy, named_params(policy), _tasks(n), seed=3
    )
    return policy, eps


def test_adapt_policy_is_one_reinforce_step_per_task() -> None:
    policy, eps = _episodes()
    theta = named_params(policy)
    adv = advantages(eps)
    adapted = adapt_policy(policy, theta, eps, adv, lr=0.1)
    data = [per_task(x, 3) for x in (eps.obs, eps.actions, adv, eps.mask)]
    for i in range(3):
        p = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        loss = reinforce_loss(policy, p, *(d[i] for d in data))
        grads = torch.autograd.grad(loss, list(p.values()))
        for (k, v), g in zip(p.items(), grads, strict=True):
            assert torch.allclose(adapted[k][i], v - 0.1 * g, atol=1e-6), k


def test_advantages_are_normalised_per_task() -> None:
    _, eps = _episodes()
    adv = per_task(advantages(eps), 3)
    m = per_task(eps.mask, 3)
    for i in range(3):
        a = adv[i][m[i] > 0]
        assert abs(a.mean().item()) < 1e-5 and abs(a.std(unbiased=False).item() - 1) < 1e-3


def test_zero_baseline_advantages_are_the_normalised_returns() -> None:
    """``inner_baseline='zero'``: the inner step's advantages are each task's discounted
    returns, centred and scaled, not returns minus the fitted linear baseline."""
    from metarl.learning.returns import ZeroBaseline, discounted_returns, normalize_advantages

    _, eps = _episodes()
    adv = per_task(advantages(eps, 0.99, 1.0, ZeroBaseline()), 3)
    ret, m = per_task(discounted_returns(eps.rewards, eps.mask, 0.99), 3), per_task(eps.mask, 3)
    for i in range(3):
        assert torch.allclose(adv[i], normalize_advantages(ret[i], m[i]), atol=1e-5)
    assert not torch.allclose(per_task(advantages(eps), 3), adv, atol=1e-2)
    cfg = MAMLTRPOConfig.from_preset("quick", inner_baseline="zero")
    policy = make_policy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (2,)), (8,))
    params = named_params(policy)
    expected = adapt_policy(policy, params, eps, advantages(eps, 0.99, 1.0, ZeroBaseline()),
                            lr=0.1, first_order=True)  # fmt: skip
    got = inner_step_fn(policy, cfg)(params, eps, 0.1, False)
    assert all(torch.allclose(got[k], expected[k]) for k in got)
    with pytest.raises(metarl.runs.config.ConfigError, match="inner_baseline"):
        MAMLTRPOConfig.from_preset("quick", inner_baseline="mlp")


def test_inner_step_jacobian_is_identity_minus_lr_hessian() -> None:
    """``J w = w − α H w`` against the Hessian from torch.func.hessian (closed form)."""
    policy, eps = _episodes(n=2, e=2)
    theta = named_params(policy)
    adv = advantages(eps)
    start = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in theta.items()}
    step = InnerStep(policy, start, eps, adv, lr=0.1, keep_graph=True)
    names = list(theta)
    shapes = [theta[k].shape for k in names]
    sizes = [theta[k].numel() for k in names]
    w = {k: torch.randn(2, *theta[k].shape) for k in names}
    jw = step.jvp(w)
    data = [per_task(x, 2) for x in (eps.obs, eps.actions, adv, eps.mask)]
    for i in range(2):

        def flat_loss(x: torch.Tensor, i: int = i) -> torch.Tensor:
            parts = [c.view(s) for c, s in zip(x.split(sizes), shapes, strict=True)]
            p = dict(zip(names, parts, strict=True))
            return reinforce_loss(policy, p, *(d[i] for d in data))

        x0 = torch.cat([theta[k].detach().flatten() for k in names])
        h = torch.func.hessian(flat_loss)(x0)
        wi = torch.cat([w[k][i].flatten() for k in names])
        expected = wi - 0.1 * h @ wi
        got = torch.cat([jw[k][i].flatten() for k in names])
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [{}, {"cg_subsample": 0.5}, {"cg_subsample": 0.5, "cg_subsample_unit": "tasks"},
     {"first_order": True}],
    ids=["exact", "half-the-episodes", "half-the-tasks", "first-order"],
)  # fmt: skip
@pytest.mark.parametrize("curvature", ["structured", "gauss-newton", "exact"])
def test_kl_hessian_product_is_the_hessian_of_the_mean_kl(variant: dict, curvature: str) -> None:
    """TRPO's curvature product against ``torch.func.hessian`` of the mean KL as a function of
    the flat meta-parameters, through the inner step (closed form, float64). The subsampled
    variants are the Hessians of the KL their docs name: on the first half of every task's
    episodes (the KL's rows, and the inner step whose Jacobian carries a change of ``θ`` to
    the adapted policies), or on every episode of the first half of the tasks."""
    n, e, lr = 4, 4, 0.1
    cfg = MAMLTRPOConfig(meta_batch_size=n, episodes_per_task=e, hidden_sizes=(5,), horizon=8,
                         inner_lr=lr, cg_damping=0.0, curvature=curvature, **variant)  # fmt: skip
    sampler = BatchedSampler(NAV, n, e, env_kwargs=cfg.env_kwargs())
    torch.manual_seed(1)
    env = metarl.make(NAV)
    policy = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes).double()
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    tasks = _tasks(n)
    eps = sampler.collect(policy, theta, tasks, seed=5)
    adv = advantages(eps)
    start = {k: v.unsqueeze(0).repeat(n, *[1] * v.dim()) for k, v in theta.items()}
    step = InnerStep(policy, start, eps, adv, lr, keep_graph=not cfg.first_order)
    valid = sampler.collect(policy, step.adapted, tasks, seed=6, per_task_params=True)
    hvp = kl_hessian_product(policy, [step], valid, advantages(valid), step.adapted, cfg)

    k_tasks, k_eps = n, e  # what the variant keeps
    if cfg.cg_subsample < 1.0:
        if cfg.cg_subsample_unit == "tasks":
            k_tasks = n // 2
        else:
            k_eps = e // 2

    def keep(x: torch.Tensor, i: int) -> torch.Tensor:  # task i's kept rows, (T, k_eps, ...)
        return x.reshape(x.shape[0], n, e, *x.shape[2:])[:, i, :k_eps]

    names = list(theta)
    shapes, sizes = [theta[k].shape for k in names], [theta[k].numel() for k in names]

    def unflat(x: torch.Tensor) -> dict:
        return {k: c.view(s) for k, c, s in zip(names, x.split(sizes), shapes, strict=True)}

    def adapted(x: torch.Tensor, i: int) -> dict:
        if cfg.first_order:  # J = I: the inner gradient is a constant
            return {k: v + step.adapted[k][i] - theta[k] for k, v in unflat(x).items()}
        data = [keep(d, i) for d in (eps.obs, eps.actions, adv, eps.mask)]

        def inner(x: torch.Tensor) -> dict:
            grads = torch.func.grad(lambda p: reinforce_loss(policy, p, *data))(unflat(x))
            return {k: v - lr * grads[k] for k, v in unflat(x).items()}

        # The policy the KL is taken at is the meta-iteration's own adapted one; the inner
        # step on the kept episodes gives only its displacement (its Jacobian).
        with torch.no_grad():
            at_x0 = inner(x0)
        return {k: step.adapted[k][i] + v - at_x0[k] for k, v in inner(x).items()}

    x0 = torch.cat([theta[k].flatten() for k in names])
    old = []
    for i in range(k_tasks):
        with torch.no_grad():
            old.append(tuple(forward(policy, adapted(x0, i), keep(valid.obs, i))))

    def mean_kl(x: torch.Tensor) -> torch.Tensor:
        kls = []
        for i in range(k_tasks):
            new = tuple(forward(policy, adapted(x, i), keep(valid.obs, i)))
            m = keep(valid.mask, i)
            kls.append((policy.kl(old[i], new) * m).sum() / m.sum())
        return torch.stack(kls).mean()

    h = torch.func.hessian(mean_kl)(x0)
    torch.manual_seed(2)
    for _ in range(2):
        v = torch.randn_like(x0)
        got = hvp(unflat(v))
        got_flat = torch.cat([got[k].flatten() for k in names])
        assert torch.allclose(got_flat, h @ v, rtol=1e-7, atol=1e-10), (
            (got_flat - h @ v).abs().max()
        )
    assert (h @ v).abs().max() > 1e-3  # not vacuous


@pytest.mark.parametrize(
    ("variant", "chunk_rows"),
    [({}, None), ({"cg_subsample": 0.1}, None), ({"first_order": True}, None),
     ({"num_adapt_steps": 2, "cg_subsample": 0.5}, 260)],
    ids=["exact", "cg-subsample", "first-order", "two-inner-steps-chunks-of-tasks"],
)  # fmt: skip
def test_meta_step_equals_the_implementation_before(
    variant: dict, chunk_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outer-step speed-up changes no maths: two meta-iterations from the same
    policy on the same episodes give the parameters of the implementation before it
    (scripts/maml_trpo_reference.py), for the exact second-order step, CG on a subsample, first
    order, and two inner steps. Fails if any step differs (a wrong Hessian-vector product,
    line search or data layout), and if no step was taken.

    In float64: the two implementations sum in different orders, and in float32 that
    round-off (1e-7) is amplified by conjugate gradient on the ill-conditioned KL Hessian to
    1e-3..1e-1 relative differences in the step (measured on this test's setting), which
    would hide a real error; in float64 they agree to 1e-9 relative. ``chunk_rows``: the
    vmapped passes go through the tasks in chunks of that many rows (here one task per chunk
    on the full episodes, two on the 50% subsample) instead of all at once."""
    spec = importlib.util.spec_from_file_location(
        "maml_trpo_reference", Path(__file__).parent.parent / "scripts" / "maml_trpo_reference.py"
    )
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    meta_step_before = reference.meta_step_before

    from metarl.adaptation import policy_gradient
    from metarl.agents.maml_trpo import meta_step

    if chunk_rows is not None:
        monkeypatch.setattr(policy_gradient, "CHUNK_ROWS", chunk_rows)

    cfg = MAMLTRPOConfig(meta_batch_size=4, episodes_per_task=10, hidden_sizes=(16, 16),
                         horizon=25, **variant)  # fmt: skip
    sampler = BatchedSampler(NAV, 4, 10, env_kwargs=cfg.env_kwargs())
    torch.manual_seed(3)
    env = metarl.make(NAV)
    new = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes).double()
    old = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes).double()
    old.load_state_dict(new.state_dict())
    start = {k: v.detach().clone() for k, v in new.named_parameters()}
    tasks = _tasks(8)
    taken = 0
    for it in range(2):
        batch = tasks[4 * it : 4 * it + 4]
        got = meta_step(new, sampler, batch, 100 * it, cfg)
        want = meta_step_before(old, sampler, batch, 100 * it, cfg)
        assert got["step_size"] == want["step_size"], it
        assert got["surrogate_before"] == pytest.approx(want["surrogate_before"], abs=1e-12)
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-7)
        taken += got["step_size"] > 0
        for (k, p), q in zip(new.named_parameters(), old.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-7, atol=1e-10), (it, k, (p - q).abs().max())
    assert taken, "no outer step was accepted: the comparison would be vacuous"
    assert any(not torch.equal(p, start[k]) for k, p in new.named_parameters())


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# -- meta-training ---------------------------------------------------------------------------
def _tiny(**kw) -> MAMLTRPOConfig:
    base = dict(num_iterations=2, meta_batch_size=4, episodes_per_task=4, hidden_sizes=(8,),
                horizon=20, tensorboard=False, checkpoint_every=1)  # fmt: skip
    return MAMLTRPOConfig(**{**base, **kw})


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_step_stays_in_the_trust_region(tmp_path: Path, first_order: bool) -> None:
    cfg = _tiny(first_order=first_order)
    run = train(cfg, tmp_path / "r")
    rows = _rows(run.path)
    assert len(rows) == 2
    for r in rows:
        assert float(r["kl"]) <= cfg.max_kl + 1e-6
        if float(r["step_size"]) > 0:  # accepted: the surrogate went down
            assert float(r["surrogate_after"]) < float(r["surrogate_before"])


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = _tiny(num_iterations=4)
    full = train(cfg, tmp_path / "full")
    part = train(cfg.replace(num_iterations=2), tmp_path / "part")
    assert part.path.exists()
    resumed = train(cfg, tmp_path / "part", resume=True)
    _, p_full, _ = load_policy(full.path)
    _, p_res, _ = load_policy(resumed.path)
    for k in p_full:
        assert torch.equal(p_full[k], p_res[k]), k
    rows = _rows(resumed.path)
    assert [r["iteration"] for r in rows] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="inner_lr"):
        train(cfg.replace(inner_lr=0.5), tmp_path / "part", resume=True)


def test_meta_training_learns_to_adapt_on_held_out_tasks(tmp_path: Path) -> None:
    """A short 2D-navigation run: the meta-learned policy, after one inner step on held-out
    tasks, must beat the initial policy after one inner step by a wide margin, and the inner
    step must help. Fails if the inner or the outer update breaks."""
    cfg = MAMLTRPOConfig.from_preset(
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
    b1, a0, a1 = before.mean()[1], after.mean()[0], after.mean()[1]
    assert a1 > b1 + 30, (b1, a1)
    assert a1 > a0 + 2, (a0, a1)


# -- registry and CLI ------------------------------------------------------------------------
def test_registry() -> None:
    assert "maml-trpo" in agent_names()
    assert get_agent("maml-trpo").CONFIG is MAMLTRPOConfig
    with pytest.raises(KeyError, match="Did you mean maml-trpo"):
        get_agent("maml-trp")


def test_cli_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "cli")
    args = ["train", "--agent", "maml-trpo", "--run-dir", d, "--num-iterations", "1",
            "--meta-batch-size", "3", "--episodes-per-task", "2", "--hidden-sizes", "8",
            "--horizon", "10", "--no-tensorboard"]  # fmt: skip
    assert main(args) == 0
    assert f"metarl evaluate {d}" in capsys.readouterr().out
    assert main(["train", "--resume", d, "--num-iterations", "2"]) == 0
    assert len(_rows(Path(d))) == 2
    assert main(["evaluate", d, "--steps", "1", "--seeds", "0", "--max-tasks", "2",
                 "--episodes", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "k=1" in out and "eval_test.json" in out
    assert (Path(d) / "eval_test.png").exists()
    # The evaluation says which checkpoint it read (a run may go on training meanwhile).
    assert "(checkpoint of iteration 2)" in out
    assert json.loads((Path(d) / "eval_test.json").read_text())["meta"]["iterations"] == 2
    # Other inner rates (Finn et al.'s released test script: 0.5 then 0.25; the last repeats).
    assert main(["evaluate", d, "--steps", "3", "--seeds", "0", "--max-tasks", "2",
                 "--episodes", "2", "--lrs", "0.5", "0.25"]) == 0  # fmt: skip
    meta = json.loads((Path(d) / "eval_test.json").read_text())["meta"]
    assert meta["lrs"] == [0.5, 0.25]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "--agent"),
        (["train", "--agent", "mamltrpo"], "Did you mean"),
        (["train", "--agent", "maml-trpo", "--inner-lr", "-0.1"], "inner_lr"),
        (["train", "--agent", "maml-trpo", "--meta-batch-size", "0"], "meta_batch_size"),
        (["train", "--agent", "maml-trpo", "--bogus", "1"], "unrecognized option"),
        (["train", "--agent", "maml-trpo", "--env", "metarl/Nope-v0"], "Nope"),
        (["train", "--agent", "maml-trpo", "--env=CartPole-v1"], "no task family"),
        (["evaluate", "/nonexistent/run", "--steps", "1"], "nonexistent"),
        (["evaluate", "/tmp", "--steps", "-1"], "--steps"),
        (["evaluate", "/tmp", "--lrs", "0.1", "-0.1"], "--lrs must be positive"),
        (["evaluate", "/tmp", "--lrs", "nan"], "--lrs must be positive"),
    ],
)
def test_cli_bad_input_gives_clear_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] == "train":
        argv = [*argv, "--run-dir", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_nan_loss_is_a_clear_error_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "r"
    train(_tiny(num_iterations=1), d)
    good = (d / "checkpoint.pt").read_bytes()
    collect = BatchedSampler.collect

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        eps = collect(self, *args, **kwargs)
        return eps._replace(rewards=eps.rewards * float("nan"))

    monkeypatch.setattr(BatchedSampler, "collect", poisoned)
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert (d / "checkpoint.pt").read_bytes() == good


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)cuda"):
        train(_tiny(device="cuda"), tmp_path / "r")


def test_cli_cuda_without_gpu_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    d = tmp_path / "r"
    argv = ["train", "--agent", "maml-trpo", "--device", "cuda", "--run-dir", str(d),
            "--num-iterations", "1", "--no-tensorboard"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    assert not d.exists()


def test_cli_resume_from_another_agent_or_config_keeps_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "r"
    train(_tiny(num_iterations=1), d)
    files = {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}
    refused = [
        (["--inner-lr", "0.5"], r"another configuration \(inner_lr: run has 0.1, asked for 0.5\)"),
        (["--env", "metarl/HalfCheetahVel-v0"], "another configuration \\(env_id"),
        (["--agent", "reptile-rl"], "made by agent 'maml-trpo', not 'reptile-rl'"),
        (["--first-order"], "first_order"),
    ]
    for extra, message in refused:
        assert main(["train", "--resume", str(d), "--num-iterations", "2", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert "Traceback" not in err
        # the refused resume touched nothing: same checkpoint, config and metrics
        assert {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} == files
    assert main(["train", "--resume", str(d), "--num-iterations", "2"]) == 0
    assert len(_rows(d)) == 2


def test_resume_with_changed_curvature_settings_is_recorded(tmp_path: Path) -> None:
    """The outer step's curvature and line-search settings may change on --resume (a run made
    with --cg-subsample 0.1 continued with exact curvature); config.json keeps the first
    settings, resumes.jsonl says from which checkpoint which values changed."""
    d = tmp_path / "r"
    train(_tiny(num_iterations=1, cg_subsample=0.5), d)
    assert not (d / "resumes.jsonl").exists()
    args = ["train", "--resume", str(d), "--num-iterations", "2", "--cg-subsample", "1.0",
            "--ls-backtrack-ratio", "0.8", "--curvature", "gauss-newton"]  # fmt: skip
    assert main(args) == 0
    lines = Run.read_resumes(d)
    assert len(lines) == 1 and lines[0]["iteration"] == 1
    assert lines[0]["changed"] == {"num_iterations": [1, 2], "cg_subsample": [0.5, 1.0],
                                   "ls_backtrack_ratio": [0.5, 0.8],
                                   "curvature": ["structured", "gauss-newton"]}  # fmt: skip
    assert json.loads((d / "config.json").read_text())["config"]["cg_subsample"] == 0.5
    # The next resume compares with the last checkpoint's settings: only what changes again.
    assert main(["train", "--resume", str(d), "--num-iterations", "3", "--cg-subsample", "1.0",
                 "--ls-backtrack-ratio", "0.8", "--curvature", "gauss-newton"]) == 0  # fmt: skip
    lines = Run.read_resumes(d)
    assert lines[1] == {**lines[1], "iteration": 2, "changed": {"num_iterations": [2, 3]}}
    assert len(_rows(d)) == 3
    with (d / "resumes.jsonl").open("a") as f:
        f.write("{cut off\n")
    with pytest.raises(ValueError, match=r"line 3, is not JSON.*delete that line"):
        Run.read_resumes(d)


def test_cli_resume_of_a_hand_edited_config_json_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "r"
    train(_tiny(num_iterations=1), d)
    record = json.loads((d / "config.json").read_text())
    record["config"]["inner_lr"] = 0.5
    (d / "config.json").write_text(json.dumps(record))
    files = {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}
    assert main(["train", "--resume", str(d), "--num-iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert "inner_lr: checkpoint 0.1, now 0.5" in err and "config.json edited" in err, err
    assert "Traceback" not in err
    assert {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} == files
    record["config"]["inner_lr"] = 0.1  # put back: resumes
    (d / "config.json").write_text(json.dumps(record))
    assert main(["train", "--resume", str(d), "--num-iterations", "2"]) == 0
    assert len(_rows(d)) == 2


def test_meta_batch_beyond_a_two_task_family_draws_with_replacement(tmp_path: Path) -> None:
    # HalfCheetahDir has two training tasks; the paper's meta-batch is 40 (Finn et al. 2017).
    cfg = _tiny(env_id="metarl/HalfCheetahDir-v0", num_iterations=1, meta_batch_size=5,
                episodes_per_task=1, horizon=5)  # fmt: skip
    run = train(cfg, tmp_path / "dir")
    assert len(_rows(run.path)) == 1


def test_per_task_helper_layout() -> None:
    x = torch.arange(2 * 6).view(2, 6)  # T=2, B=6 = 3 tasks × 2 episodes
    y = per_task(x, 3)
    assert y.shape == (3, 2, 2) and torch.equal(y[1], x[:, 2:4])
    assert np.array_equal(forward(torch.nn.Identity(), {}, x).numpy(), x.numpy())
    # per_task_rows: each task's (T, E) steps flattened t-major, contiguous, trailing dims kept.
    z = torch.arange(2 * 6 * 4).view(2, 6, 4)
    rows = per_task_rows(z, 3)
    assert rows.shape == (3, 4, 4) and rows.is_contiguous()
    assert torch.equal(rows[1], z[:, 2:4].reshape(4, 4))


def test_normalized_actions_are_rllabs_normalize_wrapper() -> None:
    """``normalize_actions``: env actions ``c + s·a`` for ``a ~ N(μ_net, σ_net²)``, so the
    log-probability gradients and the KL equal those of the plain policy on ``[-1, 1]``
    actions (rllab's ``NormalizedEnv``, which Finn et al.'s MAML code uses)."""
    box = gym.spaces.Box(np.array([-0.1, 0.0], np.float32), np.array([0.1, 2.0], np.float32))
    torch.manual_seed(0)
    norm = make_policy(box, box, (8,), normalize_actions=True)
    plain = GaussianMLPPolicy(2, 2, (8,))
    plain.load_state_dict(norm.state_dict())
    obs, z = torch.randn(5, 2), torch.randn(5, 2)
    center, scale = torch.tensor([0.0, 1.0]), torch.tensor([0.1, 1.0])
    (m, ls), (pm, pls) = norm(obs), plain(obs)
    assert torch.allclose(m, center + scale * pm) and torch.allclose(ls, pls + scale.log())
    a_norm = (pm + pls.exp() * z).detach()
    a_env = center + scale * a_norm
    g_norm = torch.autograd.grad(norm.log_prob(norm(obs), a_env).sum(), list(norm.parameters()))
    g_plain = torch.autograd.grad(
        plain.log_prob(plain(obs), a_norm).sum(), list(plain.parameters())
    )
    for a, b in zip(g_norm, g_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    shifted = {k: v + 0.1 for k, v in named_params(norm).items()}
    assert torch.allclose(
        norm.kl(norm(obs), forward(norm, shifted, obs)),
        plain.kl(plain(obs), forward(plain, shifted, obs)),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="finite bounds"):
        make_policy(box, gym.spaces.Box(-np.inf, np.inf, (2,)), normalize_actions=True)
    with pytest.raises(ValueError, match="Box actions"):
        make_policy(box, gym.spaces.Discrete(3), normalize_actions=True)


@pytest.mark.parametrize("normalize", [True, False])
def test_inner_advantage_normalisation_option_reaches_the_inner_step(normalize: bool) -> None:
    """``inner_normalize_advantages`` decides the advantages of the inner step used in
    evaluation (and, through the same helper, in meta-training): normalised per task
    (rllab's center_adv) or raw. The two give different adapted parameters, so a flag that
    were ignored would fail one of the two cases."""
    cfg = MAMLTRPOConfig(meta_batch_size=3, episodes_per_task=4, hidden_sizes=(8,), horizon=20,
                         inner_normalize_advantages=normalize)  # fmt: skip
    torch.manual_seed(0)
    env = metarl.make(NAV)
    policy = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes)
    sampler = BatchedSampler(NAV, 3, 4, env_kwargs=cfg.env_kwargs())
    params = named_params(policy)
    eps = sampler.collect(policy, params, _tasks(3), seed=0)
    got = inner_step_fn(policy, cfg)(params, eps, 0.1, False)
    for norm in (True, False):
        adv = advantages(eps, cfg.gamma, cfg.gae_lambda, normalize=norm)
        want = adapt_policy(policy, params, eps, adv, lr=0.1, first_order=True)
        same = all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
        assert same == (norm == normalize), norm
