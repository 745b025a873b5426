"""MAML-TRPO's curvature products: the Gauss–Newton form ``Jᵀ M J`` of the KL Hessian, by
autograd (``--curvature gauss-newton``) and by cached batched matmuls (``structured``, the
default), against double backward through the KL (``exact``) and against
``torch.func.hessian`` of the mean KL, in float64, on Gaussian (tanh; ReLU with normalised
actions) and categorical policies with masked episodes of several lengths."""

from __future__ import annotations

import pytest
import torch

from metarl.adaptation import curvature as curvature_module
from metarl.adaptation import policy_gradient
from metarl.adaptation.curvature import MLPStructure, structured_curvature
from metarl.adaptation.policy_gradient import (
    InnerStep,
    TaskData,
    advantages,
    expand_tasks,
    reinforce_loss,
)
from metarl.agents.maml_trpo import (
    _RATE,
    MAMLTRPOConfig,
    _back_to_theta,
    kl_hessian_product,
)
from metarl.learning.functional import forward
from metarl.learning.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metarl.sampling.native import Episodes, per_task_rows

N, E, T = 3, 4, 6  # tasks, episodes per task, horizon


def _policy(kind: str) -> Policy:
    torch.manual_seed(0)
    if kind == "gaussian":
        policy: Policy = GaussianMLPPolicy(3, 2, hidden_sizes=(5,), nonlinearity="tanh",
                                           init_std=0.7)  # fmt: skip
    elif kind == "gaussian-relu-normalized":  # two hidden layers, actions mapped to bounds
        policy = GaussianMLPPolicy(3, 2, hidden_sizes=(6, 5), nonlinearity="relu", init_std=0.7,
                                   action_low=[-2.0, 0.0], action_high=[1.0, 0.5])  # fmt: skip
    else:
        policy = CategoricalMLPPolicy(3, 4, hidden_sizes=(5,), nonlinearity="tanh")
    return policy.double()


def _episodes(policy: Policy, seed: int) -> Episodes:
    """Random episodes of random lengths 1..T (the mask ends each one early); observations
    in float64, the mask float32 as the samplers make it."""
    g = torch.Generator().manual_seed(seed)
    b = N * E
    obs = torch.randn(T, b, 3, generator=g, dtype=torch.float64)
    if isinstance(policy, GaussianMLPPolicy):
        actions = torch.randn(T, b, 2, generator=g, dtype=torch.float64)
        if policy.normalized:  # rows in the bounds' scale
            actions = policy.action_center + policy.action_log_scale.exp() * actions
    else:
        actions = torch.randint(0, 4, (T, b), generator=g)
    lengths = torch.randint(1, T + 1, (b,), generator=g)
    mask = (torch.arange(T).unsqueeze(1) < lengths).float()  # float32, as the samplers'
    rewards = torch.randn(T, b, generator=g) * mask
    return Episodes(obs, actions, rewards, mask, N)


def _setup(kind: str, num_steps: int, first_order: bool = False, meta_sgd: bool = False):
    policy = _policy(kind)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    rates = {k: 0.05 + 0.2 * torch.rand_like(v) for k, v in theta.items()} if meta_sgd else None
    lr = 0.3 if rates is None else rates
    steps, current = [], expand_tasks(theta, N)
    for k in range(num_steps):
        eps = _episodes(policy, 10 + k)
        step = InnerStep(policy, current, eps, advantages(eps), lr, keep_graph=not first_order)
        steps.append(step)
        current = step.adapted
    valid = _episodes(policy, 99)
    return policy, theta, rates, steps, valid, current


def _vectors(theta: dict, rates: dict | None, count: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(count):
        v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in theta.items()}
        if rates is not None:
            v.update({_RATE + k: torch.randn(t.shape, generator=g, dtype=t.dtype)
                      for k, t in rates.items()})  # fmt: skip
        out.append(v)
    return out


