"""The policy-gradient inner loop of MAML-RL, batched over tasks.

The inner step of Finn et al. 2017 (Sec. 3.2, Eq. 4): from the meta-parameters ``θ``, one
vanilla policy-gradient (REINFORCE) step per task on that task's episodes,
``θ'_i = θ − α ∇_θ L_i(θ)`` with ``L_i(θ) = −E[log π_θ(a|s) A(s, a)]`` and advantages from the
per-task linear feature baseline (Duan et al. 2016). :func:`adapt_policy` does it for every
task of a meta-batch in one ``torch.func.vmap``; with ``first_order=False`` the adapted
parameters stay differentiable functions of ``θ`` (second-order MAML).

Example:
    >>> import metarl, torch
    >>> from metarl.learning.functional import named_params
    >>> from metarl.learning.policies import GaussianMLPPolicy
    >>> from metarl.sampling.native import BatchedSampler
    >>> sampler = BatchedSampler("metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=4)
    >>> policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,))
    >>> tasks = metarl.task_distribution("metarl/Navigation2D-v0").split("train")[:2]
    >>> eps = sampler.collect(policy, named_params(policy), tasks, seed=0)
    >>> adapted = adapt_policy(policy, named_params(policy), eps, advantages(eps), lr=0.1)
    >>> adapted["log_std"].shape  # one adapted parameter set per task
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from metarl.learning.functional import (
    LearningRate,
    Params,
    adapt_func,
    check_num_steps,
    forward,
    gradient_step,
    step_lr,
)
from metarl.learning.policies import Policy
from metarl.learning.returns import (
    LinearFeatureBaseline,
    ZeroBaseline,
    discounted_returns,
    gae,
    normalize_advantages,
)
from metarl.learning.trpo import dot
from metarl.sampling.native import Episodes, per_task_rows

__all__ = [
    "InnerStep",
    "TaskData",
    "adapt_policy",
    "advantages",
    "cat_chunks",
    "chunk_leaves",
    "expand_tasks",
    "grad_by_chunk",
    "ppo_clip_loss",
    "reinforce_loss",
    "task_chunks",
    "task_log_probs",
    "vpg_adapt_fn",
]


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
    return normalize_advantages(adv.view(t, n, -1), mask.view(t, n, -1), dims=(0, 2)).view(t, b)


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
        first_order: treat the inner gradient as a constant (first-order MAML). The step is
            then :class:`InnerStep`'s, the one MAML-TRPO meta-trains with, and the result is
            detached; otherwise the result stays a differentiable function of ``params``.

    Returns:
        Adapted parameters with a leading task dimension ``N``.
    """
    n = episodes.num_tasks
    if first_order:
        check_num_steps(num_steps)
        current = dict(params) if per_task_params else expand_tasks(params, n)
        for step in range(num_steps):
            current = InnerStep(policy, current, episodes, adv, step_lr(lr, step), False).adapted
        return current
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


def vpg_adapt_fn(
    policy: Policy, gamma: float = 0.99, gae_lambda: float = 1.0
) -> Callable[[Mapping[str, Tensor], Episodes, LearningRate, bool], Params]:
    """MAML's inner step (Finn et al. 2017, Sec. 3.2) as the evaluation protocol takes it,
    ``(params, episodes, lr, per_task) -> adapted``: vanilla policy gradient with the per-task
    linear baseline and normalised GAE(γ, λ) advantages, first order."""

    def step(params: Mapping[str, Tensor], eps: Episodes, lr: LearningRate, per_task: bool
             ) -> Params:  # fmt: skip
        adv = advantages(eps, gamma, gae_lambda)
        return adapt_policy(policy, params, eps, adv, lr=lr, first_order=True,
                            per_task_params=per_task)  # fmt: skip

    return step


#: Steps (rows) per chunk of tasks in the vmapped passes of the outer step on a CPU. The
#: per-task computations are independent, so tasks can go through in chunks, each with its
#: own leaf parameters and graph; a chunk of about this many rows keeps every activation
#: tensor a few MB. On the 2-core CPU one vmap over all 40 HalfCheetahVel tasks (160k rows,
#: 64 MB activations) took 1.5x the time per task of chunks of 1-8 tasks (fresh memory for
#: every large tensor, cache misses); the results are the same. A GPU wants the big batch:
#: there all tasks go at once.
CHUNK_ROWS = 16384


