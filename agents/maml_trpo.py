"""MAML-TRPO: model-agnostic meta-learning for RL with a TRPO outer step.

Finn, Abbeel, Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", Sec. 3.2 and Alg. 3; the outer update is TRPO (Schulman et al. 2015, "Trust Region
Policy Optimization", App. C: conjugate gradient on the KL Hessian, backtracking line search).

One meta-iteration, all tasks batched (no Python loop over tasks):

1. sample ``meta_batch_size`` training tasks; collect ``episodes_per_task`` episodes of each
   with the meta-parameters ``θ`` (the "fast batch");
2. inner step per task (vanilla policy gradient with the linear baseline, lr ``α``):
   ``θ'_i = θ − α ∇L_i(θ)``, vmapped over tasks;
3. collect validation episodes with each ``θ'_i``;
4. TRPO on the mean over tasks of the surrogate ``E[π_θ'_i(θ)(a|s) / π_old(a|s) · A]``
   under ``mean_i KL(π_old || π_θ'_i(θ)) ≤ max_kl``.

Second-order by default: the meta-gradient is ``Σ_i J_iᵀ ∇L_out,i(θ'_i)`` with the Jacobian
of the inner step ``J_i = I − α H_i`` (``H_i`` the Hessian of task ``i``'s inner loss; ``J_i``
is symmetric). The KL has zero gradient at the current parameters, so its Hessian is exactly
``Σ_i J_i F_i J_i`` (``F_i`` the Hessian of the KL in the adapted parameters, i.e. the Fisher
matrix of the adapted policy); conjugate gradient uses that product: two inner-loss
Hessian-vector products and one KL one per CG iteration, each a single backward pass for all
tasks at once. ``first_order=True`` (FOMAML) sets ``J_i = I``.

``learn_inner_lr=True`` is Meta-SGD (Li, Zhou, Chen, Li 2017, "Meta-SGD: Learning to Learn
Quickly for Few-Shot Learning", Sec. 3): ``θ'_i = θ − α ∘ ∇L_i(θ)`` with a rate per parameter
entry, meta-learned with ``θ``. The outer step then lives on ``(θ, α)``: ``J_i`` has the parts
``I − diag(α) H_i`` (not symmetric) for ``θ`` and ``−diag(∇L_i)`` for ``α``, and the same
products give the meta-gradient and ``Σ_i J_iᵀ F_i J_i`` on ``(θ, α)``.

Example:
    >>> from metarl.agents.maml_trpo import MAMLTRPOConfig, train
    >>> cfg = MAMLTRPOConfig.from_preset("quick", num_iterations=1, device="cpu")
    >>> run = train(cfg, "/tmp/maml-doctest", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from metarl.config import ConfigError, RunConfig, num_workers_option, option, worker_timeout_option
from metarl.evaluation import AdaptationCurve, evaluate_policy_adaptation, save_run_curve
from metarl.functional import Params, forward, gradient_step, load_params
from metarl.meta_training import meta_train
from metarl.numerics import check_finite
from metarl.policies import Policy, load_run_policy, make_policy
from metarl.policy_gradient import adapt_policy, advantages
from metarl.returns import (
    BASELINES,
    LinearFeatureBaseline,
    PreviousTaskBaseline,
    ZeroBaseline,
    discounted_returns,
)
from metarl.runs import Run
from metarl.sampler import SAMPLERS, BatchedSampler, Episodes, make_sampler, per_task_rows

__all__ = [
    "AGENT",
    "CONFIG",
    "MAMLTRPOConfig",
    "evaluate",
    "initial_inner_lrs",
    "inner_lr_summary",
    "load_inner_lrs",
    "load_policy",
    "meta_step",
    "shared_baseline",
    "train",
]

AGENT = "maml-trpo"


@dataclass
class MAMLTRPOConfig(RunConfig):
    """MAML-TRPO settings; defaults are the 2D-navigation setting of Finn et al. 2017."""

    meta_batch_size: int = option(
        20,
        "tasks per meta-iteration (drawn with replacement when the family has fewer training "
        "tasks, as Finn et al. 2017 do for the two directions of HalfCheetahDir/AntDir)",
        low=1,
    )
    episodes_per_task: int = option(
        20, "episodes per task for each inner step and for validation (fast batch)", low=1
    )
    num_adapt_steps: int = option(1, "inner policy-gradient steps during meta-training", low=1)
    inner_lr: float = option(0.1, "inner step size α", low=0.0, low_open=True)
    learn_inner_lr: bool = option(
        False,
        "Meta-SGD (Li et al. 2017, Sec. 3): meta-learn an inner step size for every parameter "
        "entry (α with the shapes of θ, initialised to --inner-lr) jointly with θ in the TRPO "
        "step, θ'_i = θ − α ∘ ∇L_i(θ), the same α at every inner step; saved in the "
        "checkpoints. Evaluation then adapts with the learned α at every step (as Li et al. "
        "do), not α then α/2. Entries may turn negative (α ∘ ∇ sets the step's direction "
        "too, Li et al. Sec. 3); a NaN/inf α stops the run with an error. Second order only",
    )
    first_order: bool = option(False, "first-order MAML: drop the inner-step Jacobian")
    inner_baseline: str = option(
        "linear",
        "baseline of the inner (adaptation) steps' advantages: linear (Duan et al. 2016's "
        "feature baseline fitted on the task's own episodes), zero (none; what rllab's VPG "
        "predicts in the first step of a fresh baseline), or previous-task (rllab's sampler "
        "before cbfinn/maml_rl's commit fb26875: one baseline shared by the meta-batch's "
        "tasks, predicting before it fits, so task i uses the fit on task i-1's episodes and "
        "task 0 the fit on all episodes of the round before, carried across meta-iterations "
        "and in the checkpoints). Evaluation: linear and previous-task adapt with the "
        "task's own fit (each held-out task adapts alone), zero with none. The outer TRPO "
        "step's baseline is --outer-baseline",
        choices=("linear", "zero", "previous-task"),
    )
    outer_baseline: str = option(
        "linear",
        "baseline of the outer TRPO step's advantages (the validation episodes of the adapted "
        "policies): linear (fitted on each task's own episodes) or previous-task (the shared "
        "predict-then-fit baseline of --inner-baseline previous-task continued through the "
        "validation episodes, as in rllab's MAML; needs --inner-baseline previous-task)",
        choices=("linear", "previous-task"),
    )
    inner_normalize_advantages: bool = option(
        True,
        "normalise the inner steps' advantages to zero mean and unit variance within each task "
        "(rllab's center_adv, as in Finn et al.'s code and pytorch-maml-rl), in meta-training "
        "and in evaluation; off: the step keeps the advantages' scale, so it grows with the "
        "spread of the task's returns (in 2D navigation, with the goal's distance)",
    )
    gamma: float = option(0.99, "discount γ", low=0.0, high=1.0)
    gae_lambda: float = option(1.0, "GAE λ of the advantages (1.0: returns − baseline)", low=0.0,
                               high=1.0)  # fmt: skip
    max_kl: float = option(0.01, "TRPO trust region: max mean KL per outer step", low=0.0,
                           low_open=True)  # fmt: skip
    cg_iters: int = option(10, "conjugate-gradient iterations", low=1)
    cg_damping: float = option(1e-5, "damping added to the KL Hessian in CG", low=0.0)
    cg_subsample: float = option(
        1.0,
        "fraction of each task's episodes used for the KL Hessian-vector products in CG "
        "(TRPO, Schulman et al. 2015, Sec. 6, uses 10%%); 1.0: exact. May change on "
        "--resume (it only approximates the outer step's curvature): e.g. continue a run "
        "made with 0.1 with exact curvature",
        low=0.0,
        high=1.0,
        low_open=True,
        may_change_on_resume=True,
    )
    cg_subsample_unit: str = option(
        "episodes",
        "what --cg-subsample keeps: episodes (the first fraction of every task's episodes, "
        "TRPO's per-sample subsampling; in MAML the inner steps' Hessians inside the "
        "curvature then come from those episodes too) or tasks (every episode of the first "
        "fraction of the meta-batch's tasks). Neither makes the full step's KL max-kl: "
        "benchmarks/maml_curvature.md measures both against exact curvature",
        choices=("episodes", "tasks"),
        may_change_on_resume=True,
    )
    ls_max_steps: int = option(15, "backtracking line-search steps", low=1)
    ls_backtrack_ratio: float = option(
        0.5,
        "line-search shrink factor (pytorch-maml-rl: 0.5; Finn et al.'s rllab code: 0.8); "
        "may change on --resume",
        low=0.0,
        high=1.0,
        low_open=True,
        may_change_on_resume=True,
    )
    hidden_sizes: tuple[int, ...] = option((100, 100), "policy MLP hidden widths", low=1)
    nonlinearity: str = option("relu", "policy nonlinearity", choices=("relu", "tanh"))
    init_std: float = option(1.0, "initial policy standard deviation", low=0.0, low_open=True)
    normalize_actions: bool = option(
        False,
        "the policy acts in [-1, 1], mapped onto the action space's bounds (rllab's normalize "
        "wrapper, which Finn et al.'s released code puts around every env); init-std and the "
        "learning rates then refer to that [-1, 1] scale",
    )
    horizon: int = option(0, "episode length; 0: the env's registered one", low=0)
    backend: str = option(
        "auto",
        "batched env backend: auto (torch on-device if any), torch, numpy, generic, mjx "
        "(MuJoCo families on MJX/JAX, extra 'mjx'), or subprocess (envs in worker processes "
        "with a timeout: a crash or hang becomes an error)",
    )
    num_workers: int = num_workers_option()
    worker_timeout: float = worker_timeout_option()
    sampler: str = option(
        "auto",
        "who steps the envs: auto (--backend), native (the family's host backend: "
        "mujoco.rollout or NumPy), torch (on-device envs), ray (Ray actors stepping the "
        "native backend), mjx (MuJoCo families on MJX on JAX's device, extra 'mjx'); all but "
        "mjx give the same episodes for the same seed (mjx: close, another physics engine)",
        choices=SAMPLERS,
        may_change_on_resume=True,
        command_line_only=True,  # ray connects to a cluster
    )
    ray_workers: int = option(2, "Ray actors for --sampler ray", low=1, may_change_on_resume=True)
    ray_address: str = option(
        "",
        "Ray cluster for --sampler ray ('auto' or host:port); empty: a local Ray instance",
        may_change_on_resume=True,
        command_line_only=True,
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Finn et al. 2017, Sec. 5.3 / App. A.2.
        "nav2d-paper": {"env_id": "metarl/Navigation2D-v0", "num_iterations": 500},
        "halfcheetah-vel-paper": {
            "env_id": "metarl/HalfCheetahVel-v0",
            "meta_batch_size": 40,
            "episodes_per_task": 20,
            "horizon": 200,
        },
        "halfcheetah-dir-paper": {
            "env_id": "metarl/HalfCheetahDir-v0",
            "meta_batch_size": 40,
            "episodes_per_task": 20,
            "horizon": 200,
        },
        "ant-vel-paper": {
            "env_id": "metarl/AntVel-v0",
            "meta_batch_size": 40,
            "episodes_per_task": 20,
            "horizon": 200,
        },
        "ant-dir-paper": {
            "env_id": "metarl/AntDir-v0",
            "meta_batch_size": 40,
            "episodes_per_task": 20,
            "horizon": 200,
        },
        # A few minutes on two CPU cores: the README's first command and the learning test.
        "quick": {
            "env_id": "metarl/Navigation2D-v0",
            "num_iterations": 30,
            "meta_batch_size": 10,
            "episodes_per_task": 10,
            "hidden_sizes": (32, 32),
            "checkpoint_every": 10,
        },
    }

    def env_kwargs(self) -> dict[str, Any]:
        return {"max_episode_steps": self.horizon} if self.horizon else {}

    def validate(self) -> None:
        super().validate()
        if self.learn_inner_lr and self.first_order:
            raise ConfigError(
                "--learn-inner-lr (Meta-SGD) differentiates through the inner step; drop "
                "--first-order, or --learn-inner-lr"
            )
        if self.outer_baseline == "previous-task" and self.inner_baseline != "previous-task":
            raise ConfigError(
                "--outer-baseline previous-task continues the inner steps' shared baseline "
                f"(rllab), but --inner-baseline is {self.inner_baseline}: add --inner-baseline "
                "previous-task, or use --outer-baseline linear"
            )
        if self.sampler != "auto" and self.backend != "auto":
            raise ConfigError(
                f"--sampler {self.sampler} chooses the env backend itself; leave --backend at "
                "auto, or use --sampler auto with --backend"
            )


CONFIG = MAMLTRPOConfig


# -- flat-vector helpers for conjugate gradient ---------------------------------------------
def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def _axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    return {k: y[k] + alpha * x[k] for k in y}


def conjugate_gradient(
    mvp: Callable[[Params], Params],
    b: Params,
    iters: int,
    tol: float = 1e-10,
    *,
    product: dict[str, Tensor] | None = None,
) -> Params:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given by ``mvp`` (Hestenes and
    Stiefel 1952), as in TRPO's reference implementation.

    ``product``: if given, filled with ``A x``. CG builds ``x = Σ α_i p_i`` from the products
    ``A p_i`` it computes anyway, so ``A x = Σ α_i A p_i`` costs no extra product; TRPO's step
    length needs ``xᵀ A x`` (Schulman et al. 2015, Appendix C), which the reference
    implementation gets from one more call of ``mvp``."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    ax = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rr = _dot(r, r)
    for _ in range(iters):
        ap = mvp(p)
        alpha = rr / _dot(p, ap).clamp_min(1e-30)
        x = _axpy(alpha, p, x)
        ax = _axpy(alpha, ap, ax)
        r = _axpy(-alpha, ap, r)
        rr_new = _dot(r, r)
        if rr_new < tol:
            break
        p = _axpy(rr_new / rr, p, r)
        rr = rr_new
    if product is not None:
        product.update(ax)
    return x


# -- the meta-iteration ----------------------------------------------------------------------
#: Steps (rows) per chunk of tasks in the vmapped passes of the outer step on a CPU. The
#: per-task computations are independent, so tasks can go through in chunks, each with its
#: own leaf parameters and graph; a chunk of about this many rows keeps every activation
#: tensor a few MB. On the 2-core CPU one vmap over all 40 HalfCheetahVel tasks (160k rows,
#: 64 MB activations) took 1.5x the time per task of chunks of 1-8 tasks (fresh memory for
#: every large tensor, cache misses); the results are the same. A GPU wants the big batch:
#: there all tasks go at once.
_CHUNK_ROWS = 16384


def _chunks(num_tasks: int, rows_per_task: int, device: torch.device) -> list[slice]:
    if device.type != "cpu":
        return [slice(0, num_tasks)]
    size = max(1, _CHUNK_ROWS // max(1, rows_per_task))
    return [slice(i, min(i + size, num_tasks)) for i in range(0, num_tasks, size)]


def _leaves(params: Mapping[str, Tensor], chunks: list[slice]) -> list[Params]:
    """Each chunk's slice of the per-task parameters as new leaves requiring grad."""
    return [{k: v[c].detach().requires_grad_(True) for k, v in params.items()} for c in chunks]