def _rel(a: dict, b: dict) -> float:
    fa = torch.cat([a[k].flatten() for k in sorted(a)])
    fb = torch.cat([b[k].flatten() for k in sorted(a)])
    return ((fa - fb).abs().max() / fb.abs().max()).item()


KINDS = ["gaussian", "gaussian-relu-normalized", "categorical"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "variant",
    [{"num_steps": 1}, {"num_steps": 2}, {"num_steps": 1, "first_order": True},
     {"num_steps": 2, "meta_sgd": True}, {"num_steps": 2, "cg_subsample": 0.5},
     {"num_steps": 2, "meta_sgd": True, "cg_subsample": 0.5, "unit": "tasks"},
     {"num_steps": 1, "chunk_rows": 2 * T * E}],
    ids=["one-step", "two-steps", "first-order", "meta-sgd", "cg-subsample",
         "meta-sgd-subsample-tasks", "chunks"],
)  # fmt: skip
@pytest.mark.parametrize("curvature", ["gauss-newton", "structured"])
def test_curvature_products_equal_the_double_backward_one(
    kind: str, variant: dict, curvature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same matrix: the KL's gradient is zero at the current parameters, so its Hessian
    is ``Jᵀ F J`` exactly; the Gauss–Newton (autograd) and structured (cached matmul)
    products differ from double backward through the KL by float64 round-off only."""
    variant = dict(variant)
    if "chunk_rows" in variant:  # two tasks per chunk: the products go chunk by chunk
        monkeypatch.setattr(policy_gradient, "CHUNK_ROWS", variant["chunk_rows"])
        monkeypatch.setattr(curvature_module, "CHUNK_ROWS", variant.pop("chunk_rows"))
    subsample = variant.pop("cg_subsample", 1.0)
    unit = variant.pop("unit", "episodes")
    policy, theta, rates, steps, valid, adapted = _setup(kind, **variant)
    cfg = MAMLTRPOConfig(meta_batch_size=N, episodes_per_task=E, inner_lr=0.3, cg_damping=0.0,
                         first_order=variant.get("first_order", False),
                         cg_subsample=subsample, cg_subsample_unit=unit)  # fmt: skip
    vadv = advantages(valid)
    exact = kl_hessian_product(policy, steps, valid, vadv, adapted,
                               cfg.replace(curvature="exact"), rates=rates)  # fmt: skip
    other = kl_hessian_product(policy, steps, valid, vadv, adapted,
                               cfg.replace(curvature=curvature), rates=rates)  # fmt: skip
    for v in _vectors(theta, rates):
        want, got = exact(v), other(v)
        assert max(w.abs().max().item() for w in want.values()) > 1e-4  # not vacuous
        assert _rel(got, want) < 1e-9, _rel(got, want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "variant",
    [{"num_steps": 1}, {"num_steps": 2}, {"num_steps": 1, "first_order": True},
     {"num_steps": 2, "meta_sgd": True}, {"num_steps": 2, "meta_sgd": True, "chunked": True}],
    ids=["one-step", "two-steps", "first-order", "meta-sgd", "meta-sgd-chunks"],
)  # fmt: skip
def test_structured_meta_gradient_equals_the_autograd_one(
    kind: str, variant: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Σ_i J_iᵀ w_i`` (the meta-gradient's transpose through the inner steps) by the
    structured products equals the double backward through the retained inner graphs."""
    variant = dict(variant)
    if variant.pop("chunked", False):  # one task per chunk
        monkeypatch.setattr(curvature_module, "CHUNK_ROWS", T * E)
    policy, _, rates, steps, valid, adapted = _setup(kind, **variant)
    first_order = variant.get("first_order", False)
    lr = 0.3 if rates is None else rates
    sc = structured_curvature(policy, [(s.start, s.data) for s in steps],
                              TaskData.of(valid, advantages(valid)), adapted, lr,
                              first_order, _RATE)  # fmt: skip
    assert sc is not None
    assert len(sc.chunks) == (N if curvature_module.CHUNK_ROWS == T * E else 1)
    g = torch.Generator().manual_seed(3)
    w = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in adapted.items()}
    want = _back_to_theta(w, steps, first_order, rates)
    got = sc.back_to_theta(w)
    assert set(got) == set(want)
    assert _rel(got, want) < 1e-10, _rel(got, want)


