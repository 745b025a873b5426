"""Oracle: a policy that is told the task, the upper reference of Finn et al. 2017 (Fig. 4-5).

The policy's input is ``[observation, task parameters]`` (the task's fields scaled to
``[-1, 1]``, :func:`~metarl.agents.sb3_baselines.task_features`; on 2D navigation, the goal).
It is trained with Stable-Baselines3 PPO on the *training* tasks only (a training task drawn
every episode) and evaluated on the held-out tasks, where knowing the task replaces any
adaptation: the curve is the return at 0 steps, repeated at every k — a flat line, marked as
such in the JSON (``meta["adaptation"]``, ``meta["flat"]``), with no adaptation env steps.

The evaluation is MAML's protocol (:func:`metarl.evaluation.evaluate_policy_adaptation`, same
tasks, seeds and episodes) on the family's own observations: the task-conditioned first layer
``W [s; z] + b`` equals, for task ``i``, the plain policy with bias ``b + W_z z_i``
(:func:`~metarl.agents.sb3_baselines.oracle_task_params`), one params set per task.

Example:
    >>> from metarl.agents.oracle import OracleConfig, evaluate, train
    >>> cfg = OracleConfig.from_preset("quick")
    >>> run = train(cfg, "/tmp/oracle-doctest", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from metarl.agent import Capabilities
from metarl.agents.sb3_baselines import (
    PPO_BASELINE_PRESETS,
    MultiTaskEnv,
    PPOBaselineConfig,
    oracle_task_params,
    task_features,
    train_ppo,
)
from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    evaluate_policy_adaptation,
    save_run_curve,
)
from metarl.learning.functional import Params
from metarl.learning.policies import Policy, make_policy
from metarl.runs import Run, load_run_policy, resolve_device
from metarl.sampling.native import Episodes
from metarl.stepping.registry import make, task_distribution
from metarl.tasks import TaskError

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CONFIG",
    "OracleConfig",
    "evaluate",
    "evaluate_tasks",
    "load_policy",
    "task_policy",
    "train",
    "trained_policy",
]

AGENT = "oracle"


@dataclass
class OracleConfig(PPOBaselineConfig):
    """PPO on the training tasks with the task parameters in the observation."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PPO_BASELINE_PRESETS


CONFIG = OracleConfig


def _no_task_features(env_id: str) -> str | None:
    """Why the oracle cannot run ``env_id``: its tasks' parameters are not numbers."""
    dist = task_distribution(env_id)
    try:
        task_features(dist, dist.split("train")[0])
    except TaskError as e:
        return str(e)
    return None


CAPABILITIES = Capabilities(adapts_by="none", unsupported=_no_task_features)