def _grad_by_chunk(out: Tensor, leaves: list[Params], **kw: Any) -> list[Params]:
    names = list(leaves[0])
    flat = torch.autograd.grad(out, [leaf[k] for leaf in leaves for k in names], **kw)
    return [dict(zip(names, flat[i * len(names) : (i + 1) * len(names)], strict=True))
            for i in range(len(leaves))]  # fmt: skip


def _cat(parts: list[Params]) -> Params:
    """Per-chunk parameters back to one ``(N, ...)`` set."""
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class _TaskData(NamedTuple):
    """A meta-batch's episodes and advantages in the ``(N, T·E, ...)`` layout of
    :func:`metarl.sampler.per_task_rows`, made once per meta-iteration."""

    obs: Tensor
    actions: Tensor
    adv: Tensor
    mask: Tensor

    @classmethod
    def of(cls, episodes: Episodes, adv: Tensor) -> _TaskData:
        n = episodes.num_tasks
        return cls(*(per_task_rows(x, n) for x in (episodes.obs, episodes.actions, adv.detach(),
                                                     episodes.mask)))  # fmt: skip

    def chunks(self) -> list[slice]:
        return _chunks(self.obs.shape[0], self.obs.shape[1], self.obs.device)

    def chunk(self, c: slice) -> _TaskData:
        return _TaskData(*(x[c] for x in self))


