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
Hessian-vector products and one product with ``F_i`` per CG iteration. ``F_i`` is taken in
Gauss–Newton form, ``J_netᵀ M J_net`` with ``M`` the Fisher in the network's outputs in
closed form (TRPO's App. C.1). With ``curvature="structured"`` (the default) all three are
batched matmuls on activations cached once per meta-iteration (Pearlmutter's R-passes,
:mod:`metarl.adaptation.curvature`; the project's MLP policies); ``"gauss-newton"`` does the
same by autograd (each product a backward pass for all tasks at once), ``"exact"`` by double
backward through the KL: the same matrix, to round-off. ``first_order=True`` (FOMAML) sets
``J_i = I``.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from metarl.adaptation.curvature import MLPStructure, StructuredCurvature, structured_curvature
from metarl.adaptation.meta_training import meta_train
from metarl.adaptation.policy_gradient import (
    InnerStep,
    TaskData,
    advantages,
    cat_chunks,
    chunk_leaves,
    expand_tasks,
    grad_by_chunk,
)
from metarl.agent import Capabilities
from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    evaluate_run_policy,
)
from metarl.learning.functional import Params, forward, load_params
from metarl.learning.policies import Policy, make_policy
from metarl.learning.returns import (
    BASELINES,
    LinearFeatureBaseline,
    PreviousTaskBaseline,
    ZeroBaseline,
    discounted_returns,
)
from metarl.learning.trpo import axpy, line_search, trust_region_step
from metarl.numerics import check_finite
from metarl.runs import Run, load_run_policy
from metarl.runs.config import (
    ConfigError,
    EnvOptions,
    PolicyOptions,
    ReturnOptions,
    RunConfig,
    option,
)
from metarl.sampling import SAMPLERS, make_sampler
from metarl.sampling.native import BatchedSampler, Episodes

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CAPABILITIES",
    "CONFIG",
    "MAMLTRPOConfig",
    "build",
    "evaluate",
    "initial_inner_lrs",
    "inner_lr_summary",
    "load_inner_lrs",
    "load_policy",
    "meta_step",
    "shared_baseline",
    "train",
    "trained_policy",
]

AGENT = "maml-trpo"


@dataclass
class MAMLTRPOConfig(PolicyOptions, ReturnOptions, EnvOptions, RunConfig):
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
    max_kl: float = option(0.01, "TRPO trust region: max mean KL per outer step", low=0.0,
                           low_open=True)  # fmt: skip
    cg_iters: int = option(10, "conjugate-gradient iterations", low=1)
    cg_damping: float = option(1e-5, "damping added to the KL Hessian in CG", low=0.0)
    curvature: str = option(
        "structured",
        "how CG's KL Hessian-vector products are computed: structured (for the project's MLP "
        "policies: Pearlmutter's R-forward/R-backward passes for the inner steps' Hessians and "
        "the Gauss–Newton Fisher in closed form, as batched matmuls on activations cached once "
        "per meta-iteration, no autograd graph; another policy class falls back to "
        "gauss-newton), gauss-newton (the same Jᵀ M J by autograd: two first-order backward "
        "passes through the network, double backward through the inner gradients) or exact "
        "(double backward through the KL's gradient, the reference). All three are the same "
        "matrix, as the KL's gradient is zero at the current parameters: the choice changes "
        "numbers only at round-off level (which conjugate gradient amplifies in float32, so "
        "two runs drift apart as after any reordering of sums), and may change on --resume; "
        "speeds in benchmarks/maml_curvature_speed.md",
        choices=("structured", "gauss-newton", "exact"),
        may_change_on_resume=True,
    )
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
    normalize_actions: bool = option(
        False,
        "the policy acts in [-1, 1], mapped onto the action space's bounds (rllab's normalize "
        "wrapper, which Finn et al.'s released code puts around every env); init-std and the "
        "learning rates then refer to that [-1, 1] scale",
    )
    backend: str = option(
        "auto",
        "batched env backend: auto (torch on-device if any), torch, numpy, generic, mjx "
        "(MuJoCo families on MJX/JAX, extra 'mjx'), or subprocess (envs in worker processes "
        "with a timeout: a crash or hang becomes an error)",
    )
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
CAPABILITIES = Capabilities(adapts_by="gradient steps")


# -- the meta-iteration ----------------------------------------------------------------------
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


