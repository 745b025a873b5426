"""Pretrained + fine-tune: the "pretrained" baseline of Finn et al. 2017 (Sec. 5.2-5.3).

One policy is trained on all the *training* tasks at once — Stable-Baselines3 PPO on a
:class:`~metarl.agents.sb3_baselines.MultiTaskEnv` that draws a training task every episode,
never a held-out one — with an actor of the architecture MAML uses. At evaluation its weights
become our policy's params and are fine-tuned on each held-out task with MAML's inner step
(vanilla policy gradient with the linear baseline, the same rates and episodes as MAML's
evaluation) for 0..K steps (:func:`metarl.evaluation.evaluate_policy_adaptation`).

The multi-task policy cannot tell the tasks apart, so at 0 steps it plays the best response
to the whole distribution (on 2D navigation: stay near the centre of the goal square); what it
gains from a few steps is what a meta-learned initialisation is compared against.

Example:
    >>> from metarl.agents.pretrained import PretrainedConfig, evaluate, train
    >>> cfg = PretrainedConfig.from_preset("quick", seed=1)
    >>> run = train(cfg, "/tmp/pretrained-doctest", overwrite=True)  # doctest: +SKIP
    >>> curve, json_path, png_path = evaluate(run.path, num_steps=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from metarl.agent import Capabilities
from metarl.agents.sb3_baselines import (
    PPO_BASELINE_PRESETS,
    PPOBaselineConfig,
    evaluate_finetuning,
    finetuned_policy,
    train_ppo,
)
from metarl.evaluation import AdaptationCurve, EvalSettings
from metarl.learning.functional import Params
from metarl.learning.policies import Policy
from metarl.runs import Run, load_run_policy

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CONFIG",
    "PretrainedConfig",
    "evaluate",
    "load_policy",
    "train",
    "trained_policy",
]

AGENT = "pretrained"


@dataclass
class PretrainedConfig(PPOBaselineConfig):
    """Multi-task PPO on the training tasks, then MAML's inner step on each held-out task."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PPO_BASELINE_PRESETS


CONFIG = PretrainedConfig
CAPABILITIES = Capabilities(adapts_by="gradient steps")


def train(
    cfg: PretrainedConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Train the multi-task policy with PPO on the training tasks (see
    :func:`metarl.agents.sb3_baselines.train_ppo`)."""
    return train_ppo(cfg, run_dir, AGENT, with_task=False, resume=resume, overwrite=overwrite,
                     log=log)  # fmt: skip


def load_policy(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, PretrainedConfig]:
    """The pretrained policy of a run (its last checkpoint) and the run's config."""
    return load_run_policy(run_dir, AGENT, PretrainedConfig, device, loaded=loaded)


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Fine-tune the pretrained policy on each task of the split for 0..K steps (MAML's
    protocol; :class:`metarl.evaluation.EvalSettings`: ``settings`` and/or its fields by
    name); writes ``eval_<split>.json`` and ``eval_<split>.png`` into the run directory."""
    note = "fine-tuning of a policy pretrained with PPO on the training tasks"
    return evaluate_finetuning(AGENT, run_dir, load_policy, EvalSettings.of(settings, **overrides),
                               note)  # fmt: skip


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: fine-tuned by :func:`evaluate`'s step
    (MAML's inner step) and rates."""
    return finetuned_policy(AGENT, load_policy(run_dir, device), device)