class _InnerStep:
    """One inner step ``θ' = θ − α ∇L(θ)`` for every task, keeping what the Jacobian-vector
    products ``J w = w − α H w`` need (the graph of the per-task gradients).

    ``lr`` is the scalar ``α``, or Meta-SGD's per-entry rates (a tensor per parameter, the
    parameter's shape, shared by all tasks): ``θ' = θ − α ∘ ∇L(θ)``. Then the Jacobian has a
    part for ``θ``, ``I − diag(α) H`` (no longer symmetric), and one for ``α``,
    ``−diag(∇L)``: :meth:`jvp_rates` and :meth:`vjp_rates`."""

    def __init__(
        self,
        policy: Policy,
        start: Params,
        episodes: Episodes,
        adv: Tensor,
        lr: float | Mapping[str, Tensor],
        keep_graph: bool,
        data: _TaskData | None = None,
    ) -> None:
        self.episodes, self.adv, self.start = episodes, adv.detach(), start
        self.data = _TaskData.of(episodes, adv) if data is None else data
        self.num_env_steps = episodes.num_steps()
        # Per-task leaves (N, ...), by chunk of tasks: the gradient of the summed loss is
        # every task's gradient.
        self.chunks = self.data.chunks()
        self.leaves = _leaves(start, self.chunks)

        def task_loss(p: Params, o: Tensor, ac: Tensor, aa: Tensor, mm: Tensor) -> Tensor:
            logp = policy.log_prob(tuple(forward(policy, p, o)), ac)
            return -(logp * aa * mm).sum() / mm.sum().clamp_min(1.0)

        loss = sum(vmap(task_loss)(leaf, *self.data.chunk(c)).sum()
                   for leaf, c in zip(self.leaves, self.chunks, strict=True))  # fmt: skip
        self.grads = _grad_by_chunk(loss, self.leaves, create_graph=keep_graph)  # type: ignore[arg-type]
        self.lr = lr
        self.adapted = _cat([{k: v.detach() for k, v in gradient_step(leaf, g, lr).items()}
                             for leaf, g in zip(self.leaves, self.grads, strict=True)])  # fmt: skip

    def _hvp(self, w: Params) -> Params:
        """``H w`` per task (``w`` has the leading task dimension)."""
        dot = sum(_dot(g, {k: v[c] for k, v in w.items()})
                  for g, c in zip(self.grads, self.chunks, strict=True))  # fmt: skip
        return _cat(_grad_by_chunk(dot, self.leaves, retain_graph=True))  # type: ignore[arg-type]

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
        return _cat([{k: v.detach() for k, v in g.items()} for g in self.grads])

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


