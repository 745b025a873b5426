"""Reptile-RL: Reptile's first-order meta-update with policy-gradient inner loops.

Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms", Alg. 2 (batched
Reptile), applied to reinforcement learning. One meta-iteration, all tasks batched:

1. sample ``meta_batch_size`` training tasks;
2. from the meta-parameters ``φ``, ``k = num_adapt_steps`` inner steps per task: each collects
   fresh episodes with the task's current parameters and takes one vanilla policy-gradient
   step with the per-task linear baseline (the inner step of Finn et al. 2017, Sec. 3.2),
   ``φ̃_i ← φ̃_i − α ∇L_i(φ̃_i)``, every task at once through ``torch.func.vmap``;
3. outer step: ``φ ← φ + ε · mean_i(φ̃_i − φ)``, the step size ``ε`` optionally annealed
   linearly to 0 over the run as in the paper's experiments.

No second-order terms and no trust region: the outer step is an interpolation, so an
iteration costs ``k`` rollouts and ``k`` first-order inner steps. With ``k = 1`` Reptile is
joint (multi-task) training; the paper's analysis (Sec. 5) shows that ``k ≥ 2`` adds the
term that maximises the inner product of gradients of different minibatches of one task,
which is what makes the meta-parameters quick to fine-tune.

Evaluation follows Finn et al. 2017, as for MAML: the return on held-out tasks after 0…K
inner steps of the same policy-gradient step (learning rate ``α`` at every step, the rate the
meta-parameters were trained to be fine-tuned with).

Example:
    >>> from metarl.agents.reptile_rl import ReptileRLConfig, train
    >>> cfg = ReptileRLConfig.from_preset("quick", num_iterations=1, device="cpu")
    >>> run = train(cfg, "/tmp/reptile-doctest", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from metarl.adaptation.meta_training import meta_train
from metarl.adaptation.policy_gradient import adapt_policy, advantages, vpg_adapt_fn
from metarl.agent import Capabilities
from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    evaluate_run_policy,
)
from metarl.learning.functional import Params, load_params, reptile_update
from metarl.learning.policies import Policy, make_policy
from metarl.numerics import check_finite
from metarl.runs import Run, load_run_policy
from metarl.runs.config import EnvOptions, PolicyOptions, ReturnOptions, RunConfig, option
from metarl.sampling import make_sampler
from metarl.sampling.native import BatchedSampler, Episodes

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CONFIG",
    "ReptileRLConfig",
    "evaluate",
    "inner_step_fn",
    "load_policy",
    "meta_step",
    "outer_step_size",
    "reptile_iteration",
    "train",
]

AGENT = "reptile-rl"


@dataclass
class ReptileRLConfig(PolicyOptions, ReturnOptions, EnvOptions, RunConfig):
    """Reptile-RL settings; defaults follow the 2D-navigation setting of Finn et al. 2017
    (20 tasks × 20 episodes, inner rate 0.1) with Reptile's k = 3 inner steps."""

    meta_batch_size: int = option(20, "tasks per meta-iteration", low=1)
    episodes_per_task: int = option(20, "episodes per task for each inner step", low=1)
    num_adapt_steps: int = option(
        3, "inner policy-gradient steps k per task (k=1 is joint training)", low=1
    )
    inner_lr: float = option(0.1, "inner step size α", low=0.0, low_open=True)
    outer_step_size: float = option(
        0.5, "Reptile's outer step size ε (1.0: jump to the mean adapted parameters)",
        low=0.0, high=1.0, low_open=True,
    )  # fmt: skip
    anneal: bool = option(False, "anneal ε linearly to 0 over the run (Nichol et al. 2018)")
    backend: str = option(
        "auto",
        "batched env backend: auto (torch on-device if any), torch, numpy, generic, or "
        "subprocess (envs in worker processes with a timeout: a crash or hang becomes an error)",
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "nav2d": {"env_id": "metarl/Navigation2D-v0", "num_iterations": 500},
        "halfcheetah-vel": {
            "env_id": "metarl/HalfCheetahVel-v0",
            "meta_batch_size": 40,
            "episodes_per_task": 20,
            "horizon": 200,
        },
        # A minute or two on two CPU cores, as MAML-TRPO's quick preset.
        "quick": {
            "env_id": "metarl/Navigation2D-v0",
            "num_iterations": 30,
            "meta_batch_size": 10,
            "episodes_per_task": 10,
            "hidden_sizes": (32, 32),
            "checkpoint_every": 10,
        },
    }


CONFIG = ReptileRLConfig
CAPABILITIES = Capabilities(adapts_by="gradient steps")


# -- the meta-iteration ----------------------------------------------------------------------
#: ``inner_step(params, per_task_params, k) -> per-task params (N, ...)``: step ``k`` of the
#: inner loop for every task of the meta-batch, from shared (``per_task_params=False``) or
#: per-task parameters.
InnerStep = Callable[[Params, bool, int], Params]


def outer_step_size(cfg: ReptileRLConfig, iteration: int) -> float:
    """``ε`` at ``iteration``: constant, or linearly annealed from ``ε`` towards 0."""
    if not cfg.anneal:
        return cfg.outer_step_size
    return cfg.outer_step_size * (1.0 - iteration / cfg.num_iterations)


def reptile_iteration(
    meta_params: Mapping[str, Tensor], inner_step: InnerStep, num_steps: int, step_size: float
) -> tuple[Params, Params]:
    """``num_steps`` inner steps from ``meta_params`` for every task, then Reptile's outer
    step ``φ + ε · mean_i(φ̃_i − φ)``. Returns (new meta-parameters, adapted ``(N, ...)``)."""
    current: Params = {k: v.detach() for k, v in meta_params.items()}
    per = False
    for k in range(num_steps):
        current = {n: v.detach() for n, v in inner_step(current, per, k).items()}
        per = True
    n = next(iter(current.values())).shape[0]
    adapted = [{name: v[i] for name, v in current.items()} for i in range(n)]
    return reptile_update(meta_params, adapted, step_size), current