_Old = tuple[Tensor, tuple[Tensor, ...]]


def _outer_terms(
    policy: Policy, adapted: list[Params], data: TaskData, old: list[_Old] | None = None
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
    shared baseline (:class:`metarl.learning.returns.PreviousTaskBaseline`; its carried fit is used
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
    w: Params, through: list[InnerStep], first_order: bool, rates: Params | None = None
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


def _fisher_product(policy: Policy, adapted: Params, data: TaskData) -> Callable[[Params], Params]:
    """``u ↦ F u`` per task, ``F`` the Hessian of the mean KL in the adapted parameters
    (``u`` and the result have the leading task dimension) in Gauss–Newton form
    ``J_netᵀ M J_net``: ``J_net`` the Jacobian of the distribution's parameters in the network's
    parameters, ``M`` the Fisher in those outputs (:meth:`Policy.fisher_diagonal`), weighted
    per row by the mean KL's mask and counts. Equal to the KL's Hessian at ``new = old``, where
    the KL's gradient vanishes (Schulman et al. 2015, App. C.1; Martens 2020, "New insights
    and perspectives on the natural gradient method", Sec. 9). A product is two backward
    passes through graphs kept from one forward pass (``J_net u`` by double backward,
    ``J_netᵀ`` by backward)."""
    n = data.obs.shape[0]

    def task_dist(p: Params, o: Tensor) -> tuple[Tensor, ...]:
        return tuple(forward(policy, p, o))

    parts = []
    for c in data.chunks():
        d = data.chunk(c)
        leaves = {k: v[c].detach().requires_grad_(True) for k, v in adapted.items()}
        dist = vmap(task_dist)(leaves, d.obs)
        # The mean KL's weight of each row: its task's mask over its count, over the tasks
        # (in the policy's dtype: the sampler's float32 mask would round 1/count in a
        # float64 policy).
        mask = d.mask.to(dist[0].dtype)
        w = (mask / mask.sum(1, keepdim=True).clamp_min(1.0) / n).unsqueeze(-1)
        m = tuple((f * w).detach() for f in policy.fisher_diagonal(dist))
        # J_net u by the double-backward trick: the VJP y ↦ J_netᵀ y is linear in y, so
        # the gradient of ⟨J_netᵀ y, u⟩ in y is J_net u; its graph is built once and reused
        # by every product (one backward pass each, no second forward pass).
        y = tuple(torch.zeros_like(x, requires_grad=True) for x in dist)
        jt_y = torch.autograd.grad(dist, list(leaves.values()), y, create_graph=True)
        parts.append((c, leaves, dist, m, y, jt_y))

    def product(u: Params) -> Params:
        out = []
        for c, leaves, dist, m, y, jt_y in parts:
            names = list(leaves)
            jv = torch.autograd.grad(jt_y, y, [u[k][c] for k in names], retain_graph=True)
            cot = tuple(mi * ji for mi, ji in zip(m, jv, strict=True))
            g = torch.autograd.grad(dist, [leaves[k] for k in names], cot, retain_graph=True)
            out.append(dict(zip(names, g, strict=True)))
        return cat_chunks(out)

    return product


def _kl_double_backward(
    policy: Policy,
    adapted: Params,
    valid: Episodes,
    valid_adv: Tensor,
    exact: tuple[Tensor, list[Params], list[slice]] | None,
) -> Callable[[Params], Params]:
    """``u ↦ F u`` per task by double backward through the mean KL's gradient (the
    ``exact`` curvature; the reference of :func:`_fisher_product`)."""
    if exact is None:
        data = TaskData.of(valid, valid_adv)
        kl_chunks = data.chunks()
        kl_leaves = chunk_leaves(adapted, kl_chunks)
        _, kl, _ = _outer_terms(policy, kl_leaves, data)
    else:
        kl, kl_leaves, kl_chunks = exact
    kl_grad = grad_by_chunk(kl, kl_leaves, create_graph=True)

    def fisher(u: Params) -> Params:
        gu = sum(torch.stack([(g[k] * u[k][c]).sum() for k in g]).sum()
                 for g, c in zip(kl_grad, kl_chunks, strict=True))  # fmt: skip
        return cat_chunks(grad_by_chunk(gu, kl_leaves, retain_graph=True))  # type: ignore[arg-type]

    return fisher


def kl_hessian_product(
    policy: Policy,
    steps: list[InnerStep],
    valid: Episodes,
    valid_adv: Tensor,
    adapted: Params,
    cfg: MAMLTRPOConfig,
    exact: tuple[Tensor, list[Params], list[slice]] | None = None,
    rates: Params | None = None,
    structured: StructuredCurvature | None = None,
) -> Callable[[Params], Params]:
    """``v ↦ (∇²KL + λI) v`` at the current ``θ``, the curvature TRPO's conjugate gradient
    uses: ``KL = mean_i KL(π_old || π_θ'_i(θ))`` on the validation episodes, through the inner
    steps (``Σ_i J_i F_i J_i``, see the module doc), on all the data or, with
    ``cfg.cg_subsample < 1``, on the subsample ``cfg.cg_subsample_unit`` says.

    ``steps``: the meta-iteration's inner steps (built with ``keep_graph`` unless first
    order or the curvature is ``structured``); ``adapted``: the last step's per-task
    parameters; ``exact``: the mean KL on all the validation episodes with its per-chunk
    leaves and chunks, when the caller has them (saves a forward pass; used only when nothing
    is subsampled); ``rates``: Meta-SGD's per-entry inner rates, when they are meta-learned
    too: the product is then on ``(θ, α)`` (``α``'s entries named ``"α:" + name``);
    ``structured``: the structured products on all the data, when the caller has them
    (used only when nothing is subsampled)."""
    lr: float | Params = cfg.inner_lr if rates is None else rates
    curvature = cfg.curvature
    if curvature == "structured" and MLPStructure.of(policy) is None:
        curvature = "gauss-newton"  # a policy class the structured products do not know
    curv_steps, curv_tasks = steps, valid.num_tasks
    curv_data = [(step.start, step.data) for step in steps]
    if cfg.cg_subsample < 1.0:

        def cut(eps: Episodes, adv: Tensor) -> tuple[Episodes, Tensor]:
            return _subsample(eps, adv, cfg.cg_subsample, cfg.cg_subsample_unit)

        valid, valid_adv = cut(valid, valid_adv)
        curv_tasks = valid.num_tasks  # the first ones; _leaves below slices them
        curv_data = [(step.start, TaskData.of(*cut(step.episodes, step.adv))) for step in steps]
        if not cfg.first_order and curvature != "structured":
            curv_steps = []
            for step in steps:
                eps_c, adv_c = cut(step.episodes, step.adv)
                curv_steps.append(InnerStep(policy, step.start, eps_c, adv_c, lr, True))
        exact, structured = None, None
    if curvature == "structured":
        sc = structured or structured_curvature(policy, curv_data, TaskData.of(valid, valid_adv),
                                                adapted, lr, cfg.first_order, _RATE)  # fmt: skip
        assert sc is not None

        def structured_hvp(v: Params) -> Params:
            return axpy(cfg.cg_damping, v, sc.product(v))

        return structured_hvp
    if curvature == "gauss-newton":
        fisher = _fisher_product(policy, adapted, TaskData.of(valid, valid_adv))
    else:
        fisher = _kl_double_backward(policy, adapted, valid, valid_adv, exact)

    def kl_hvp(v: Params) -> Params:
        if rates is not None:  # v on (θ, α): forward through every step with the same α part
            w = expand_tasks({k: v[k] for k in rates}, curv_tasks)
            v_rates = {k: v[_RATE + k] for k in rates}
            for step in curv_steps:
                w = step.jvp_rates(w, v_rates)
            hv = _back_to_theta(fisher(w), curv_steps, cfg.first_order, rates)
            return axpy(cfg.cg_damping, v, hv)
        w = expand_tasks(v, curv_tasks)
        if not cfg.first_order:
            for step in curv_steps:
                w = step.jvp(w)
        hv = _back_to_theta(fisher(w), curv_steps, cfg.first_order)
        return axpy(cfg.cg_damping, v, hv)

    return kl_hvp


def meta_step(
    policy: Policy,
    sampler: BatchedSampler,
    tasks: list[Any],
    seed: int,
    cfg: MAMLTRPOConfig,
    inner_lrs: dict[str, Tensor] | None = None,
    baseline: PreviousTaskBaseline | None = None,
    line_search_trace: list[tuple[float, float, float]] | None = None,
) -> dict[str, float]:
    """One meta-iteration on ``tasks`` (updates ``policy`` in place); returns its statistics.

    ``line_search_trace``: if given, receives ``(fraction, surrogate, KL)`` of every
    candidate the line search tried, the full step first (what TRPO's curvature predicts
    against what it measures: ``scripts/maml_curvature_check.py``).

    ``baseline``: with ``cfg.inner_baseline="previous-task"``, the shared baseline carried
    from the previous meta-iteration (:func:`shared_baseline` makes a fresh one); its
    coefficients are updated in place.

    ``inner_lrs``: with ``cfg.learn_inner_lr`` (Meta-SGD), the per-entry inner rates ``α``
    (one tensor per parameter, its shape); TRPO steps ``(θ, α)`` together and updates them
    in place. Its trust region is the same mean KL of the adapted policies, now a function
    of ``(θ, α)``; its Hessian is ``Σ_i J_iᵀ F_i J_i`` with ``J_i`` the Jacobian of the
    adapted parameters in ``(θ, α)`` (see :class:`InnerStep`).
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
    structured = cfg.curvature == "structured" and MLPStructure.of(policy) is not None
    t0 = time.perf_counter()

    # 1-3. Inner steps on fresh episodes, then validation episodes with the adapted policies.
    steps: list[InnerStep] = []
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
        start = current if per_task_params else expand_tasks(current, n)
        # The structured curvature needs no autograd graph of the inner gradients.
        step = InnerStep(policy, start, eps, adv, lr,
                         keep_graph=not (cfg.first_order or structured))  # fmt: skip
        steps.append(step)
        current, per_task_params = step.adapted, True
        sample_s += ta - ts
        adapt_s += time.perf_counter() - ta
    ts = time.perf_counter()
    valid = sampler.collect(policy, current, tasks, seed=seed + 1000, per_task_params=True)
    sample_s += time.perf_counter() - ts
    to = time.perf_counter()
    valid_adv = _outer_advantages(valid, cfg, baseline)
    valid_data = TaskData.of(valid, valid_adv)

    # 4. TRPO. The surrogate and the KL as functions of the last adapted parameters.
    leaves = chunk_leaves(current, valid_data.chunks())
    surrogate, kl, old = _outer_terms(policy, leaves, valid_data)
    g_out = cat_chunks(grad_by_chunk(surrogate, leaves, retain_graph=True))
    tc = time.perf_counter()
    if structured:  # cached passes for the meta-gradient and (unless subsampled) CG
        sc = structured_curvature(policy, [(s.start, s.data) for s in steps], valid_data,
                                  current, lr, cfg.first_order, _RATE)  # fmt: skip
        assert sc is not None
        kl_hvp = kl_hessian_product(policy, steps, valid, valid_adv, current, cfg, rates=rates,
                                    structured=sc)  # fmt: skip
        grad = sc.back_to_theta(g_out)
    else:
        exact = (kl, leaves, valid_data.chunks())
        kl_hvp = kl_hessian_product(policy, steps, valid, valid_adv, current, cfg, exact=exact,
                                    rates=rates)  # fmt: skip
        grad = _back_to_theta(g_out, steps, cfg.first_order, rates)
    hint = "lower --inner-lr or --max-kl, or check the env's rewards"
    check_finite("MAML-TRPO surrogate loss", surrogate, hint=hint)
    check_finite("meta-gradient", grad, hint=hint)
    full_step = trust_region_step(kl_hvp, grad, cfg.max_kl, cfg.cg_iters)
    check_finite("TRPO step (conjugate-gradient direction)", full_step,
                 hint="raise --cg-damping or lower --max-kl")  # fmt: skip
    old_loss = surrogate.item()
    tl = time.perf_counter()

    # Backtracking line search: re-adapt from the candidate (θ, α) and check the surrogate
    # and KL; the accepted candidate is the last one tried.
    candidate: dict[str, Params] = {}

    def try_step(fraction: float) -> tuple[float, float]:
        candidate["θ"] = {k: theta[k] - fraction * full_step[k] for k in theta}
        lr_c: float | Params = cfg.inner_lr
        if rates is not None:
            lr_c = candidate["α"] = {k: rates[k] - fraction * full_step[_RATE + k] for k in rates}
        cur, per = candidate["θ"], False
        for step in steps:
            start = cur if per else expand_tasks(cur, n)
            cur = InnerStep(policy, start, step.episodes, step.adv, lr_c, False, data=step.data
                            ).adapted  # fmt: skip
            per = True
        with torch.no_grad():
            per_chunk = [{k: v[c] for k, v in cur.items()} for c in valid_data.chunks()]
            s, d, _ = _outer_terms(policy, per_chunk, valid_data, old)
        if line_search_trace is not None:
            line_search_trace.append((fraction, s.item(), d.item()))
        return s.item(), d.item()

    search = line_search(try_step, old_loss, cfg.max_kl, cfg.ls_max_steps,
                         cfg.ls_backtrack_ratio)  # fmt: skip
    if search.accepted:
        load_params(policy, candidate["θ"])
        if inner_lrs is not None:
            with torch.no_grad():
                for name, v in inner_lrs.items():
                    v.copy_(candidate["α"][name])
    outer_s = time.perf_counter() - to
    line_search_s = time.perf_counter() - tl
    total = time.perf_counter() - t0
    env_steps = sum(s.num_env_steps for s in steps) + valid.num_steps()
    stats = {
        "pre_adapt_return": float(np.mean(train_returns[:1])),
        "post_adapt_return": valid.task_returns().mean().item(),
        "surrogate_before": old_loss,
        "surrogate_after": search.loss,
        "kl": search.kl,
        "step_size": search.fraction,
        "log_std": float(policy.state_dict().get("log_std", torch.zeros(1)).mean()),
        "env_steps": float(env_steps),
        "env_steps_per_s": env_steps / total,
        "sample_s": sample_s,
        "adapt_s": adapt_s,
        "outer_s": outer_s,
        "curvature_s": tl - tc,
        "line_search_s": line_search_s,
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
def build(cfg: MAMLTRPOConfig, device: torch.device) -> tuple[Policy, BatchedSampler]:
    """The freshly initialised policy and the sampler of ``cfg`` (what :func:`meta_step`
    takes), on ``device``."""
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
    return meta_train(cfg, run_dir, AGENT, build, step, outer_step="TRPO step", resume=resume,
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
        start = params if per_task else expand_tasks(params, eps.num_tasks)
        return InnerStep(policy, start, eps, adv, rate, keep_graph=False).adapted

    return step


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation (:class:`metarl.evaluation.EvalSettings`: ``settings`` and/or its
    fields by name); writes ``eval_<split>.json`` and ``eval_<split>.png`` into the run
    directory.

    Inner steps use ``inner_lr`` then ``inner_lr / 2`` (Finn et al. 2017); a run trained with
    ``learn_inner_lr`` adapts with its learned per-entry rates ``α`` at every step instead
    (Li et al. 2017), recorded in the JSON's ``meta.inner_lr``. ``lrs``: other rates for
    steps 1, 2, … (the last repeats), e.g. ``(0.5, 0.25)`` for Finn et al.'s released test
    script; for a Meta-SGD run they multiply ``α``."""
    s = EvalSettings.of(settings, **overrides)
    loaded: dict[str, Any] = {}  # the evaluated checkpoint's iteration
    policy, params, cfg, rates = load_inner_lrs(run_dir, s.device, loaded)
    meta: dict[str, Any] = dict(loaded)
    if rates is not None:
        meta["inner_lr"] = {
            "learned": True,
            "protocol": "Meta-SGD (Li et al. 2017): every inner step uses the learned "
            "per-entry rates α (lrs are multipliers of α; 1 at every step by default)",
            **inner_lr_summary(rates),
        }
    default = (cfg.inner_lr, cfg.inner_lr / 2) if rates is None else (1.0,)
    return evaluate_run_policy(run_dir, AGENT, policy, params, cfg,
                               inner_step_fn(policy, cfg, rates), s, default_lrs=default,
                               meta=meta)  # fmt: skip


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: it adapts by :func:`evaluate`'s inner step
    and rates (a Meta-SGD run: its learned rates, ``lr`` multiplying them)."""
    from metarl.agents.trained import GradientTrainedPolicy

    policy, params, cfg, rates = load_inner_lrs(run_dir, device)
    lrs = (cfg.inner_lr, cfg.inner_lr / 2) if rates is None else (1.0,)
    step = inner_step_fn(policy, cfg, rates)
    return GradientTrainedPolicy(AGENT, cfg, policy, params, step, lrs, device)