def _subsample(
    episodes: Episodes, adv: Tensor, fraction: float, unit: str = "episodes"
) -> tuple[Episodes, Tensor]:
    """The curvature's subsample (and its advantages): the first ``ceil(fraction × E)``
    episodes of every task, or with ``unit="tasks"`` every episode of the first
    ``ceil(fraction × N)`` tasks."""
    n, e = episodes.num_tasks, episodes.episodes_per_task
    by_task = unit == "tasks"
    k = max(1, math.ceil(fraction * (n if by_task else e)))
    if k >= (n if by_task else e):
        return episodes, adv

    def cut(x: Tensor) -> Tensor:
        t, rest = x.shape[0], x.shape[2:]
        per = x.reshape(t, n, e, *rest)  # task-major rows
        return (per[:, :k] if by_task else per[:, :, :k]).reshape(t, -1, *rest)

    sub = Episodes(cut(episodes.obs), cut(episodes.actions), cut(episodes.rewards),
                   cut(episodes.mask), k if by_task else n)  # fmt: skip
    return sub, cut(adv)


def _expand(params: Mapping[str, Tensor], n: int) -> Params:
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


_Old = tuple[Tensor, tuple[Tensor, ...]]


def _outer_terms(
    policy: Policy, adapted: list[Params], data: _TaskData, old: list[_Old] | None = None
) -> tuple[Tensor, Tensor, list[_Old]]:
    """Mean over tasks of the TRPO surrogate loss (to minimise) and of the KL, both
    functions of the per-task parameters ``adapted`` (one ``(N_c, ...)`` set per chunk of
    ``data.chunks()``), and ``old``: each chunk's log-probabilities and distributions of
    ``π_old``. ``old=None``: ``adapted`` are the current parameters, so ``π_old`` is this
    forward pass itself, detached (one forward pass, not a second no-grad one on the same
    parameters)."""

    def task_dist(p: Params, o: Tensor) -> tuple[Tensor, ...]:
        return tuple(forward(policy, p, o))

    surrogates, kls, olds = [], [], []
    for i, c in enumerate(data.chunks()):
        d = data.chunk(c)
        dist = vmap(task_dist)(adapted[i], d.obs)
        logp = policy.log_prob(dist, d.actions)
        o = (logp.detach(), tuple(x.detach() for x in dist)) if old is None else old[i]
        old_logp, old_dist = o
        count = d.mask.sum(1).clamp_min(1.0)
        ratio = torch.exp(logp - old_logp)
        surrogates.append((ratio * d.adv * d.mask).sum(1) / count)
        kls.append((policy.kl(old_dist, dist) * d.mask).sum(1) / count)
        olds.append(o)
    return -torch.cat(surrogates).mean(), torch.cat(kls).mean(), olds


