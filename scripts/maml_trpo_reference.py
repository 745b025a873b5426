"""The MAML-TRPO meta-iteration as it was before the outer-step speed-up, kept verbatim as
the oracle of tests/test_maml.py::test_meta_step_equals_the_implementation_before:
the faster ``agents/maml_trpo.py`` must give the same parameters to float round-off.

Copied from agents/maml_trpo.py at commit 441edd4: the same code up to whitespace (ruff
re-formatted it), only ``meta_step`` renamed ``meta_step_before``. Also the "before" of
scripts/bench_maml_before_after.py; not used by the package.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from metarl.adaptation.policy_gradient import advantages
from metarl.agents.maml_trpo import MAMLTRPOConfig
from metarl.learning.functional import Params, forward, load_params
from metarl.learning.policies import Policy
from metarl.learning.returns import BASELINES
from metarl.numerics import check_finite
from metarl.sampling.native import BatchedSampler, Episodes, per_task


# -- flat-vector helpers for conjugate gradient ---------------------------------------------
def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def _axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    return {k: y[k] + alpha * x[k] for k in y}


def conjugate_gradient(
    mvp: Callable[[Params], Params], b: Params, iters: int, tol: float = 1e-10
) -> Params:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given by ``mvp`` (Hestenes and
    Stiefel 1952), as in TRPO's reference implementation."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rr = _dot(r, r)
    for _ in range(iters):
        ap = mvp(p)
        alpha = rr / _dot(p, ap).clamp_min(1e-30)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _dot(r, r)
        if rr_new < tol:
            break
        p = _axpy(rr_new / rr, p, r)
        rr = rr_new
    return x


# -- the meta-iteration ----------------------------------------------------------------------
class _InnerStep:
    """One inner step ``θ' = θ − α ∇L(θ)`` for every task, keeping what the Jacobian-vector
    products ``J w = w − α H w`` need (the graph of the per-task gradients)."""

    def __init__(
        self,
        policy: Policy,
        start: Params,
        episodes: Episodes,
        adv: Tensor,
        lr: float,
        keep_graph: bool,
    ) -> None:
        n = episodes.num_tasks
        self.episodes, self.adv, self.start = episodes, adv.detach(), start
        self.num_env_steps = episodes.num_steps()
        # Per-task leaves (N, ...): the gradient of the summed loss is every task's gradient.
        self.leaf = {k: v.detach().requires_grad_(True) for k, v in start.items()}
        obs, act = per_task(episodes.obs, n), per_task(episodes.actions, n)
        a, m = per_task(adv.detach(), n), per_task(episodes.mask, n)

        def task_loss(p: Params, o: Tensor, ac: Tensor, aa: Tensor, mm: Tensor) -> Tensor:
            logp = policy.log_prob(tuple(forward(policy, p, o)), ac)
            return -(logp * aa * mm).sum() / mm.sum().clamp_min(1.0)

        loss = vmap(task_loss)(self.leaf, obs, act, a, m).sum()
        names = list(self.leaf)
        grads = torch.autograd.grad(loss, [self.leaf[k] for k in names], create_graph=keep_graph)
        self.grads = dict(zip(names, grads, strict=True))
        self.lr = lr
        self.adapted = {k: (self.leaf[k] - lr * self.grads[k]).detach() for k in names}

    def jvp(self, w: Params) -> Params:
        """``J w = w − α H w`` per task (``w`` has the leading task dimension)."""
        names = list(self.leaf)
        hw = torch.autograd.grad(
            _dot(self.grads, w), [self.leaf[k] for k in names], retain_graph=True
        )
        return {k: w[k] - self.lr * h for k, h in zip(names, hw, strict=True)}


def _subsample(episodes: Episodes, adv: Tensor, fraction: float) -> tuple[Episodes, Tensor]:
    """The first ``ceil(fraction × E)`` episodes of every task (and their advantages)."""
    n, e = episodes.num_tasks, episodes.episodes_per_task
    k = max(1, math.ceil(fraction * e))
    if k >= e:
        return episodes, adv

    def cut(x: Tensor) -> Tensor:
        t = x.shape[0]
        return x.reshape(t, n, e, *x.shape[2:])[:, :, :k].reshape(t, n * k, *x.shape[2:])

    sub = Episodes(cut(episodes.obs), cut(episodes.actions), cut(episodes.rewards),
                   cut(episodes.mask), n)  # fmt: skip
    return sub, cut(adv)


def _expand(params: Mapping[str, Tensor], n: int) -> Params:
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


def _outer_terms(
    policy: Policy, adapted: Params, episodes: Episodes, adv: Tensor, old_logp: Tensor,
    old_dist: tuple[Tensor, ...],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mean over tasks of the TRPO surrogate loss (to minimise) and of the KL, both
    functions of the per-task parameters ``adapted`` ``(N, ...)``."""
    n = episodes.num_tasks
    obs, act, mask = (per_task(x, n) for x in (episodes.obs, episodes.actions, episodes.mask))

    def task_dist(p: Params, o: Tensor) -> tuple[Tensor, ...]:
        return tuple(forward(policy, p, o))

    dist = vmap(task_dist)(adapted, obs)
    logp = policy.log_prob(dist, act)
    count = mask.sum((1, 2)).clamp_min(1.0)
    ratio = torch.exp(logp - old_logp)
    surrogate = -((ratio * per_task(adv, n) * mask).sum((1, 2)) / count).mean()
    kl = ((policy.kl(old_dist, dist) * mask).sum((1, 2)) / count).mean()
    return surrogate, kl


