"""The policy-gradient inner loop of MAML-RL, batched over tasks.

The inner step of Finn et al. 2017 (Sec. 3.2, Eq. 4): from the meta-parameters ``θ``, one
vanilla policy-gradient (REINFORCE) step per task on that task's episodes,
``θ'_i = θ − α ∇_θ L_i(θ)`` with ``L_i(θ) = −E[log π_θ(a|s) A(s, a)]`` and advantages from the
per-task linear feature baseline (Duan et al. 2016). :func:`adapt_policy` does it for every
task of a meta-batch in one ``torch.func.vmap``; with ``first_order=False`` the adapted
parameters stay differentiable functions of ``θ`` (second-order MAML).

Example:
    >>> import metarl, torch
    >>> from metarl.functional import named_params
    >>> from metarl.policies import GaussianMLPPolicy
    >>> from metarl.sampler import BatchedSampler
    >>> sampler = BatchedSampler("metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=4)
    >>> policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,))
    >>> tasks = metarl.task_distribution("metarl/Navigation2D-v0").split("train")[:2]
    >>> eps = sampler.collect(policy, named_params(policy), tasks, seed=0)
    >>> adapted = adapt_policy(policy, named_params(policy), eps, advantages(eps), lr=0.1)
    >>> adapted["log_std"].shape  # one adapted parameter set per task
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torch.func import vmap

from metarl.functional import LearningRate, Params, adapt_func, forward
from metarl.policies import Policy
from metarl.returns import LinearFeatureBaseline, ZeroBaseline, discounted_returns, gae
from metarl.sampler import Episodes, per_task_rows

__all__ = ["adapt_policy", "advantages", "reinforce_loss", "task_log_probs"]


def advantages(
    episodes: Episodes,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    baseline: LinearFeatureBaseline | ZeroBaseline | None = None,
    normalize: bool = True,
) -> Tensor:
    """Advantages ``(T, B)`` from the per-task linear baseline, GAE(γ, λ) and (by default)
    normalisation to zero mean, unit variance within each task (rllab's ``center_adv``).

    With ``gae_lambda=1`` this is ``G_t − b(s_t)``, the estimator of Finn et al. 2017.
    """
    rewards, mask, n = episodes.rewards, episodes.mask, episodes.num_tasks
    baseline = baseline or LinearFeatureBaseline()
    returns = discounted_returns(rewards, mask, gamma)
    values = baseline.fit_predict(episodes.obs, returns, mask, n)
    adv = gae(rewards, values, mask, gamma, gae_lambda)
    if not normalize:
        return adv
    t, b = adv.shape
    a, m = adv.view(t, n, -1), mask.view(t, n, -1)
    count = m.sum((0, 2), keepdim=True).clamp_min(1.0)
    mean = (a * m).sum((0, 2), keepdim=True) / count
    var = (((a - mean) * m) ** 2).sum((0, 2), keepdim=True) / count
    return ((a - mean) / (var.sqrt() + 1e-8) * m).view(t, b)


def task_log_probs(
    policy: Policy, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Log-probabilities and distribution parameters for one task's ``(T, E, ...)`` data."""
    dist = tuple(forward(policy, params, obs))
    return policy.log_prob(dist, actions), dist


def reinforce_loss(
    policy: Policy,
    params: Mapping[str, Tensor],
    obs: Tensor,
    actions: Tensor,
    adv: Tensor,
    mask: Tensor,
) -> Tensor:
    """``−Σ log π(a|s) A / Σ mask`` over one task's steps, ``(T, E)`` or flattened ``(T·E,)``
    (the VPG surrogate)."""
    logp, _ = task_log_probs(policy, params, obs, actions)
    return -(logp * adv * mask).sum() / mask.sum().clamp_min(1.0)


def adapt_policy(
    policy: Policy,
    params: Mapping[str, Tensor],
    episodes: Episodes,
    adv: Tensor,
    lr: LearningRate = 0.1,
    num_steps: int = 1,
    first_order: bool = False,
    per_task_params: bool = False,
) -> Params:
    """One (or ``num_steps``) policy-gradient step(s) per task on its own episodes.

    Args:
        params: shared meta-parameters, or (``per_task_params``) one set per task stacked on
            a leading dimension ``N``.
        episodes: ``N`` tasks' episodes, ``adv`` their advantages ``(T, B)``.
        first_order: treat the inner gradient as a constant (first-order MAML).

    Returns:
        Adapted parameters with a leading task dimension ``N``.
    """
    n = episodes.num_tasks
    data = (
        per_task_rows(episodes.obs, n),
        per_task_rows(episodes.actions, n),
        per_task_rows(adv.detach(), n),
        per_task_rows(episodes.mask, n),
    )

    def loss(p: Params, obs: Tensor, act: Tensor, a: Tensor, m: Tensor) -> Tensor:
        return reinforce_loss(policy, p, obs, act, a, m)

    def one_task(p: Params, *d: Tensor) -> Params:
        return adapt_func(loss, p, *d, num_steps=num_steps, lr=lr, first_order=first_order)

    in_dims = (0 if per_task_params else None, 0, 0, 0, 0)
    out: Params = vmap(one_task, in_dims=in_dims)(dict(params), *data)
    return out