def _inner_advantages(
    episodes: Episodes, cfg: MAMLTRPOConfig, shared: PreviousTaskBaseline | None = None
) -> Tensor:
    """The inner (adaptation) step's advantages, in meta-training and in evaluation.

    ``shared``: with ``inner_baseline="previous-task"`` in meta-training, the meta-batch's
    shared baseline (:class:`metarl.returns.PreviousTaskBaseline`; its carried fit is used
    and updated). Evaluation passes none: each held-out task adapts alone, as in Finn et
    al.'s test scripts (a fresh baseline per goal), so the task's own fit (``linear``)."""
    if cfg.inner_baseline == "previous-task":
        baseline: LinearFeatureBaseline | ZeroBaseline = (
            shared if shared is not None else LinearFeatureBaseline()
        )
    else:
        baseline = BASELINES[cfg.inner_baseline]()
    return advantages(episodes, cfg.gamma, cfg.gae_lambda, baseline,
                      normalize=cfg.inner_normalize_advantages)  # fmt: skip


def _outer_advantages(
    valid: Episodes, cfg: MAMLTRPOConfig, shared: PreviousTaskBaseline | None
) -> Tensor:
    """The outer TRPO step's advantages on the validation episodes. With a shared
    previous-task baseline, the validation round goes through it whatever
    ``outer_baseline`` says (rllab's one baseline object processes every round, so the next
    meta-iteration's first task gets the fit on these episodes); its predictions are the
    advantages' baseline only with ``outer_baseline="previous-task"``."""
    if shared is None:
        return advantages(valid, cfg.gamma, cfg.gae_lambda)
    if cfg.outer_baseline == "previous-task":
        return advantages(valid, cfg.gamma, cfg.gae_lambda, shared)
    returns = discounted_returns(valid.rewards, valid.mask, cfg.gamma)
    shared.fit_predict(valid.obs, returns, valid.mask, valid.num_tasks)
    return advantages(valid, cfg.gamma, cfg.gae_lambda)


def _baseline_features(policy: Policy) -> int:
    """Feature length of the linear baseline for ``policy``'s observations (integer
    observations, one-hot in the policy, are one number to the baseline)."""
    obs_size = 1 if getattr(policy, "discrete_obs", False) else int(policy.obs_dim)  # type: ignore[arg-type]
    return LinearFeatureBaseline.num_features(obs_size)


def shared_baseline(policy: Policy, cfg: MAMLTRPOConfig) -> PreviousTaskBaseline | None:
    """A fresh shared baseline (zero coefficients, on the policy's device) when
    ``cfg.inner_baseline`` is ``previous-task``, else None; what :func:`meta_step` needs."""
    if cfg.inner_baseline != "previous-task":
        return None
    device = next(policy.parameters()).device
    n = _baseline_features(policy)
    return PreviousTaskBaseline(n, coeffs=torch.zeros(n, device=device))


#: Prefix of the Meta-SGD rates' entries in the outer step's vectors on ``(θ, α)``: the
#: gradient, the CG direction and the step hold ``θ``'s names and ``"α:" + name``.
_RATE = "α:"


def initial_inner_lrs(policy: Policy, inner_lr: float) -> Params:
    """Meta-SGD's rates at the start (Li et al. 2017): ``inner_lr`` for every entry of every
    parameter of ``policy``."""
    return {k: torch.full_like(p.detach(), inner_lr) for k, p in policy.named_parameters()}


def _back_to_theta(
    w: Params, through: list[_InnerStep], first_order: bool, rates: Params | None = None
) -> Params:
    """``Σ_i J_iᵀ w_i``: through the inner steps, last to first, then sum over tasks.
    With Meta-SGD rates, on ``(θ, α)``: ``α`` gets ``Σ_k Σ_i −∇L_i^k ∘ w_i^k`` (``w^k``
    the cotangent of the output of inner step ``k``), as the same ``α`` acts in every
    step."""
    if rates is not None:
        on_rates = {k: torch.zeros_like(v) for k, v in rates.items()}
        for step in reversed(through):
            w, w_rates = step.vjp_rates(w)
            on_rates = {k: on_rates[k] + w_rates[k].sum(0) for k in on_rates}
        out = {k: v.sum(0) for k, v in w.items()}
        out.update({_RATE + k: v for k, v in on_rates.items()})
        return out
    if not first_order:
        for step in reversed(through):
            w = step.jvp(w)  # J is symmetric
    return {k: v.sum(0) for k, v in w.items()}