def task_chunks(num_tasks: int, rows_per_task: int, device: torch.device) -> list[slice]:
    if device.type != "cpu":
        return [slice(0, num_tasks)]
    size = max(1, CHUNK_ROWS // max(1, rows_per_task))
    return [slice(i, min(i + size, num_tasks)) for i in range(0, num_tasks, size)]


def chunk_leaves(params: Mapping[str, Tensor], chunks: list[slice]) -> list[Params]:
    """Each chunk's slice of the per-task parameters as new leaves requiring grad."""
    return [{k: v[c].detach().requires_grad_(True) for k, v in params.items()} for c in chunks]


def grad_by_chunk(out: Tensor, leaves: list[Params], **kw: Any) -> list[Params]:
    names = list(leaves[0])
    flat = torch.autograd.grad(out, [leaf[k] for leaf in leaves for k in names], **kw)
    return [dict(zip(names, flat[i * len(names) : (i + 1) * len(names)], strict=True))
            for i in range(len(leaves))]  # fmt: skip


def cat_chunks(parts: list[Params]) -> Params:
    """Per-chunk parameters back to one ``(N, ...)`` set."""
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class TaskData(NamedTuple):
    """A meta-batch's episodes and advantages in the ``(N, T·E, ...)`` layout of
    :func:`metarl.sampling.native.per_task_rows`, made once per meta-iteration."""

    obs: Tensor
    actions: Tensor
    adv: Tensor
    mask: Tensor

    @classmethod
    def of(cls, episodes: Episodes, adv: Tensor) -> TaskData:
        n = episodes.num_tasks
        return cls(*(per_task_rows(x, n) for x in (episodes.obs, episodes.actions, adv.detach(),
                                                     episodes.mask)))  # fmt: skip

    def chunks(self) -> list[slice]:
        return task_chunks(self.obs.shape[0], self.obs.shape[1], self.obs.device)

    def chunk(self, c: slice) -> TaskData:
        return TaskData(*(x[c] for x in self))


class InnerStep:
    """One inner step ``θ' = θ − α ∇L(θ)`` for every task, keeping what the Jacobian-vector
    products ``J w = w − α H w`` need (the graph of the per-task gradients).

    ``lr`` is the scalar ``α``, or Meta-SGD's per-entry rates (a tensor per parameter, the
    parameter's shape, shared by all tasks): ``θ' = θ − α ∘ ∇L(θ)``. Then the Jacobian has a
    part for ``θ``, ``I − diag(α) H`` (no longer symmetric), and one for ``α``,
    ``−diag(∇L)``: :meth:`jvp_rates` and :meth:`vjp_rates`."""

    def __init__(
        self,
        policy: Policy,
        start: Mapping[str, Tensor],
        episodes: Episodes,
        adv: Tensor,
        lr: float | Tensor | Mapping[str, Tensor],
        keep_graph: bool,
        data: TaskData | None = None,
    ) -> None:
        self.episodes, self.adv, self.start = episodes, adv.detach(), start
        self.data = TaskData.of(episodes, adv) if data is None else data
        self.num_env_steps = episodes.num_steps()
        # Per-task leaves (N, ...), by chunk of tasks: the gradient of the summed loss is
        # every task's gradient.
        self.chunks = self.data.chunks()
        self.leaves = chunk_leaves(start, self.chunks)

        def task_loss(p: Params, o: Tensor, ac: Tensor, aa: Tensor, mm: Tensor) -> Tensor:
            return reinforce_loss(policy, p, o, ac, aa, mm)

        loss = sum(vmap(task_loss)(leaf, *self.data.chunk(c)).sum()
                   for leaf, c in zip(self.leaves, self.chunks, strict=True))  # fmt: skip
        self.grads = grad_by_chunk(loss, self.leaves, create_graph=keep_graph)  # type: ignore[arg-type]
        self.lr = lr
        self.adapted = cat_chunks(
            [{k: v.detach() for k, v in gradient_step(leaf, g, lr).items()}
             for leaf, g in zip(self.leaves, self.grads, strict=True)])  # fmt: skip

    def _hvp(self, w: Params) -> Params:
        """``H w`` per task (``w`` has the leading task dimension)."""
        gw = sum(dot(g, {k: v[c] for k, v in w.items()})
                 for g, c in zip(self.grads, self.chunks, strict=True))  # fmt: skip
        return cat_chunks(grad_by_chunk(gw, self.leaves, retain_graph=True))  # type: ignore[arg-type]

    def jvp(self, w: Params) -> Params:
        """``J w = w − α H w`` per task (``w`` has the leading task dimension); scalar α."""
        hw = self._hvp(w)
        return {k: w[k] - self.lr * hw[k] for k in w}  # type: ignore[operator]

    def _rates(self) -> Mapping[str, Tensor]:
        if not isinstance(self.lr, Mapping):
            raise TypeError("jvp_rates/vjp_rates are for per-entry (Meta-SGD) rates; use jvp")
        return self.lr

    def task_grads(self) -> Params:
        """``∇L_i(θ)`` per task (the leading task dimension), detached."""
        return cat_chunks([{k: v.detach() for k, v in g.items()} for g in self.grads])

    def jvp_rates(self, w: Params, u: Mapping[str, Tensor]) -> Params:
        """Meta-SGD's forward product ``J_θ w + J_α u = w − α ∘ (H w) − ∇L ∘ u`` per task:
        ``w`` a tangent of the per-task start (leading task dimension), ``u`` one of ``α``
        (shared by all tasks)."""
        rates, hw, g = self._rates(), self._hvp(w), self.task_grads()
        return {k: w[k] - rates[k] * hw[k] - g[k] * u[k] for k in w}

    def vjp_rates(self, w: Params) -> tuple[Params, Params]:
        """Meta-SGD's backward product of a cotangent ``w`` of ``θ'`` (leading task
        dimension): ``J_θᵀ w = w − H (α ∘ w)`` per task (``H`` is symmetric) and
        ``J_αᵀ w = −∇L ∘ w`` per task (the caller sums it over tasks)."""
        rates, g = self._rates(), self.task_grads()
        h_aw = self._hvp({k: rates[k] * w[k] for k in w})
        return {k: w[k] - h_aw[k] for k in w}, {k: -g[k] * w[k] for k in w}


def expand_tasks(params: Mapping[str, Tensor], n: int) -> Params:
    """Shared parameters as ``n`` per-task copies (a leading task dimension), detached."""
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


def ppo_clip_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    adv: Tensor,
    mask: Tensor,
    count: Tensor,
    clip_coef: float,
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate loss (Schulman et al. 2017, Eq. 7), summed over the live steps
    (``mask`` 1) and divided by ``count``; returns (loss, probability ratios). All per-step
    tensors ``(T, B)``."""
    ratio = (log_probs - old_log_probs).exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
    return -(surrogate * mask).sum() / count, ratio