def meta_step_before(
    policy: Policy, sampler: BatchedSampler, tasks: list[Any], seed: int, cfg: MAMLTRPOConfig
) -> dict[str, float]:
    """One meta-iteration on ``tasks`` (updates ``policy`` in place); returns its statistics."""
    n = len(tasks)
    theta = {k: p.detach() for k, p in policy.named_parameters()}
    t0 = time.perf_counter()

    # 1-3. Inner steps on fresh episodes, then validation episodes with the adapted policies.
    steps: list[_InnerStep] = []
    current, per_task_params = theta, False
    train_returns = []
    sample_s = adapt_s = 0.0
    for k in range(cfg.num_adapt_steps):
        ts = time.perf_counter()
        eps = sampler.collect(
            policy, current, tasks, seed=seed + k, per_task_params=per_task_params
        )
        train_returns.append(eps.task_returns().mean().item())
        ta = time.perf_counter()
        adv = advantages(eps, cfg.gamma, cfg.gae_lambda, BASELINES[cfg.inner_baseline]())
        start = current if per_task_params else _expand(current, n)
        step = _InnerStep(policy, start, eps, adv, cfg.inner_lr, keep_graph=not cfg.first_order)
        steps.append(step)
        current, per_task_params = step.adapted, True
        sample_s += ta - ts
        adapt_s += time.perf_counter() - ta
    ts = time.perf_counter()
    valid = sampler.collect(policy, current, tasks, seed=seed + 1000, per_task_params=True)
    sample_s += time.perf_counter() - ts
    to = time.perf_counter()
    valid_adv = advantages(valid, cfg.gamma, cfg.gae_lambda)

    # 4. TRPO. The surrogate and the KL as functions of the last adapted parameters.
    leaf = {k: v.detach().requires_grad_(True) for k, v in current.items()}

    def old_policy(eps: Episodes) -> tuple[Tensor, tuple[Tensor, ...]]:
        with torch.no_grad():
            dist = vmap(lambda p, o: tuple(forward(policy, p, o)))(leaf, per_task(eps.obs, n))
            return policy.log_prob(dist, per_task(eps.actions, n)), dist

    old_logp, old_dist = old_policy(valid)
    surrogate, kl = _outer_terms(policy, leaf, valid, valid_adv, old_logp, old_dist)
    names = list(leaf)
    g_out = torch.autograd.grad(surrogate, [leaf[k] for k in names], retain_graph=True)
    # The curvature (KL Hessian) products, optionally on a subsample of the episodes.
    curv_steps = steps
    if cfg.cg_subsample < 1.0:
        valid_c, valid_adv_c = _subsample(valid, valid_adv, cfg.cg_subsample)
        if not cfg.first_order:
            curv_steps = []
            for step in steps:
                eps_c, adv_c = _subsample(step.episodes, step.adv, cfg.cg_subsample)
                curv_steps.append(_InnerStep(policy, step.start, eps_c, adv_c, cfg.inner_lr, True))
        old_logp_c, old_dist_c = old_policy(valid_c)
        _, kl = _outer_terms(policy, leaf, valid_c, valid_adv_c, old_logp_c, old_dist_c)
    kl_grad = torch.autograd.grad(kl, [leaf[k] for k in names], create_graph=True)

    def back_to_theta(w: Params, through: list[_InnerStep]) -> Params:
        """``Σ_i J_iᵀ w_i``: through the inner steps, last to first, then sum over tasks."""
        if not cfg.first_order:
            for step in reversed(through):
                w = step.jvp(w)  # J is symmetric
        return {k: v.sum(0) for k, v in w.items()}

    def fisher(u: Params) -> Params:
        gu = torch.stack([(g * u[k]).sum() for g, k in zip(kl_grad, names, strict=True)])
        hu = torch.autograd.grad(
            gu.sum(),
            [leaf[k] for k in names],
            retain_graph=True,
        )
        return dict(zip(names, hu, strict=True))

    def kl_hvp(v: Params) -> Params:
        w = _expand(v, n)
        if not cfg.first_order:
            for step in curv_steps:
                w = step.jvp(w)
        hv = back_to_theta(fisher(w), curv_steps)
        return _axpy(cfg.cg_damping, v, hv)

    grad = back_to_theta(dict(zip(names, g_out, strict=True)), steps)
    hint = "lower --inner-lr or --max-kl, or check the env's rewards"
    check_finite("MAML-TRPO surrogate loss", surrogate, hint=hint)
    check_finite("meta-gradient", grad, hint=hint)
    direction = conjugate_gradient(kl_hvp, grad, cfg.cg_iters)
    shs = 0.5 * _dot(direction, kl_hvp(direction))
    lagrange = torch.sqrt(shs.clamp_min(1e-20) / cfg.max_kl)
    full_step = {k: v / lagrange for k, v in direction.items()}
    check_finite("TRPO step (conjugate-gradient direction)", full_step,
                 hint="raise --cg-damping or lower --max-kl")  # fmt: skip
    old_loss = surrogate.item()

    # Backtracking line search: re-adapt from the candidate θ and check the surrogate and KL.
    def evaluate_candidate(candidate: Params) -> tuple[float, float]:
        cur, per = candidate, False
        for step in steps:
            start = cur if per else _expand(cur, n)
            cur = _InnerStep(policy, start, step.episodes, step.adv, cfg.inner_lr, False).adapted
            per = True
        with torch.no_grad():
            s, d = _outer_terms(policy, cur, valid, valid_adv, old_logp, old_dist)
        return s.item(), d.item()

    accepted, ratio, new_loss, new_kl = False, 1.0, old_loss, 0.0
    for _ in range(cfg.ls_max_steps):
        candidate = {k: theta[k] - ratio * full_step[k] for k in theta}
        new_loss, new_kl = evaluate_candidate(candidate)
        if new_loss < old_loss and new_kl <= cfg.max_kl and math.isfinite(new_loss):
            load_params(policy, candidate)
            accepted = True
            break
        ratio *= cfg.ls_backtrack_ratio
    outer_s = time.perf_counter() - to
    total = time.perf_counter() - t0
    env_steps = sum(s.num_env_steps for s in steps) + valid.num_steps()
    return {
        "pre_adapt_return": float(np.mean(train_returns[:1])),
        "post_adapt_return": valid.task_returns().mean().item(),
        "surrogate_before": old_loss,
        "surrogate_after": new_loss if accepted else old_loss,
        "kl": new_kl if accepted else 0.0,
        "step_size": ratio if accepted else 0.0,
        "log_std": float(policy.state_dict().get("log_std", torch.zeros(1)).mean()),
        "env_steps": float(env_steps),
        "env_steps_per_s": env_steps / total,
        "sample_s": sample_s,
        "adapt_s": adapt_s,
        "outer_s": outer_s,
        "iteration_s": total,
    }