def kl_hessian_product(
    policy: Policy,
    steps: list[_InnerStep],
    valid: Episodes,
    valid_adv: Tensor,
    adapted: Params,
    cfg: MAMLTRPOConfig,
    exact: tuple[Tensor, list[Params], list[slice]] | None = None,
    rates: Params | None = None,
) -> Callable[[Params], Params]:
    """``v ↦ (∇²KL + λI) v`` at the current ``θ``, the curvature TRPO's conjugate gradient
    uses: ``KL = mean_i KL(π_old || π_θ'_i(θ))`` on the validation episodes, through the inner
    steps (``Σ_i J_i F_i J_i``, see the module doc), on all the data or, with
    ``cfg.cg_subsample < 1``, on the subsample ``cfg.cg_subsample_unit`` says.

    ``steps``: the meta-iteration's inner steps (built with ``keep_graph`` unless first
    order); ``adapted``: the last step's per-task parameters; ``exact``: the mean KL on all
    the validation episodes with its per-chunk leaves and chunks, when the caller has them
    (saves a forward pass; used only when nothing is subsampled); ``rates``: Meta-SGD's
    per-entry inner rates, when they are meta-learned too: the product is then on
    ``(θ, α)`` (``α``'s entries named ``"α:" + name``)."""
    lr: float | Params = cfg.inner_lr if rates is None else rates
    curv_steps, curv_tasks = steps, valid.num_tasks
    if cfg.cg_subsample < 1.0:

        def cut(eps: Episodes, adv: Tensor) -> tuple[Episodes, Tensor]:
            return _subsample(eps, adv, cfg.cg_subsample, cfg.cg_subsample_unit)

        valid, valid_adv = cut(valid, valid_adv)
        curv_tasks = valid.num_tasks  # the first ones; _leaves below slices them
        if not cfg.first_order:
            curv_steps = []
            for step in steps:
                eps_c, adv_c = cut(step.episodes, step.adv)
                curv_steps.append(_InnerStep(policy, step.start, eps_c, adv_c, lr, True))
        exact = None
    if exact is None:
        data = _TaskData.of(valid, valid_adv)
        kl_chunks = data.chunks()
        kl_leaves = _leaves(adapted, kl_chunks)
        _, kl, _ = _outer_terms(policy, kl_leaves, data)
    else:
        kl, kl_leaves, kl_chunks = exact
    kl_grad = _grad_by_chunk(kl, kl_leaves, create_graph=True)

    def fisher(u: Params) -> Params:
        gu = sum(torch.stack([(g[k] * u[k][c]).sum() for k in g]).sum()
                 for g, c in zip(kl_grad, kl_chunks, strict=True))  # fmt: skip
        return _cat(_grad_by_chunk(gu, kl_leaves, retain_graph=True))  # type: ignore[arg-type]

    def kl_hvp(v: Params) -> Params:
        if rates is not None:  # v on (θ, α): forward through every step with the same α part
            w = _expand({k: v[k] for k in rates}, curv_tasks)
            v_rates = {k: v[_RATE + k] for k in rates}
            for step in curv_steps:
                w = step.jvp_rates(w, v_rates)
            hv = _back_to_theta(fisher(w), curv_steps, cfg.first_order, rates)
            return _axpy(cfg.cg_damping, v, hv)
        w = _expand(v, curv_tasks)
        if not cfg.first_order:
            for step in curv_steps:
                w = step.jvp(w)
        hv = _back_to_theta(fisher(w), curv_steps, cfg.first_order)
        return _axpy(cfg.cg_damping, v, hv)

    return kl_hvp