def test_structured_curvature_falls_back_for_other_policies() -> None:
    """A policy class the structured products do not know (here a subclass, which may change
    its forward pass) gets the autograd Gauss–Newton product."""

    class Custom(GaussianMLPPolicy):
        pass

    torch.manual_seed(0)
    assert MLPStructure.of(Custom(3, 2, hidden_sizes=(5,))) is None
    assert MLPStructure.of(GaussianMLPPolicy(3, 2, hidden_sizes=(5,))) is not None
    policy = Custom(3, 2, hidden_sizes=(5,), nonlinearity="tanh").double()
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    eps = _episodes(policy, 10)
    step = InnerStep(policy, expand_tasks(theta, N), eps, advantages(eps), 0.3, keep_graph=True)
    valid = _episodes(policy, 99)
    cfg = MAMLTRPOConfig(meta_batch_size=N, episodes_per_task=E, inner_lr=0.3, cg_damping=0.0)
    assert cfg.curvature == "structured"  # the default
    vadv = advantages(valid)
    got = kl_hessian_product(policy, [step], valid, vadv, step.adapted, cfg)
    want = kl_hessian_product(policy, [step], valid, vadv, step.adapted,
                              cfg.replace(curvature="exact"))  # fmt: skip
    v = _vectors(theta, None, 1)[0]
    assert _rel(got(v), want(v)) < 1e-9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("curvature", ["structured", "gauss-newton", "exact"])
def test_curvature_product_is_the_brute_force_hessian_of_the_mean_kl(
    kind: str, curvature: str
) -> None:
    """Both products against ``torch.func.hessian`` of the mean KL (masked, per-task counts)
    as a function of the flat ``θ`` through one inner step."""
    policy, theta, _, steps, valid, adapted = _setup(kind, 1)
    cfg = MAMLTRPOConfig(meta_batch_size=N, episodes_per_task=E, inner_lr=0.3, cg_damping=0.0,
                         curvature=curvature)  # fmt: skip
    hvp = kl_hessian_product(policy, steps, valid, advantages(valid), adapted, cfg)
    names = list(theta)
    shapes, sizes = [theta[k].shape for k in names], [theta[k].numel() for k in names]
    eps, adv = steps[0].episodes, steps[0].adv
    inner = [per_task_rows(x, N) for x in (eps.obs, eps.actions, adv, eps.mask)]
    vobs, vmask = per_task_rows(valid.obs, N), per_task_rows(valid.mask, N)

    def unflat(x: torch.Tensor) -> dict:
        return {k: c.view(s) for k, c, s in zip(names, x.split(sizes), shapes, strict=True)}

    def dists(x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        out = []
        for i in range(N):
            p = unflat(x)
            g = torch.func.grad(lambda q, i=i: reinforce_loss(policy, q, *(d[i] for d in inner)))(p)
            out.append(tuple(forward(policy, {k: p[k] - 0.3 * g[k] for k in p}, vobs[i])))
        return out

    x0 = torch.cat([theta[k].flatten() for k in names])
    with torch.no_grad():
        old = [tuple(t.detach() for t in d) for d in dists(x0)]

    def mean_kl(x: torch.Tensor) -> torch.Tensor:
        kls = [(policy.kl(old[i], d) * vmask[i]).sum() / vmask[i].sum()
               for i, d in enumerate(dists(x))]  # fmt: skip
        return torch.stack(kls).mean()

    h = torch.func.hessian(mean_kl)(x0)
    for v in _vectors(theta, None, 2):
        got = hvp(v)
        want = h @ torch.cat([v[k].flatten() for k in names])
        got_flat = torch.cat([got[k].flatten() for k in names])
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(got_flat, want, rtol=1e-8, atol=1e-12)
