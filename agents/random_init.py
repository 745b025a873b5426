"""Random initialisation + fine-tune: the "random" baseline of Finn et al. 2017 (Sec. 5.3).

No meta-training and no pretraining: ``train`` draws the policy's initial weights from its
seed (Xavier-uniform weights, zero biases, ``σ = init_std``: what every agent here starts
from) and records them as the run's checkpoint, so the evaluation of every seed is
reproducible. ``evaluate`` fine-tunes them on each held-out task with MAML's inner step for
0..K steps, exactly as :mod:`metarl.agents.pretrained` and MAML's evaluation do.

Example:
    >>> from metarl.agents.random_init import RandomInitConfig, train
    >>> cfg = RandomInitConfig.from_preset("quick")
    >>> run = train(cfg, "/tmp/ri-doctest", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from metarl.agents.sb3_baselines import FineTuneConfig, evaluate_finetuning
from metarl.config import option
from metarl.evaluation import AdaptationCurve
from metarl.functional import Params, named_params
from metarl.policies import Policy, load_run_policy, make_policy
from metarl.registry import family_ids, make, task_distribution
from metarl.runs import Run
from metarl.seeding import seed_everything

__all__ = ["AGENT", "CONFIG", "RandomInitConfig", "evaluate", "load_policy", "train"]

AGENT = "random-init"


@dataclass
class RandomInitConfig(FineTuneConfig):
    """A randomly initialised policy, fine-tuned at evaluation with MAML's inner step."""

    num_iterations: int = option(
        1, "unused: random-init does no training (kept for the common run interface)", low=1,
        may_change_on_resume=True,
    )  # fmt: skip

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "nav2d": {"env_id": "metarl/Navigation2D-v0"},
        "halfcheetah-vel": {"env_id": "metarl/HalfCheetahVel-v0", "horizon": 200},
        # The architecture of the pretrained and oracle quick presets.
        "quick": {
            "env_id": "metarl/Navigation2D-v0",
            "hidden_sizes": (64, 64),
            "nonlinearity": "tanh",
        },
    }


CONFIG = RandomInitConfig


def _policy(cfg: RandomInitConfig, device: torch.device) -> Policy:
    env = make(cfg.env_id, **cfg.env_kwargs())
    policy = make_policy(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std
    ).to(device)
    env.close()
    return policy


def train(
    cfg: RandomInitConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Draw the initial policy from ``cfg.seed`` and record it (no training).

    A resumed run already holds its initialisation and is left as it is.
    """
    run_dir = Path(run_dir)
    if cfg.env_id not in family_ids():
        task_distribution(cfg.env_id)  # raises the registry's clear error
    if resume:
        run = Run.resume(run_dir, AGENT, cfg)
        run.load_checkpoint()
        run.close()
        return run
    seed_everything(cfg.seed)
    policy = _policy(cfg, torch.device("cpu"))
    params = {k: v.detach().clone() for k, v in named_params(policy).items()}
    run = Run.create(run_dir, AGENT, cfg, overwrite=overwrite)
    try:
        norm = torch.sqrt(sum((v**2).sum() for v in params.values()))  # type: ignore[arg-type]
        run.log(0, {"num_params": float(sum(v.numel() for v in params.values())),
                    "param_norm": float(norm), "init_std": cfg.init_std})  # fmt: skip
        run.save_checkpoint(1, {"params": params})
    finally:
        run.close()
    if log:
        log(f"{AGENT} on {cfg.env_id}: initial policy of seed {cfg.seed} saved in {run_dir}")
    return run


def load_policy(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, RandomInitConfig]:
    """The run's initial policy and config."""
    return load_run_policy(run_dir, AGENT, RandomInitConfig, device, loaded=loaded)


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
    """Fine-tune the random initialisation on each task of ``split`` for 0..K steps (MAML's
    protocol; ``lrs``: the rates of steps 1, 2, …, default ``inner_lr`` then ``inner_lr/2``);
    writes ``eval_<split>.json`` and ``eval_<split>.png`` into the run directory."""
    loaded: dict[str, Any] = {}
    policy, params, cfg = load_policy(run_dir, device, loaded)
    note = ("fine-tuning from a random initialisation (no training): MAML's inner step "
            "(VPG + linear baseline), rates ")  # fmt: skip
    note += "inner_lr then inner_lr/2" if lrs is None else " then ".join(map(str, lrs))
    return evaluate_finetuning(
        AGENT, policy, params, cfg, run_dir, split=split, num_steps=num_steps, seeds=seeds,
        episodes_per_step=episodes_per_step, device=device, max_tasks=max_tasks, note=note,
        meta=loaded, lrs=lrs,
    )  # fmt: skip