def meta_step(
    policy: Policy,
    sampler: BatchedSampler,
    tasks: list[Any],
    seed: int,
    cfg: MAMLTRPOConfig,
    inner_lrs: dict[str, Tensor] | None = None,
    baseline: PreviousTaskBaseline | None = None,
) -> dict[str, float]:
    """One meta-iteration on ``tasks`` (updates ``policy`` in place); returns its statistics.

    ``baseline``: with ``cfg.inner_baseline="previous-task"``, the shared baseline carried
    from the previous meta-iteration (:func:`shared_baseline` makes a fresh one); its
    coefficients are updated in place.

    ``inner_lrs``: with ``cfg.learn_inner_lr`` (Meta-SGD), the per-entry inner rates ``α``
    (one tensor per parameter, its shape); TRPO steps ``(θ, α)`` together and updates them
    in place. Its trust region is the same mean KL of the adapted policies, now a function
    of ``(θ, α)``; its Hessian is ``Σ_i J_iᵀ F_i J_i`` with ``J_i`` the Jacobian of the
    adapted parameters in ``(θ, α)`` (see :class:`_InnerStep`).
    """
    if cfg.learn_inner_lr != (inner_lrs is not None):
        raise ValueError(
            "meta_step needs inner_lrs (the Meta-SGD rates) exactly when cfg.learn_inner_lr "
            f"is set; learn_inner_lr={cfg.learn_inner_lr}, inner_lrs "
            f"{'given' if inner_lrs is not None else 'None'}"
        )
    if (cfg.inner_baseline == "previous-task") != (baseline is not None):
        raise ValueError(
            "meta_step needs baseline (the shared previous-task baseline, see "
            "shared_baseline) exactly when cfg.inner_baseline is previous-task; "
            f"inner_baseline={cfg.inner_baseline}, baseline "
            f"{'given' if baseline is not None else 'None'}"
        )
    n = len(tasks)
    theta = {k: p.detach() for k, p in policy.named_parameters()}
    rates = None if inner_lrs is None else {k: v.detach().clone() for k, v in inner_lrs.items()}
    if rates is not None:
        if set(rates) != set(theta) or any(rates[k].shape != theta[k].shape for k in theta):
            raise ValueError("inner_lrs needs one tensor per policy parameter, of its shape")
        check_finite("Meta-SGD inner rates α", rates,
                     hint="restart from an earlier checkpoint with a lower --max-kl")  # fmt: skip
    lr: float | Params = cfg.inner_lr if rates is None else rates
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
        adv = _inner_advantages(eps, cfg, baseline)
        start = current if per_task_params else _expand(current, n)
        step = _InnerStep(policy, start, eps, adv, lr, keep_graph=not cfg.first_order)
        steps.append(step)
        current, per_task_params = step.adapted, True
        sample_s += ta - ts
        adapt_s += time.perf_counter() - ta
    ts = time.perf_counter()
    valid = sampler.collect(policy, current, tasks, seed=seed + 1000, per_task_params=True)
    sample_s += time.perf_counter() - ts
    to = time.perf_counter()
    valid_adv = _outer_advantages(valid, cfg, baseline)
    valid_data = _TaskData.of(valid, valid_adv)

    # 4. TRPO. The surrogate and the KL as functions of the last adapted parameters.
    leaves = _leaves(current, valid_data.chunks())
    surrogate, kl, old = _outer_terms(policy, leaves, valid_data)
    g_out = _cat(_grad_by_chunk(surrogate, leaves, retain_graph=True))
    kl_hvp = kl_hessian_product(policy, steps, valid, valid_adv, current, cfg,
                                exact=(kl, leaves, valid_data.chunks()), rates=rates)  # fmt: skip
    grad = _back_to_theta(g_out, steps, cfg.first_order, rates)
    hint = "lower --inner-lr or --max-kl, or check the env's rewards"
    check_finite("MAML-TRPO surrogate loss", surrogate, hint=hint)
    check_finite("meta-gradient", grad, hint=hint)
    h_direction: dict[str, Tensor] = {}
    direction = conjugate_gradient(kl_hvp, grad, cfg.cg_iters, product=h_direction)
    shs = 0.5 * _dot(direction, h_direction)
    lagrange = torch.sqrt(shs.clamp_min(1e-20) / cfg.max_kl)
    full_step = {k: v / lagrange for k, v in direction.items()}
    check_finite("TRPO step (conjugate-gradient direction)", full_step,
                 hint="raise --cg-damping or lower --max-kl")  # fmt: skip
    old_loss = surrogate.item()

    # Backtracking line search: re-adapt from the candidate θ and check the surrogate and KL.
    def evaluate_candidate(
        candidate: Params, candidate_lr: float | Params = cfg.inner_lr
    ) -> tuple[float, float]:
        cur, per = candidate, False
        for step in steps:
            start = cur if per else _expand(cur, n)
            cur = _InnerStep(
                policy, start, step.episodes, step.adv, candidate_lr, False, data=step.data
            ).adapted
            per = True
        with torch.no_grad():
            per_chunk = [{k: v[c] for k, v in cur.items()} for c in valid_data.chunks()]
            s, d, _ = _outer_terms(policy, per_chunk, valid_data, old)
        return s.item(), d.item()

    accepted, ratio, new_loss, new_kl = False, 1.0, old_loss, 0.0
    for _ in range(cfg.ls_max_steps):
        candidate = {k: theta[k] - ratio * full_step[k] for k in theta}
        if rates is not None:
            candidate_rates = {k: rates[k] - ratio * full_step[_RATE + k] for k in rates}
            new_loss, new_kl = evaluate_candidate(candidate, candidate_rates)
        else:
            new_loss, new_kl = evaluate_candidate(candidate)
        if new_loss < old_loss and new_kl <= cfg.max_kl and math.isfinite(new_loss):
            load_params(policy, candidate)
            if inner_lrs is not None:
                with torch.no_grad():
                    for name, v in inner_lrs.items():
                        v.copy_(candidate_rates[name])
            accepted = True
            break
        ratio *= cfg.ls_backtrack_ratio
    outer_s = time.perf_counter() - to
    total = time.perf_counter() - t0
    env_steps = sum(s.num_env_steps for s in steps) + valid.num_steps()
    stats = {
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
    if inner_lrs is not None:
        stats.update(inner_lr_summary(inner_lrs))
    return stats


def inner_lr_summary(rates: Mapping[str, Tensor]) -> dict[str, float]:
    """Mean, min, max of Meta-SGD's rates over all entries, and the share of entries ≤ 0."""
    flat = torch.cat([v.detach().flatten() for v in rates.values()])
    return {
        "inner_lr_mean": flat.mean().item(),
        "inner_lr_min": flat.min().item(),
        "inner_lr_max": flat.max().item(),
        "inner_lr_nonpositive": (flat <= 0).double().mean().item(),
    }


# -- training, checkpoints, evaluation -----------------------------------------------------
def _build(cfg: MAMLTRPOConfig, device: torch.device) -> tuple[Policy, BatchedSampler]:
    sampler = make_sampler(
        cfg.env_id,
        cfg.meta_batch_size,
        cfg.episodes_per_task,
        sampler=cfg.sampler,
        backend=cfg.backend,
        device=device,
        env_kwargs=cfg.env_kwargs(),
        num_workers=cfg.num_workers,
        worker_timeout=cfg.worker_timeout,
        ray_workers=cfg.ray_workers,
        ray_address=cfg.ray_address,
    )
    policy = make_policy(
        sampler.observation_space,
        sampler.action_space,
        cfg.hidden_sizes,
        cfg.nonlinearity,
        cfg.init_std,
        normalize_actions=cfg.normalize_actions,
    ).to(device)
    return policy, sampler


def train(
    cfg: MAMLTRPOConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Meta-train MAML-TRPO; the run directory gets config.json, metrics.csv and checkpoints.

    With ``cfg.learn_inner_lr`` the checkpoints also hold the Meta-SGD rates (``state
    ["inner_lr"]``, parameter name → tensor), with ``cfg.inner_baseline="previous-task"``
    the shared baseline's carried fit (``state["baseline"]["coeffs"]``); both are restored
    exactly on resume.

    Args:
        resume: continue ``run_dir`` from its last checkpoint (exactly, on the CPU).
        overwrite: delete ``run_dir`` first if it exists.
        log: where one-line progress messages go (e.g. ``print``); None: silent.
    """
    rates: Params = {}  # the Meta-SGD rates, made from the policy's shapes once it is built
    shared: list[PreviousTaskBaseline] = []  # the previous-task baseline, likewise

    def learned(policy: Policy) -> dict[str, Params]:
        state: dict[str, Params] = {}
        if cfg.learn_inner_lr:
            rates.update(initial_inner_lrs(policy, cfg.inner_lr))
            state["inner_lr"] = rates
        baseline = shared_baseline(policy, cfg)
        if baseline is not None:  # its carried fit goes into every checkpoint
            shared.append(baseline)
            state["baseline"] = {"coeffs": baseline.coeffs}
        return state

    def step(policy: Policy, sampler: BatchedSampler, tasks: list[Any], seed: int, it: int
             ) -> dict[str, float]:  # fmt: skip
        return meta_step(policy, sampler, tasks, seed, cfg,
                         inner_lrs=rates if cfg.learn_inner_lr else None,
                         baseline=shared[0] if shared else None)  # fmt: skip

    carries = cfg.learn_inner_lr or cfg.inner_baseline == "previous-task"
    return meta_train(cfg, run_dir, AGENT, _build, step, outer_step="TRPO step", resume=resume,
                      overwrite=overwrite, log=log,
                      extra_state=learned if carries else None)  # fmt: skip


def load_policy(
    run_dir: str | Path,
    device: str = "cpu",
    loaded: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Policy, Params, MAMLTRPOConfig]:
    """The meta-trained policy of a run (its last checkpoint) and the run's config.

    ``extra``: if given, receives the checkpoint's other state (``"inner_lr"``: the learned
    Meta-SGD rates of a ``learn_inner_lr`` run; see :func:`load_inner_lrs`)."""
    return load_run_policy(run_dir, AGENT, MAMLTRPOConfig, device, loaded=loaded, extra=extra)


def load_inner_lrs(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, MAMLTRPOConfig, Params | None]:
    """:func:`load_policy` plus the run's learned Meta-SGD rates (None unless the run was
    trained with ``learn_inner_lr``), checked against the policy's parameters."""
    extra: dict[str, Any] = {}
    policy, params, cfg = load_policy(run_dir, device, loaded, extra)
    return policy, params, cfg, _checked_rates(extra, params, cfg, run_dir)


