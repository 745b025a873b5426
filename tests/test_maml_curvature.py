"""MAML-TRPO's curvature products: the Gauss–Newton form ``Jᵀ M J`` of the KL Hessian
(``--curvature gauss-newton``) against double backward through the KL (``exact``) and against
``torch.func.hessian`` of the mean KL, in float64, on Gaussian and categorical policies with
masked episodes of several lengths."""

from __future__ import annotations

import pytest
import torch

from metarl.adaptation import policy_gradient
from metarl.adaptation.policy_gradient import InnerStep, advantages, expand_tasks, reinforce_loss
from metarl.agents.maml_trpo import _RATE, MAMLTRPOConfig, kl_hessian_product
from metarl.learning.functional import forward
from metarl.learning.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metarl.sampling.native import Episodes, per_task_rows

N, E, T = 3, 4, 6  # tasks, episodes per task, horizon


def _policy(kind: str) -> Policy:
    torch.manual_seed(0)
    if kind == "gaussian":
        policy: Policy = GaussianMLPPolicy(3, 2, hidden_sizes=(5,), nonlinearity="tanh",
                                           init_std=0.7)  # fmt: skip
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


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize(
    "variant",
    [{"num_steps": 1}, {"num_steps": 2}, {"num_steps": 1, "first_order": True},
     {"num_steps": 2, "meta_sgd": True}, {"num_steps": 2, "cg_subsample": 0.5},
     {"num_steps": 1, "chunk_rows": 2 * T * E}],
    ids=["one-step", "two-steps", "first-order", "meta-sgd", "cg-subsample", "chunks"],
)  # fmt: skip
def test_gauss_newton_product_equals_the_double_backward_one(
    kind: str, variant: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same matrix: the KL's gradient is zero at the current parameters, so its Hessian
    is ``Jᵀ F J`` exactly; the products differ by float64 round-off only."""
    variant = dict(variant)
    if "chunk_rows" in variant:  # two tasks per chunk: the products go chunk by chunk
        monkeypatch.setattr(policy_gradient, "CHUNK_ROWS", variant.pop("chunk_rows"))
    subsample = variant.pop("cg_subsample", 1.0)
    policy, theta, rates, steps, valid, adapted = _setup(kind, **variant)
    cfg = MAMLTRPOConfig(meta_batch_size=N, episodes_per_task=E, inner_lr=0.3, cg_damping=0.0,
                         first_order=variant.get("first_order", False),
                         cg_subsample=subsample)  # fmt: skip
    vadv = advantages(valid)
    exact = kl_hessian_product(policy, steps, valid, vadv, adapted,
                               cfg.replace(curvature="exact"), rates=rates)  # fmt: skip
    gn = kl_hessian_product(policy, steps, valid, vadv, adapted,
                            cfg.replace(curvature="gauss-newton"), rates=rates)  # fmt: skip
    for v in _vectors(theta, rates):
        want, got = exact(v), gn(v)
        assert max(w.abs().max().item() for w in want.values()) > 1e-4  # not vacuous
        assert _rel(got, want) < 1e-9, _rel(got, want)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("curvature", ["gauss-newton", "exact"])
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