def train(
    cfg: OracleConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Train the task-conditioned policy with PPO on the training tasks (see
    :func:`metarl.agents.sb3_baselines.train_ppo`)."""
    return train_ppo(cfg, run_dir, AGENT, with_task=True, resume=resume, overwrite=overwrite,
                     log=log)  # fmt: skip


def _oracle_env(cfg: OracleConfig) -> MultiTaskEnv:
    return MultiTaskEnv(cfg.env_id, with_task=True, **cfg.env_kwargs())


def load_policy(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, OracleConfig]:
    """The oracle's policy over ``[observation, task features]``, its params and config."""
    return load_run_policy(
        run_dir, AGENT, OracleConfig, device, spaces_env=_oracle_env, loaded=loaded
    )


def _no_adaptation(params: Mapping[str, Tensor], eps: Episodes, lr: float, per: bool) -> Params:
    raise AssertionError("the oracle is evaluated at 0 steps only")  # pragma: no cover


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """The oracle's return on each task of the split (MAML's protocol at 0 steps), repeated
    for k = 1..K (a flat line: it does not adapt); :class:`metarl.evaluation.EvalSettings`
    (``settings`` and/or its fields by name; no ``lrs``); writes ``eval_<split>.json``/
    ``.png``."""
    s = EvalSettings.of(settings, **overrides).without_lrs(AGENT)
    num_steps = 3 if s.num_steps is None else s.num_steps
    loaded: dict[str, Any] = {}
    _, params, cfg = load_policy(run_dir, s.device, loaded)
    dist = task_distribution(cfg.env_id, **cfg.env_kwargs())
    tasks = list(dist.split(s.split))[: s.max_tasks]  # type: ignore[arg-type]
    curve = evaluate_tasks(params, cfg, tasks, split=s.split, num_steps=num_steps,
                           seeds=s.seeds, episodes_per_step=s.episodes_per_step,
                           device=s.device)  # fmt: skip
    curve.meta.update({"run_dir": str(run_dir), **loaded})
    return save_run_curve(curve, run_dir, s.split)


def task_policy(
    params: Mapping[str, Tensor], cfg: OracleConfig, tasks: Sequence[Any], device: str = "cpu"
) -> tuple[Policy, Params]:
    """The plain policy over the family's observations and, for each of ``tasks``, its
    params with that task's features folded into the first layer's bias (leading dimension
    ``len(tasks)``; :func:`~metarl.agents.sb3_baselines.oracle_task_params`)."""
    dist = task_distribution(cfg.env_id, **cfg.env_kwargs())
    env = make(cfg.env_id, **cfg.env_kwargs())
    plain = make_policy(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std
    ).to(resolve_device(device))
    env.close()
    features = torch.as_tensor(np.stack([task_features(dist, dist.validate(t)) for t in tasks]))
    return plain, oracle_task_params(params, plain, features)


def evaluate_tasks(
    params: Mapping[str, Tensor],
    cfg: OracleConfig,
    tasks: Sequence[Any],
    *,
    split: str = "test",
    num_steps: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes_per_step: int | None = None,
    device: str = "cpu",
) -> AdaptationCurve:
    """:func:`evaluate`'s curve on ``tasks`` (``split`` only recorded), written nowhere."""
    num_steps = 3 if num_steps is None else num_steps
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not tasks:
        raise ValueError("no tasks to evaluate: max_tasks must be >= 1")
    plain, per_task = task_policy(params, cfg, tasks, device)
    at0 = evaluate_policy_adaptation(
        plain, per_task, cfg.env_id, _no_adaptation, agent=AGENT, split=split, num_steps=0,
        lrs=(cfg.inner_lr,), episodes_per_step=episodes_per_step, seeds=seeds, device=device,
        env_kwargs=cfg.env_kwargs(), tasks=tasks, per_task_params=True,
        backend=cfg.backend, num_workers=cfg.num_workers, worker_timeout=cfg.worker_timeout,
    )  # fmt: skip
    return AdaptationCurve(
        agent=AGENT,
        env_id=cfg.env_id,
        unit=at0.unit,
        returns=np.repeat(at0.returns, num_steps + 1, axis=2),
        success=None if at0.success is None else np.repeat(at0.success, num_steps + 1, axis=2),
        env_steps=[0] * (num_steps + 1),
        wall_clock_s=[at0.wall_clock_s[0]] * (num_steps + 1),
        split=split,
        meta={
            **at0.meta,
            "config": cfg.to_dict(),
            "adaptation": "none: the oracle is given the task parameters; the return after "
            "k > 0 steps repeats the 0-step return (a flat line), no env steps spent adapting",
            "flat": True,
        },
    )


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: ``adapt(task)`` folds the task's features in
    (no episodes, no adaptation); ``evaluate`` is :func:`evaluate`'s flat curve."""
    from metarl.agents.trained import TaskConditionedPolicy

    _, params, cfg = load_policy(run_dir, device)

    def curve(tasks: Sequence[Any], **kw: Any) -> AdaptationCurve:
        return evaluate_tasks(params, cfg, tasks, device=device, **kw)

    return TaskConditionedPolicy(
        AGENT, cfg, lambda tasks: task_policy(params, cfg, tasks, device), curve, device
    )