def _checked_rates(
    extra: Mapping[str, Any], params: Params, cfg: MAMLTRPOConfig, run_dir: str | Path
) -> Params | None:
    if not cfg.learn_inner_lr:
        return None
    rates = extra.get("inner_lr")
    if not isinstance(rates, Mapping):
        raise ValueError(
            f"{run_dir} was trained with learn_inner_lr but its checkpoint holds no learned "
            "rates ('inner_lr'); it was written by another metarl: evaluate another checkpoint"
        )
    if set(rates) != set(params) or any(rates[k].shape != params[k].shape for k in params):
        raise ValueError(f"{run_dir}: the learned rates do not match the policy's parameters")
    check_finite(f"learned inner rates of {run_dir}", dict(rates))
    return dict(rates)


def inner_step_fn(
    policy: Policy, cfg: MAMLTRPOConfig, inner_lrs: Mapping[str, Tensor] | None = None
) -> Callable[[Mapping[str, Tensor], Episodes, float, bool], Params]:
    """The agent's inner step as the evaluation protocol wants it.

    ``inner_lrs``: Meta-SGD's learned rates; the step is then ``θ − lr · α ∘ ∇L`` (``lr`` a
    multiplier of the learned ``α``, 1 in :func:`evaluate`)."""

    def step(params: Mapping[str, Tensor], eps: Episodes, lr: float, per_task: bool) -> Params:
        adv = _inner_advantages(eps, cfg)
        rate: float | Params = lr
        if inner_lrs is not None:
            rate = {k: lr * v for k, v in inner_lrs.items()}
        return adapt_policy(policy, params, eps, adv, lr=rate, first_order=True,
                            per_task_params=per_task)  # fmt: skip

    return step


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    num_steps: int = 3,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes_per_step: int | None = None,
    device: str = "cpu",
    max_tasks: int | None = None,
    lrs: Sequence[float] | None = None,
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation (see :func:`metarl.evaluation.evaluate_policy_adaptation`);
    writes ``eval_<split>.json`` and ``eval_<split>.png`` into the run directory.

    Inner steps use ``inner_lr`` then ``inner_lr / 2`` (Finn et al. 2017); a run trained with
    ``learn_inner_lr`` adapts with its learned per-entry rates ``α`` at every step instead
    (Li et al. 2017), recorded in the JSON's ``meta.inner_lr``. ``lrs``: other rates for
    steps 1, 2, … (the last repeats), e.g. ``(0.5, 0.25)`` for Finn et al.'s released test
    script; for a Meta-SGD run they multiply ``α``."""
    loaded: dict[str, Any] = {}
    policy, params, cfg, rates = load_inner_lrs(run_dir, device, loaded)
    if lrs is None:
        lrs = (cfg.inner_lr, cfg.inner_lr / 2) if rates is None else (1.0,)
    curve = evaluate_policy_adaptation(
        policy,
        params,
        cfg.env_id,
        inner_step_fn(policy, cfg, rates),
        agent=AGENT,
        split=split,
        num_steps=num_steps,
        lrs=lrs,
        episodes_per_step=episodes_per_step,
        seeds=seeds,
        device=device,
        backend=cfg.backend,
        env_kwargs=cfg.env_kwargs(),
        max_tasks=max_tasks,
        num_workers=cfg.num_workers,
        worker_timeout=cfg.worker_timeout,
    )
    curve.meta["config"] = cfg.to_dict()
    curve.meta["run_dir"] = str(run_dir)
    curve.meta.update(loaded)  # the evaluated checkpoint's iteration
    if rates is not None:
        curve.meta["inner_lr"] = {
            "learned": True,
            "protocol": "Meta-SGD (Li et al. 2017): every inner step uses the learned "
            "per-entry rates α (lrs are multipliers of α; 1 at every step by default)",
            **inner_lr_summary(rates),
        }
    return save_run_curve(curve, run_dir, split)