def meta_step(
    policy: Policy,
    sampler: BatchedSampler,
    tasks: list[Any],
    seed: int,
    cfg: ReptileRLConfig,
    step_size: float,
) -> dict[str, float]:
    """One meta-iteration on ``tasks`` (updates ``policy`` in place); returns its statistics."""
    phi = {k: p.detach() for k, p in policy.named_parameters()}
    t0 = time.perf_counter()
    returns: list[float] = []
    times = {"sample_s": 0.0, "adapt_s": 0.0}
    env_steps = 0

    def inner_step(params: Params, per_task_params: bool, k: int) -> Params:
        nonlocal env_steps
        ts = time.perf_counter()
        eps = sampler.collect(policy, params, tasks, seed=seed + k, per_task_params=per_task_params)
        returns.append(eps.task_returns().mean().item())
        env_steps += eps.num_steps()
        ta = time.perf_counter()
        adv = advantages(eps, cfg.gamma, cfg.gae_lambda)
        out = adapt_policy(policy, params, eps, adv, lr=cfg.inner_lr, first_order=True,
                           per_task_params=per_task_params)  # fmt: skip
        times["sample_s"] += ta - ts
        times["adapt_s"] += time.perf_counter() - ta
        return out

    new_phi, adapted = reptile_iteration(phi, inner_step, cfg.num_adapt_steps, step_size)
    hint = "lower --inner-lr or --outer-step-size, or check the env's rewards"
    check_finite("adapted parameters", adapted, hint=hint)
    check_finite("Reptile meta-parameters", new_phi, hint=hint)
    to = time.perf_counter()
    move = torch.sqrt(sum(((new_phi[k] - phi[k]) ** 2).sum() for k in phi)).item()  # type: ignore[arg-type]
    load_params(policy, new_phi)
    total = time.perf_counter() - t0
    return {
        "pre_adapt_return": returns[0],
        "post_adapt_return": returns[-1],
        "outer_step_size": step_size,
        "meta_param_change": move,
        "log_std": float(policy.state_dict().get("log_std", torch.zeros(1)).mean()),
        "env_steps": float(env_steps),
        "env_steps_per_s": env_steps / total,
        "sample_s": times["sample_s"],
        "adapt_s": times["adapt_s"],
        "outer_s": time.perf_counter() - to,
        "iteration_s": total,
    }


# -- training, checkpoints, evaluation -----------------------------------------------------
def build(cfg: ReptileRLConfig, device: torch.device) -> tuple[Policy, BatchedSampler]:
    """The freshly initialised policy and the sampler of ``cfg``, on ``device``."""
    sampler = make_sampler(
        cfg.env_id,
        cfg.meta_batch_size,
        cfg.episodes_per_task,
        backend=cfg.backend,
        device=device,
        env_kwargs=cfg.env_kwargs(),
        num_workers=cfg.num_workers,
        worker_timeout=cfg.worker_timeout,
    )
    policy = make_policy(
        sampler.observation_space,
        sampler.action_space,
        cfg.hidden_sizes,
        cfg.nonlinearity,
        cfg.init_std,
    ).to(device)
    return policy, sampler


def train(
    cfg: ReptileRLConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Meta-train Reptile-RL; the run directory gets config.json, metrics.csv and checkpoints.

    Args:
        resume: continue ``run_dir`` from its last checkpoint (exactly, on the CPU).
        overwrite: delete ``run_dir`` first if it exists.
        log: where one-line progress messages go (e.g. ``print``); None: silent.
    """

    def step(policy: Policy, sampler: BatchedSampler, tasks: list[Any], seed: int, it: int
             ) -> dict[str, float]:  # fmt: skip
        return meta_step(policy, sampler, tasks, seed, cfg, outer_step_size(cfg, it))

    return meta_train(cfg, run_dir, AGENT, build, step, outer_step="Reptile step", resume=resume,
                      overwrite=overwrite, log=log)  # fmt: skip


def load_policy(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, ReptileRLConfig]:
    """The meta-trained policy of a run (its last checkpoint) and the run's config."""
    return load_run_policy(run_dir, AGENT, ReptileRLConfig, device, loaded=loaded)


def inner_step_fn(
    policy: Policy, cfg: ReptileRLConfig
) -> Callable[[Mapping[str, Tensor], Episodes, float, bool], Params]:
    """The inner step as the evaluation protocol wants it (the one used in training)."""
    return vpg_adapt_fn(policy, cfg.gamma, cfg.gae_lambda)


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation (:class:`metarl.evaluation.EvalSettings`: ``settings`` and/or its
    fields by name) with the training inner rate ``α`` at every step (``lrs``: other rates for
    steps 1, 2, …, the last repeating); writes ``eval_<split>.json`` and ``.png``."""
    s = EvalSettings.of(settings, **overrides)
    loaded: dict[str, Any] = {}  # the evaluated checkpoint's iteration
    policy, params, cfg = load_policy(run_dir, s.device, loaded)
    return evaluate_run_policy(run_dir, AGENT, policy, params, cfg, inner_step_fn(policy, cfg),
                               s, default_lrs=(cfg.inner_lr,), meta=loaded)  # fmt: skip


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: it adapts by :func:`evaluate`'s inner step
    and rate."""
    from metarl.agents.trained import GradientTrainedPolicy

    policy, params, cfg = load_policy(run_dir, device)
    return GradientTrainedPolicy(AGENT, cfg, policy, params, inner_step_fn(policy, cfg),
                                 (cfg.inner_lr,), device)  # fmt: skip
